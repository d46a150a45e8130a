/* Host driver for ts_sha256.c: each stdin line is "sha HEX", "hmac KEYHEX DATAHEX" or
 * "crc HEX" ("-" for no bytes); the digest, tag or CRC goes to stdout in hex, one line each.
 * "shabig N" hashes N bytes of i*31+7 fed in pieces of 1 to 97 bytes (the update path's
 * streaming use). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ts_sha256.h"

static size_t unhex(const char *s, uint8_t *out) {
    size_t n = 0;
    if (strcmp(s, "-") == 0) return 0;
    for (; s[0] && s[1]; s += 2) {
        unsigned v;
        sscanf(s, "%2x", &v);
        out[n++] = (uint8_t)v;
    }
    return n;
}

static void print_hex(const uint8_t *d, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) printf("%02x", d[i]);
    printf("\n");
}

int main(void) {
    static char a[70000], b[70000];
    static uint8_t x[40000], y[40000];
    char cmd[16];
    uint8_t out[32];
    while (scanf("%15s", cmd) == 1) {
        if (strcmp(cmd, "sha") == 0 && scanf("%69999s", a) == 1) {
            ts_sha256_ctx c;
            size_t n = unhex(a, x);
            ts_sha256_init(&c);
            ts_sha256_update(&c, x, n);
            ts_sha256_final(&c, out);
            print_hex(out, 32);
        } else if (strcmp(cmd, "hmac") == 0 && scanf("%69999s %69999s", a, b) == 2) {
            ts_hmac_ctx c;
            size_t k = unhex(a, x), n = unhex(b, y);
            ts_hmac_init(&c, x, k);
            ts_hmac_update(&c, y, n);
            ts_hmac_final(&c, out);
            print_hex(out, 32);
        } else if (strcmp(cmd, "crc") == 0 && scanf("%69999s", a) == 1) {
            size_t n = unhex(a, x);
            printf("%08lx\n", (unsigned long)ts_crc32(0, x, n));
        } else if (strcmp(cmd, "shabig") == 0 && scanf("%69999s", a) == 1) {
            ts_sha256_ctx c;
            unsigned long n = strtoul(a, NULL, 10), i = 0, piece = 1;
            uint8_t buf[97];
            ts_sha256_init(&c);
            while (i < n) {
                unsigned long k, m = piece < n - i ? piece : n - i;
                for (k = 0; k < m; k++) buf[k] = (uint8_t)((i + k) * 31u + 7u);
                ts_sha256_update(&c, buf, m);
                i += m;
                piece = piece % 97u + 1u;
            }
            ts_sha256_final(&c, out);
            print_hex(out, 32);
        } else {
            return 2;
        }
    }
    return 0;
}
