/* The generated model library for the Linux runtime programs: its API table (TS_API, a
 * tinyseek_model_api: the calls with a caller-owned state) and its size macros, whose names are
 * prefixed with the model's name (intents_api, INTENTS_NUM_CLASSES, ...). Compile with
 * -DTINYSEEK_MODEL=<name> -DTINYSEEK_MODEL_UPPER=<NAME> -DTINYSEEK_MODEL_HEADER=<name>_model.h
 * (the Makefile does). */
#ifndef TINYSEEK_RUNTIME_MODEL_H
#define TINYSEEK_RUNTIME_MODEL_H

#if !defined(TINYSEEK_MODEL) || !defined(TINYSEEK_MODEL_UPPER) || !defined(TINYSEEK_MODEL_HEADER)
#error "define TINYSEEK_MODEL, TINYSEEK_MODEL_UPPER and TINYSEEK_MODEL_HEADER (see runtime/linux/Makefile)"
#endif

#define TS_CAT_(a, b) a##_##b
#define TS_CAT(a, b) TS_CAT_(a, b)
#define TS_STR_(x) #x
#define TS_STR(x) TS_STR_(x)
/* TS_API -> <name>_api, TS_MACRO(NUM_CLASSES) -> <NAME>_NUM_CLASSES */
#define TS_API TS_CAT(TINYSEEK_MODEL, api)
#define TS_MACRO(m) TS_CAT(TINYSEEK_MODEL_UPPER, m)

#include TS_STR(TINYSEEK_MODEL_HEADER)

#include <stdlib.h>

/* A new stream of the model: a zeroed state of TS_API.state_bytes (NULL when out of memory). */
static inline void *ts_new_state(void)
{
    return calloc(1, TS_API.state_bytes);
}

/* Index of the first largest of n logits. */
static inline int ts_argmax(const int16_t *logits, int n)
{
    int k, best = 0;
    for (k = 1; k < n; ++k) {
        if (logits[k] > logits[best]) {
            best = k;
        }
    }
    return best;
}

#endif
