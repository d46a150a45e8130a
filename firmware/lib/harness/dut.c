/* The device-under-test command interpreter (see dut.h and docs/firmware.md).
 *
 * Replies follow the MLPerf Tiny reference firmware (mlcommons/tiny benchmark/api): every
 * command ends with '%', every reply line is `m-...` or `e-[...]`, and `m-ready` follows every
 * command. Lines are handled as (pointer, length) pairs, never as C strings, so NUL and other
 * garbage bytes are just unknown characters.
 */
#include "dut.h"

#include <string.h>

#include "dut_port.h"

#define FW_VERSION "tinyseek DUT firmware 1.0"

static const dut_model_t *M;

static char line[DUT_LINE_MAX];
static size_t line_len;
static int line_overflow;

static size_t load_size;  /* bytes announced by `db load`; 0: nothing loaded */
static size_t load_pos;   /* bytes received so far */
static int have_results;  /* logits_out holds the result of an inference */

/* ---- output --------------------------------------------------------------------------- */

static void out(const char *s) { dut_port_write(s, strlen(s)); }

static void out_u64(uint64_t v) {
    char buf[21];
    size_t i = sizeof buf;
    do {
        buf[--i] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v != 0u);
    dut_port_write(buf + i, sizeof buf - i);
}

static void out_i64(int64_t v) {
    if (v < 0) {
        out("-");
        out_u64((uint64_t)(-(v + 1)) + 1u);  /* no overflow at INT64_MIN */
    } else {
        out_u64((uint64_t)v);
    }
}

static void out_long_or_na(long v) {
    if (v < 0) out("na");
    else out_u64((uint64_t)v);
}

static void out_hex8(uint8_t b) {
    static const char digits[] = "0123456789abcdef";
    char buf[2] = {digits[b >> 4], digits[b & 15u]};
    dut_port_write(buf, 2);
}

/* Bytes that may be echoed inside `[...]`: printable ASCII except ']' and '%', and bytes of
 * UTF-8 sequences (labels may be non-English); everything else becomes '?'. */
static void out_safe(const char *s, size_t n, size_t max) {
    size_t i;
    for (i = 0; i < n && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        char r = (c >= 0x20 && c != 0x7f && c != ']' && c != '%') ? (char)c : '?';
        dut_port_write(&r, 1);
    }
    if (n > max) out("...");
}

static void out_error(const char *msg) {
    out("e-[");
    out(msg);
    out("]\r\n");
}

/* A real-valued logit with three decimals, like the reference firmware's "%0.3f". */
static void out_real3(int16_t logit) {
    /* float and int32 only: a float -> int64 conversion would pull in soft double routines */
    float x = (float)logit * M->output_scale * 1000.0f;
    uint32_t mag;
    char frac[3];
    if (x > 2.0e9f) x = 2.0e9f;
    if (x < -2.0e9f) x = -2.0e9f;
    mag = (uint32_t)(x >= 0.0f ? x + 0.5f : -x + 0.5f);
    if (x <= -0.5f) out("-");
    out_u64(mag / 1000u);
    frac[0] = (char)('0' + (mag / 100u) % 10u);
    frac[1] = (char)('0' + (mag / 10u) % 10u);
    frac[2] = (char)('0' + mag % 10u);
    out(".");
    dut_port_write(frac, 3);
}

static void out_results(void) {
    int k;
    out("m-results-[");
    for (k = 0; k < M->num_classes; k++) {
        if (k) out(",");
        out_real3(M->logits_out[k]);
    }
    out("]\r\nm-logits-[");
    for (k = 0; k < M->num_classes; k++) {
        if (k) out(",");
        out_i64(M->logits_out[k]);
    }
    out("]\r\n");
}

static void out_time(uint64_t total, unsigned long runs, uint64_t lo, uint64_t hi) {
    out("m-time-[total=");
    out_u64(total);
    out(",runs=");
    out_u64(runs);
    out(",min=");
    out_u64(lo);
    out(",max=");
    out_u64(hi);
    out(",unit=");
    out(dut_port_target()->timer_unit);
    out("]\r\n");
}

static void out_lap_us(void) {
    unsigned long per_us = dut_port_target()->timer_per_us;
    out("m-lap-us-");
    out_u64(dut_port_ticks_to_units(dut_port_ticks()) / (per_us ? per_us : 1u));
    out("\r\n");
}

/* ---- parsing -------------------------------------------------------------------------- */

typedef struct {
    const char *p;
    size_t n;
} tok_t;

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Next whitespace-separated token of [*pos, end); n == 0 when none is left. */
static tok_t next_tok(const char **pos, const char *end) {
    tok_t t;
    const char *p = *pos;
    while (p < end && is_space(*p)) p++;
    t.p = p;
    while (p < end && !is_space(*p)) p++;
    t.n = (size_t)(p - t.p);
    *pos = p;
    return t;
}

static int tok_is(tok_t t, const char *word) {
    size_t n = strlen(word);
    return t.n == n && memcmp(t.p, word, n) == 0;
}

/* A decimal number in [0, max]; digits only, so "-1", "1e3" and "0x10" are rejected. */
static int parse_ulong(tok_t t, unsigned long max, unsigned long *value) {
    unsigned long v = 0;
    size_t i;
    if (t.n == 0 || t.n > 10) return 0;
    for (i = 0; i < t.n; i++) {
        unsigned d;
        if (t.p[i] < '0' || t.p[i] > '9') return 0;
        d = (unsigned)(t.p[i] - '0');
        if (v > (max - d) / 10u) return 0;
        v = v * 10u + d;
    }
    *value = v;
    return 1;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int no_more(const char *pos, const char *end, const char *usage) {
    const char *p = pos;
    if (next_tok(&p, end).n == 0) return 1;
    out("e-[too many arguments; usage: ");
    out(usage);
    out("]\r\n");
    return 0;
}

/* ---- the input buffer ----------------------------------------------------------------- */

static void cmd_db_load(const char *pos, const char *end) {
    unsigned long n;
    tok_t t = next_tok(&pos, end);
    if (t.n == 0) {
        out_error("db load needs the number of bytes: db load N");
        return;
    }
    if (!parse_ulong(t, 0xFFFFFFFFUL, &n)) {
        out("e-[db load: '");
        out_safe(t.p, t.n, 16);
        out("' is not a byte count]\r\n");
        return;
    }
    if (!no_more(pos, end, "db load N")) return;
    if (n == 0) {
        out_error("db load: the size must be > 0 bytes");
        return;
    }
    if (n > M->input_capacity) {
        out("e-[db load: ");
        out_u64(n);
        out(" bytes exceed the input buffer of ");
        out_u64(M->input_capacity);
        out(" bytes]\r\n");
        return;
    }
    load_size = n;
    load_pos = 0;
    out("m-[Expecting ");
    out_u64(n);
    out(" bytes]\r\n");
}

/* Append hex bytes; checked whole before anything is stored, so a bad chunk changes nothing. */
static void cmd_db_hex(tok_t t, const char *pos, const char *end) {
    size_t i, bytes;
    if (!no_more(pos, end, "db HEX (one string of hex digits)")) return;
    if (load_size == 0) {
        out_error("db: no buffer; send db load N first");
        return;
    }
    if (t.n % 2u != 0u) {
        out("e-[db: odd number of hex digits (");
        out_u64(t.n);
        out(")]\r\n");
        return;
    }
    for (i = 0; i < t.n; i++) {
        if (hex_value(t.p[i]) < 0) {
            out("e-[db: invalid hex digit '");
            out_safe(t.p + i, 1, 1);
            out("' at position ");
            out_u64(i);
            out("]\r\n");
            return;
        }
    }
    bytes = t.n / 2u;
    if (bytes > load_size - load_pos) {
        out("e-[db: ");
        out_u64(bytes);
        out(" bytes but only ");
        out_u64(load_size - load_pos);
        out(" of the ");
        out_u64(load_size);
        out(" announced remain]\r\n");
        return;
    }
    for (i = 0; i < bytes; i++) {
        M->input[load_pos++] = (uint8_t)(hex_value(t.p[2 * i]) << 4 | hex_value(t.p[2 * i + 1]));
    }
    if (load_pos == load_size) out("m-load-done\r\n");
}

static void cmd_db_print(const char *pos, const char *end) {
    unsigned long count = load_pos, offset = 0;
    size_t i;
    tok_t t = next_tok(&pos, end);
    if (t.n && !parse_ulong(t, 0xFFFFFFFFUL, &count)) {
        out_error("db print: usage db print [N [OFFSET]]");
        return;
    }
    t = next_tok(&pos, end);
    if (t.n && !parse_ulong(t, 0xFFFFFFFFUL, &offset)) {
        out_error("db print: usage db print [N [OFFSET]]");
        return;
    }
    if (!no_more(pos, end, "db print [N [OFFSET]]")) return;
    if (offset > load_pos) offset = load_pos;
    if (count > load_pos - offset) count = load_pos - offset;
    for (i = 0; i < count; i++) {
        if (i % 8u == 0u) out("m-buffer-");
        out_hex8(M->input[offset + i]);
        out((i % 8u == 7u || i + 1u == count) ? "\r\n" : "-");
    }
}

static void cmd_db(const char *pos, const char *end) {
    tok_t sub = next_tok(&pos, end);
    if (sub.n == 0) out_error("db needs a subcommand: db load N, db HEX or db print");
    else if (tok_is(sub, "load")) cmd_db_load(pos, end);
    else if (tok_is(sub, "print")) cmd_db_print(pos, end);
    else cmd_db_hex(sub, pos, end);
}

/* Checks that the loaded bytes form a complete, valid model input; returns the number of
 * steps (token ids or feature vectors), or -1 after printing the error. */
static long input_steps(const char *what) {
    size_t i, n;
    if (load_size == 0) {
        out("e-[");
        out(what);
        out(": no input loaded; send db load N and db HEX first]\r\n");
        return -1;
    }
    if (load_pos != load_size) {
        out("e-[");
        out(what);
        out(": input incomplete: ");
        out_u64(load_pos);
        out(" of ");
        out_u64(load_size);
        out(" bytes loaded]\r\n");
        return -1;
    }
    if (!M->kind_text) {
        if (load_size % (size_t)M->num_features != 0u) {
            out("e-[");
            out(what);
            out(": ");
            out_u64(load_size);
            out(" bytes are not a whole number of int8 steps of ");
            out_u64((uint64_t)M->num_features);
            out(" features]\r\n");
            return -1;
        }
        return (long)(load_size / (size_t)M->num_features);
    }
    if (load_size % 2u != 0u) {
        out("e-[");
        out(what);
        out(": a text model reads uint16 little-endian token ids; ");
        out_u64(load_size);
        out(" bytes is odd]\r\n");
        return -1;
    }
    n = load_size / 2u;
    for (i = 0; i < n; i++) {
        /* The same memory viewed as uint16: decoding in place reads byte pair i before id i
         * overwrites it. */
        uint16_t id = (uint16_t)(M->input[2 * i] | (uint16_t)M->input[2 * i + 1] << 8);
        if (id >= (unsigned)M->vocab_size) {
            out("e-[");
            out(what);
            out(": token id ");
            out_u64(id);
            out(" at position ");
            out_u64(i);
            out(" is not below the vocabulary size ");
            out_u64((uint64_t)M->vocab_size);
            out("]\r\n");
            return -1;
        }
    }
    for (i = 0; i < n; i++) {
        M->input_ids[i] = (uint16_t)(M->input[2 * i] | (uint16_t)M->input[2 * i + 1] << 8);
    }
    return (long)n;
}

/* ---- inference ------------------------------------------------------------------------ */

static int run_once(long steps) {
    if (M->kind_text) return M->infer_tokens(M->input_ids, (int)steps, M->logits_out);
    return M->infer((const int8_t *)M->input, (int)steps, M->logits_out);
}

static int model_failed(const char *what, int rc) {
    if (rc >= 0) return 0;
    have_results = 0;
    out("e-[");
    out(what);
    out(": the model returned error ");
    out_i64(rc);
    out("]\r\n");
    return 1;
}

static void cmd_infer(const char *pos, const char *end) {
    unsigned long runs = 1, warmups = 10, r;  /* the reference firmware's defaults */
    uint64_t total = 0, lo = UINT64_MAX, hi = 0;
    long steps;
    tok_t t = next_tok(&pos, end);
    if (t.n && !parse_ulong(t, DUT_MAX_RUNS, &runs)) {
        out_error("infer: N must be a number from 1 to 1000000; usage infer N [W]");
        return;
    }
    t = next_tok(&pos, end);
    if (t.n && !parse_ulong(t, DUT_MAX_RUNS, &warmups)) {
        out_error("infer: W must be a number from 0 to 1000000; usage infer N [W]");
        return;
    }
    if (!no_more(pos, end, "infer N [W]")) return;
    if (runs == 0) {
        out_error("Inference iterations must be >0");
        return;
    }
    steps = input_steps("infer");
    if (steps < 0) return;

    out("m-warmup-start-");
    out_u64(warmups);
    out("\r\n");
    for (r = 0; r < warmups; r++) {
        if (model_failed("infer", run_once(steps))) return;
    }
    out("m-warmup-done\r\nm-infer-start-");
    out_u64(runs);
    out("\r\n");
    out_lap_us();
    for (r = 0; r < runs; r++) {
        uint64_t t0, dt;
        int rc;
        dut_port_timer_sync();
        t0 = dut_port_ticks();
        rc = run_once(steps);
        dt = dut_port_ticks_to_units(dut_port_ticks() - t0);
        if (model_failed("infer", rc)) return;
        total += dt;
        if (dt < lo) lo = dt;
        if (dt > hi) hi = dt;
    }
    out_lap_us();
    out("m-infer-done\r\n");
    have_results = 1;
    out_results();
    out_time(total, runs, lo, hi);
}

/* Feeds the loaded input through the model without resetting its state first. */
static void cmd_stream(const char *pos, const char *end) {
    uint64_t t0, dt;
    long steps, i;
    int rc = 0;
    if (!no_more(pos, end, "stream")) return;
    steps = input_steps("stream");
    if (steps < 0) return;
    dut_port_timer_sync();
    t0 = dut_port_ticks();
    for (i = 0; i < steps && rc >= 0; i++) {
        rc = M->kind_text ? M->step_token(M->input_ids[i])
                          : M->step((const int8_t *)M->input + i * M->num_features);
    }
    if (rc >= 0) M->logits(M->logits_out);
    dt = dut_port_ticks_to_units(dut_port_ticks() - t0);
    if (model_failed("stream", rc)) return;
    have_results = 1;
    out_results();
    out_time(dt, 1, dt, dt);
}

static void cmd_cls(const char *text, const char *end) {
    uint64_t t0, dt;
    int rc, k;
    size_t n;
    while (text < end && is_space(*text)) text++;
    n = (size_t)(end - text);
    if (M->classify_text == NULL || !M->kind_text) {
        out("e-[cls: model '");
        out(M->name);
        out("' is a sequence model; load int8 features with db and run infer]\r\n");
        return;
    }
    dut_port_timer_sync();
    t0 = dut_port_ticks();
    rc = M->classify_text((const uint8_t *)text, n, M->logits_out);
    dt = dut_port_ticks_to_units(dut_port_ticks() - t0);
    if (model_failed("cls", rc)) return;
    have_results = 1;
    k = 0;
    {
        int j;
        for (j = 1; j < M->num_classes; j++) {
            if (M->logits_out[j] > M->logits_out[k]) k = j;
        }
    }
    out("m-class-[");
    out_u64((uint64_t)k);
    out("]\r\nm-label-[");
    out_safe(M->labels[k], strlen(M->labels[k]), 64);
    out("]\r\n");
    out_results();
    out_time(dt, 1, dt, dt);
}

/* ---- information ---------------------------------------------------------------------- */

static void kv(const char *key, const char *value, int first) {
    if (!first) out(",");
    out(key);
    out("=");
    out(value);
}

static void kv_num(const char *key, uint64_t value) {
    out(",");
    out(key);
    out("=");
    out_u64(value);
}

static void cmd_info(void) {
    const dut_target_t *tg = dut_port_target();
    out("m-info-[");
    kv("model", M->name, 1);
    kv("hash", M->hash, 0);
    kv("kind", M->kind_text ? "text" : "sequence", 0);
    kv_num("classes", (uint64_t)M->num_classes);
    kv_num("input", (uint64_t)M->input_size);
    kv_num("layers", (uint64_t)M->num_layers);
    kv_num("hidden", (uint64_t)M->hidden_size);
    kv_num("vocab", (uint64_t)M->vocab_size);
    kv_num("max_len", (uint64_t)M->max_len);
    kv_num("features", (uint64_t)M->num_features);
    kv("kernel", M->kernel, 0);
    kv("board", tg->board, 0);
    kv("cpu", tg->cpu, 0);
    kv_num("clock_hz", tg->clock_hz);
    kv("timer", tg->timer, 0);
    kv("unit", tg->timer_unit, 0);
    kv_num("buffer", M->input_capacity);
    kv_num("line", DUT_LINE_MAX);
    out("]\r\n");
}

static void cmd_mem(void) {
    dut_mem_t mem;
    mem.flash_used = mem.ram_static = mem.stack_size = mem.stack_peak = -1;
    dut_port_mem(&mem);
    out("m-mem-[model_flash=");
    out_u64(M->weight_bytes);
    out(",model_ram=");
    out_u64(M->ram_bytes);
    out(",input_buffer=");
    out_u64(M->input_capacity);
    out(",flash_used=");
    out_long_or_na(mem.flash_used);
    out(",ram_static=");
    out_long_or_na(mem.ram_static);
    out(",stack_size=");
    out_long_or_na(mem.stack_size);
    out(",stack_peak=");
    out_long_or_na(mem.stack_peak);
    out("]\r\n");
}

static void cmd_help(void) {
    out(FW_VERSION "\r\n"
        "name          : m-name-dut-[tinyseek]\r\n"
        "profile       : firmware and model version\r\n"
        "timestamp     : m-lap-us-N\r\n"
        "db load N     : expect N input bytes\r\n"
        "db HEX        : append hex bytes\r\n"
        "db print [N [OFFSET]] : show loaded bytes\r\n"
        "infer [N [W]] : N timed runs after W warm-ups (default 1 10)\r\n"
        "results       : logits of the last inference\r\n"
        "stream        : feed the input without resetting the state\r\n"
        "reset         : zero the model state\r\n"
        "cls TEXT      : tokenize and classify TEXT (text models)\r\n"
        "info | mem    : model, board and timer | memory figures\r\n"
        "sync TOKEN    : m-sync-[TOKEN]\r\n"
        "quit          : stop the emulator\r\n");
}

static void cmd_sync(const char *pos, const char *end) {
    tok_t t = next_tok(&pos, end);
    if (t.n == 0 || t.n > 64) {
        out_error("sync needs a token of 1 to 64 characters");
        return;
    }
    if (!no_more(pos, end, "sync TOKEN")) return;
    out("m-sync-[");
    out_safe(t.p, t.n, 64);
    out("]\r\n");
}

/* ---- dispatch ------------------------------------------------------------------------- */

static void dispatch(const char *start, const char *end) {
    const char *pos = start;
    tok_t cmd = next_tok(&pos, end);

    if (cmd.n == 0) out_error("empty command");
    else if (tok_is(cmd, "name")) out("m-name-dut-[tinyseek]\r\n");
    else if (tok_is(cmd, "profile")) {
        out("m-profile-[" FW_VERSION "]\r\nm-model-[");
        out(M->name);
        out("-");
        out(M->hash);
        out("]\r\n");
    } else if (tok_is(cmd, "help")) cmd_help();
    else if (tok_is(cmd, "timestamp")) out_lap_us();
    else if (tok_is(cmd, "db")) cmd_db(pos, end);
    else if (tok_is(cmd, "infer")) cmd_infer(pos, end);
    else if (tok_is(cmd, "results")) {
        if (have_results) out_results();
        else out_error("results: no inference yet");
    } else if (tok_is(cmd, "stream")) cmd_stream(pos, end);
    else if (tok_is(cmd, "reset")) {
        M->reset();
        out("m-reset-done\r\n");
    } else if (tok_is(cmd, "cls")) cmd_cls(pos, end);
    else if (tok_is(cmd, "info")) cmd_info();
    else if (tok_is(cmd, "mem")) cmd_mem();
    else if (tok_is(cmd, "sync")) cmd_sync(pos, end);
    else if (tok_is(cmd, "quit")) {
        out("m-quit\r\n");
        if (!dut_port_exit(0)) out_error("quit: this board cannot exit; reset it instead");
    } else {
        out("e-[Unknown command: ");
        out_safe(cmd.p, cmd.n, 32);
        out("]\r\n");
    }
    out("m-ready\r\n");
}

void dut_init(const dut_model_t *model) {
    M = model;
    line_len = 0;
    line_overflow = 0;
    load_size = load_pos = 0;
    have_results = 0;
    M->reset();
    out("m-timestamp-mode-performance\r\nm-init-done\r\nm-ready\r\n");
}

void dut_feed(uint8_t c) {
    if (c == '%') {
        if (line_overflow) {
            out("e-[command too long: more than " );
            out_u64(DUT_LINE_MAX);
            out(" bytes before '%']\r\nm-ready\r\n");
        } else {
            dispatch(line, line + line_len);
        }
        line_len = 0;
        line_overflow = 0;
    } else if (line_len < sizeof line) {
        line[line_len++] = (char)c;
    } else {
        line_overflow = 1;
    }
}
