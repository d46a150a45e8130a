/* A wake word gating spoken commands on one audio stream: one front end, a wake-word model
 * re-run on a sliding window of its frames, and a command model that hears the frames after a
 * wake. The integer reference is tools/tinyseek/audio/listen.py; docs/audio.md ("Wake word and
 * commands on the device") has the rules and the memory each part needs.
 *
 * Pure C99 without allocation: the caller owns every buffer (firmware/src/model_glue.c gives
 * the firmware's), so host tests compile it with sanitizers.
 */
#ifndef TINYSEEK_TS_LISTEN_H
#define TINYSEEK_TS_LISTEN_H

#include <stdint.h>

#include "dut.h" /* tinyseek_model_api */

#ifdef __cplusplus
extern "C" {
#endif

/* Counts in front-end frames (one per hop). */
typedef struct {
    int32_t threshold; /* wake when the wake model's logits[1] - logits[0] >= threshold */
    uint16_t window;   /* frames the wake model reads: a multiple of its frames per step */
    uint16_t stride;   /* frames between wake checks */
    uint16_t rest;     /* frames after a wake with no check */
    uint16_t capture;  /* frames the command model hears after a wake; 0: wake word only */
    uint8_t confirm;   /* checks in a row at or over the threshold that make a wake: 1 to 255 */
} ts_listen_config;

enum { TS_LISTEN_WAKE = 1, TS_LISTEN_COMMAND = 2 };

typedef struct {
    int kind;              /* TS_LISTEN_WAKE or TS_LISTEN_COMMAND */
    uint32_t frame;        /* frames heard when it happened */
    int32_t margin;        /* wake: the wake model's logits[1] - logits[0] */
    int cls;               /* command: the command model's top class */
    const int16_t *logits; /* command: its num_classes logits (valid during the callback) */
} ts_listen_event;

typedef struct ts_listener {
    /* Set by the caller before ts_listen_init. */
    const tinyseek_model_api *wake;    /* two classes: 0 other, 1 the wake word */
    void *wake_state;
    const tinyseek_model_api *command; /* NULL: wake word only */
    void *command_state;
    /* The front end both models were trained on (a library's <name>_fe_frame and _fe_init). */
    void (*fe_frame)(void *fe_state, const int16_t *hop, int8_t *frame, int32_t *scratch);
    void (*fe_init)(void *fe_state);
    void *fe_state;
    int32_t *fe_scratch;
    uint16_t hop, channels;
    int16_t *pcm;          /* hop samples: a part hop between calls */
    int8_t *frame;         /* channels: the newest frame */
    int8_t *ring;          /* ring_frames * channels: the last frames, for the wake model */
    uint16_t ring_frames;  /* the largest window */
    int8_t *step;          /* frames per step * channels of the larger of the two models */
    int16_t *logits;       /* the larger number of classes */
    void (*on_event)(void *ctx, const ts_listen_event *event);
    void *ctx;

    /* Kept by the listener. */
    ts_listen_config cfg;
    uint16_t wake_k, command_k; /* frames per step */
    uint16_t pcm_fill, step_fill;
    uint16_t ring_pos;     /* where the next frame goes */
    uint32_t frames;       /* frames heard since the last reset */
    uint32_t next_check;   /* the frame count of the next wake check: window, window + stride, ... */
    uint32_t quiet_until;  /* no wake check before this many frames */
    uint32_t capture_end;  /* while capturing: the frame count that decides the command; else 0 */
    uint8_t in_a_row;      /* checks in a row at or over the threshold so far */
} ts_listener;

/* Checks the models and the buffers, sets cfg and resets; NULL, or what is wrong (the fix in
 * the message). */
const char *ts_listen_init(ts_listener *l, const ts_listen_config *cfg);

/* New settings (the same checks); the stream starts again. NULL or what is wrong. */
const char *ts_listen_configure(ts_listener *l, const ts_listen_config *cfg);

/* Start again: silence before, nothing heard, no capture. */
void ts_listen_reset(ts_listener *l);

/* n samples of the stream (any chunking); on_event for every wake and command, in order.
 * Returns the number of events, or -1 if n < 0 or pcm is NULL with n > 0. */
int ts_listen_feed(ts_listener *l, const int16_t *pcm, int n);

#ifdef __cplusplus
}
#endif

#endif /* TINYSEEK_TS_LISTEN_H */
