/* Host model of ESP-DSP's dsps_dotprod_f32 (espressif/esp-dsp, modules/dotprod/float/, unchanged
 * from v1.2.0 to v1.8.2), in the floating-point operation order of each implementation that
 * ESP-DSP's dsps_dotprod.h maps the name to. ESP_DSP_MODEL selects one:
 *   1 ANSI (dsps_dotprod_f32_ansi.c, CONFIG_DSP_ANSI): acc += src1[i] * src2[i], i ascending,
 *     product and sum each rounded.
 *   2 AE32 (dsps_dotprod_f32_ae32.S + dsps_dotprod_f32_m_ae32.S, ESP32): one MADD.S per element
 *     into one register, i ascending; MADD.S is fused (fmaf, one rounding). The loop loads
 *     src2[i + 1] after each MAC, so it reads src2[len] too (modelled: a sanitizer build sees
 *     an out-of-bounds read when that element does not exist).
 *   3 AES3 (dsps_dotprod_f32_aes3.S, ESP32-S3): if len is a multiple of 4 and both arrays are
 *     16-byte aligned, four accumulators, lane l taking the elements i = l (mod 4) with MADD.S,
 *     then ((f0 + f1) + f2) + f3; otherwise it jumps into the AE32 body.
 * ESP_DSP_MODEL_REQUIRE_VECTOR (with 3): abort instead of taking the AE32 fallback, to check
 * that every call of the kernels reaches the S3's vector path. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "dsps_dotprod.h"

#if !defined(ESP_DSP_MODEL) || ESP_DSP_MODEL < 1 || ESP_DSP_MODEL > 3
#error "define ESP_DSP_MODEL to 1 (ANSI), 2 (AE32) or 3 (AES3)"
#endif

static float dot_ansi(const float *src1, const float *src2, int len)
{
    float acc = 0.0f;
    int i;
    for (i = 0; i < len; ++i) {
        float product = src1[i] * src2[i];
        acc = acc + product;
    }
    return acc;
}

static float dot_ae32(const float *src1, const float *src2, int len)
{
    volatile float next = src2[0];
    float acc = 0.0f;
    int i;
    for (i = 0; i < len; ++i) {
        acc = fmaf(src1[i], next, acc);
        next = src2[i + 1];
    }
    return acc;
}

static float dot_aes3(const float *src1, const float *src2, int len)
{
    float lane[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int i, l;
    if ((len & 3) != 0 || (((uintptr_t)src1 | (uintptr_t)src2) & 15) != 0) {
#if defined(ESP_DSP_MODEL_REQUIRE_VECTOR)
        abort();
#else
        return dot_ae32(src1, src2, len);
#endif
    }
    for (i = 0; i < len; i += 4) {
        for (l = 0; l < 4; ++l) {
            lane[l] = fmaf(src1[i + l], src2[i + l], lane[l]);
        }
    }
    return ((lane[0] + lane[1]) + lane[2]) + lane[3];
}

esp_err_t dsps_dotprod_f32(const float *src1, const float *src2, float *dest, int len)
{
    *dest = ESP_DSP_MODEL == 1 ? dot_ansi(src1, src2, len)
          : ESP_DSP_MODEL == 2 ? dot_ae32(src1, src2, len)
                               : dot_aes3(src1, src2, len);
    return ESP_OK;
}
