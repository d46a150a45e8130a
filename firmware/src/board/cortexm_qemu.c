/* Emulated Cortex-M boards (QEMU mps2-an386, mps2-an500, mps3-an547): startup and vector
 * table, the CMSDK APB UART, SysTick as the timer, stack painting, semihosting exit.
 *
 * Timing: with QEMU's `-icount shift=0` every instruction advances virtual time by 1 ns and
 * SysTick counts the board clock in virtual time, so one SysTick tick is 1e9 / TS_CLOCK_HZ
 * instructions (40 on a 25 MHz board). The timer therefore reports instructions, not cycles:
 * QEMU has no pipeline model. DWT CYCCNT reads 0 under QEMU and is not used.
 *
 * Board constants come from the board manifest (firmware/platform/tinyseek-qemu/boards):
 * TS_BOARD_NAME, TS_CPU_NAME, TS_CLOCK_HZ, TS_UART_BASE.
 */
#include <stdint.h>

#include "dut.h"
#include "dut_port.h"
#include "model_glue.h"

#define REG32(addr) (*(volatile uint32_t *)(addr))

/* CMSDK APB UART */
#define UART_DATA REG32(TS_UART_BASE + 0x00u)
#define UART_STATE REG32(TS_UART_BASE + 0x04u)
#define UART_CTRL REG32(TS_UART_BASE + 0x08u)
#define UART_BAUDDIV REG32(TS_UART_BASE + 0x10u)
#define UART_STATE_TXFULL 1u
#define UART_STATE_RXFULL 2u

/* System control space */
#define SYST_CSR REG32(0xE000E010u)
#define SYST_RVR REG32(0xE000E014u)
#define SYST_CVR REG32(0xE000E018u)
#define SCB_ICSR REG32(0xE000ED04u)
#define SCB_ICSR_PENDSTSET (1u << 26)
#define SCB_CPACR REG32(0xE000ED88u)
#define SCB_CFSR REG32(0xE000ED28u)

#define SYST_RELOAD 0xFFFFFFu


int main(void);

/* ---- UART ----------------------------------------------------------------------------- */

static void uart_init(void) {
    UART_CTRL = 0;
    UART_BAUDDIV = TS_CLOCK_HZ / 115200u;
    UART_CTRL = 3u; /* TX and RX enabled, no interrupts: the firmware polls */
}

static void uart_putc(char c) {
    while (UART_STATE & UART_STATE_TXFULL) {
    }
    UART_DATA = (uint8_t)c;
}

#include "emulated_port.h"

static uint8_t uart_getc(void) {
    while (!(UART_STATE & UART_STATE_RXFULL)) {
    }
    return (uint8_t)UART_DATA;
}

static void uart_puts(const char *s) {
    while (*s) uart_putc(*s++);
}

/* ---- semihosting ---------------------------------------------------------------------- */

static void semihosting_exit(int code) {
    /* SYS_EXIT_EXTENDED with ADP_Stopped_ApplicationExit: QEMU exits with `code`. */
    static uint32_t block[2];
    register uint32_t r0 __asm__("r0") = 0x20u;
    register uint32_t r1 __asm__("r1") = (uint32_t)block;
    block[0] = 0x20026u;
    block[1] = (uint32_t)code;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
}

/* ---- timer ---------------------------------------------------------------------------- */

static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { systick_wraps++; }

uint64_t dut_port_ticks(void) {
    uint32_t hi, v;
    /* Retry while a wrap happened in between or is pending but not yet counted. */
    do {
        hi = systick_wraps;
        v = SYST_CVR;
    } while (hi != systick_wraps || (SCB_ICSR & SCB_ICSR_PENDSTSET));
    return ((uint64_t)hi << 24) + (SYST_RELOAD - v);
}

/* Instructions per tick (1e9 / clock) as a multiple of 1/256, so the conversion is a multiply
 * and a shift: a 64-bit division would link libgcc's division routine. */
#if (1000000000LL * 256) % TS_CLOCK_HZ != 0
#error "TS_CLOCK_HZ must divide 256e9 (1e9 / clock a multiple of 1/256), e.g. 25 MHz or 32 MHz"
#endif
#define UNITS_PER_TICK_X256 ((1000000000ull * 256u) / TS_CLOCK_HZ)

uint64_t dut_port_ticks_to_units(uint64_t t) {
    /* ticks * 1e9 / clock, rounded down; exact below 2^64 / UNITS_PER_TICK_X256 ticks */
    return t * UNITS_PER_TICK_X256 >> 8;
}

void dut_port_timer_sync(void) {
    uint32_t v = SYST_CVR;
    while (SYST_CVR == v) {
    }
}

/* ---- the rest of the port ------------------------------------------------------------- */

const dut_target_t *dut_port_target(void) {
    static const dut_target_t target = {
        TS_BOARD_NAME, TS_CPU_NAME, TS_CLOCK_HZ, "systick-icount", "instructions", 1000u,
    };
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
    print_hex32(SCB_CFSR);
    uart_puts("]\r\n");
    semihosting_exit(3);
    for (;;) {
    }
}

void Reset_Handler(void) {
    uint32_t *src, *dst, *sp;

    /* FPU and, on v8.1-M, MVE: full access to coprocessors 10 and 11 before any FP code. */
    SCB_CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");

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
    SysTick_Handler,
};

int main(void) {
    uart_init();
    SYST_RVR = SYST_RELOAD;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* processor clock, interrupt on wrap, enabled */
    dut_init(&tinyseek_model);
    for (;;) dut_feed(uart_getc());
}
