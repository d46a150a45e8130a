/* nRF51 (Cortex-M0, ARMv6-M) on the QEMU `microbit` machine: the nRF51 UART, polled; the rest of
 * the port (startup, SysTick as the timer, painting, semihosting) is cortexm_port.h.
 *
 * QEMU gives the core a SysTick at 16 MHz (62.5 instructions per tick under -icount); a real
 * nRF51 has none (it would time with TIMER0), so this port is for the emulator. The pins are
 * the micro:bit's USB serial (TX P0.24, RX P0.25).
 */
#include <stdint.h>

#define UART_REG(off) (*(volatile uint32_t *)(TS_UART_BASE + (off)))
#define UART_STARTRX UART_REG(0x000u)
#define UART_STARTTX UART_REG(0x008u)
#define UART_RXDRDY UART_REG(0x108u)
#define UART_TXDRDY UART_REG(0x11Cu)
#define UART_ENABLE UART_REG(0x500u)
#define UART_PSELTXD UART_REG(0x50Cu)
#define UART_PSELRXD UART_REG(0x514u)
#define UART_RXD UART_REG(0x518u)
#define UART_TXD UART_REG(0x51Cu)
#define UART_BAUDRATE UART_REG(0x524u)

static void uart_init(void) {
    UART_PSELTXD = 24u;
    UART_PSELRXD = 25u;
    UART_BAUDRATE = 0x01D7E000u; /* 115200 baud */
    UART_ENABLE = 4u;
    UART_STARTTX = 1u;
    UART_STARTRX = 1u;
}

static void uart_putc(char c) {
    UART_TXDRDY = 0;
    UART_TXD = (uint8_t)c;
    while (!UART_TXDRDY) {
    }
}

static uint8_t uart_getc(void) {
    while (!UART_RXDRDY) {
    }
    UART_RXDRDY = 0; /* before reading RXD: the read raises it again while bytes wait */
    return (uint8_t)UART_RXD;
}

#include "cortexm_port.h"
