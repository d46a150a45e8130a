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

#ifdef TINYSEEK_WAKE_HEADER
/* A wake-word model beside the audio model (TINYSEEK_WAKE_MODEL, select_model.py): the
 * listener runs the audio model's front end once for both, keeps the last frames for the
 * wake-word model and gives the frames after a wake to the audio model (the command model).
 * Its buffers: a hop of samples, a frame, TINYSEEK_LISTEN_RING frames, one step of either model
 * and the logits; the FFT scratch is the command library's own. */
#include "ts_listen.h"
#define TINYSEEK_SELECT_WAKE
#include TINYSEEK_WAKE_HEADER

#if !defined(TINYSEEK_MODEL_FE_FRAME)
#error "a wake-word model needs an audio command model beside it: TINYSEEK_MODEL_HEADER is not one"
#endif
#if !defined(TINYSEEK_WAKE_API)
#error "TINYSEEK_WAKE_HEADER is not an audio model's header: regenerate the wake-word library with `tinyseek codegen`"
#endif
#if TINYSEEK_WAKE_FE_ID != TINYSEEK_MODEL_FE_ID
#error "the wake-word and command models were trained on different front ends (their _FE_ID differ); one front end feeds both"
#endif
#if TINYSEEK_WAKE_NUM_CLASSES != 2
#error "the wake-word model must have two classes (0 other, 1 the wake word)"
#endif

/* Defaults of `listen set`, in frames of the front end: the wake model's own where its header
 * records them (TINYSEEK_WAKE_*: the settings `tinyseek build` measured it with), else a 1 s
 * window checked every 200 ms, 1 s of rest, a wake at the first check over the threshold; 3 s of
 * command after a wake
 * (tools/tinyseek/audio/listen.py: ListenConfig). A -D flag overrides either. */
#ifndef TINYSEEK_LISTEN_THRESHOLD
#ifdef TINYSEEK_WAKE_THRESHOLD
#define TINYSEEK_LISTEN_THRESHOLD TINYSEEK_WAKE_THRESHOLD
#else
#define TINYSEEK_LISTEN_THRESHOLD 0
#endif
#endif
#ifndef TINYSEEK_LISTEN_WINDOW
#ifdef TINYSEEK_WAKE_WINDOW
#define TINYSEEK_LISTEN_WINDOW TINYSEEK_WAKE_WINDOW
#else
#define TINYSEEK_LISTEN_WINDOW 50
#endif
#endif
#ifndef TINYSEEK_LISTEN_STRIDE
#ifdef TINYSEEK_WAKE_STRIDE
#define TINYSEEK_LISTEN_STRIDE TINYSEEK_WAKE_STRIDE
#else
#define TINYSEEK_LISTEN_STRIDE 10
#endif
#endif
#ifndef TINYSEEK_LISTEN_REST
#ifdef TINYSEEK_WAKE_REST
#define TINYSEEK_LISTEN_REST TINYSEEK_WAKE_REST
#else
#define TINYSEEK_LISTEN_REST 50
#endif
#endif
#ifndef TINYSEEK_LISTEN_CAPTURE
#define TINYSEEK_LISTEN_CAPTURE 150
#endif
#ifndef TINYSEEK_LISTEN_CONFIRM
#ifdef TINYSEEK_WAKE_CONFIRM
#define TINYSEEK_LISTEN_CONFIRM TINYSEEK_WAKE_CONFIRM
#else
#define TINYSEEK_LISTEN_CONFIRM 1
#endif
#endif
#ifndef TINYSEEK_LISTEN_RING /* frames kept: the longest window `listen set` can ask for */
#define TINYSEEK_LISTEN_RING TINYSEEK_LISTEN_WINDOW
#endif

#define TS_STEP_BYTES (TINYSEEK_WAKE_NUM_FEATURES > TINYSEEK_MODEL_NUM_FEATURES ? TINYSEEK_WAKE_NUM_FEATURES \
                                                                                : TINYSEEK_MODEL_NUM_FEATURES)
#define TS_LOGITS (TINYSEEK_MODEL_NUM_CLASSES > 2 ? TINYSEEK_MODEL_NUM_CLASSES : 2)

static TINYSEEK_WAKE_STATE ts_wake_state;
static TINYSEEK_MODEL_FE_STATE ts_listen_fe;
static int16_t ts_listen_pcm[TINYSEEK_MODEL_HOP];
static int8_t ts_listen_frame[TINYSEEK_MODEL_FE_CHANNELS];
static int8_t ts_listen_ring[TINYSEEK_LISTEN_RING * TINYSEEK_MODEL_FE_CHANNELS];
static int8_t ts_listen_step[TS_STEP_BYTES];
static int16_t ts_listen_logits[TS_LOGITS];

static void ts_fe_frame(void *fe, const int16_t *hop, int8_t *frame, int32_t *scratch) {
    TINYSEEK_MODEL_FE_FRAME((TINYSEEK_MODEL_FE_STATE *)fe, hop, frame, scratch);
}
static void ts_fe_init(void *fe) { TINYSEEK_MODEL_FE_INIT((TINYSEEK_MODEL_FE_STATE *)fe); }

static ts_listener ts_listener_of_firmware = {
    .wake = &TINYSEEK_WAKE_API, .wake_state = &ts_wake_state,
    .command = &TINYSEEK_MODEL_API, .command_state = &tinyseek_model_state,
    .fe_frame = ts_fe_frame, .fe_init = ts_fe_init, .fe_state = &ts_listen_fe, .fe_scratch = TINYSEEK_MODEL_FE_SCRATCH,
    .hop = TINYSEEK_MODEL_HOP, .channels = TINYSEEK_MODEL_FE_CHANNELS,
    .pcm = ts_listen_pcm, .frame = ts_listen_frame, .ring = ts_listen_ring, .ring_frames = TINYSEEK_LISTEN_RING,
    .step = ts_listen_step, .logits = ts_listen_logits,
    .cfg = {TINYSEEK_LISTEN_THRESHOLD, TINYSEEK_LISTEN_WINDOW, TINYSEEK_LISTEN_STRIDE, TINYSEEK_LISTEN_REST,
            TINYSEEK_LISTEN_CAPTURE, TINYSEEK_LISTEN_CONFIRM},
};
#define TS_LISTENER (&ts_listener_of_firmware)
#else
#define TS_LISTENER NULL
#endif

const dut_model_t tinyseek_model = {
    &TINYSEEK_MODEL_API, &tinyseek_model_state, input.bytes, input.ids, sizeof input.bytes, logits,
    TS_FEED_AUDIO, TS_LISTENER,
};
