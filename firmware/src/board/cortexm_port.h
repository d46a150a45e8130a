/* Shared by the bare-metal Cortex-M ports (cortexm_qemu.c, stm32f4.c, nrf51.c): startup and
 * vector table, the timer, stack painting, the fault report and the emulator exit. Include it
 * after the board's own static uart_init(), uart_putc() and uart_getc().
 *
 * Optional hooks of the board file: TS_BOARD_INIT() (clock set-up, run first in main) and
 * TS_RUN_CLOCK_HZ (the clock actually set up, when only known at run time); TS_TIMER_DWT (real cores
 * with a cycle counter). The build defines TS_EMULATED=1 for boards that run under QEMU.
 *
 * Timing under QEMU: with `-icount shift=0` every instruction advances virtual time by 1 ns and
 * SysTick counts the board clock in virtual time, so one SysTick tick is 1e9 / TS_CLOCK_HZ
 * instructions (40 on a 25 MHz board). The timer then reports instructions, not cycles: QEMU
 * has no pipeline model, and DWT CYCCNT reads 0 there. On a real core with TS_TIMER_DWT the
 * timer is DWT CYCCNT: cycles.
 */
#ifndef TINYSEEK_CORTEXM_PORT_H
#define TINYSEEK_CORTEXM_PORT_H

#include <stdint.h>

#include "dut.h"
#include "dut_port.h"
#include "emulated_port.h"
#include "model_glue.h"

#define REG32(addr) (*(volatile uint32_t *)(addr))

/* System control space */
#define SYST_CSR REG32(0xE000E010u)
#define SYST_RVR REG32(0xE000E014u)
#define SYST_CVR REG32(0xE000E018u)
#define SCB_ICSR REG32(0xE000ED04u)
#define SCB_ICSR_PENDSTSET (1u << 26)
#define SCB_CPACR REG32(0xE000ED88u)
#define SCB_CFSR REG32(0xE000ED28u)
#define DEMCR REG32(0xE000EDFCu)
#define DWT_CTRL REG32(0xE0001000u)
#define DWT_CYCCNT REG32(0xE0001004u)

#define SYST_RELOAD 0xFFFFFFu

#ifdef TS_RUN_CLOCK_HZ
#define TS_CLOCK_NOW TS_RUN_CLOCK_HZ
#else
#define TS_CLOCK_NOW TS_CLOCK_HZ
#endif

int main(void);

static void uart_puts(const char *s) {
    while (*s) uart_putc(*s++);
}

/* ---- semihosting ---------------------------------------------------------------------- */

#if TS_EMULATED
static void semihosting_exit(int code) {
    /* SYS_EXIT_EXTENDED with ADP_Stopped_ApplicationExit: QEMU exits with `code`. */
    static uint32_t block[2];
    register uint32_t r0 __asm__("r0") = 0x20u;
    register uint32_t r1 __asm__("r1") = (uint32_t)block;
    block[0] = 0x20026u;
    block[1] = (uint32_t)code;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
}
#else
/* A real board has no debugger attached to catch the breakpoint: it cannot exit. */
#define semihosting_exit(code) ((void)(code))
#endif

/* ---- timer ---------------------------------------------------------------------------- */

#if TS_TIMER_DWT
static uint32_t dwt_last;
static uint64_t dwt_high;

static void timer_init(void) {
    DEMCR |= 1u << 24; /* TRCENA: the DWT on */
    DWT_CYCCNT = 0;
    DWT_CTRL |= 1u; /* CYCCNTENA */
}

/* The 32-bit counter extended to 64 bits on every read (one inference may last 2^32 cycles). */
uint64_t dut_port_ticks(void) {
    uint32_t now = DWT_CYCCNT;
    if (now < dwt_last) dwt_high += 1ull << 32;
    dwt_last = now;
    return dwt_high | now;
}

uint64_t dut_port_ticks_to_units(uint64_t t) { return t; }

void dut_port_timer_sync(void) {} /* a cycle counter has no coarse ticks to align to */

#define TS_TIMER_NAME "dwt-cyccnt"
#define TS_TIMER_UNIT "cycles"
#define TS_TIMER_PER_US (TS_CLOCK_NOW / 1000000u)
#else
static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { systick_wraps++; }

static void timer_init(void) {
    SYST_RVR = SYST_RELOAD;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* processor clock, interrupt on wrap, enabled */
}

uint64_t dut_port_ticks(void) {
    uint32_t hi, v;
    /* Retry while a wrap happened in between or is pending but not yet counted. */
    do {
        hi = systick_wraps;
        v = SYST_CVR;
    } while (hi != systick_wraps || (SCB_ICSR & SCB_ICSR_PENDSTSET));
    return ((uint64_t)hi << 24) + (SYST_RELOAD - v);
}

#if (1000000000LL * 256) % TS_CLOCK_HZ == 0
/* Instructions per tick (1e9 / clock) as a multiple of 1/256, so the conversion is a multiply
 * and a shift: a 64-bit division would link libgcc's division routine. */
#define UNITS_PER_TICK_X256 ((1000000000ull * 256u) / TS_CLOCK_HZ)

uint64_t dut_port_ticks_to_units(uint64_t t) {
    /* ticks * 1e9 / clock, rounded down; exact below 2^64 / UNITS_PER_TICK_X256 ticks */
    return t * UNITS_PER_TICK_X256 >> 8;
}
#elif TS_CLOCK_HZ % 1000000 == 0 && TS_CLOCK_HZ / 1000000 < 65536
/* Any whole number of MHz (168 MHz: 125/21 instructions per tick): ticks * 1000 / MHz by long
 * division in 16-bit digits, 32-bit divisions only. Exact, rounded down. */
uint64_t dut_port_ticks_to_units(uint64_t t) {
    const uint32_t mhz = TS_CLOCK_HZ / 1000000u;
    uint64_t n = t * 1000u, q = 0;
    uint32_t rem = 0;
    int shift;
    for (shift = 48; shift >= 0; shift -= 16) {
        uint32_t cur = (rem << 16) | (uint32_t)((n >> shift) & 0xFFFFu);
        q |= (uint64_t)(cur / mhz) << shift;
        rem = cur % mhz;
    }
    return q;
}
#else
#error "TS_CLOCK_HZ must divide 256e9 or be a whole number of MHz"
#endif

void dut_port_timer_sync(void) {
    uint32_t v = SYST_CVR;
    while (SYST_CVR == v) {
    }
}

#define TS_TIMER_NAME "systick-icount"
#define TS_TIMER_UNIT "instructions"
#define TS_TIMER_PER_US 1000u
#endif

/* ---- the rest of the port ------------------------------------------------------------- */

const dut_target_t *dut_port_target(void) {
#ifdef TS_RUN_CLOCK_HZ /* known at run time, after the clock set-up */
    static dut_target_t target = {TS_BOARD_NAME, TS_CPU_NAME, 0, TS_TIMER_NAME, TS_TIMER_UNIT, 1};
    target.clock_hz = TS_RUN_CLOCK_HZ;
    target.timer_per_us = TS_TIMER_PER_US;
#else
    static const dut_target_t target = {
        TS_BOARD_NAME, TS_CPU_NAME, TS_CLOCK_HZ, TS_TIMER_NAME, TS_TIMER_UNIT, TS_TIMER_PER_US,
    };
#endif
    return &target;
}

int dut_port_exit(int code) {
    semihosting_exit(code);
    return 0;
}

/* ---- startup -------------------------------------------------------------------------- */

/* Any fault: say so on the serial line (the harness reports it) and stop the emulator. */
void Fault_Handler(void) {
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    uart_puts("\r\ne-[fault: exception ");
    print_hex32(ipsr & 0x1FFu);
    uart_puts(" cfsr ");
#if __ARM_ARCH >= 7
    print_hex32(SCB_CFSR);
#else
    print_hex32(0); /* ARMv6-M has no fault status registers */
#endif
    uart_puts("]\r\n");
    semihosting_exit(3);
    for (;;) {
    }
}

void Reset_Handler(void) {
    uint32_t *src, *dst, *sp;

#ifdef __ARM_FP
    /* FPU and, on v8.1-M, MVE: full access to coprocessors 10 and 11 before any FP code. */
    SCB_CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif

    for (src = &_sidata, dst = &_sdata; dst < &_edata;) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;

    /* Paint the stack below the current frame; mem% finds the deepest overwritten word. */
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (dst = &__stack_start; dst < sp - 16; dst++) *dst = PAINT;

    (void)main();
    semihosting_exit(0);
    for (;;) {
    }
}

typedef void (*vector_t)(void);

__attribute__((section(".isr_vector"), used)) static const vector_t vectors[16] = {
    (vector_t)(uintptr_t)&__stack_end,
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    Fault_Handler, /* SecureFault (v8-M) */
    0, 0, 0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMonitor */
    0,
    Fault_Handler, /* PendSV */
#if TS_TIMER_DWT
    Fault_Handler, /* SysTick: not used */
#else
    SysTick_Handler,
#endif
};

int main(void) {
#ifdef TS_BOARD_INIT
    TS_BOARD_INIT();
#endif
    uart_init();
    timer_init();
    dut_init(&tinyseek_model);
    for (;;) dut_feed(uart_getc());
}

#endif /* TINYSEEK_CORTEXM_PORT_H */
