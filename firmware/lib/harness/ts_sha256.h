/* SHA-256 (FIPS 180-4), HMAC-SHA256 (RFC 2104) and CRC-32 (IEEE 802.3, the zlib one) for the
 * model updates (docs/updates.md). Portable C99, no tables beyond SHA-256's 64 round constants,
 * byte-oriented input so any alignment and endianness works. Checked against Python's hashlib,
 * hmac and zlib on the host and through the firmware protocol on qemu_m4 (tests/test_ota.py). */
#ifndef TINYSEEK_TS_SHA256_H
#define TINYSEEK_TS_SHA256_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TS_SHA256_BYTES 32
#define TS_SHA256_BLOCK 64

typedef struct {
    uint32_t h[8];
    uint32_t bytes_lo, bytes_hi; /* message length in bytes, 64 bits */
    uint8_t block[TS_SHA256_BLOCK];
    size_t fill;                 /* bytes waiting in block */
} ts_sha256_ctx;

void ts_sha256_init(ts_sha256_ctx *c);
void ts_sha256_update(ts_sha256_ctx *c, const void *data, size_t n);
void ts_sha256_final(ts_sha256_ctx *c, uint8_t out[TS_SHA256_BYTES]);

/* HMAC-SHA256: the inner hash runs over the message; the outer key pad is kept for final. */
typedef struct {
    ts_sha256_ctx inner;
    uint8_t opad_key[TS_SHA256_BLOCK];
} ts_hmac_ctx;

void ts_hmac_init(ts_hmac_ctx *c, const uint8_t *key, size_t key_len);
void ts_hmac_update(ts_hmac_ctx *c, const void *data, size_t n);
void ts_hmac_final(ts_hmac_ctx *c, uint8_t out[TS_SHA256_BYTES]);

/* CRC-32 (poly 0xEDB88320 reflected, init and final xor 0xFFFFFFFF): pass crc = 0 to start,
 * the previous result to continue. Bitwise: no 1 KiB table. */
uint32_t ts_crc32(uint32_t crc, const void *data, size_t n);

/* 1 when the n bytes are equal, in time that does not depend on where they differ. */
int ts_equal(const uint8_t *a, const uint8_t *b, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* TINYSEEK_TS_SHA256_H */
