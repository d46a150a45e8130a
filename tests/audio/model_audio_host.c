/* Host driver of an audio model library (tests/test_audio_library.py): stdin holds clips as
 * [uint32 n][n int16 samples], little-endian. Each clip is streamed through feed_audio in
 * chunks of the sizes below (cycling, so partial hops span calls), then classified; the same
 * clip goes through infer_audio in one call. Prints per clip: "s STEPS", "f LOGITS" (fed),
 * "w LOGITS" (whole). */
#include <stdio.h>
#include <stdlib.h>

#define TINYSEEK_SELECT_MODEL
#include TINYSEEK_MODEL_HEADER

static const int chunks[] = {1, 77, 320, 1000, 5, 2048, 319, 640};

static void print_logits(char tag, const int16_t *logits, int n) {
    int k;
    printf("%c", tag);
    for (k = 0; k < n; k++) printf(" %d", logits[k]);
    printf("\n");
}

int main(void) {
    static TINYSEEK_MODEL_STATE state;
    int16_t logits[TINYSEEK_MODEL_NUM_CLASSES];
    unsigned char head[4];
    int c = 0;
    while (fread(head, 1, 4, stdin) == 4) {
        unsigned long n = head[0] | (unsigned long)head[1] << 8 | (unsigned long)head[2] << 16 |
                          (unsigned long)head[3] << 24;
        int16_t *pcm = malloc(n * sizeof *pcm + 1);
        unsigned long pos = 0;
        int steps = 0;
        if (!pcm || fread(pcm, 2, n, stdin) != n) return 2;
        TINYSEEK_MODEL_API.reset(&state);
        while (pos < n) {
            unsigned long take = (unsigned long)chunks[c++ % (int)(sizeof chunks / sizeof chunks[0])];
            if (take > n - pos) take = n - pos;
            steps += TINYSEEK_MODEL_FEED_AUDIO(&state, pcm + pos, (int)take);
            pos += take;
        }
        printf("s %d\n", steps);
        TINYSEEK_MODEL_API.logits(&state, logits);
        print_logits('f', logits, TINYSEEK_MODEL_NUM_CLASSES);
        if (TINYSEEK_MODEL_INFER_AUDIO(&state, pcm, (int)n, logits) != 0) return 3;
        print_logits('w', logits, TINYSEEK_MODEL_NUM_CLASSES);
        free(pcm);
    }
    if (TINYSEEK_MODEL_FEED_AUDIO(&state, NULL, 5) != -1 || TINYSEEK_MODEL_FEED_AUDIO(&state, logits, -1) != -1)
        return 4;
    return 0;
}
