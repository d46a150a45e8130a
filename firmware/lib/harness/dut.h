/* The device-under-test command interpreter: the MLPerf Tiny (EEMBC) serial protocol plus
 * tinyseek's extra commands (docs/firmware.md lists every command and reply).
 *
 * Pure C99 without hardware access: the firmware feeds it received bytes, and it talks to the
 * board and the model only through dut_port.h, so host tests compile it with sanitizers.
 */
#ifndef TINYSEEK_DUT_H
#define TINYSEEK_DUT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Longest command accepted (bytes before the '%' terminator). Longer lines are consumed up to
 * their terminator and answered with an error. */
#ifndef DUT_LINE_MAX
#define DUT_LINE_MAX 512
#endif

/* Upper bounds of `infer N W`, so a typo cannot keep the device busy for hours. */
#define DUT_MAX_RUNS 1000000UL

/* What the interpreter needs to know about the model and the storage the firmware gives it.
 * Function pointers are the generated library's functions (see firmware/src/model_glue.c). */
typedef struct {
    const char *name;
    const char *hash;
    const char *kernel;          /* kernel variant the library was compiled with */
    int kind_text;               /* 1: token ids in; 0: int8 feature vectors in */
    int num_classes;
    int input_size;              /* embedding width (text) or features per step (sequence) */
    int num_layers;
    int hidden_size;
    int vocab_size;              /* text models, else 0 */
    int max_len;                 /* text models, else 0 */
    int num_features;            /* sequence models, else 0 */
    /* Class probabilities (m-results): <NAME>_SOFTMAX_MULT, round(output scale * log2(e) * 2^32)
     * (docs/numerics.md, "Class probabilities"). */
    uint32_t softmax_mult;
    unsigned long weight_bytes;
    unsigned long ram_bytes;
    const char *const *labels;   /* num_classes entries */

    void (*reset)(void);
    int (*step_token)(uint16_t token);
    int (*step)(const int8_t *x);
    void (*logits)(int16_t *logits);
    int (*infer_tokens)(const uint16_t *ids, int n, int16_t *logits);
    int (*infer)(const int8_t *x, int steps, int16_t *logits);
    int (*classify_text)(const uint8_t *utf8, size_t len, int16_t *logits);  /* NULL: no text */

    /* Static storage owned by the firmware: the `db` input buffer, viewed as bytes and (the
     * same memory) as uint16 token ids, and the logits of the last inference. */
    uint8_t *input;
    uint16_t *input_ids;
    size_t input_capacity;       /* bytes */
    int16_t *logits_out;         /* num_classes entries */
} dut_model_t;

/* Start the interpreter and print the boot banner (m-timestamp-mode-..., m-init-done, m-ready). */
void dut_init(const dut_model_t *model);

/* Hand one received byte to the interpreter; a '%' runs the command collected so far. */
void dut_feed(uint8_t c);

#ifdef __cplusplus
}
#endif

#endif /* TINYSEEK_DUT_H */
