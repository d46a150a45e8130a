/* Classify with a generated tinyseek model on Linux (see docs/linux.md).
 *
 * Text models:     classify TEXT...     the words joined by spaces, one classification
 *                  classify             one classification per line of stdin
 * Sequence models: classify FILE        int8 feature vectors, NUM_FEATURES bytes per step
 *                  classify -           the same from stdin
 * Audio models:    classify CLIP.wav... 16 kHz mono 16-bit PCM WAV files, one classification each
 *                  classify -           raw 16-bit little-endian samples from stdin, one clip
 *                                       (e.g. arecord -q -f S16_LE -r 16000 -c 1 -t raw -d 3 | classify -)
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
#elif defined(TINYSEEK_MODEL_FEED_AUDIO)
static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The samples of a 16 kHz mono 16-bit PCM WAV file in buf (len bytes): *data, *count; or an
 * error naming what is wrong and the conversion. */
static const char *wav_samples(const unsigned char *buf, size_t len, const unsigned char **data, size_t *count)
{
    size_t at = 12;
    int fmt_ok = 0;
    if (len < 12 || memcmp(buf, "RIFF", 4) != 0 || memcmp(buf + 8, "WAVE", 4) != 0) {
        return "is not a WAV file (no RIFF/WAVE header)";
    }
    while (at + 8 <= len) {
        uint32_t size = le32(buf + at + 4);
        const unsigned char *body = buf + at + 8;
        if (size > len - at - 8) {
            size = (uint32_t)(len - at - 8); /* a truncated last chunk: what is there */
        }
        if (memcmp(buf + at, "fmt ", 4) == 0) {
            unsigned format, channels, bits;
            uint32_t rate;
            if (size < 16) {
                return "has a malformed fmt chunk";
            }
            format = body[0] | body[1] << 8;
            channels = body[2] | body[3] << 8;
            rate = le32(body + 4);
            bits = body[14] | body[15] << 8;
            if ((format != 1 && format != 0xFFFE) || bits != 16 || channels != 1 ||
                rate != TINYSEEK_MODEL_SAMPLE_RATE) {
                fprintf(stderr, "classify: the clip is %u-channel, %lu Hz, %u-bit%s; the model hears %d Hz mono "
                        "16-bit PCM: sox IN.wav -r %d -c 1 -b 16 -e signed-integer OUT.wav\n", channels,
                        (unsigned long)rate, bits, format == 3 ? " float" : "", TINYSEEK_MODEL_SAMPLE_RATE,
                        TINYSEEK_MODEL_SAMPLE_RATE);
                return "is not in the model's format";
            }
            fmt_ok = 1;
        } else if (memcmp(buf + at, "data", 4) == 0) {
            if (!fmt_ok) {
                return "has no fmt chunk before its data";
            }
            *data = body;
            *count = size / 2;
            return NULL;
        }
        at += 8 + size + (size & 1);
    }
    return "has no data chunk";
}

/* Feed the samples in microphone-sized chunks, as a device would; the logits of the clip. */
static int classify_samples(void *state, const unsigned char *bytes, size_t count, int16_t *logits)
{
    int16_t chunk[4096];
    size_t done = 0, k;
    TS_API.reset(state);
    while (done < count) {
        size_t n = count - done < 4096 ? count - done : 4096;
        for (k = 0; k < n; ++k) { /* little-endian on any host */
            chunk[k] = (int16_t)(uint16_t)(bytes[2 * (done + k)] | bytes[2 * (done + k) + 1] << 8);
        }
        if (TINYSEEK_MODEL_FEED_AUDIO((TINYSEEK_MODEL_STATE *)state, chunk, (int)n) < 0) {
            die("the model rejected the samples");
        }
        done += n;
    }
    TS_API.logits(state, logits);
    return ts_argmax(logits, NUM_CLASSES);
}

int main(int argc, char **argv)
{
    int16_t logits[NUM_CLASSES];
    int k, status = 0;
    void *state = ts_new_state();
    if (state == NULL) {
        die("out of memory");
    }
    if (argc < 2) {
        die("usage: classify CLIP.wav... (16 kHz mono 16-bit PCM), or classify - (raw 16-bit samples on stdin)");
    }
    for (k = 1; k < argc; ++k) {
        size_t len, count = 0;
        const unsigned char *data = NULL;
        const char *error = NULL;
        unsigned char *all;
        int from_stdin = strcmp(argv[k], "-") == 0;
        FILE *f = from_stdin ? stdin : fopen(argv[k], "rb");
        if (f == NULL) {
            fprintf(stderr, "classify: cannot open %s\n", argv[k]);
            status = 2;
            continue;
        }
        all = read_all(f, &len);
        if (!from_stdin) {
            fclose(f);
        }
        if (from_stdin) {
            data = all, count = len / 2;
            error = len % 2 ? "is not whole 16-bit samples (an odd number of bytes)" : NULL;
        } else {
            error = wav_samples(all, len, &data, &count);
        }
        if (error != NULL || count == 0) {
            fprintf(stderr, "classify: %s %s\n", argv[k], error != NULL ? error : "holds no samples");
            status = 2;
        } else {
            print_result(classify_samples(state, data, count, logits), logits);
        }
        free(all);
    }
    free(state);
    return status;
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
