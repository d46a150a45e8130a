/* Emulated Cortex-M boards (QEMU mps2-an386, mps2-an500, mps3-an547): the CMSDK APB UART; the
 * rest of the port (startup, SysTick as the timer, painting, semihosting) is cortexm_port.h.
 *
 * Board constants come from the board manifest (firmware/platform/tinyseek-qemu/boards):
 * TS_BOARD_NAME, TS_CPU_NAME, TS_CLOCK_HZ, TS_UART_BASE.
 */
#include <stdint.h>

/* CMSDK APB UART */
#define UART_DATA (*(volatile uint32_t *)(TS_UART_BASE + 0x00u))
#define UART_STATE (*(volatile uint32_t *)(TS_UART_BASE + 0x04u))
#define UART_CTRL (*(volatile uint32_t *)(TS_UART_BASE + 0x08u))
#define UART_BAUDDIV (*(volatile uint32_t *)(TS_UART_BASE + 0x10u))
#define UART_STATE_TXFULL 1u
#define UART_STATE_RXFULL 2u

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

static uint8_t uart_getc(void) {
    while (!(UART_STATE & UART_STATE_RXFULL)) {
    }
    return (uint8_t)UART_DATA;
}

#include "cortexm_port.h"

#if TINYSEEK_OTA
/* A power cut: the emulator stops at once with code 3; RAM is gone, the region stays. */
void dut_port_power_cut(void) {
    semihosting_exit(3);
    for (;;) {
    }
}
#endif
