/* Classify with a generated tinyseek model on Linux (see docs/linux.md).
 *
 * Text models:     classify TEXT...     the words joined by spaces, one classification
 *                  classify             one classification per line of stdin
 * Sequence models: classify FILE        int8 feature vectors, NUM_FEATURES bytes per step
 *                  classify -           the same from stdin
 *
 * Prints one line per input: the label, the class index and the NUM_CLASSES int16 logits
 * (real logit = int16 logit * OUTPUT_SCALE). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinyseek_model.h"

#define NUM_CLASSES TINYSEEK_MODEL_NUM_CLASSES

static void print_result(int cls, const int16_t *logits)
{
    int k;
    printf("%s\t%d\t", TS_API.labels[cls], cls);
    for (k = 0; k < NUM_CLASSES; ++k) {
        printf(k ? " %d" : "%d", logits[k]);
    }
    printf("\n");
}

static void die(const char *what)
{
    fprintf(stderr, "classify: %s\n", what);
    exit(2);
}

/* All of f into a malloc'ed buffer; *len gets its size. */
static unsigned char *read_all(FILE *f, size_t *len)
{
    size_t cap = 4096, n = 0, got;
    unsigned char *buf = malloc(cap);
    if (buf == NULL) {
        die("out of memory");
    }
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            unsigned char *bigger = realloc(buf, cap *= 2);
            if (bigger == NULL) {
                die("out of memory");
            }
            buf = bigger;
        }
    }
    if (ferror(f)) {
        die("cannot read the input");
    }
    *len = n;
    return buf;
}

#if TINYSEEK_MODEL_KIND_TEXT
int main(int argc, char **argv)
{
    int16_t logits[NUM_CLASSES];
    void *state = ts_new_state();
    if (state == NULL) {
        die("out of memory");
    }
    if (argc > 1) {
        size_t len = 0;
        char *text;
        int k, cls;
        for (k = 1; k < argc; ++k) {
            len += strlen(argv[k]) + 1;
        }
        text = malloc(len);
        if (text == NULL) {
            die("out of memory");
        }
        text[0] = '\0';
        for (k = 1; k < argc; ++k) {
            strcat(text, argv[k]);
            if (k + 1 < argc) {
                strcat(text, " ");
            }
        }
        cls = TS_API.classify_text(state, (const uint8_t *)text, strlen(text), logits);
        print_result(cls, logits);
        free(text);
    } else {
        size_t len, start = 0, end;
        unsigned char *all = read_all(stdin, &len);
        /* One text per line; a last line without a newline counts too. */
        while (start < len) {
            for (end = start; end < len && all[end] != '\n'; ++end) {
            }
            print_result(TS_API.classify_text(state, all + start, end - start, logits), logits);
            start = end + 1;
        }
        free(all);
    }
    free(state);
    return 0;
}
#else
int main(int argc, char **argv)
{
    int16_t logits[NUM_CLASSES];
    size_t len;
    unsigned char *x;
    FILE *f;
    if (argc != 2) {
        die("usage: classify FILE (int8 features, NUM_FEATURES bytes per step; - for stdin)");
    }
    f = strcmp(argv[1], "-") == 0 ? stdin : fopen(argv[1], "rb");
    if (f == NULL) {
        die("cannot open the input file");
    }
    x = read_all(f, &len);
    if (len % TINYSEEK_MODEL_NUM_FEATURES != 0) {
        fprintf(stderr, "classify: %lu bytes is not a whole number of %d-byte feature vectors\n",
                (unsigned long)len, TINYSEEK_MODEL_NUM_FEATURES);
        return 2;
    }
    void *state = ts_new_state();
    if (state == NULL) {
        die("out of memory");
    }
    if (TS_API.infer(state, (const int8_t *)x, (int)(len / TINYSEEK_MODEL_NUM_FEATURES), logits) != 0) {
        die("the model rejected the input");
    }
    print_result(ts_argmax(logits, NUM_CLASSES), logits);
    free(x);
    return 0;
}
#endif
