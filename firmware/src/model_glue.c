/* Binds the generated library firmware/lib/<name>/ to the interpreter without naming it: the
 * build passes TINYSEEK_MODEL (C prefix, e.g. intents), TINYSEEK_MODEL_UPPER (macro prefix,
 * INTENTS) and TINYSEEK_MODEL_HEADER ("intents_model.h"); see firmware/platform/select_model.py. */
#include "model_glue.h"

#if !defined(TINYSEEK_MODEL) || !defined(TINYSEEK_MODEL_UPPER) || !defined(TINYSEEK_MODEL_HEADER)
#error "build with -DTINYSEEK_MODEL=<name> -DTINYSEEK_MODEL_UPPER=<NAME> -DTINYSEEK_MODEL_HEADER=\"<name>_model.h\""
#endif

#include TINYSEEK_MODEL_HEADER

#define TS_PASTE_(a, b) a##b
#define TS_PASTE(a, b) TS_PASTE_(a, b)
#define TS_FN(suffix) TS_PASTE(TINYSEEK_MODEL, suffix)         /* TS_FN(_reset): intents_reset */
#define TS_DEF(suffix) TS_PASTE(TINYSEEK_MODEL_UPPER, suffix)  /* TS_DEF(_NUM_CLASSES) */

#if defined(DUT_MODEL_KIND_TEXT) && DUT_MODEL_KIND_TEXT != TS_DEF(_KIND_TEXT)
#error "DUT_MODEL_KIND_TEXT disagrees with the model header: the interpreter would read the wrong input kind"
#endif

/* The kernel variant the library's dispatch header chose from the compiler's feature macros
 * ("dsp", "c", ...); a build may override the name with -DTINYSEEK_KERNEL=\"...\". */
#ifdef TINYSEEK_KERNELS_HEADER
#include TINYSEEK_KERNELS_HEADER
#endif
#ifndef TINYSEEK_KERNEL
#define TINYSEEK_KERNEL TS_DEF(_KERNEL)
#endif

/* The `db` input buffer holds TINYSEEK_INPUT_STEPS steps: token ids (text models, by default
 * the tokenizer's max_len) or int8 feature vectors (sequence models, by default 128). */
#if TS_DEF(_KIND_TEXT)
#ifndef TINYSEEK_INPUT_STEPS
#define TINYSEEK_INPUT_STEPS TS_DEF(_MAX_LEN)
#endif
#define TS_INPUT_BYTES (2 * (TINYSEEK_INPUT_STEPS))
#else
#ifndef TINYSEEK_INPUT_STEPS
#define TINYSEEK_INPUT_STEPS 128
#endif
#define TS_INPUT_BYTES (TS_DEF(_NUM_FEATURES) * (TINYSEEK_INPUT_STEPS))
#endif

static union {
    uint8_t bytes[TS_INPUT_BYTES];
    uint16_t ids[TS_INPUT_BYTES / 2 + 1];
} input;
static int16_t logits[TS_DEF(_NUM_CLASSES)];

#define TS_STR_(x) #x
#define TS_STR(x) TS_STR_(x)

const dut_model_t tinyseek_model = {
    .name = TS_STR(TINYSEEK_MODEL),
    .hash = TS_DEF(_MODEL_HASH),
    .kernel = TINYSEEK_KERNEL,
    .num_classes = TS_DEF(_NUM_CLASSES),
    .input_size = TS_DEF(_INPUT_SIZE),
    .num_layers = TS_DEF(_NUM_LAYERS),
    .hidden_size = TS_DEF(_HIDDEN_SIZE),
    .softmax_mult = TS_DEF(_SOFTMAX_MULT),
    .weight_bytes = TS_DEF(_WEIGHT_BYTES),
    .ram_bytes = TS_DEF(_RAM_BYTES),
    .labels = TS_FN(_labels),
    .reset = TS_FN(_reset),
    .logits = TS_FN(_logits),
#if TS_DEF(_KIND_TEXT)
    .kind_text = 1,
    .vocab_size = TS_DEF(_VOCAB_SIZE),
    .max_len = TS_DEF(_MAX_LEN),
    .step_token = TS_FN(_step_token),
    .infer_tokens = TS_FN(_infer_tokens),
    .classify_text = TS_FN(_classify_text),
#else
    .kind_text = 0,
    .num_features = TS_DEF(_NUM_FEATURES),
    .step = TS_FN(_step),
    .infer = TS_FN(_infer),
#endif
    .input = input.bytes,
    .input_ids = input.ids,
    .input_capacity = sizeof input.bytes,
    .logits_out = logits,
};
