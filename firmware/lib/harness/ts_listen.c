/* The listener (see ts_listen.h): counters instead of divisions, so a core without a divider
 * (Cortex-M0) links no division routine for it. */
#include "ts_listen.h"

#include <stddef.h>

static void copy8(int8_t *dst, const int8_t *src, uint16_t n) {
    uint16_t i;
    for (i = 0; i < n; i++) dst[i] = src[i];
}

static const char *check_model(const tinyseek_model_api *m, uint16_t channels, uint16_t *k) {
    if (m->kind_text || m->step == NULL || m->reset == NULL || m->logits == NULL) {
        return "the listener's models must take feature vectors (audio models), step by step";
    }
    if (m->num_features <= 0 || m->num_features % channels != 0) {
        return "a model's features per step are not a whole number of the front end's frames";
    }
    *k = (uint16_t)(m->num_features / channels);
    return NULL;
}

const char *ts_listen_configure(ts_listener *l, const ts_listen_config *cfg) {
    if (cfg->window < l->wake_k || cfg->window % l->wake_k != 0) {
        return "window must be a positive multiple of the wake model's frames per step";
    }
    if (cfg->window > l->ring_frames) {
        return "window is longer than the frame ring; build with a larger TINYSEEK_LISTEN_RING";
    }
    if (cfg->stride < 1) return "stride must be at least 1 frame";
    if (cfg->confirm < 1) return "confirm must be at least 1 check";
    if (cfg->capture > 0 && l->command == NULL) {
        return "capture needs a command model; set capture 0 for a wake word alone";
    }
    if (cfg->capture > 0 && cfg->capture < l->command_k) {
        return "capture is shorter than one step of the command model";
    }
    l->cfg = *cfg;
    ts_listen_reset(l);
    return NULL;
}

const char *ts_listen_init(ts_listener *l, const ts_listen_config *cfg) {
    const char *e;
    if (l->wake == NULL || l->wake_state == NULL || l->fe_frame == NULL || l->fe_init == NULL ||
        l->fe_state == NULL || l->fe_scratch == NULL || l->pcm == NULL || l->frame == NULL || l->ring == NULL ||
        l->step == NULL || l->logits == NULL || l->on_event == NULL || l->hop == 0 || l->channels == 0 ||
        (l->command != NULL && l->command_state == NULL)) {
        return "a listener buffer, model or callback is missing";
    }
    if (l->wake->num_classes != 2) return "the wake-word model must have two classes (0 other, 1 the wake word)";
    e = check_model(l->wake, l->channels, &l->wake_k);
    if (e == NULL && l->command != NULL) e = check_model(l->command, l->channels, &l->command_k);
    if (e == NULL && l->command == NULL) l->command_k = 0;
    return e != NULL ? e : ts_listen_configure(l, cfg);
}

void ts_listen_reset(ts_listener *l) {
    l->fe_init(l->fe_state);
    l->pcm_fill = 0;
    l->step_fill = 0;
    l->frames = 0;
    l->ring_pos = 0;
    l->next_check = l->cfg.window;
    l->quiet_until = 0;
    l->capture_end = 0;
    l->in_a_row = 0;
}

/* The wake model on the window of frames that ends with the newest one, from a reset. */
static int32_t wake_margin(ts_listener *l) {
    const uint16_t c = l->channels, k = l->wake_k;
    uint16_t pos = (uint16_t)(l->ring_pos >= l->cfg.window ? l->ring_pos - l->cfg.window
                                                            : l->ring_pos + l->ring_frames - l->cfg.window);
    uint16_t f, j;
    l->wake->reset(l->wake_state);
    for (f = 0; f < l->cfg.window; f += k) {
        for (j = 0; j < k; j++) {
            copy8(l->step + (uint32_t)j * c, l->ring + (uint32_t)pos * c, c);
            if (++pos == l->ring_frames) pos = 0;
        }
        (void)l->wake->step(l->wake_state, l->step);
    }
    l->wake->logits(l->wake_state, l->logits);
    return (int32_t)l->logits[1] - (int32_t)l->logits[0];
}

static void emit(ts_listener *l, int kind, int32_t margin, int cls) {
    ts_listen_event e;
    e.kind = kind;
    e.frame = l->frames;
    e.margin = margin;
    e.cls = cls;
    e.logits = kind == TS_LISTEN_COMMAND ? l->logits : NULL;
    l->on_event(l->ctx, &e);
}

/* The newest frame (l->frame) into the ring, the capture and the wake check; the events. */
static int heard(ts_listener *l) {
    const uint16_t c = l->channels;
    int events = 0;
    copy8(l->ring + (uint32_t)l->ring_pos * c, l->frame, c);
    if (++l->ring_pos == l->ring_frames) l->ring_pos = 0;
    l->frames++;
    if (l->capture_end != 0) {
        copy8(l->step + (uint32_t)l->step_fill * c, l->frame, c);
        if (++l->step_fill == l->command_k) {
            l->step_fill = 0;
            (void)l->command->step(l->command_state, l->step);
        }
        if (l->frames == l->capture_end) {
            int k, best = 0;
            l->capture_end = 0;
            l->command->logits(l->command_state, l->logits);
            for (k = 1; k < l->command->num_classes; k++) {
                if (l->logits[k] > l->logits[best]) best = k;
            }
            emit(l, TS_LISTEN_COMMAND, 0, best);
            events++;
        }
    }
    if (l->frames == l->next_check) {
        l->next_check += l->cfg.stride;
        if (l->frames < l->quiet_until) {
            l->in_a_row = 0; /* no check while quiet: the count starts again after it */
        } else {
            int32_t margin = wake_margin(l);
            l->in_a_row = margin >= l->cfg.threshold ? (uint8_t)(l->in_a_row + 1) : 0;
            if (l->in_a_row >= l->cfg.confirm) {
                uint16_t quiet = l->cfg.rest > l->cfg.capture ? l->cfg.rest : l->cfg.capture;
                l->quiet_until = l->frames + quiet;
                l->in_a_row = 0;
                if (l->cfg.capture > 0) {
                    l->command->reset(l->command_state);
                    l->step_fill = 0;
                    l->capture_end = l->frames + l->cfg.capture;
                }
                emit(l, TS_LISTEN_WAKE, margin, 1);
                events++;
            }
        }
    }
    return events;
}

int ts_listen_feed(ts_listener *l, const int16_t *pcm, int n) {
    int events = 0;
    if (n < 0 || (pcm == NULL && n > 0)) return -1;
    while (n > 0) {
        const int16_t *hop;
        if (l->pcm_fill == 0 && n >= (int)l->hop) { /* a whole hop in place: no copy */
            hop = pcm;
            pcm += l->hop;
            n -= (int)l->hop;
        } else {
            while (n > 0 && l->pcm_fill < l->hop) {
                l->pcm[l->pcm_fill++] = *pcm++;
                n--;
            }
            if (l->pcm_fill < l->hop) break;
            l->pcm_fill = 0;
            hop = l->pcm;
        }
        l->fe_frame(l->fe_state, hop, l->frame, l->fe_scratch);
        events += heard(l);
    }
    return events;
}
