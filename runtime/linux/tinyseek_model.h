/* The generated model library for the Linux runtime programs, chosen at build time by its header
 * (-DTINYSEEK_MODEL_HEADER='"<name>_model.h"', the Makefile passes it): its API table TS_API (a
 * tinyseek_model_api: the calls with a caller-owned state, the model's sizes and names) and the
 * few sizes a program needs at compile time, under names that do not depend on the model. */
#ifndef TINYSEEK_RUNTIME_MODEL_H
#define TINYSEEK_RUNTIME_MODEL_H

#ifndef TINYSEEK_MODEL_HEADER
#error "define TINYSEEK_MODEL_HEADER as the generated library's header, \"<name>_model.h\" (see runtime/linux/Makefile)"
#endif

#define TINYSEEK_SELECT_MODEL
#include TINYSEEK_MODEL_HEADER

#ifndef TINYSEEK_MODEL_API
#error "TINYSEEK_MODEL_HEADER defines no TINYSEEK_MODEL_API: regenerate the library with `tinyseek codegen`"
#endif

#define TS_API TINYSEEK_MODEL_API

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
