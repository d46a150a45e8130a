/* The generic names the Linux runtime programs use for a generated model library, whose API is
 * prefixed with the model's name (intents_classify_text, INTENTS_NUM_CLASSES, ...). Compile with
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
/* TS_FN(infer) -> <name>_infer, TS_MACRO(NUM_CLASSES) -> <NAME>_NUM_CLASSES */
#define TS_FN(fn) TS_CAT(TINYSEEK_MODEL, fn)
#define TS_MACRO(m) TS_CAT(TINYSEEK_MODEL_UPPER, m)

#include TS_STR(TINYSEEK_MODEL_HEADER)

#endif
