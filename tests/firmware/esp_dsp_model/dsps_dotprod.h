/* Host stand-in for ESP-DSP's dsps_dotprod.h (espressif/esp-dsp, modules/dotprod/include), only
 * what the generated ESP kernels use: the declaration of dsps_dotprod_f32 and esp_err_t. The
 * behaviour is modelled in dsps_dotprod_model.c; tests/test_kernels_esp.py compiles the kernels
 * against it on the host with -DTINYSEEK_TEST_FORCE_ESP_DSP. */
#ifndef TINYSEEK_ESP_DSP_MODEL_H
#define TINYSEEK_ESP_DSP_MODEL_H

typedef int esp_err_t;
#define ESP_OK 0

/* *dest = sum_i src1[i] * src2[i], i in [0, len), in the order of the implementation chosen by
 * ESP_DSP_MODEL (see dsps_dotprod_model.c). */
esp_err_t dsps_dotprod_f32(const float *src1, const float *src2, float *dest, int len);

#endif
