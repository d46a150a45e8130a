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

#if TINYSEEK_OTA
/* Updates (qemu_m0_ota, docs/updates.md): the region is the chip's own flash, placed by
 * ota_build.py between the program image and the key page at the top (TS_OTA_KEY_PAGE), written
 * through the NVMC with 1 KiB pages and word writes, as on the real chip. QEMU keeps this flash
 * only while its process runs, so a power cut is a system reset inside it: QEMU resets the whole
 * machine, the flash keeps what was written, the loader rewrites the program image (not the
 * region) and the startup code re-initialises RAM. */
#define NVMC_READY REG32(0x4001E400u)
#define NVMC_CONFIG REG32(0x4001E504u)
#define NVMC_ERASEPAGE REG32(0x4001E508u)
#define NVMC_REN 0u
#define NVMC_WEN 1u
#define NVMC_EEN 2u
#define NRF51_PAGE 1024u
#define SCB_AIRCR REG32(0xE000ED0Cu)

#if TS_OTA_SECTOR % 1024 != 0
#error "qemu_m0_ota: the update sector must be whole nRF51 flash pages (1 KiB)"
#endif

static void nvmc_wait(void) {
    while (!(NVMC_READY & 1u)) {
    }
}

static void nvmc_mode(uint32_t mode) {
    NVMC_CONFIG = mode;
    nvmc_wait();
}

void dut_port_flash_erase(uint8_t *p, uint32_t n) {
    uint32_t off;
    nvmc_mode(NVMC_EEN);
    for (off = 0; off < n; off += NRF51_PAGE) {
        NVMC_ERASEPAGE = (uint32_t)(uintptr_t)(p + off);
        nvmc_wait();
    }
    nvmc_mode(NVMC_REN);
}

void dut_port_flash_program_word(uint8_t *p, uint32_t value) {
    nvmc_mode(NVMC_WEN);
    *(volatile uint32_t *)(void *)p = value; /* the NVMC takes whole aligned words only */
    nvmc_wait();
    nvmc_mode(NVMC_REN);
}

/* AIRCR.SYSRESETREQ (NVIC_SystemReset): QEMU resets the machine in the same process. */
void dut_port_power_cut(void) {
    __asm__ volatile("dsb" ::: "memory");
    SCB_AIRCR = 0x05FA0004u; /* VECTKEY, SYSRESETREQ */
    __asm__ volatile("dsb" ::: "memory");
    for (;;) {
    }
}
#endif
