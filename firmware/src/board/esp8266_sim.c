/* ESP8266 (Xtensa lx106) on QEMU's `sim` machine (-M sim -cpu lx106), bare metal: the image uses
 * the ESP8266's memory map (code in IRAM at 0x40100000; read-only data, data, stack in DRAM at
 * 0x3FFE8000, where the ESP8266 keeps them too), the console and the exit are QEMU's simcall
 * semihosting on the emulator's stdin/stdout (the sim machine has no UART; the host harness
 * relays them to a TCP port), and the timer is CCOUNT.
 *
 * Timing: the sim core's CCOUNT runs at 40 MHz of virtual time; with `-icount shift=0` (1 ns per
 * instruction) one tick is 25 instructions. QEMU has no pipeline model: instructions, not cycles.
 *
 * The sim machine starts every core at its reset vector (0x50000000 for lx106, the sysrom) and
 * ignores the ELF entry: a 16-byte stub there (section .sim_reset, not part of a board image)
 * sets the stack pointer and jumps to _start.
 *
 * The lx106 has no divide instruction and its libgcc lacks the division and 64-bit multiply
 * routines the ESP8266's mask ROM supplies: they are below.
 */
#include <stdint.h>

#include "dut.h"
#include "dut_port.h"
#include "model_glue.h"

#define CCOUNT_HZ 40000000u

static int simcall(int nr, int a, const void *b, int c) {
    register int a2 __asm__("a2") = nr;
    register int a3 __asm__("a3") = a;
    register const void *a4 __asm__("a4") = b;
    register int a5 __asm__("a5") = c;
    __asm__ volatile("simcall" : "+r"(a2), "+r"(a3), "+r"(a4), "+r"(a5) : : "memory");
    return a2;
}
#define SYS_EXIT 1
#define SYS_READ 3
#define SYS_WRITE 4

static void uart_putc(char c) { simcall(SYS_WRITE, 1, &c, 1); }

#include "emulated_port.h"

static uint8_t uart_getc(void) {
    uint8_t c;
    while (simcall(SYS_READ, 0, &c, 1) != 1) {
    }
    return c;
}

/* ---- libgcc helpers the ESP8266 ROM would supply ---------------------------------------- */

uint32_t __udivsi3(uint32_t n, uint32_t d);
uint32_t __umodsi3(uint32_t n, uint32_t d);
int32_t __divsi3(int32_t n, int32_t d);
int32_t __modsi3(int32_t n, int32_t d);
uint64_t __muldi3(uint64_t a, uint64_t b);

uint32_t __udivsi3(uint32_t n, uint32_t d) {
    uint32_t q = 0;
    int i;
    for (i = 31; i >= 0; i--) {
        if ((n >> i) >= d) {
            n -= d << i;
            q |= 1u << i;
        }
    }
    return q;
}

uint32_t __umodsi3(uint32_t n, uint32_t d) { return n - __udivsi3(n, d) * d; }

int32_t __divsi3(int32_t n, int32_t d) {
    uint32_t q = __udivsi3(n < 0 ? 0u - (uint32_t)n : (uint32_t)n, d < 0 ? 0u - (uint32_t)d : (uint32_t)d);
    return (n < 0) != (d < 0) ? (int32_t)(0u - q) : (int32_t)q;
}

int32_t __modsi3(int32_t n, int32_t d) { return n - __divsi3(n, d) * d; }

/* The low 64 bits of a * b with 32-bit multiplies only (the lx106 has MULL, no high-word
 * multiply): the high word of al * bl from 16-bit pieces. */
uint64_t __muldi3(uint64_t a, uint64_t b) {
    uint32_t al = (uint32_t)a, bl = (uint32_t)b;
    uint32_t p00 = (al & 0xFFFFu) * (bl & 0xFFFFu), p01 = (al & 0xFFFFu) * (bl >> 16);
    uint32_t p10 = (al >> 16) * (bl & 0xFFFFu), p11 = (al >> 16) * (bl >> 16);
    uint32_t mid = (p00 >> 16) + (p01 & 0xFFFFu) + (p10 & 0xFFFFu);
    uint32_t hi = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16);
    hi += al * (uint32_t)(b >> 32) + (uint32_t)(a >> 32) * bl;
    return ((uint64_t)hi << 32) | (al * bl);
}

/* ---- timer ------------------------------------------------------------------------------ */

static uint32_t ccount_last;
static uint64_t ccount_high;

uint64_t dut_port_ticks(void) {
    uint32_t now;
    __asm__ volatile("rsr.ccount %0" : "=a"(now));
    if (now < ccount_last) ccount_high += 1ull << 32;
    ccount_last = now;
    return ccount_high | now;
}

uint64_t dut_port_ticks_to_units(uint64_t t) { return t * (1000000000u / CCOUNT_HZ); }

void dut_port_timer_sync(void) {
    uint64_t t = dut_port_ticks();
    while (dut_port_ticks() == t) {
    }
}

const dut_target_t *dut_port_target(void) {
    static const dut_target_t target = {
        TS_BOARD_NAME, TS_CPU_NAME, TS_CLOCK_HZ, "ccount-icount", "instructions", 1000u,
    };
    return &target;
}

int dut_port_exit(int code) {
    simcall(SYS_EXIT, code, 0, 0);
    return 0;
}

/* ---- startup ---------------------------------------------------------------------------- */

__asm__(".section .sim_reset, \"ax\"\n"
        "    j 1f\n"
        "    .align 4\n"
        ".Lsim_sp: .word __stack_end\n"
        ".Lsim_entry: .word _start\n"
        "1:  l32r a1, .Lsim_sp\n"
        "    l32r a0, .Lsim_entry\n"
        "    jx a0\n"
        "    .text\n");

int main(void);
void _start(void);

void _start(void) {
    uint32_t *dst, *sp;
    /* .data and .rodata are loaded in place (DRAM); only .bss is cleared */
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    __asm__ volatile("mov %0, a1" : "=a"(sp));
    for (dst = &__stack_start; dst < sp - 16; dst++) *dst = PAINT;
    (void)main();
    dut_port_exit(0);
    for (;;) {
    }
}

int main(void) {
    dut_init(&tinyseek_model);
    for (;;) dut_feed(uart_getc());
}
