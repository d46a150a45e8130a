/* STM32F4 (Cortex-M4F), bare metal at register level: no vendor HAL, nothing downloaded. One port
 * for the QEMU `netduinoplus2` machine (STM32F405) and real boards (NUCLEO-F446RE): the clock
 * set-up (HSI -> PLL, flash wait states, bus prescalers, over-drive on the F446), the USART on
 * GPIOA, and the timer. Startup, painting and the fault report are cortexm_port.h.
 *
 * Real boards time with DWT CYCCNT (cycles). QEMU models neither the RCC (its registers read 0,
 * so every wait below gives up after a bounded number of reads and the PLL is never selected)
 * nor the cycle counter, and runs the core at a fixed 168 MHz: there the timer is SysTick under
 * `-icount`, which counts instructions (125/21 instructions per tick at 168 MHz).
 *
 * Board constants come from the board manifest (firmware/platform/tinyseek-qemu/boards):
 * TS_CLOCK_HZ (after the set-up), TS_PLL_M/N/P/Q (from the 16 MHz HSI), TS_FLASH_WS, TS_PPRE1,
 * TS_PPRE2 (CFGR codes of the APB dividers), TS_OVERDRIVE, TS_UART_BASE (USART1, 2 or 6), its
 * clock TS_UART_CLOCK_HZ and TS_UART_TX_PIN / TS_UART_RX_PIN on GPIOA (alternate function 7).
 *
 * Energy mode (-DTINYSEEK_ENERGY_MODE=1, the MLPerf Tiny energy set-up): the serial line is the
 * IO Manager's, TS_ENERGY_UART_BASE / _CLOCK_HZ / _TX_PIN / _RX_PIN at 9600 baud, and the
 * timestamps are falling edges of the open-drain pin TS_TIMESTAMP_PIN of GPIOA.
 */
#include <stdint.h>

#define R32(addr) (*(volatile uint32_t *)(addr))

#ifndef TINYSEEK_ENERGY_MODE
#define TINYSEEK_ENERGY_MODE 0
#endif

#define RCC_CR R32(0x40023800u)
#define RCC_PLLCFGR R32(0x40023804u)
#define RCC_CFGR R32(0x40023808u)
#define RCC_AHB1ENR R32(0x40023830u)
#define RCC_APB1ENR R32(0x40023840u)
#define RCC_APB2ENR R32(0x40023844u)
#define FLASH_ACR R32(0x40023C00u)
#define PWR_CR R32(0x40007000u)
#define PWR_CSR R32(0x40007004u)
#define GPIOA_MODER R32(0x40020000u)
#define GPIOA_OTYPER R32(0x40020004u)
#define GPIOA_BSRR R32(0x40020018u)
#define GPIOA_AFRL R32(0x40020020u)
#define GPIOA_AFRH R32(0x40020024u)

#if TINYSEEK_ENERGY_MODE
#define UART_BASE TS_ENERGY_UART_BASE
#define UART_CLOCK_HZ TS_ENERGY_UART_CLOCK_HZ
#define UART_TX_PIN TS_ENERGY_UART_TX_PIN
#define UART_RX_PIN TS_ENERGY_UART_RX_PIN
#define BAUD 9600u /* the IO Manager's rate */
#define TS_HAS_TIMESTAMP_PIN 1
#else
#define UART_BASE TS_UART_BASE
#define UART_CLOCK_HZ TS_UART_CLOCK_HZ
#define UART_TX_PIN TS_UART_TX_PIN
#define UART_RX_PIN TS_UART_RX_PIN
#define BAUD 115200u
#endif

#define USART_SR R32(UART_BASE + 0x00u)
#define USART_DR R32(UART_BASE + 0x04u)
#define USART_BRR R32(UART_BASE + 0x08u)
#define USART_CR1 R32(UART_BASE + 0x0Cu)
#define USART_SR_RXNE (1u << 5)
#define USART_SR_TXE (1u << 7)

#define HSI_HZ 16000000u

/* Wait until (reg & mask) == want, for at most ~100k reads (a few ms on a real chip, where the
 * HSI, the PLL and the over-drive settle in well under 1 ms). */
static int wait_for(volatile uint32_t *reg, uint32_t mask, uint32_t want) {
    uint32_t n;
    for (n = 0; n < 100000u; n++) {
        if ((*reg & mask) == want) return 1;
    }
    return 0;
}

static uint32_t run_clock_hz = HSI_HZ;

/* HSI -> PLL -> SYSCLK at TS_CLOCK_HZ. On any timeout the core stays on the HSI (16 MHz, APB
 * undivided) and says so: info% reports the clock it runs at. */
static void clock_init(void) {
    RCC_APB1ENR |= 1u << 28; /* PWR */
    RCC_CR |= 1u;            /* HSION */
    if (!wait_for(&RCC_CR, 1u << 1, 1u << 1)) return;
    RCC_CR &= ~(1u << 24); /* PLL off while it is configured */
    RCC_PLLCFGR = TS_PLL_M | (TS_PLL_N << 6) | (((TS_PLL_P / 2u) - 1u) << 16) | (TS_PLL_Q << 24) |
                  (2u << 28); /* source HSI; PLLR = 2 (F446; reserved bits on the F405) */
    RCC_CR |= 1u << 24;       /* PLLON */
    if (!wait_for(&RCC_CR, 1u << 25, 1u << 25)) return;
#if TS_OVERDRIVE
    /* Above 168 MHz the F446 needs the regulator's over-drive (RM0390 5.1.4). */
    PWR_CR |= 1u << 16; /* ODEN */
    if (!wait_for(&PWR_CSR, 1u << 16, 1u << 16)) return;
    PWR_CR |= 1u << 17; /* ODSWEN */
    if (!wait_for(&PWR_CSR, 1u << 17, 1u << 17)) return;
#endif
    /* Wait states first, with prefetch and caches on, then the dividers, then the switch. */
    FLASH_ACR = TS_FLASH_WS | (1u << 8) | (1u << 9) | (1u << 10);
    if (!wait_for(&FLASH_ACR, 0xFu, TS_FLASH_WS)) return;
    RCC_CFGR = (TS_PPRE1 << 10) | (TS_PPRE2 << 13);
    RCC_CFGR = (RCC_CFGR & ~3u) | 2u; /* SW = PLL */
    if (!wait_for(&RCC_CFGR, 3u << 2, 2u << 2)) return;
    run_clock_hz = TS_CLOCK_HZ;
}

#if TINYSEEK_ENERGY_MODE
/* The timestamp pin: open drain, released (the energy monitor's pull-up holds it high). */
static void timestamp_pin_init(void) {
    RCC_AHB1ENR |= 1u; /* GPIOA */
    GPIOA_BSRR = 1u << TS_TIMESTAMP_PIN;
    GPIOA_OTYPER |= 1u << TS_TIMESTAMP_PIN;
    GPIOA_MODER = (GPIOA_MODER & ~(3u << (2 * TS_TIMESTAMP_PIN))) | (1u << (2 * TS_TIMESTAMP_PIN));
}

/* Low for at least 1 us, then released: a loop of clock-in-MHz turns of several cycles each. */
void dut_port_timestamp_pulse(void) {
    volatile uint32_t n;
    GPIOA_BSRR = 1u << (TS_TIMESTAMP_PIN + 16); /* BR: drive low, the edge the monitor records */
    for (n = 0; n < run_clock_hz / 1000000u; n++) {
    }
    GPIOA_BSRR = 1u << TS_TIMESTAMP_PIN; /* BS: release */
}

static void board_init(void) {
    clock_init();
    timestamp_pin_init();
}
#define TS_BOARD_INIT board_init
#else
#define TS_BOARD_INIT clock_init
#endif
#if TS_EMULATED
#define TS_TIMER_DWT 0 /* the core runs at QEMU's fixed clock, TS_CLOCK_HZ */
#else
#define TS_TIMER_DWT 1
#define TS_RUN_CLOCK_HZ run_clock_hz
#endif

static void uart_init(void) {
    uint32_t fck = run_clock_hz == TS_CLOCK_HZ ? UART_CLOCK_HZ : HSI_HZ;
    RCC_AHB1ENR |= 1u; /* GPIOA */
#if UART_BASE == 0x40004400u
    RCC_APB1ENR |= 1u << 17; /* USART2 */
#elif UART_BASE == 0x40011000u
    RCC_APB2ENR |= 1u << 4; /* USART1 */
#elif UART_BASE == 0x40011400u
    RCC_APB2ENR |= 1u << 5; /* USART6 */
#else
#error "the USART base: USART1 (0x40011000), USART2 (0x40004400) or USART6 (0x40011400)"
#endif
    /* TX and RX pins: alternate function 7 */
    GPIOA_MODER = (GPIOA_MODER & ~((3u << (2 * UART_TX_PIN)) | (3u << (2 * UART_RX_PIN)))) |
                  (2u << (2 * UART_TX_PIN)) | (2u << (2 * UART_RX_PIN));
#if UART_TX_PIN < 8
    GPIOA_AFRL = (GPIOA_AFRL & ~(15u << (4 * UART_TX_PIN))) | (7u << (4 * UART_TX_PIN));
#else
    GPIOA_AFRH = (GPIOA_AFRH & ~(15u << (4 * (UART_TX_PIN - 8)))) | (7u << (4 * (UART_TX_PIN - 8)));
#endif
#if UART_RX_PIN < 8
    GPIOA_AFRL = (GPIOA_AFRL & ~(15u << (4 * UART_RX_PIN))) | (7u << (4 * UART_RX_PIN));
#else
    GPIOA_AFRH = (GPIOA_AFRH & ~(15u << (4 * (UART_RX_PIN - 8)))) | (7u << (4 * (UART_RX_PIN - 8)));
#endif
    USART_BRR = (fck + BAUD / 2u) / BAUD; /* 16x oversampling: mantissa and fraction in one */
    USART_CR1 = (1u << 13) | (1u << 3) | (1u << 2); /* UE, TE, RE; 8N1, no interrupts: polled */
}

static void uart_putc(char c) {
    while (!(USART_SR & USART_SR_TXE)) {
    }
    USART_DR = (uint8_t)c;
}

static uint8_t uart_getc(void) {
    while (!(USART_SR & USART_SR_RXNE)) {
    }
    return (uint8_t)USART_DR;
}

#include "cortexm_port.h"
