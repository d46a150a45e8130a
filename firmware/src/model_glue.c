/* Binds the generated library firmware/lib/<name>/ to the interpreter without naming it: the
 * build passes TINYSEEK_MODEL_HEADER ("intents_model.h", see firmware/platform/select_model.py),
 * and the header, asked with TINYSEEK_SELECT_MODEL, gives the model's API table and sizes under
 * fixed names. The interpreter calls the model through that table. */
#include "model_glue.h"

#ifndef TINYSEEK_MODEL_HEADER
#error "build with -DTINYSEEK_MODEL_HEADER=\"<name>_model.h\" (the generated library's header)"
#endif

#define TINYSEEK_SELECT_MODEL
#include TINYSEEK_MODEL_HEADER

#ifndef TINYSEEK_MODEL_API
#error "TINYSEEK_MODEL_HEADER defines no TINYSEEK_MODEL_API: regenerate the library with `tinyseek codegen`"
#endif

#if defined(DUT_MODEL_KIND_TEXT) && DUT_MODEL_KIND_TEXT != TINYSEEK_MODEL_KIND_TEXT
#error "DUT_MODEL_KIND_TEXT disagrees with the model header: the interpreter would read the wrong input kind"
#endif

/* The `db` input buffer holds TINYSEEK_INPUT_STEPS steps: token ids (text models, by default
 * the tokenizer's max_len) or int8 feature vectors (sequence models, by default 128); for an
 * audio model TINYSEEK_INPUT_SAMPLES int16 samples (by default one hop of the front end: the
 * host streams a clip hop by hop, so RAM holds 20 ms of audio, not the clip). */
#if defined(TINYSEEK_MODEL_FEED_AUDIO)
#ifndef TINYSEEK_INPUT_SAMPLES
#define TINYSEEK_INPUT_SAMPLES TINYSEEK_MODEL_HOP
#endif
#define TS_INPUT_BYTES (2 * (TINYSEEK_INPUT_SAMPLES))
#elif TINYSEEK_MODEL_KIND_TEXT
#ifndef TINYSEEK_INPUT_STEPS
#define TINYSEEK_INPUT_STEPS TINYSEEK_MODEL_MAX_LEN
#endif
#define TS_INPUT_BYTES (2 * (TINYSEEK_INPUT_STEPS))
#else
#ifndef TINYSEEK_INPUT_STEPS
#define TINYSEEK_INPUT_STEPS 128
#endif
#define TS_INPUT_BYTES (TINYSEEK_MODEL_NUM_FEATURES * (TINYSEEK_INPUT_STEPS))
#endif

static union {
    uint8_t bytes[TS_INPUT_BYTES];
    uint16_t ids[TS_INPUT_BYTES / 2 + 1];
} input;
static int16_t logits[TINYSEEK_MODEL_NUM_CLASSES];

/* The one stream the interpreter runs: a caller-owned state of the library's API (the memory
 * report counts this symbol as the model's RAM, tools/tinyseek/harness/elfmem.py). */
static TINYSEEK_MODEL_STATE tinyseek_model_state;

#if defined(TINYSEEK_MODEL_FEED_AUDIO)
static int feed_audio(void *state, const int16_t *pcm, int n) {
    return TINYSEEK_MODEL_FEED_AUDIO((TINYSEEK_MODEL_STATE *)state, pcm, n);
}
#define TS_FEED_AUDIO feed_audio
#else
#define TS_FEED_AUDIO NULL
#endif

const dut_model_t tinyseek_model = {
    &TINYSEEK_MODEL_API, &tinyseek_model_state, input.bytes, input.ids, sizeof input.bytes, logits,
    TS_FEED_AUDIO,
};
