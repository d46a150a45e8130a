/* What the interpreter (dut.c) needs from the board. The firmware implements these in
 * firmware/src/board/, host tests in their own small file. */
#ifndef TINYSEEK_DUT_PORT_H
#define TINYSEEK_DUT_PORT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *board;            /* e.g. "mps2-an386" */
    const char *cpu;              /* e.g. "cortex-m4" */
    unsigned long clock_hz;       /* CPU clock the board is configured for */
    const char *timer;            /* timing source, e.g. "systick-icount", "dwt-cyccnt" */
    const char *timer_unit;       /* unit of dut_port_timer(): "instructions", "cycles", "us" */
    unsigned long timer_per_us;   /* timer units per microsecond (for m-lap-us), below 65536 */
} dut_target_t;

/* Memory figures the board can measure itself; -1 where it cannot. */
typedef struct {
    long flash_used;              /* code + read-only data + .data load image */
    long ram_static;              /* .data + .bss */
    long stack_size;              /* bytes reserved for the main stack */
    long stack_peak;              /* deepest stack use since boot (painting) */
} dut_mem_t;

void dut_port_write(const char *s, size_t n);
uint64_t dut_port_ticks(void);          /* raw monotonic counter: cheap to read */
uint64_t dut_port_ticks_to_units(uint64_t ticks);  /* a tick count in target->timer_unit */
void dut_port_timer_sync(void);         /* wait for the next timer edge before a measurement */
const dut_target_t *dut_port_target(void);
void dut_port_mem(dut_mem_t *mem);
int dut_port_exit(int code);            /* stop the emulator; returns 0 where a board cannot */

/* Energy mode (-DTINYSEEK_ENERGY_MODE=1, docs/firmware.md "Energy mode"): the MLPerf Tiny energy
 * monitor timestamps the falling edges of an open-drain GPIO instead of reading m-lap-us lines.
 * The board configures the pin released (high, pulled up outside) before dut_init; each call
 * pulls it low for at least 1 us and releases it. Only energy builds need it. */
void dut_port_timestamp_pulse(void);

/* Update-enabled builds (-DTINYSEEK_OTA=1, docs/updates.md): the updatable region that holds the
 * weight slots and boot records, memory-mapped, and its size; NULL where the board has none.
 * ota.c writes it with NOR-flash rules (erase to 0xFF, program clears bits): as RAM, or where
 * the build sets TS_OTA_FLASH_PORT through the port's flash controller, flash_erase (n bytes of
 * whole sectors at p to 0xFF) and flash_program_word (the word's cells become old AND value).
 * power_cut stops the board at once, as a power failure would, and does not return: the
 * file-backed emulators exit (the region persists in its file); the microbit resets inside its
 * QEMU process (its flash keeps what was written, the startup code re-initialises RAM).
 * dut_port_flash has a weak default in ota.c: the region at TS_OTA_REGION_BASE where the build
 * defines it (the emulated *_ota environments), else none. */
uint8_t *dut_port_flash(uint32_t *size);
void dut_port_flash_erase(uint8_t *p, uint32_t n);
void dut_port_flash_program_word(uint8_t *p, uint32_t value);
void dut_port_power_cut(void);

#ifdef __cplusplus
}
#endif

#endif /* TINYSEEK_DUT_PORT_H */
