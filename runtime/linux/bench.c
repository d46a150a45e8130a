/* Latency of a generated tinyseek model on Linux (see docs/linux.md).
 *
 *   bench INPUTS [RUNS]
 *
 * INPUTS (little-endian): "TSBI", u32 count, then per input u32 n and n token ids (u16, text
 * models) or n steps of NUM_FEATURES int8 (sequence models). Each input is inferred once
 * (reset, steps, logits), then RUNS more times under clock_gettime (default 0: no timing).
 * Prints "kernel <variant>", then per input: the class, the logits and the mean nanoseconds per
 * inference over the RUNS (0 without RUNS).
 *
 * The first inference of each input runs between calls of tinyseek_bench_begin() and
 * tinyseek_bench_end(), with nothing else in between: tools/tinyseek/harness/aarch64.py counts
 * the instructions QEMU executes from the one to the other. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tinyseek_model.h"

#define NUM_CLASSES TINYSEEK_MODEL_NUM_CLASSES

#if TINYSEEK_MODEL_KIND_TEXT
typedef uint16_t item_t;
#define ITEM_BYTES 2u
#else
typedef int8_t item_t;
#define ITEM_BYTES ((unsigned)TINYSEEK_MODEL_NUM_FEATURES)
#endif

typedef struct {
    uint32_t n;
    item_t *data;
} input_t;

#if defined(__GNUC__) || defined(__clang__)
#define NOINLINE __attribute__((noinline))
/* A call the compiler keeps in place, with nothing moved across it. */
#define BARRIER() __asm__ volatile("" ::: "memory")
#else
#define NOINLINE
#define BARRIER()
#endif

NOINLINE void tinyseek_bench_begin(void);
NOINLINE void tinyseek_bench_end(void);

void tinyseek_bench_begin(void)
{
    BARRIER();
}

void tinyseek_bench_end(void)
{
    BARRIER();
}

static void die(const char *what)
{
    fprintf(stderr, "bench: %s\n", what);
    exit(2);
}

static uint32_t read_u32(FILE *f)
{
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) {
        die("the input file is truncated");
    }
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* The stream every inference runs on. */
static void *state;

static void infer(const input_t *in, int16_t *logits)
{
#if TINYSEEK_MODEL_KIND_TEXT
    if (TS_API.infer_tokens(state, in->data, (int)in->n, logits) != 0) {
        die("a token id is out of range");
    }
#else
    if (TS_API.infer(state, in->data, (int)in->n, logits) != 0) {
        die("the model rejected a sequence");
    }
#endif
}

/* The same instructions for every input between the two marks. */
static NOINLINE void measured(const input_t *in, int16_t *logits)
{
    tinyseek_bench_begin();
    infer(in, logits);
    tinyseek_bench_end();
}

int main(int argc, char **argv)
{
    FILE *f;
    char magic[4];
    uint32_t count, k, j;
    input_t *inputs;
    int16_t *logits;
    long runs = argc > 2 ? strtol(argv[2], NULL, 10) : 0;
    if (argc < 2 || argc > 3 || runs < 0) {
        die("usage: bench INPUTS [RUNS]");
    }
    f = fopen(argv[1], "rb");
    if (f == NULL) {
        die("cannot open the input file");
    }
    if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "TSBI", 4) != 0) {
        die("the input file does not start with TSBI");
    }
    count = read_u32(f);
    inputs = calloc(count ? count : 1, sizeof *inputs);
    logits = calloc((size_t)(count ? count : 1) * NUM_CLASSES, sizeof *logits);
    state = ts_new_state();
    if (inputs == NULL || logits == NULL || state == NULL) {
        die("out of memory");
    }
    for (k = 0; k < count; ++k) {
        unsigned char *raw;
        inputs[k].n = read_u32(f);
        raw = malloc((size_t)inputs[k].n * ITEM_BYTES + 1);
        inputs[k].data = malloc((size_t)inputs[k].n * ITEM_BYTES + 1); /* ITEM_BYTES / sizeof(item_t) items a step */
        if (raw == NULL || inputs[k].data == NULL) {
            die("out of memory");
        }
        if (fread(raw, ITEM_BYTES, inputs[k].n, f) != inputs[k].n) {
            die("the input file is truncated");
        }
        for (j = 0; j < inputs[k].n * (ITEM_BYTES / sizeof(item_t)); ++j) {
#if TINYSEEK_MODEL_KIND_TEXT
            inputs[k].data[j] = (uint16_t)(raw[2 * j] | raw[2 * j + 1] << 8);
#else
            inputs[k].data[j] = (int8_t)raw[j];
#endif
        }
        free(raw);
    }
    fclose(f);

    for (k = 0; k < count; ++k) {
        measured(&inputs[k], logits + (size_t)k * NUM_CLASSES);
    }

    printf("kernel %s\n", TS_API.kernel);
    for (k = 0; k < count; ++k) {
        double ns = 0.0;
        if (runs > 0) {
            struct timespec t0, t1;
            int16_t scratch[NUM_CLASSES];
            long r;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (r = 0; r < runs; ++r) {
                infer(&inputs[k], scratch);
            }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / (double)runs;
        }
        printf("%d", ts_argmax(logits + (size_t)k * NUM_CLASSES, NUM_CLASSES));
        for (j = 0; j < NUM_CLASSES; ++j) {
            printf(" %d", logits[(size_t)k * NUM_CLASSES + j]);
        }
        printf(" %.0f\n", ns);
    }
    for (k = 0; k < count; ++k) {
        free(inputs[k].data);
    }
    free(inputs);
    free(logits);
    return 0;
}
