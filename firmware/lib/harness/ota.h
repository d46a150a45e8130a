/* Model updates over the air (docs/updates.md): two weight slots A and B in an updatable flash
 * region beside the firmware's own model ("factory"), a boot record kept twice, and the `ota`
 * commands of the interpreter. Only in builds with -DTINYSEEK_OTA=1 (env qemu_m4_ota); the
 * build passes the expected layout (ota_layout.h, tinyseek.update.image.layout_header) and
 * links the generated library with --wrap=<name>_params,--wrap=<name>_api, so the model reads
 * its weights through the table this file points at the active slot. */
#ifndef TINYSEEK_OTA_H
#define TINYSEEK_OTA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Pick the slot to run from the boot records (falling back to the older record, then to the
 * factory model, when a slot fails its checks), point the model at it and print m-ota-boot. */
void ota_boot(void);

/* One `ota ...` command; the words after `ota` are in [pos, end). */
void ota_command(const char *pos, const char *end);

/* What ota.c uses of the interpreter (dut.c, in update-enabled builds). */
void dut_outf(const char *f, ...);
void dut_err(const char *f, ...);
size_t dut_token(const char **pos, const char *end, const char **tok);
int dut_number(const char *p, size_t n, unsigned long max, unsigned long *value);
int dut_hex_digit(char c);

#ifdef __cplusplus
}
#endif

#endif /* TINYSEEK_OTA_H */
