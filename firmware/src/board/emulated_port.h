/* Shared by the bare-metal ports (cortexm_port.h, riscv_virt.c): serial output, the
 * memory report from the linker symbols and the painted stack, and a hex printer for faults.
 * Include it after the board's own static uart_putc(). */
#ifndef TINYSEEK_EMULATED_PORT_H
#define TINYSEEK_EMULATED_PORT_H

#include <stddef.h>
#include <stdint.h>

#include "dut_port.h"

#define PAINT 0xC5C5C5C5u

/* Energy mode needs the board's timestamp pin (dut_port_timestamp_pulse): the STM32F4 port has
 * one, the emulated FPGA, nRF51, RISC-V and ESP8266 ports none. */
#if defined(TINYSEEK_ENERGY_MODE) && TINYSEEK_ENERGY_MODE && !defined(TS_HAS_TIMESTAMP_PIN)
#error "TINYSEEK_ENERGY_MODE: this board's port has no timestamp pin; energy builds run on the STM32F4 port (nucleo_f446re_energy, qemu_stm32f4) and the Arduino boards (docs/firmware.md, Energy mode)"
#endif

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, __stack_start, __stack_end, __flash_start;

void dut_port_write(const char *s, size_t n) {
    while (n--) uart_putc(*s++);
}

void dut_port_mem(dut_mem_t *mem) {
    const uint32_t *p = &__stack_start;
    while (p < &__stack_end && *p == PAINT) p++;
    mem->flash_used = (long)((uintptr_t)&_sidata - (uintptr_t)&__flash_start) +
                      (long)((uintptr_t)&_edata - (uintptr_t)&_sdata);
    mem->ram_static = (long)((uintptr_t)&_ebss - (uintptr_t)&_sdata);
    mem->stack_size = (long)((uintptr_t)&__stack_end - (uintptr_t)&__stack_start);
    mem->stack_peak = (long)((uintptr_t)&__stack_end - (uintptr_t)p);
}

static inline void print_hex32(uint32_t v) {
    static const char digits[] = "0123456789abcdef";
    int i;
    for (i = 28; i >= 0; i -= 4) uart_putc(digits[(v >> i) & 15u]);
}

#endif
