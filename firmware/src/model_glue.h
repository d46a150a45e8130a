/* The generated model library, as the interpreter sees it. */
#ifndef TINYSEEK_MODEL_GLUE_H
#define TINYSEEK_MODEL_GLUE_H

#include "dut.h"

#ifdef __cplusplus
extern "C" {
#endif

extern const dut_model_t tinyseek_model;

#ifdef __cplusplus
}
#endif

#endif /* TINYSEEK_MODEL_GLUE_H */
