/* Emulated RISC-V rv32imc board (QEMU riscv32 `virt`, the class of the ESP32-C3): startup, the
 * ns16550 UART, minstret as the timer, stack painting, exit through the virt test finisher.
 *
 * Timing: with QEMU's `-icount shift=0` the minstret CSR counts retired instructions exactly
 * (1 instruction = 1 ns of virtual time). The unit is instructions, not cycles.
 * Board constants come from the board manifest: TS_BOARD_NAME, TS_CPU_NAME, TS_CLOCK_HZ,
 * TS_UART_BASE.
 */
#include <stdint.h>

#include "dut.h"
#include "dut_port.h"
#include "model_glue.h"

#define REG8(addr) (*(volatile uint8_t *)(addr))
#define UART_THR REG8(TS_UART_BASE + 0u)
#define UART_RBR REG8(TS_UART_BASE + 0u)
#define UART_LSR REG8(TS_UART_BASE + 5u)
#define UART_LSR_DR 0x01u
#define UART_LSR_THRE 0x20u
#define FINISHER (*(volatile uint32_t *)0x100000u)


int main(void);

static void uart_putc(char c) {
    while (!(UART_LSR & UART_LSR_THRE)) {
    }
    UART_THR = (uint8_t)c;
}

#include "emulated_port.h"

static uint8_t uart_getc(void) {
    while (!(UART_LSR & UART_LSR_DR)) {
    }
    return UART_RBR;
}

static void uart_puts(const char *s) {
    while (*s) uart_putc(*s++);
}

/* The virt test finisher: 0x5555 stops QEMU with status 0, (code << 16) | 0x3333 with `code`. */
static void finish(int code) { FINISHER = code == 0 ? 0x5555u : ((uint32_t)code << 16) | 0x3333u; }

uint64_t dut_port_ticks(void) {
    uint32_t hi, lo, hi2;
    do {
        __asm__ volatile("csrr %0, minstreth" : "=r"(hi));
        __asm__ volatile("csrr %0, minstret" : "=r"(lo));
        __asm__ volatile("csrr %0, minstreth" : "=r"(hi2));
    } while (hi != hi2);
    return (uint64_t)hi << 32 | lo;
}

uint64_t dut_port_ticks_to_units(uint64_t ticks) { return ticks; }

void dut_port_timer_sync(void) {} /* an instruction counter has no coarse ticks */

const dut_target_t *dut_port_target(void) {
    static const dut_target_t target = {
        TS_BOARD_NAME, TS_CPU_NAME, TS_CLOCK_HZ, "minstret-icount", "instructions", 1000u,
    };
    return &target;
}

int dut_port_exit(int code) {
    finish(code);
    return 0;
}

/* Any trap: say so on the serial line (the harness reports it) and stop the emulator. */
__attribute__((interrupt("machine"), aligned(4))) void trap_handler(void) {
    uint32_t cause, epc;
    __asm__ volatile("csrr %0, mcause" : "=r"(cause));
    __asm__ volatile("csrr %0, mepc" : "=r"(epc));
    uart_puts("\r\ne-[fault: mcause ");
    print_hex32(cause);
    uart_puts(" mepc ");
    print_hex32(epc);
    uart_puts("]\r\n");
    finish(3);
    for (;;) {
    }
}

void c_start(void) {
    uint32_t *src, *dst, *sp;
    for (src = &_sidata, dst = &_sdata; dst < &_edata;) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    __asm__ volatile("mv %0, sp" : "=r"(sp));
    for (dst = &__stack_start; dst < sp - 16; dst++) *dst = PAINT;
    __asm__ volatile("csrw mtvec, %0" ::"r"((uintptr_t)trap_handler));
    (void)main();
    finish(0);
    for (;;) {
    }
}

__attribute__((naked, section(".text.start"))) void _start(void) {
    __asm__ volatile(
        ".option push\n\t.option norelax\n\t"
        "la gp, __global_pointer$\n\t"
        ".option pop\n\t"
        "la sp, __stack_end\n\t"
        "j c_start");
}

#if TINYSEEK_OTA
/* A power cut: the test finisher stops the emulator at once with code 3; the region stays. */
void dut_port_power_cut(void) {
    finish(3);
    for (;;) {
    }
}
#endif

int main(void) {
    dut_init(&tinyseek_model);
    for (;;) dut_feed(uart_getc());
}
