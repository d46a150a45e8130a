/* Model updates over the air: slots, boot records, package decoding (see ota.h and
 * docs/updates.md; tinyseek.update.package is the host's reference of every step).
 *
 * The updatable region (dut_port_flash) is NOR flash as the firmware sees it: erase sets a
 * sector (4 KiB, TS_OTA_SECTOR) to 0xFF, programming can only clear bits. Where the region is
 * RAM backed by a file (every emulated board but the microbit), region_erase and
 * region_program write it with those rules; the microbit's port drives the nRF51's flash
 * controller instead (TS_OTA_FLASH_PORT). Each erased sector and each programmed word is one
 * flash operation: `ota cut N` tears operation N (half a sector erased, half a word programmed)
 * and cuts the power (dut_port_power_cut), which the power-cut tests use.
 *
 *   0                key record: 'TSKY', the 32-byte device key, CRC-32 (written at provisioning)
 *   1 sector         boot record copy 0: 'TSBR', sequence number, slot, CRC-32
 *   2 sectors        boot record copy 1
 *   TS_OTA_SLOT_BASE slot A (0x10000 unless the board sets it): a header sector ('TSSL', layout
 *                    id, model hash, version, length, probability multiplier, SHA-256 of the
 *                    image, CRC-32), then the image
 *   slot A + SLOT_SPAN: slot B
 *
 * An update streams: each received body byte is decoded at once and the new image is written
 * into the inactive slot, 32 bytes at a time, while the running model keeps answering from the
 * active one. The commit checks the tag and the image's SHA-256, writes the slot header, then
 * the newer boot record over the older copy. The newest valid record wins at boot, and its
 * slot must pass its checks (header CRC, layout, SHA-256 of the image) to run: a power cut at
 * any point leaves the old record (old model) or the new one (new model) in charge.
 */
#if TINYSEEK_OTA /* the harness library builds every file; only update-enabled builds want this one */
#include "ota.h"

#include "dut.h"
#include "dut_port.h"
#include "ts_sha256.h"
#include "ota_layout.h"

#ifndef TS_OTA_PARAMS
#error "an update-enabled build needs TS_OTA_PARAMS, TS_OTA_PARAMS_REAL, TS_OTA_API, TS_OTA_API_REAL (firmware/platform/ota_build.py)"
#endif

/* A board whose region is small flash (qemu_m0_ota: 1 KiB pages) sets both; the slots then
 * follow the two records at once. */
#ifndef TS_OTA_SECTOR
#define TS_OTA_SECTOR 4096u
#endif
#ifndef TS_OTA_SLOT_BASE
#define TS_OTA_SLOT_BASE 0x10000u
#endif
#define SECTOR ((uint32_t)TS_OTA_SECTOR)
#define KEY_OFF 0u
#define KEY_RECORD_BYTES 40u
#define REC_OFF(i) (SECTOR * (1u + (uint32_t)(i)))
#define SLOT_SPAN ((SECTOR + TS_OTA_IMAGE_BYTES + SECTOR - 1u) / SECTOR * SECTOR)
#define SLOT_OFF(s) ((uint32_t)TS_OTA_SLOT_BASE + ((uint32_t)(s) - 1u) * SLOT_SPAN) /* s = 1 (A), 2 (B) */
#define REGION_BYTES SLOT_OFF(3)
#define FACTORY 0
#define HEADER_BYTES 192u
#define SIGNED_BYTES 160u
#define STAGE 32u
#define MAGIC_KEY 0x594b5354u  /* "TSKY" */
#define MAGIC_REC 0x52425354u  /* "TSBR" */
#define MAGIC_SLOT 0x4c535354u /* "TSSL" */

/* The updatable region of a board whose *_ota environment places it at a fixed address
 * (TS_OTA_REGION_BASE): the emulated boards have no flash QEMU can write, so the slots live in
 * machine RAM that the harness backs with a file (-machine memory-backend=...), which survives a
 * reset like flash would (mps2-an386: PSRAM at 0x21000000; mps2-an500 and the first 16 MiB of
 * mps3-an547's DDR: 0x60000000; RISC-V virt: 0x80800000). Weak: a port with a real flash
 * controller, or the host build, defines its own. */
__attribute__((weak)) uint8_t *dut_port_flash(uint32_t *size) {
#ifdef TS_OTA_REGION_BASE
    *size = TS_OTA_REGION_BYTES;
    return (uint8_t *)TS_OTA_REGION_BASE;
#else
    *size = 0;
    return (uint8_t *)0;
#endif
}

/* Erase n bytes (whole sectors) at p to 0xFF; program the n <= 4 bytes of the word at p: its
 * cells become the old value AND the bytes. A port with a flash controller does both
 * (TS_OTA_FLASH_PORT, qemu_m0_ota: the nRF51's NVMC, whole words); elsewhere the region is RAM
 * (a file's on the emulated boards, a shared mapping on the host), written here with those rules. */
#if TS_OTA_FLASH_PORT
static uint32_t word_of(const uint8_t *b, uint32_t n) { /* bytes missing: 0xFF, they stay as they are */
    uint32_t v = 0xFFFFFFFFu, k;
    for (k = 0; k < n; k++) v &= ~((uint32_t)(uint8_t)~b[k] << (8u * k));
    return v;
}

#define region_erase dut_port_flash_erase
static void region_program(uint8_t *p, const uint8_t *b, uint32_t n) { dut_port_flash_program_word(p, word_of(b, n)); }
#else
static void region_erase(uint8_t *p, uint32_t n) {
    volatile uint8_t *q = p;
    uint32_t i;
    for (i = 0; i < n; i++) q[i] = 0xFFu;
}

static void region_program(uint8_t *p, const uint8_t *b, uint32_t n) {
    volatile uint8_t *q = p;
    uint32_t k;
    for (k = 0; k < n; k++) q[k] &= b[k];
}
#endif

/* The model's table of weight pointers, in RAM so it can point at a slot (the generated code's
 * references to <name>_params land here), and the built-in one with the factory model. */
extern const void *const TS_OTA_PARAMS_REAL[TS_OTA_FIELDS];
const void *TS_OTA_PARAMS[TS_OTA_FIELDS];
extern const tinyseek_model_api TS_OTA_API_REAL;
tinyseek_model_api TS_OTA_API;

typedef struct {
    uint32_t magic, seq, slot, crc;
} boot_record;

typedef struct {
    uint32_t magic;
    uint8_t layout_id[32];
    char model_hash[16];
    uint32_t version, image_bytes, softmax_mult;
    uint8_t image_sha[32];
    uint32_t crc;
} slot_header;

static const char *const SLOT_NAMES[3] = {"factory", "A", "B"};

static uint8_t *F;        /* the updatable region; NULL when the board has none big enough */
static uint32_t cut_left; /* operations until the power cut; 0: none armed */
static uint32_t flash_ops; /* since boot: where `ota cut` can strike */
/* Timer units (instructions under QEMU) spent in ota_boot, and in the update commands since the
 * last `ota begin`: what bench/updates.py reports, apart from the serial line's own time. */
static uint64_t boot_units, work_units;

static struct {
    int slot;
    uint32_t version, seq;
    int rec_copy;         /* the copy holding the newest record, -1 when none is valid */
    uint8_t sha[32];
    char hash[17];
} run;

/* The transfer in progress: the header, the tag and hash in the making, the decoder. */
static struct {
    int state;            /* 0 idle, 1 receiving */
    uint32_t size, offset;
    uint8_t header[HEADER_BYTES];
    ts_hmac_ctx mac;
    ts_sha256_ctx sha;
    int target;
    uint8_t kind, varint_shift, in_varint;
    uint32_t count, out_pos, stage_fill;
    uint8_t old[STAGE], stage[STAGE];
} s;

/* ---- little-endian fields of the package header ------------------------------------------- */

static uint32_t le32(const uint8_t *p) { return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint32_t le16(const uint8_t *p) { return p[0] | (uint32_t)p[1] << 8; }
#define H_FLAGS 8
#define H_LAYOUT 12
#define H_HASH 44
#define H_VERSION 60
#define H_IMAGE 64
#define H_BODY 68
#define H_MULT 72
#define H_BASE 76
#define H_RESULT 108
#define H_KERNEL 140
#define H_SHAPES 148
#define H_TAG 160

/* ---- flash ---------------------------------------------------------------------------------- */

/* One flash operation: counted; 1 when it is the one `ota cut` armed (the power fails in it). */
static int cut_now(void) {
    flash_ops++;
    return cut_left != 0u && --cut_left == 0u;
}

static void flash_erase(uint32_t off) {
    if (cut_now()) { /* torn: the sector's first half reads erased, the rest keeps its content */
#if TS_OTA_FLASH_PORT /* a controller erases whole pages: erase, then program the second half back */
        uint8_t keep[SECTOR / 2u];
        uint32_t i;
        for (i = 0; i < SECTOR / 2u; i++) keep[i] = F[off + SECTOR / 2u + i];
        region_erase(F + off, SECTOR);
        for (i = 0; i < SECTOR / 2u; i += 4u) region_program(F + off + SECTOR / 2u + i, keep + i, 4u);
#else
        region_erase(F + off, SECTOR / 2u);
#endif
        dut_port_power_cut();
    }
    region_erase(F + off, SECTOR);
}

static void flash_program(uint32_t off, const void *src, uint32_t n) {
    const uint8_t *b = (const uint8_t *)src;
    uint32_t i;
    for (i = 0; i < n; i += 4u) {
        uint32_t w = n - i < 4u ? n - i : 4u;
        if (cut_now()) { /* torn: half the word reaches the cells */
            region_program(F + off + i, b + i, w < 2u ? w : 2u);
            dut_port_power_cut();
        }
        region_program(F + off + i, b + i, w);
    }
}

/* ---- images --------------------------------------------------------------------------------- */

/* n bytes of the image in `slot` from offset i: a slot's are contiguous, the factory model's
 * are the built-in arrays at the layout's offsets (zeros between them). */
static void image_read(int slot, uint32_t i, uint8_t *dst, uint32_t n) {
    uint32_t k, j;
    if (slot < 0) { /* a full package's base: zeros */
        for (j = 0; j < n; j++) dst[j] = 0;
        return;
    }
    if (slot != FACTORY) {
        for (j = 0; j < n; j++) dst[j] = F[SLOT_OFF(slot) + SECTOR + i + j];
        return;
    }
    for (j = 0; j < n; j++) dst[j] = 0;
    for (k = 0; k < TS_OTA_FIELDS; k++) { /* the part of [i, i + n) inside field k */
        uint32_t lo = ts_ota_field_offset[k], hi = lo + ts_ota_field_bytes[k];
        const uint8_t *src = (const uint8_t *)TS_OTA_PARAMS_REAL[k];
        for (j = i > lo ? i : lo; j < hi && j < i + n; j++) dst[j - i] = src[j - lo];
    }
}

static void image_sha(int slot, uint8_t out[32]) {
    ts_sha256_ctx c;
    uint8_t buf[STAGE];
    uint32_t i;
    ts_sha256_init(&c);
    for (i = 0; i < TS_OTA_IMAGE_BYTES; i += STAGE) {
        uint32_t n = TS_OTA_IMAGE_BYTES - i < STAGE ? TS_OTA_IMAGE_BYTES - i : STAGE;
        image_read(slot, i, buf, n);
        ts_sha256_update(&c, buf, n);
    }
    ts_sha256_final(&c, out);
}

static const slot_header *header_of(int slot) { return (const slot_header *)(const void *)(F + SLOT_OFF(slot)); }

/* A slot runs only when its header is whole, for this firmware's layout, and the image's
 * SHA-256 matches it (a torn write anywhere fails one of these). */
static int slot_valid(int slot) {
    const slot_header *h = header_of(slot);
    uint8_t sha[32];
    if (h->magic != MAGIC_SLOT || ts_crc32(0, h, offsetof(slot_header, crc)) != h->crc) return 0;
    if (!ts_equal(h->layout_id, ts_ota_layout_id, 32) || h->image_bytes != TS_OTA_IMAGE_BYTES) return 0;
    image_sha(slot, sha);
    return ts_equal(sha, h->image_sha, 32);
}

/* Point the model at `slot`: the weight table, the hash and the probabilities' multiplier. */
static void activate(int slot) {
    uint32_t k;
    const char *hash = TS_OTA_API_REAL.hash;
    run.slot = slot;
    TS_OTA_API = TS_OTA_API_REAL;
    if (slot == FACTORY) {
        for (k = 0; k < TS_OTA_FIELDS; k++) TS_OTA_PARAMS[k] = TS_OTA_PARAMS_REAL[k];
        run.version = TS_OTA_FACTORY_VERSION;
        image_sha(FACTORY, run.sha);
    } else {
        const slot_header *h = header_of(slot);
        const uint8_t *base = F + SLOT_OFF(slot) + SECTOR;
        for (k = 0; k < TS_OTA_FIELDS; k++) {
            TS_OTA_PARAMS[k] = ts_ota_field_bytes[k] ? (const void *)(base + ts_ota_field_offset[k]) : (const void *)0;
        }
        run.version = h->version;
        TS_OTA_API.softmax_mult = h->softmax_mult;
        for (k = 0; k < 32u; k++) run.sha[k] = h->image_sha[k];
        hash = h->model_hash;
    }
    for (k = 0; k < 16u && hash[k]; k++) run.hash[k] = hash[k];
    run.hash[k] = 0;
    TS_OTA_API.hash = run.hash;
}

static int record_valid(int copy, boot_record *r) {
    const boot_record *p = (const boot_record *)(const void *)(F + REC_OFF(copy));
    *r = *p;
    return r->magic == MAGIC_REC && r->crc == ts_crc32(0, r, offsetof(boot_record, crc)) && r->slot <= 2u;
}

static int key_record_valid(const uint8_t *k) { return le32(k) == MAGIC_KEY && le32(k + 36) == ts_crc32(0, k, 36); }

static const uint8_t *device_key(void) { return key_record_valid(F + KEY_OFF) ? F + KEY_OFF + 4 : 0; }

#ifdef TS_OTA_KEY_PAGE
/* A region in the chip's own flash starts unprovisioned (QEMU's nRF51 flash reads 0 outside the
 * program image). The factory's key record waits at TS_OTA_KEY_PAGE, outside the region (QEMU's
 * loader puts it there); the first boot erases the region and copies the record in, the record
 * last, so a cut before it is whole provisions again at the next boot. Not flash operations of
 * `ota cut`: nothing can be armed before the boot. */
static void provision(void) {
    const uint8_t *rec = (const uint8_t *)TS_OTA_KEY_PAGE;
    uint32_t off;
    if (device_key() || !key_record_valid(rec)) return;
    for (off = 0; off < REGION_BYTES; off += SECTOR) region_erase(F + off, SECTOR);
    for (off = 0; off < KEY_RECORD_BYTES; off += 4u) region_program(F + KEY_OFF + off, rec + off, 4u);
}
#endif

static void hex_of(const uint8_t *d, uint32_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    uint32_t i;
    for (i = 0; i < n; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15u];
    }
    out[2 * n] = 0;
}

static void out_state(const char *what) {
    char sha[65];
    hex_of(run.sha, 32, sha);
    dut_outf("m-ota-%s-[slot=%s,version=%u,hash=%s,image=%s]\r\n", what, SLOT_NAMES[run.slot],
             (unsigned long)run.version, run.hash, sha);
}

static void boot(void);

void ota_boot(void) {
    uint64_t t0;
    dut_port_timer_sync(); /* a timer just started may not have counted its first period yet */
    t0 = dut_port_ticks();
    boot();
    boot_units = dut_port_ticks_to_units(dut_port_ticks() - t0);
    out_state("boot");
}

static void boot(void) {
    uint32_t size = 0;
    boot_record r[2];
    int ok[2], c, order[2];
    F = dut_port_flash(&size);
    if (size < REGION_BYTES) F = 0;
    s.state = 0;
    run.rec_copy = -1;
    run.seq = 0;
    if (F == 0) {
        activate(FACTORY);
        return;
    }
#ifdef TS_OTA_KEY_PAGE
    provision();
#endif
    ok[0] = record_valid(0, &r[0]);
    ok[1] = record_valid(1, &r[1]);
    order[0] = ok[1] && (!ok[0] || r[1].seq > r[0].seq) ? 1 : 0; /* newest first */
    order[1] = 1 - order[0];
    if (ok[order[0]]) run.seq = r[order[0]].seq; /* the next record numbers above every valid one */
    for (c = 0; c < 2; c++) {
        int k = order[c];
        if (!ok[k]) continue;
        if (r[k].slot == FACTORY || slot_valid((int)r[k].slot)) {
            run.rec_copy = k; /* the next switch writes the other copy, never the one in charge */
            activate((int)r[k].slot);
            return;
        }
    }
    activate(FACTORY); /* no record, or none whose slot passes its checks */
}

/* The newer boot record over the older copy: a cut before its CRC is whole leaves the
 * current record in charge. */
static void switch_to(int slot) {
    boot_record r;
    int copy = run.rec_copy == 0 ? 1 : 0;
    r.magic = MAGIC_REC;
    r.seq = run.seq + 1u;
    r.slot = (uint32_t)slot;
    r.crc = ts_crc32(0, &r, offsetof(boot_record, crc));
    flash_erase(REC_OFF(copy));
    flash_program(REC_OFF(copy), &r, sizeof r);
    run.rec_copy = copy;
    run.seq = r.seq;
    activate(slot);
}

/* ---- the transfer --------------------------------------------------------------------------- */

static void flush_stage(void) {
    flash_program(SLOT_OFF(s.target) + SECTOR + s.out_pos - s.stage_fill, s.stage, s.stage_fill);
    ts_sha256_update(&s.sha, s.stage, s.stage_fill);
    s.stage_fill = 0;
}

/* One difference byte of the image: new = old + d, staged, programmed 32 bytes at a time. */
static int emit(uint8_t d) {
    if (s.out_pos >= TS_OTA_IMAGE_BYTES) return 0;
    if (s.stage_fill == 0u) {
        uint32_t n = TS_OTA_IMAGE_BYTES - s.out_pos;
        const uint8_t *h = s.header;
        image_read(le32(h + H_FLAGS) & 1u ? -1 : run.slot, s.out_pos, s.old, n < STAGE ? n : STAGE);
    }
    s.stage[s.stage_fill] = (uint8_t)(s.old[s.stage_fill] + d);
    s.stage_fill++;
    s.out_pos++;
    if (s.stage_fill == STAGE || s.out_pos == TS_OTA_IMAGE_BYTES) flush_stage();
    return 1;
}

/* The body decoder (tinyseek.update.package.decode_delta): returns 0 on a malformed body. The
 * op byte's kind: 0 zero run, 1 nibbles, 2 bytes, 3 crumbs (2 bits). */
static int decode(uint8_t b) {
    if (s.in_varint) {
        s.count += (uint32_t)(b & 0x7Fu) << s.varint_shift;
        s.varint_shift = (uint8_t)(s.varint_shift + 7u);
        if (b & 0x80u) return s.varint_shift <= 28u;
        s.in_varint = 0;
    } else if (s.count == 0u) {
        s.kind = (uint8_t)(b >> 6);
        s.count = (b & 63u) + 1u;
        if (s.count == 64u) {
            s.in_varint = 1;
            s.varint_shift = 0;
            return 1;
        }
    } else if (s.kind != 2u) { /* packed: nibbles (kind 1) or 2-bit crumbs (kind 3), low bits first */
        uint32_t bits = s.kind == 1u ? 4u : 2u, half = 1u << (bits - 1u), q;
        for (q = 0; q < 8u && s.count; q += bits, s.count--) {
            if (!emit((uint8_t)(((b >> q & (2u * half - 1u)) ^ half) - half))) return 0;
        }
        return 1;
    } else {
        s.count--;
        return emit(b);
    }
    if (s.kind == 0u) { /* a zero run needs no body bytes */
        for (; s.count; s.count--) {
            if (!emit(0)) return 0;
        }
    }
    return 1;
}

static void abort_transfer(void) { s.state = 0; }

/* The header is in: check it against this device before anything is written. */
static int accept_header(void) {
    const uint8_t *h = s.header, *key = device_key();
    uint32_t k;
    int full = (int)(le32(h + H_FLAGS) & 1u);
    if (le32(h) != 0x50555354u || le16(h + 4) != 1u || le16(h + 6) != HEADER_BYTES) {
        dut_err("ota: not a format-1 tinyseek package (magic or format); make it with `tinyseek update make`");
        return 0;
    }
    if (!ts_equal(h + H_LAYOUT, ts_ota_layout_id, 32)) {
        char kernel[9];
        for (k = 0; k < 8u; k++) kernel[k] = (char)h[H_KERNEL + k];
        kernel[8] = 0;
        dut_err("ota: package for another layout (kernel %s, vocab=%u,input=%u,hidden=%u,layers=%u,classes=%u); "
                "this firmware runs kernel " TS_OTA_KERNEL ", " TS_OTA_SHAPES ": flash a firmware for that model",
                kernel, (unsigned long)le16(h + H_SHAPES), (unsigned long)le16(h + H_SHAPES + 2),
                (unsigned long)le16(h + H_SHAPES + 4), (unsigned long)h[H_SHAPES + 6], (unsigned long)h[H_SHAPES + 7]);
        return 0;
    }
    if (le32(h + H_VERSION) <= run.version) {
        dut_err("ota: package version %u is not newer than the running %u (anti-rollback)",
                (unsigned long)le32(h + H_VERSION), (unsigned long)run.version);
        return 0;
    }
    if (le32(h + H_IMAGE) != TS_OTA_IMAGE_BYTES || le32(h + H_BODY) != s.size - HEADER_BYTES) {
        dut_err("ota: the header announces %u image and %u body bytes; expected %u and %u (truncated or corrupt)",
                (unsigned long)le32(h + H_IMAGE), (unsigned long)le32(h + H_BODY),
                (unsigned long)TS_OTA_IMAGE_BYTES, (unsigned long)(s.size - HEADER_BYTES));
        return 0;
    }
    if (!full && !ts_equal(h + H_BASE, run.sha, 32)) {
        dut_err("ota: the package is a delta against another model than the running %s; make it from that model "
                "or send a full package", run.hash);
        return 0;
    }
    ts_hmac_init(&s.mac, key, 32);
    ts_hmac_update(&s.mac, h, SIGNED_BYTES);
    ts_sha256_init(&s.sha);
    s.target = run.slot == 1 ? 2 : 1;
    s.count = s.out_pos = s.stage_fill = 0;
    s.in_varint = 0;
    /* the slot header goes first: a cut while the image is rewritten leaves no valid-looking slot */
    for (k = 0; k < SLOT_SPAN; k += SECTOR) flash_erase(SLOT_OFF(s.target) + k);
    return 1;
}

static int receive(const uint8_t *b, uint32_t n) {
    uint32_t i;
    for (i = 0; i < n; i++, s.offset++) {
        if (s.offset < HEADER_BYTES) {
            s.header[s.offset] = b[i];
            if (s.offset + 1u == HEADER_BYTES && !accept_header()) return 0;
            continue;
        }
        ts_hmac_update(&s.mac, &b[i], 1);
        if (!decode(b[i])) {
            dut_err("ota: malformed body at package offset %u (a run past the image's %u bytes or an overlong "
                    "run length)", (unsigned long)s.offset, (unsigned long)TS_OTA_IMAGE_BYTES);
            return 0;
        }
    }
    return 1;
}

/* ---- commands ------------------------------------------------------------------------------- */

/* Hex digits into bytes; returns the count or -1. */
static long unhex(const char *p, size_t n, uint8_t *out, size_t max) {
    size_t i;
    if (n % 2u != 0u || n / 2u > max) return -1;
    for (i = 0; i < n; i += 2u) {
        int hi = dut_hex_digit(p[i]), lo = dut_hex_digit(p[i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i / 2u] = (uint8_t)(hi << 4 | lo);
    }
    return (long)(n / 2u);
}

static int need_region(void) {
    if (F) return 1;
    dut_err("ota: this board has no updatable region of %u bytes", (unsigned long)REGION_BYTES);
    return 0;
}

#define USAGE_CHUNK "ota chunk OFFSET HEX CRC32 (8 hex digits)"

/* The bytes of one chunk, or of `ota sha` / `ota hmac` (never both at once). */
static uint8_t line_bytes[DUT_LINE_MAX / 2];

static void cmd_chunk(const char *pos, const char *end) {
    const char *t[3];
    size_t n[3];
    unsigned long off;
    uint8_t *buf = line_bytes, crc_b[4];
    long len;
    int k;
    for (k = 0; k < 3; k++) n[k] = dut_token(&pos, end, &t[k]);
    if (s.state != 1) {
        dut_err("ota chunk: no transfer; send ota begin SIZE first");
    } else if (n[2] == 0 || !dut_number(t[0], n[0], 0xFFFFFFFFUL, &off)) {
        dut_err("ota chunk: usage: " USAGE_CHUNK);
    } else if ((len = unhex(t[1], n[1], buf, sizeof line_bytes)) < 0 || unhex(t[2], n[2], crc_b, 4) != 4) {
        dut_err("ota chunk: bad hex digits; usage: " USAGE_CHUNK);
    } else if (((uint32_t)crc_b[0] << 24 | (uint32_t)crc_b[1] << 16 | (uint32_t)crc_b[2] << 8 | crc_b[3]) !=
               ts_crc32(0, buf, (size_t)len)) {
        dut_err("ota chunk: CRC mismatch at offset %u; send the chunk again", off);
    } else if (off != s.offset) {
        dut_err("ota chunk: offset %u out of order; the next offset is %u (ota status)", off, (unsigned long)s.offset);
    } else if ((uint32_t)len > s.size - s.offset) {
        dut_err("ota chunk: %u bytes at offset %u run past the announced %u", (unsigned long)len, off,
                (unsigned long)s.size);
    } else if (!receive(buf, (uint32_t)len)) {
        abort_transfer();
    } else {
        dut_outf("m-ota-chunk-[offset=%u]\r\n", (unsigned long)s.offset);
    }
}

static void cmd_commit(void) {
    uint8_t tag[32], sha[32];
    slot_header h;
    uint32_t k;
    if (s.state != 1) {
        dut_err("ota commit: no transfer; send ota begin SIZE first");
        return;
    }
    if (s.offset != s.size) {
        dut_err("ota commit: truncated transfer: %u of %u bytes received; send the rest (ota status)",
                (unsigned long)s.offset, (unsigned long)s.size);
        return;
    }
    abort_transfer();
    if (s.count != 0u || s.in_varint || s.out_pos != TS_OTA_IMAGE_BYTES) {
        dut_err("ota commit: the body decodes to %u of the image's %u bytes; nothing switched",
                (unsigned long)s.out_pos, (unsigned long)TS_OTA_IMAGE_BYTES);
        return;
    }
    ts_hmac_final(&s.mac, tag);
    if (!ts_equal(tag, s.header + H_TAG, 32)) {
        dut_err("ota commit: wrong tag: the package is not signed with this device's key or was altered; "
                "nothing switched");
        return;
    }
    ts_sha256_final(&s.sha, sha);
    if (!ts_equal(sha, s.header + H_RESULT, 32)) {
        dut_err("ota commit: the new image's SHA-256 differs from the package's; nothing switched");
        return;
    }
    h.magic = MAGIC_SLOT;
    for (k = 0; k < 32u; k++) h.layout_id[k] = ts_ota_layout_id[k];
    for (k = 0; k < 16u; k++) h.model_hash[k] = (char)s.header[H_HASH + k];
    h.version = le32(s.header + H_VERSION);
    h.image_bytes = TS_OTA_IMAGE_BYTES;
    h.softmax_mult = le32(s.header + H_MULT);
    for (k = 0; k < 32u; k++) h.image_sha[k] = sha[k];
    h.crc = ts_crc32(0, &h, offsetof(slot_header, crc));
    flash_program(SLOT_OFF(s.target), &h, sizeof h);
    switch_to(s.target);
    out_state("committed");
}

static void cmd_rollback(void) {
    int other = run.slot == 1 ? 2 : 1;
    if (run.slot == FACTORY) {
        dut_err("ota rollback: the factory model runs; there is nothing older to return to");
        return;
    }
    switch_to(slot_valid(other) && header_of(other)->version < run.version ? other : FACTORY);
    out_state("rolled-back");
}

static void cmd_status(void) {
    const char *st = s.state == 1 ? "receiving" : "idle";
    char sha[65];
    hex_of(run.sha, 32, sha);
    dut_outf("m-ota-status-[state=%s,offset=%u,size=%u,slot=%s,version=%u,hash=%s,image=%s,key=%s,region=%s,"
             "flash_ops=%u,boot_%s=%U,work_%s=%U]\r\n", st, (unsigned long)s.offset, (unsigned long)s.size,
             SLOT_NAMES[run.slot], (unsigned long)run.version, run.hash, sha, F && device_key() ? "yes" : "no",
             F ? "yes" : "no", (unsigned long)flash_ops, dut_port_target()->timer_unit, boot_units,
             dut_port_target()->timer_unit, work_units);
}

/* `ota sha HEX`, `ota hmac KEYHEX HEX`: the device's SHA-256 and HMAC on given bytes, so the
 * host can check them against hashlib and hmac ("-" for no bytes). */
static void cmd_digest(int mac, const char *pos, const char *end) {
    static uint8_t key[64];
    uint8_t *msg = line_bytes;
    const char *t[2];
    size_t n[2];
    long kl = 0, ml;
    uint8_t out[32];
    char hex[65];
    n[0] = dut_token(&pos, end, &t[0]);
    n[1] = mac ? dut_token(&pos, end, &t[1]) : 0;
    if (mac) kl = n[0] == 1u && t[0][0] == '-' ? 0 : unhex(t[0], n[0], key, sizeof key);
    ml = n[mac] == 1u && t[mac][0] == '-' ? 0 : unhex(t[mac], n[mac], msg, sizeof line_bytes);
    if (n[mac] == 0u || kl < 0 || ml < 0) {
        dut_err("ota %s: usage: ota sha HEX | ota hmac KEYHEX HEX (hex digits, '-' for none)", mac ? "hmac" : "sha");
        return;
    }
    if (mac) {
        ts_hmac_ctx c;
        ts_hmac_init(&c, key, (size_t)kl);
        ts_hmac_update(&c, msg, (size_t)ml);
        ts_hmac_final(&c, out);
    } else {
        ts_sha256_ctx c;
        ts_sha256_init(&c);
        ts_sha256_update(&c, msg, (size_t)ml);
        ts_sha256_final(&c, out);
    }
    hex_of(out, 32, hex);
    dut_outf("m-ota-%s-[%s]\r\n", mac ? "hmac" : "sha", hex);
}

static int same(const char *w, size_t n, const char *word) {
    size_t i;
    for (i = 0; i < n && word[i] && w[i] == word[i]; i++) {
    }
    return i == n && word[i] == 0;
}

void ota_command(const char *pos, const char *end) {
    const char *w;
    size_t n = dut_token(&pos, end, &w);
    unsigned long v;
#define IS(word) same(w, n, word)
    if (IS("status")) {
        cmd_status();
    } else if (IS("sha") || IS("hmac")) {
        cmd_digest(IS("hmac"), pos, end);
    } else if (!need_region()) {
    } else if (IS("begin")) {
        n = dut_token(&pos, end, &w);
        if (!device_key()) {
            dut_err("ota begin: no device key provisioned; `tinyseek update push` provisions an emulated board, a real one gets its key record when flashed (docs/updates.md)");
        } else if (!dut_number(w, n, 0xFFFFFFFFUL, &v) || v <= HEADER_BYTES || v > HEADER_BYTES + 2u * TS_OTA_IMAGE_BYTES + 64u) {
            dut_err("ota begin: SIZE must be the package's byte count, %u to %u", (unsigned long)HEADER_BYTES + 1u,
                    (unsigned long)(HEADER_BYTES + 2u * TS_OTA_IMAGE_BYTES + 64u));
        } else {
            s.state = 1;
            s.size = (uint32_t)v;
            s.offset = 0;
            work_units = 0;
            dut_outf("m-ota-begin-[size=%u,slot=%s]\r\n", v, SLOT_NAMES[run.slot == 1 ? 2 : 1]);
        }
    } else if (IS("chunk") || IS("commit")) {
        uint64_t t0 = dut_port_ticks();
        if (IS("chunk")) cmd_chunk(pos, end);
        else cmd_commit();
        work_units += dut_port_ticks_to_units(dut_port_ticks() - t0);
    } else if (IS("rollback")) {
        cmd_rollback();
    } else if (IS("abort")) {
        abort_transfer();
        dut_outf("m-ota-aborted\r\n");
    } else if (IS("cut")) {
        n = dut_token(&pos, end, &w);
        if (!dut_number(w, n, 0xFFFFFFFFUL, &v) || v == 0u) {
            dut_err("ota cut: usage: ota cut N (tear flash operation N, N >= 1, and cut the power)");
        } else {
            cut_left = (uint32_t)v;
            dut_outf("m-ota-cut-armed-[%u]\r\n", v);
        }
    } else {
        dut_err("ota: unknown subcommand; ota status | begin SIZE | chunk OFFSET HEX CRC32 | commit | rollback | "
                "abort | sha HEX | hmac KEYHEX HEX | cut N");
    }
#undef IS
}
#endif /* TINYSEEK_OTA */
