/* SHA-256, HMAC-SHA256 and CRC-32 (see ts_sha256.h). */
#include "ts_sha256.h"

static const uint32_t K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

static uint32_t ror(uint32_t x, unsigned n) { return x >> n | x << (32u - n); }

/* One 64-byte block; the message schedule is a rolling 16-word window (64 B on the stack). */
static void compress(uint32_t h[8], const uint8_t *p) {
    uint32_t w[16], s[8], t1, t2;
    unsigned i;
    for (i = 0; i < 16u; i++) {
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    }
    for (i = 0; i < 8u; i++) s[i] = h[i];
    for (i = 0; i < 64u; i++) {
        if (i >= 16u) {
            uint32_t a = w[(i + 1u) & 15u], b = w[(i + 14u) & 15u];
            w[i & 15u] += (ror(a, 7) ^ ror(a, 18) ^ a >> 3) + w[(i + 9u) & 15u] + (ror(b, 17) ^ ror(b, 19) ^ b >> 10);
        }
        t1 = s[7] + (ror(s[4], 6) ^ ror(s[4], 11) ^ ror(s[4], 25)) + ((s[4] & s[5]) ^ (~s[4] & s[6])) + K[i] + w[i & 15u];
        t2 = (ror(s[0], 2) ^ ror(s[0], 13) ^ ror(s[0], 22)) + ((s[0] & s[1]) ^ (s[0] & s[2]) ^ (s[1] & s[2]));
        s[7] = s[6];
        s[6] = s[5];
        s[5] = s[4];
        s[4] = s[3] + t1;
        s[3] = s[2];
        s[2] = s[1];
        s[1] = s[0];
        s[0] = t1 + t2;
    }
    for (i = 0; i < 8u; i++) h[i] += s[i];
}

void ts_sha256_init(ts_sha256_ctx *c) {
    static const uint32_t h0[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    unsigned i;
    for (i = 0; i < 8u; i++) c->h[i] = h0[i];
    c->bytes_lo = c->bytes_hi = 0;
    c->fill = 0;
}

void ts_sha256_update(ts_sha256_ctx *c, const void *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    uint32_t lo = c->bytes_lo + (uint32_t)n;
    c->bytes_hi += (lo < c->bytes_lo) + (uint32_t)((uint64_t)n >> 32);
    c->bytes_lo = lo;
    while (n > 0u) {
        if (c->fill == 0u && n >= TS_SHA256_BLOCK) { /* whole blocks straight from the input */
            compress(c->h, p);
            p += TS_SHA256_BLOCK;
            n -= TS_SHA256_BLOCK;
            continue;
        }
        c->block[c->fill++] = *p++;
        n--;
        if (c->fill == TS_SHA256_BLOCK) {
            compress(c->h, c->block);
            c->fill = 0;
        }
    }
}

void ts_sha256_final(ts_sha256_ctx *c, uint8_t out[TS_SHA256_BYTES]) {
    uint32_t hi = c->bytes_hi << 3 | c->bytes_lo >> 29, lo = c->bytes_lo << 3; /* length in bits */
    unsigned i;
    c->block[c->fill++] = 0x80u;
    if (c->fill > 56u) { /* no room for the length: pad this block, the length goes in the next */
        while (c->fill < TS_SHA256_BLOCK) c->block[c->fill++] = 0;
        compress(c->h, c->block);
        c->fill = 0;
    }
    while (c->fill < 56u) c->block[c->fill++] = 0;
    for (i = 0; i < 4u; i++) {
        c->block[56 + i] = (uint8_t)(hi >> (24 - 8 * i));
        c->block[60 + i] = (uint8_t)(lo >> (24 - 8 * i));
    }
    compress(c->h, c->block);
    for (i = 0; i < 32u; i++) out[i] = (uint8_t)(c->h[i / 4u] >> (24 - 8 * (i % 4u)));
}

/* key' = the key, or SHA-256(key) when longer than a block, zero-padded to a block. */
void ts_hmac_init(ts_hmac_ctx *c, const uint8_t *key, size_t key_len) {
    uint8_t pad[TS_SHA256_BLOCK];
    unsigned i;
    for (i = 0; i < TS_SHA256_BLOCK; i++) pad[i] = 0;
    if (key_len > TS_SHA256_BLOCK) {
        ts_sha256_init(&c->inner);
        ts_sha256_update(&c->inner, key, key_len);
        ts_sha256_final(&c->inner, pad);
    } else {
        for (i = 0; i < key_len; i++) pad[i] = key[i];
    }
    for (i = 0; i < TS_SHA256_BLOCK; i++) {
        c->opad_key[i] = (uint8_t)(pad[i] ^ 0x5cu);
        pad[i] ^= 0x36u;
    }
    ts_sha256_init(&c->inner);
    ts_sha256_update(&c->inner, pad, TS_SHA256_BLOCK);
}

void ts_hmac_update(ts_hmac_ctx *c, const void *data, size_t n) { ts_sha256_update(&c->inner, data, n); }

void ts_hmac_final(ts_hmac_ctx *c, uint8_t out[TS_SHA256_BYTES]) {
    uint8_t inner[TS_SHA256_BYTES];
    ts_sha256_final(&c->inner, inner);
    ts_sha256_init(&c->inner);
    ts_sha256_update(&c->inner, c->opad_key, TS_SHA256_BLOCK);
    ts_sha256_update(&c->inner, inner, TS_SHA256_BYTES);
    ts_sha256_final(&c->inner, out);
}

uint32_t ts_crc32(uint32_t crc, const void *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    unsigned k;
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (k = 0; k < 8u; k++) crc = crc >> 1 ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

int ts_equal(const uint8_t *a, const uint8_t *b, size_t n) {
    uint8_t d = 0;
    size_t i;
    for (i = 0; i < n; i++) d |= (uint8_t)(a[i] ^ b[i]);
    return d == 0u;
}
