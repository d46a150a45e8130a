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

/* The generated library's API table, as each <name>_model.h declares it (a test keeps the two
 * the same; a header of another layout redefines the version macro, which the compiler reports). */
#define TINYSEEK_MODEL_API_VERSION 2
#ifndef TINYSEEK_MODEL_API_DEFINED
#define TINYSEEK_MODEL_API_DEFINED
/* Every generated model's API as one table of the same type, so a program calls any model (and
 * several of them) without pasting names: `state` points to that model's <name>_state of
 * `state_bytes` bytes. Fields a model does not have are 0 (vocab_size and max_len of a
 * sequence model, num_features of a text model), calls it does not have NULL (step_token,
 * infer_tokens, classify_text of a sequence model; step, infer of a text model). */
typedef struct {
    const char *name;
    const char *hash;
    const char *kernel;          /* the kernel variant the library was compiled with */
    int kind_text;               /* 1: token ids in; 0: int8 feature vectors in */
    int num_classes;
    int input_size;              /* embedding width (text) or features per step (sequence) */
    int num_layers;
    int hidden_size;             /* of the top layer */
    int vocab_size;
    int max_len;                 /* the tokenizer keeps at most max_len tokens */
    int num_features;
    uint32_t softmax_mult;       /* <NAME>_SOFTMAX_MULT */
    size_t weight_bytes;
    size_t state_bytes;          /* one stream */
    size_t scratch_bytes;        /* shared by all streams */
    const char *const *labels;   /* num_classes names */
    void (*reset)(void *state);
    int (*step_token)(void *state, uint16_t token);
    int (*step)(void *state, const int8_t *x);
    void (*logits)(const void *state, int16_t *logits);
    int (*infer_tokens)(void *state, const uint16_t *ids, int n, int16_t *logits);
    int (*infer)(void *state, const int8_t *x, int steps, int16_t *logits);
    int (*classify_text)(void *state, const uint8_t *utf8, size_t len, int16_t *logits);
} tinyseek_model_api;
#endif

/* The model and the storage the firmware gives the interpreter (firmware/src/model_glue.c). */
typedef struct {
    const tinyseek_model_api *api; /* the generated library's table */
    void *state;                   /* the one stream the interpreter runs, api->state_bytes */
    /* Static storage owned by the firmware: the `db` input buffer, viewed as bytes and (the
     * same memory) as uint16 token ids, and the logits of the last inference. */
    uint8_t *input;
    uint16_t *input_ids;
    size_t input_capacity;         /* bytes */
    int16_t *logits_out;           /* api->num_classes entries */
    /* Audio models: <name>_feed_audio with a generic state, and the loaded input is int16
     * little-endian samples (the same memory as input_ids); NULL for every other model. */
    int (*feed_audio)(void *state, const int16_t *pcm, int n);
    /* A wake-word model beside an audio model: the listener (ts_listen.h) that `listen` feeds,
     * its buffers and models set, on_event left to the interpreter; NULL without one. */
    struct ts_listener *listener;
} dut_model_t;

/* Start the interpreter and print the boot banner (m-timestamp-mode-..., m-init-done, m-ready). */
void dut_init(const dut_model_t *model);

/* Hand one received byte to the interpreter; a '%' runs the command collected so far. */
void dut_feed(uint8_t c);

#ifdef __cplusplus
}
#endif

#endif /* TINYSEEK_DUT_H */
