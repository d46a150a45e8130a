/* The device-under-test command interpreter (see dut.h and docs/firmware.md).
 *
 * Replies follow the MLPerf Tiny reference firmware (mlcommons/tiny benchmark/api): every
 * command ends with '%', every reply line is `m-...` or `e-[...]`, and `m-ready` follows every
 * command. Lines are handled as (pointer, length) pairs, never as C strings, so NUL and other
 * garbage bytes are just unknown characters.
 *
 * Written for size (the build compiles it with -Os): one small formatter instead of printf,
 * 32-bit divisions only (64-bit ones would link libgcc's division routines), and no floating
 * point (a soft-float FPU-less core would link the float emulation). Every byte it sends is
 * printable ASCII, CR or LF.
 */
#include "dut.h"

#include <stdarg.h>

#include "dut_port.h"
#include "ts_listen.h"

/* The listener's code only where the build has a wake-word model (select_model.py passes its
 * header), or in host builds, which compile every path; other firmware answers `listen` with
 * an error and links none of ts_listen.c. */
#if defined(TINYSEEK_WAKE_HEADER) || !defined(DUT_MODEL_KIND_TEXT)
#define DUT_LISTEN 1
#else
#define DUT_LISTEN 0
#endif
#include "ota.h" /* dut_outf and dut_err's prototypes; the rest only in update-enabled builds */

#define FW_VERSION "tinyseek DUT firmware 1.0"

/* Timestamps: performance mode prints m-lap-us-N (the board's timer in microseconds; under QEMU
 * instructions / 1000, and info% says which); energy mode pulses the board's timestamp pin for
 * the energy monitor and prints nothing (the MLPerf Tiny reference's EE_CFG_ENERGY_MODE). */
#ifndef TINYSEEK_ENERGY_MODE
#define TINYSEEK_ENERGY_MODE 0
#endif
#if TINYSEEK_ENERGY_MODE
#define TIMESTAMP_MODE "energy"
#else
#define TIMESTAMP_MODE "performance"
#endif

/* Usages: each error reply of a command repeats its own; `help` lists them all. */
#define USAGE_DB_LOAD "db load N"
#define USAGE_DB_HEX "db HEX (one string of hex digits)"
#define USAGE_DB_PRINT "db print [N [OFFSET]]"
#define USAGE_INFER "infer [N [W]]"
#define USAGE_SYNC "sync TOKEN"
#define USAGE_LISTEN "listen [reset | config | set THRESHOLD WINDOW STRIDE REST CAPTURE CONFIRM]"
#define NO_LISTENER                                                                                  \
    "listen: this firmware has no wake-word model; build it beside an audio model with "           \
    "TINYSEEK_WAKE_MODEL=<name> or TINYSEEK_WAKE_MODEL_DIR=<folder>"

static const dut_model_t *M;
static const tinyseek_model_api *A; /* M->api */

/* The firmware build passes the model's kind (firmware/platform/select_model.py), so a text
 * model's firmware carries no sequence-input code and the other way round; without it (host
 * tests) both are compiled and the table's kind_text chooses. */
#ifdef DUT_MODEL_KIND_TEXT
#define KIND_TEXT DUT_MODEL_KIND_TEXT
#else
#define KIND_TEXT (A->kind_text)
#endif
/* An audio model: the loaded input is int16 samples, fed through the library's front end. */
#define KIND_AUDIO (M->feed_audio != NULL)

static char line[DUT_LINE_MAX];
static size_t line_len;
static int line_overflow;

static size_t load_size;  /* bytes announced by `db load`; 0: nothing loaded */
static size_t load_pos;   /* bytes received so far */
static int have_results;  /* logits_out holds the result of an inference */

/* ---- output --------------------------------------------------------------------------- */

static size_t str_len(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static void out(const char *s) { dut_port_write(s, str_len(s)); }

/* Divides *v by d (1 <= d < 65536) in 16-bit pieces with 32-bit divisions; returns the
 * remainder. */
static uint32_t divmod(uint64_t *v, uint32_t d) {
    uint32_t hi = (uint32_t)(*v >> 32), lo = (uint32_t)*v, x, q1;
    x = hi % d << 16 | lo >> 16;
    hi /= d;
    q1 = x / d;
    x = x % d << 16 | (lo & 0xFFFFu);
    *v = (uint64_t)hi << 32 | q1 << 16 | x / d;
    return x % d;
}

/* v in decimal; with `point` digits after a decimal point when point > 0 (v = 5, point = 3:
 * "0.005"). */
static void out_dec(uint64_t v, size_t point) {
    char buf[24];
    size_t i = sizeof buf;
    do {
        if (point && sizeof buf - i == point) buf[--i] = '.';
        buf[--i] = (char)('0' + divmod(&v, 10u));
    } while (v != 0u || sizeof buf - i <= point);
    dut_port_write(buf + i, sizeof buf - i);
}

static void out_long(long v) {
    if (v < 0) out("-");
    out_dec(v < 0 ? 0u - (unsigned long)v : (unsigned long)v, 0);
}

/* Bytes that may be echoed inside `[...]`: printable ASCII except ']' and '%'; everything else
 * (control bytes, bytes of UTF-8 sequences) becomes '?', so every byte sent is printable. */
static void out_safe(const char *s, size_t n, size_t max) {
    size_t i;
    for (i = 0; i < n && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        char r = (c >= 0x20 && c < 0x7f && c != ']' && c != '%') ? (char)c : '?';
        dut_port_write(&r, 1);
    }
    if (n > max) out("...");
}

/* A printf for the replies: %s string, %u unsigned long, %U uint64_t, %d long, %m long or
 * "na" when negative, %q (const char *, size_t n, size_t max) through out_safe, %% a '%'. */
static void voutf(const char *f, va_list ap) {
    for (;;) {
        const char *s = f;
        long v;
        while (*f && *f != '%') f++;
        dut_port_write(s, (size_t)(f - s));
        if (!*f) break;
        switch (*++f) {
        case 's':
            out(va_arg(ap, const char *));
            break;
        case 'u':
            out_dec(va_arg(ap, unsigned long), 0);
            break;
        case 'U':
            out_dec(va_arg(ap, uint64_t), 0);
            break;
        case 'd':
            out_long(va_arg(ap, long));
            break;
        case 'm':
            v = va_arg(ap, long);
            if (v < 0) out("na");
            else out_long(v);
            break;
        case 'q':
            s = va_arg(ap, const char *);
            {
                size_t n = va_arg(ap, size_t);
                out_safe(s, n, va_arg(ap, size_t));
            }
            break;
        default:
            dut_port_write(f, 1);
        }
        f++;
    }
}

/* A formatted reply; also what ota.c replies with (ota.h). */
void dut_outf(const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    voutf(f, ap);
    va_end(ap);
}

/* An error reply: e-[ the formatted message ]. */
void dut_err(const char *f, ...) {
    va_list ap;
    out("e-[");
    va_start(ap, f);
    voutf(f, ap);
    va_end(ap);
    out("]\r\n");
}




/* 2^(-j/32) in Q0.15, j = 0..32. */
static const uint16_t exp2_q15[33] = {
    32768, 32066, 31379, 30706, 30048, 29405, 28774, 28158, 27554, 26964, 26386, 25821, 25268, 24726, 24196, 23678,
    23170, 22674, 22188, 21713, 21247, 20792, 20347, 19911, 19484, 19066, 18658, 18258, 17867, 17484, 17109, 16743,
    16384};

/* exp(s_out * (logit - top)) in Q0.15: 2^-y with y the difference in Q16 (below 2^32), the
 * fraction from the table (interpolated), the integer part a shift. docs/numerics.md, "Class
 * probabilities"; tinyseek.quant.reference.softmax_fixed is the oracle. */
static uint32_t class_exp(int16_t logit, int16_t top) {
    uint32_t y = (uint32_t)(((uint64_t)(uint32_t)(top - logit) * A->softmax_mult + 0x8000u) >> 16);
    uint32_t j = y >> 11 & 31u, lo = exp2_q15[j];
    uint32_t v = lo - (((lo - exp2_q15[j + 1]) * (y & 0x7FFu) + 1024u) >> 11);
    return y >> 16 < 16u ? v >> (y >> 16) : 0u;
}

/* m-results: class probabilities with five decimals (the MLPerf Tiny runner scores this line);
 * then m-logits: the exact int16 logits (tinyseek checks these against the oracle). */
static void out_results(void) {
    const int16_t *z = M->logits_out;
    int16_t top = z[0];
    uint32_t sum = 0;
    int k, exact;
    for (k = 1; k < A->num_classes; k++) top = z[k] > top ? z[k] : top;
    for (k = 0; k < A->num_classes; k++) sum += class_exp(z[k], top);
    for (exact = 0; exact < 2; exact++) {
        out(exact ? "m-logits-[" : "m-results-[");
        for (k = 0; k < A->num_classes; k++) {
            if (k) out(",");
            if (exact) out_long(z[k]);
            else out_dec((class_exp(z[k], top) * 100000u + sum / 2u) / sum, 5); /* below 2^32 */
        }
        out("]\r\n");
    }
}

static void out_time(uint64_t total, unsigned long runs, uint64_t lo, uint64_t hi) {
    dut_outf("m-time-[total=%U,runs=%u,min=%U,max=%U,unit=%s]\r\n", total, runs, lo, hi,
             dut_port_target()->timer_unit);
}

/* th_timestamp() of the reference firmware: the two of `infer` bracket the measured runs. */
static void timestamp(void) {
#if TINYSEEK_ENERGY_MODE
    dut_port_timestamp_pulse();
#else
    unsigned long per_us = dut_port_target()->timer_per_us;
    uint64_t t = dut_port_ticks_to_units(dut_port_ticks());
    divmod(&t, per_us ? (uint32_t)per_us : 1u);
    dut_outf("m-lap-us-%U\r\n", t);
#endif
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

/* The next token as a number in [0, max], left unchanged when there is no token; 0 when the
 * token is not such a number. */
static int parse_opt(const char **pos, const char *end, unsigned long max, unsigned long *value) {
    tok_t t = next_tok(pos, end);
    return t.n == 0 || parse_ulong(t, max, value);
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

#if TINYSEEK_OTA
size_t dut_token(const char **pos, const char *end, const char **tok) {
    tok_t t = next_tok(pos, end);
    *tok = t.p;
    return t.n;
}

int dut_number(const char *p, size_t n, unsigned long max, unsigned long *value) {
    tok_t t;
    t.p = p;
    t.n = n;
    return parse_ulong(t, max, value);
}

int dut_hex_digit(char c) { return hex_value(c); }
#endif

static int no_more(const char *pos, const char *end, const char *usage) {
    const char *p = pos;
    if (next_tok(&p, end).n == 0) return 1;
    dut_err("too many arguments; usage: %s", usage);
    return 0;
}

/* ---- the input buffer ----------------------------------------------------------------- */

/* Forget the loaded input and the last results. Every `db load` starts with it and every failed
 * chunk ends with it: a runner that ignores e- lines then gets an error from `infer`, never the
 * previous sample's results again. */
static void drop_input(void) {
    load_size = load_pos = 0;
    have_results = 0;
}

static const char DROPPED[] = "; input dropped";

static void cmd_db_load(const char *pos, const char *end) {
    unsigned long n;
    tok_t t = next_tok(&pos, end);
    drop_input();
    if (t.n == 0) {
        dut_err("db load needs a byte count; usage: %s", USAGE_DB_LOAD);
    } else if (!parse_ulong(t, 0xFFFFFFFFUL, &n)) {
        dut_err("db load: '%q' is not a byte count", t.p, t.n, (size_t)16);
    } else if (no_more(pos, end, USAGE_DB_LOAD)) {
        if (n == 0) {
            dut_err("db load: the size must be > 0 bytes");
        } else if (n > M->input_capacity) {
            dut_err("db load: %u bytes exceed the input buffer of %u bytes", n,
                     (unsigned long)M->input_capacity);
        } else {
            load_size = n;
            load_pos = 0;
            dut_outf("m-[Expecting %u bytes]\r\n", n);
        }
    }
}

/* Append hex bytes. A bad chunk drops the whole input: the next `infer` fails instead of
 * running on an input with a hole in it. */
static void cmd_db_hex(tok_t t, const char *pos, const char *end) {
    size_t i, bytes = t.n / 2u;
    if (load_size == 0) {
        dut_err("db: no buffer; send db load N first");
        return;
    }
    for (i = 0; i < t.n && hex_value(t.p[i]) >= 0; i++) {
    }
    if (!no_more(pos, end, USAGE_DB_HEX)) {
    } else if (t.n % 2u != 0u) {
        dut_err("db: odd number of hex digits (%u)%s", (unsigned long)t.n, DROPPED);
    } else if (i < t.n) {
        dut_err("db: invalid hex digit '%q' at position %u%s", t.p + i, (size_t)1, (size_t)1, (unsigned long)i,
                DROPPED);
    } else if (bytes > load_size - load_pos) {
        dut_err("db: %u bytes but only %u of the %u announced remain%s", (unsigned long)bytes,
                (unsigned long)(load_size - load_pos), (unsigned long)load_size, DROPPED);
    } else {
        for (i = 0; i < t.n; i++) { /* two digits a byte: the second shifts the first up */
            uint8_t *b = &M->input[load_pos + i / 2u];
            *b = (uint8_t)(*b << 4 | hex_value(t.p[i]));
        }
        load_pos += bytes;
        if (load_pos == load_size) out("m-load-done\r\n");
        return;
    }
    drop_input();
}

static void cmd_db_print(const char *pos, const char *end) {
    static const char digits[] = "0123456789abcdef";
    unsigned long count = load_pos, offset = 0;
    size_t i;
    if (!parse_opt(&pos, end, 0xFFFFFFFFUL, &count) || !parse_opt(&pos, end, 0xFFFFFFFFUL, &offset)) {
        dut_err("db print: N and OFFSET are byte counts; usage: %s", USAGE_DB_PRINT);
        return;
    }
    if (!no_more(pos, end, USAGE_DB_PRINT)) return;
    if (offset > load_pos) offset = load_pos;
    if (count > load_pos - offset) count = load_pos - offset;
    for (i = 0; i < count; i++) {
        uint8_t b = M->input[offset + i];
        char hex[2];
        hex[0] = digits[b >> 4];
        hex[1] = digits[b & 15u];
        if (i % 8u == 0u) out("m-buffer-");
        dut_port_write(hex, 2);
        out((i % 8u == 7u || i + 1u == count) ? "\r\n" : "-");
    }
}

/* Checks that the loaded bytes form a complete, valid model input; returns the number of
 * steps (token ids or feature vectors) or of samples (audio), or -1 after printing the error. */
static long input_steps(const char *what) {
    size_t i, n;
    unsigned long size = (unsigned long)load_size;
    if (load_size == 0) {
        dut_err("%s: no input loaded; send db load N and db HEX first", what);
        return -1;
    }
    if (load_pos != load_size) {
        dut_err("%s: input incomplete: %u of %u bytes loaded", what, (unsigned long)load_pos, size);
        return -1;
    }
    if (!KIND_TEXT && !KIND_AUDIO) {
        if (load_size % (size_t)A->num_features != 0u) {
            dut_err("%s: %u bytes are not a whole number of int8 steps of %u features", what, size,
                     (unsigned long)A->num_features);
            return -1;
        }
        return (long)(load_size / (size_t)A->num_features);
    }
    if (load_size % 2u != 0u) {
        dut_err(KIND_AUDIO ? "%s: samples are int16 little-endian, 2 bytes each; %u bytes is odd"
                           : "%s: token ids are uint16 little-endian, 2 bytes each; %u bytes is odd", what, size);
        return -1;
    }
    n = load_size / 2u;
    for (i = 0; i < n && !KIND_AUDIO; i++) {
        uint16_t id = (uint16_t)(M->input[2 * i] | (uint16_t)M->input[2 * i + 1] << 8);
        if (id >= (unsigned)A->vocab_size) {
            dut_err("%s: token id %u at position %u is not below the vocabulary size %u", what,
                     (unsigned long)id, (unsigned long)i, (unsigned long)A->vocab_size);
            return -1;
        }
    }
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    /* input_ids is the same memory viewed as uint16: on a little-endian core the bytes
     * already are the ids (or samples); elsewhere decoding in place reads byte pair i before
     * id i overwrites it. */
    for (i = 0; i < n; i++) {
        M->input_ids[i] = (uint16_t)(M->input[2 * i] | (uint16_t)M->input[2 * i + 1] << 8);
    }
#endif
    return (long)n;
}

/* ---- inference ------------------------------------------------------------------------ */

/* Audio: the library's front end on `n` loaded samples, then the logits. */
static int feed_samples(long n) {
    int rc = M->feed_audio(M->state, (const int16_t *)(const void *)M->input_ids, (int)n);
    if (rc >= 0) A->logits(M->state, M->logits_out);
    return rc;
}

static int run_once(long steps) {
    if (KIND_AUDIO) {
        A->reset(M->state);
        return feed_samples(steps);
    }
    if (KIND_TEXT) return A->infer_tokens(M->state, M->input_ids, (int)steps, M->logits_out);
    return A->infer(M->state, (const int8_t *)M->input, (int)steps, M->logits_out);
}

static int model_failed(const char *what, int rc) {
    if (rc >= 0) return 0;
    have_results = 0;
    dut_err("%s: the model returned error %d", what, (long)rc);
    return 1;
}

/* The logits of a finished run and the time it took: m-results, m-logits, m-time. */
static void out_run(uint64_t dt) {
    have_results = 1;
    out_results();
    out_time(dt, 1, dt, dt);
}

static void cmd_infer(const char *pos, const char *end) {
    unsigned long runs = 1, warmups = 10, r;  /* the reference firmware's defaults */
    uint64_t total = 0, lo = UINT64_MAX, hi = 0;
    long steps;
    if (!parse_opt(&pos, end, DUT_MAX_RUNS, &runs) || runs == 0) {
        dut_err("infer: N must be a number from 1 to %u; usage: %s", DUT_MAX_RUNS, USAGE_INFER);
        return;
    }
    if (!parse_opt(&pos, end, DUT_MAX_RUNS, &warmups)) {
        dut_err("infer: W must be a number from 0 to %u; usage: %s", DUT_MAX_RUNS, USAGE_INFER);
        return;
    }
    if (!no_more(pos, end, USAGE_INFER)) return;
    steps = input_steps("infer");
    if (steps < 0) return;

    dut_outf("m-warmup-start-%u\r\n", warmups);
    for (r = 0; r < warmups; r++) {
        if (model_failed("infer", run_once(steps))) return;
    }
    dut_outf("m-warmup-done\r\nm-infer-start-%u\r\n", runs);
    timestamp();
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
    timestamp();
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
    if (KIND_AUDIO) {
        rc = feed_samples(steps);
    } else {
        for (i = 0; i < steps && rc >= 0; i++) {
            rc = KIND_TEXT ? A->step_token(M->state, M->input_ids[i])
                              : A->step(M->state, (const int8_t *)M->input + i * A->num_features);
        }
        if (rc >= 0) A->logits(M->state, M->logits_out);
    }
    dt = dut_port_ticks_to_units(dut_port_ticks() - t0);
    if (model_failed("stream", rc)) return;
    out_run(dt);
}

static void cmd_cls(const char *text, const char *end) {
    uint64_t t0, dt;
    int rc;
    const char *label;
    while (text < end && is_space(*text)) text++;
    if (!KIND_TEXT) {
        dut_err(KIND_AUDIO ? "cls: this is an audio model; load int16 samples with db and run infer or stream"
                           : "cls: this is a sequence model; load int8 features with db and run infer");
        return;
    }
    dut_port_timer_sync();
    t0 = dut_port_ticks();
    rc = A->classify_text(M->state, (const uint8_t *)text, (size_t)(end - text), M->logits_out);
    dt = dut_port_ticks_to_units(dut_port_ticks() - t0);
    if (model_failed("cls", rc)) return;
    label = A->labels[rc]; /* rc: the class, the first of the largest logits */
    dut_outf("m-class-[%u]\r\nm-label-[%q]\r\n", (unsigned long)rc, label, str_len(label), (size_t)64);
    out_run(dt);
}

/* ---- information ---------------------------------------------------------------------- */

static void cmd_info(void) {
    const dut_target_t *tg = dut_port_target();
    dut_outf("m-info-[model=%s,hash=%s,kind=%s,classes=%u,input=%u,layers=%u,hidden=%u,vocab=%u,max_len=%u,"
             "features=%u,kernel=%s,board=%s,cpu=%s,clock_hz=%u,timer=%s,unit=%s,lap_us=%s/%u,"
             "timestamps=" TIMESTAMP_MODE ",buffer=%u,line=%u]\r\n",
             A->name, A->hash, KIND_TEXT ? "text" : KIND_AUDIO ? "audio" : "sequence", (unsigned long)A->num_classes,
             (unsigned long)A->input_size, (unsigned long)A->num_layers, (unsigned long)A->hidden_size,
             (unsigned long)A->vocab_size, (unsigned long)A->max_len, (unsigned long)A->num_features, A->kernel,
             tg->board, tg->cpu, tg->clock_hz, tg->timer, tg->timer_unit, tg->timer_unit, tg->timer_per_us,
             (unsigned long)M->input_capacity,
             (unsigned long)DUT_LINE_MAX);
}

static void cmd_mem(void) {
    dut_mem_t mem;
    mem.flash_used = mem.ram_static = mem.stack_size = mem.stack_peak = -1;
    dut_port_mem(&mem);
    dut_outf("m-mem-[model_flash=%u,model_ram=%u,input_buffer=%u,flash_used=%m,ram_static=%m,stack_size=%m,"
             "stack_peak=%m]\r\n",
             (unsigned long)A->weight_bytes, (unsigned long)(A->state_bytes + A->scratch_bytes),
             (unsigned long)M->input_capacity, mem.flash_used, mem.ram_static,
             mem.stack_size, mem.stack_peak);
}

static void cmd_sync(const char *pos, const char *end) {
    tok_t t = next_tok(&pos, end);
    if (t.n == 0 || t.n > 64) {
        dut_err("sync needs a token of 1 to 64 characters; usage: %s", USAGE_SYNC);
        return;
    }
    if (!no_more(pos, end, USAGE_SYNC)) return;
    dut_outf("m-sync-[%q]\r\n", t.p, t.n, (size_t)64);
}

/* ---- dispatch ------------------------------------------------------------------------- */

/* Command words, NUL-separated, in the order of the enum; `load` and `print` are the words of
 * `db` subcommands, no commands of their own. */
static const char words[] =
    "name\0profile\0help\0timestamp\0db\0infer\0results\0stream\0reset\0cls\0info\0mem\0sync\0listen\0quit\0"
#if TINYSEEK_OTA
    "ota\0"
#endif
    "load\0print\0set\0config\0";
enum {
    W_NAME, W_PROFILE, W_HELP, W_TIMESTAMP, W_DB, W_INFER, W_RESULTS, W_STREAM, W_RESET, W_CLS, W_INFO,
    W_MEM, W_SYNC, W_LISTEN, W_QUIT,
#if TINYSEEK_OTA
    W_OTA,
#endif
    W_LOAD, W_PRINT, W_SET, W_CONFIG
};

/* `help`: the command words, then the usage of those that take arguments. */
static void cmd_help(void) {
    static const char *const usages[] = {USAGE_DB_LOAD, USAGE_DB_HEX, USAGE_DB_PRINT, USAGE_INFER,
                                         "cls TEXT", USAGE_SYNC, USAGE_LISTEN};
    const char *w = words;
    size_t k;
    out("commands:");
    for (k = 0; k < W_LOAD; k++) {
        dut_outf(" %s", w);
        w += str_len(w) + 1;
    }
    out("\r\n");
    for (k = 0; k < sizeof usages / sizeof usages[0]; k++) dut_outf("  %s\r\n", usages[k]);
}

/* The index of t in `words`, or -1. */
static int word_index(tok_t t) {
    const char *w = words;
    int k;
    for (k = 0; *w; k++) {
        size_t n = str_len(w), i;
        for (i = 0; i < n && i < t.n && w[i] == t.p[i]; i++) {
        }
        if (i == n && n == t.n) return k;
        w += n + 1;
    }
    return -1;
}

/* ---- wake word and commands (ts_listen.h) ---------------------------------------------- */

#if DUT_LISTEN
/* Events of one `listen`, printed after the timed run so the serial output is not timed; the
 * logits of the last command are in logits_out (and `results`). */
#define LISTEN_QUEUE 8
static ts_listen_event listen_queue[LISTEN_QUEUE];
static unsigned long listen_count;
static const char *listen_error; /* the listener's defaults did not fit the models */

static void listen_event(void *ctx, const ts_listen_event *e) {
    int k;
    (void)ctx;
    if (e->kind == TS_LISTEN_COMMAND) {
        for (k = 0; k < A->num_classes; k++) M->logits_out[k] = e->logits[k];
        have_results = 1;
    }
    if (listen_count < LISTEN_QUEUE) listen_queue[listen_count] = *e;
    listen_count++;
}

static void out_listen_config(void) {
    const ts_listener *l = M->listener;
    dut_outf("m-listen-config-[wake=%s,threshold=%d,window=%u,stride=%u,rest=%u,capture=%u,confirm=%u,ring=%u,"
             "hop=%u]\r\n", l->wake->name, (long)l->cfg.threshold, (unsigned long)l->cfg.window,
             (unsigned long)l->cfg.stride, (unsigned long)l->cfg.rest, (unsigned long)l->cfg.capture,
             (unsigned long)l->cfg.confirm, (unsigned long)l->ring_frames, (unsigned long)l->hop);
}

/* `listen set`: a signed threshold, four frame counts and a count of checks. */
static void cmd_listen_set(const char *pos, const char *end) {
    ts_listen_config c;
    unsigned long v[6];
    const char *e;
    tok_t t = next_tok(&pos, end);
    int negative = t.n > 1 && t.p[0] == '-', i;
    if (negative) {
        t.p++;
        t.n--;
    }
    for (i = 0; i < 6; i++) {
        if (i > 0) t = next_tok(&pos, end);
        if (!parse_ulong(t, i == 0 ? 0x7FFFFFFFul + (unsigned long)negative : i == 5 ? 255ul : 65535ul, &v[i]) ||
            (i == 5 && v[i] < 1)) {
            dut_err("listen set: %s must be %s; usage: %s",
                    i == 0 ? "THRESHOLD" : i == 5 ? "CONFIRM" : "WINDOW, STRIDE, REST and CAPTURE",
                    i == 0 ? "a whole number that fits in int32" : i == 5 ? "a count of checks from 1 to 255"
                                                                  : "frame counts from 0 to 65535", USAGE_LISTEN);
            return;
        }
    }
    if (!no_more(pos, end, USAGE_LISTEN)) return;
    c.threshold = negative ? (int32_t)(0u - (uint32_t)v[0]) : (int32_t)v[0];
    c.window = (uint16_t)v[1];
    c.stride = (uint16_t)v[2];
    c.rest = (uint16_t)v[3];
    c.capture = (uint16_t)v[4];
    c.confirm = (uint8_t)v[5];
    e = ts_listen_configure(M->listener, &c);
    if (e != NULL) {
        dut_err("listen set: %s; the settings are unchanged", e);
        return;
    }
    listen_error = NULL;
    out_listen_config();
}

static void cmd_listen(const char *pos, const char *end) {
    uint64_t t0, dt;
    unsigned long k;
    long n;
    tok_t sub = next_tok(&pos, end);
    if (M->listener == NULL) {
        dut_err(NO_LISTENER);
        return;
    }
    if (sub.n != 0) {
        int w = word_index(sub);
        if (w == W_SET) {
            cmd_listen_set(pos, end);
        } else if (!no_more(pos, end, USAGE_LISTEN)) {
        } else if (w == W_RESET) {
            ts_listen_reset(M->listener);
            out("m-listen-reset-done\r\n");
        } else if (w == W_CONFIG) {
            out_listen_config();
        } else {
            dut_err("listen: unknown subcommand %q; usage: %s", sub.p, sub.n, (size_t)16, USAGE_LISTEN);
        }
        return;
    }
    if (listen_error != NULL) {
        dut_err("listen: %s; fix it with listen set", listen_error);
        return;
    }
    n = input_steps("listen");
    if (n < 0) return;
    listen_count = 0;
    have_results = 0; /* set again by a command */
    dut_port_timer_sync();
    t0 = dut_port_ticks();
    (void)ts_listen_feed(M->listener, (const int16_t *)(const void *)M->input_ids, (int)n);
    dt = dut_port_ticks_to_units(dut_port_ticks() - t0);
    for (k = 0; k < listen_count && k < LISTEN_QUEUE; k++) {
        const ts_listen_event *e = &listen_queue[k];
        if (e->kind == TS_LISTEN_WAKE) {
            dut_outf("m-wake-[frame=%u,margin=%d]\r\n", (unsigned long)e->frame, (long)e->margin);
        } else {
            dut_outf("m-command-[frame=%u,class=%u,label=%s]\r\n", (unsigned long)e->frame, (unsigned long)e->cls,
                     A->labels[e->cls]);
        }
    }
    dut_outf("m-listen-[frames=%u,events=%u,dropped=%u]\r\n", (unsigned long)M->listener->frames, listen_count,
             listen_count > LISTEN_QUEUE ? listen_count - LISTEN_QUEUE : 0ul);
    if (have_results) out_results(); /* the last command's m-results and m-logits */
    out_time(dt, 1, dt, dt);
}
#else
static void cmd_listen(const char *pos, const char *end) {
    (void)pos;
    (void)end;
    dut_err(NO_LISTENER);
}
#endif

static void dispatch(const char *start, const char *end) {
    const char *pos = start;
    tok_t cmd = next_tok(&pos, end), sub;

    if (cmd.n == 0) {
        dut_err("empty command");
    } else {
        switch (word_index(cmd)) {
        case W_NAME:
            out("m-name-dut-[tinyseek]\r\n");
            break;
        case W_PROFILE:
            dut_outf("m-profile-[" FW_VERSION "]\r\nm-model-[%s-%s]\r\n", A->name, A->hash);
            break;
        case W_HELP:
            cmd_help();
            break;
        case W_TIMESTAMP:
            timestamp();
            break;
        case W_DB:
            sub = next_tok(&pos, end);
            if (sub.n == 0) dut_err("db needs a subcommand: db load N, db HEX or db print");
            else if (word_index(sub) == W_LOAD) cmd_db_load(pos, end);
            else if (word_index(sub) == W_PRINT) cmd_db_print(pos, end);
            else cmd_db_hex(sub, pos, end);
            break;
        case W_INFER:
            cmd_infer(pos, end);
            break;
        case W_RESULTS:
            if (have_results) out_results();
            else dut_err("results: no inference yet");
            break;
        case W_STREAM:
            cmd_stream(pos, end);
            break;
        case W_RESET:
            A->reset(M->state);
            out("m-reset-done\r\n");
            break;
        case W_CLS:
            cmd_cls(pos, end);
            break;
        case W_INFO:
            cmd_info();
            break;
        case W_MEM:
            cmd_mem();
            break;
        case W_SYNC:
            cmd_sync(pos, end);
            break;
        case W_LISTEN:
            cmd_listen(pos, end);
            break;
        case W_QUIT:
            out("m-quit\r\n");
            if (!dut_port_exit(0)) dut_err("quit: this board cannot exit; reset it instead");
            break;
#if TINYSEEK_OTA
        case W_OTA:
            ota_command(pos, end);
            break;
#endif
        default:
            dut_err("Unknown command: %q", cmd.p, cmd.n, (size_t)32);
        }
    }
    out("m-ready\r\n");
}

void dut_init(const dut_model_t *model) {
#if TINYSEEK_OTA
    ota_boot(); /* points the model's weights and table at the active slot */
#endif
    M = model;
    A = model->api;
    line_len = 0;
    line_overflow = 0;
    load_size = load_pos = 0;
    have_results = 0;
    A->reset(M->state);
#if DUT_LISTEN
    if (M->listener != NULL) {
        ts_listen_config defaults = M->listener->cfg;
        M->listener->on_event = listen_event;
        listen_error = ts_listen_init(M->listener, &defaults);
    }
#endif
    out("m-timestamp-mode-" TIMESTAMP_MODE "\r\nm-init-done\r\nm-ready\r\n");
}

void dut_feed(uint8_t c) {
    if (c == '%') {
        if (line_overflow) {
            dut_err("command too long: more than %u bytes before '%%'", (unsigned long)DUT_LINE_MAX);
            out("m-ready\r\n");
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
