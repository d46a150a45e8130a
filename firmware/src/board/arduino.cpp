/* Real boards on the Arduino framework: ESP32, ESP32-S3, ESP32-C3 (espressif32) and STM32
 * Nucleo boards (ststm32). The UART is `Serial` at 115200 baud (9600 in energy mode).
 *
 * Timing: the CPU cycle counter. STM32: DWT CYCCNT where the core has one (Cortex-M3 and up);
 * ESP32 family: ESP.getCycleCount() (CCOUNT on Xtensa, the cycle CSR on RISC-V). A core without a
 * cycle counter (Cortex-M0/M0+) times with micros(), which the STM32 core derives from SysTick. Both are 32 bits wide and are extended to 64 bits on every
 * read; the interpreter reads the counter at the start and end of every run, so one inference
 * may last up to 2^32 cycles (about 18 s at 240 MHz).
 * Stack: ESP32 reports the loop task's FreeRTOS high-water mark; STM32 paints up to 8 KiB below
 * the stack pointer at boot.
 * Board names come from the environment's build_flags (TS_BOARD_NAME, TS_CPU_NAME).
 *
 * Energy mode (-DTINYSEEK_ENERGY_MODE=1): `Serial` at 9600 baud (the IO Manager's rate) and an
 * open-drain timestamp pin, TS_TIMESTAMP_PIN: D7 on STM32 Nucleo boards (the pin of the MLPerf
 * Tiny reference ports); other boards have no Arduino header and must name a GPIO.
 */
#include <Arduino.h>

#include "dut.h"
#include "dut_port.h"
#include "model_glue.h"

/* CMSIS defines the DWT cycle counter's bits only for cores that have one. */
#if defined(ARDUINO_ARCH_STM32) && defined(DWT_CTRL_CYCCNTENA_Msk)
#define TS_DWT 1
#endif

#if defined(ARDUINO_ARCH_ESP32)
#include <freertos/FreeRTOS.h>
#include <freertos/task.h>
#endif

#ifndef TS_BOARD_NAME
#define TS_BOARD_NAME "arduino"
#endif
#ifndef TS_CPU_NAME
#define TS_CPU_NAME "unknown"
#endif

static dut_target_t target = {TS_BOARD_NAME, TS_CPU_NAME, 0, "", "", 1};

#ifndef TINYSEEK_ENERGY_MODE
#define TINYSEEK_ENERGY_MODE 0
#endif
#if TINYSEEK_ENERGY_MODE
#define TS_BAUD 9600
#ifndef TS_TIMESTAMP_PIN
#if defined(ARDUINO_ARCH_STM32)
#define TS_TIMESTAMP_PIN D7
#else
#error "TINYSEEK_ENERGY_MODE: name the timestamp GPIO with -DTS_TIMESTAMP_PIN=<pin> (docs/firmware.md, Energy mode)"
#endif
#endif

/* Released (high): an open drain where the core offers one, the energy monitor's pull-up. */
static void timestamp_pin_init(void) {
#ifdef OUTPUT_OPEN_DRAIN
    pinMode(TS_TIMESTAMP_PIN, OUTPUT_OPEN_DRAIN);
#else
    pinMode(TS_TIMESTAMP_PIN, OUTPUT);
#endif
    digitalWrite(TS_TIMESTAMP_PIN, HIGH);
}

void dut_port_timestamp_pulse(void) {
    digitalWrite(TS_TIMESTAMP_PIN, LOW); /* the falling edge the energy monitor records */
    delayMicroseconds(2);                /* held at least 1 us */
    digitalWrite(TS_TIMESTAMP_PIN, HIGH);
}
#else
#define TS_BAUD 115200
#endif

/* ---- timer ---------------------------------------------------------------------------- */

static uint32_t last_count;
static uint64_t high_count;

static uint32_t read_counter(void) {
#if defined(ARDUINO_ARCH_ESP32)
    return ESP.getCycleCount();
#elif defined(TS_DWT)
    return DWT->CYCCNT;
#else
    return micros();
#endif
}

static void timer_init(void) {
#if defined(ARDUINO_ARCH_ESP32)
    target.clock_hz = getCpuFrequencyMhz() * 1000000UL;
    target.timer = "ccount";
    target.timer_unit = "cycles";
    target.timer_per_us = getCpuFrequencyMhz();
#elif defined(TS_DWT)
    CoreDebug->DEMCR |= CoreDebug_DEMCR_TRCENA_Msk;
#if defined(STM32H7xx) || defined(STM32F7xx)
    DWT->LAR = 0xC5ACCE55; /* Cortex-M7 parts lock the DWT after reset */
#endif
    DWT->CYCCNT = 0;
    DWT->CTRL |= DWT_CTRL_CYCCNTENA_Msk;
    target.clock_hz = SystemCoreClock;
    target.timer = "dwt-cyccnt";
    target.timer_unit = "cycles";
    target.timer_per_us = SystemCoreClock / 1000000UL;
#else
    target.clock_hz = F_CPU;
    target.timer = "micros"; /* SysTick-based on the STM32 core */
    target.timer_unit = "us";
    target.timer_per_us = 1;
#endif
    last_count = read_counter();
}

uint64_t dut_port_ticks(void) {
    uint32_t now = read_counter();
    if (now < last_count) high_count += 1ULL << 32;
    last_count = now;
    return high_count | now;
}

uint64_t dut_port_ticks_to_units(uint64_t ticks) { return ticks; }

void dut_port_timer_sync(void) {} /* a cycle counter has no coarse ticks to align to */

/* ---- stack ---------------------------------------------------------------------------- */

#if defined(ARDUINO_ARCH_STM32)
extern "C" char _estack, _end, _sdata, _ebss;
static const uint32_t PAINT = 0xC5C5C5C5u;
static uint32_t *paint_low;

static void stack_paint(void) {
    uint32_t *sp = (uint32_t *)(uintptr_t)__get_MSP();
    uint32_t *low = sp - 8192 / 4;
    uint32_t *heap_guard = (uint32_t *)(&_end + 1024); /* stay clear of the heap */
    if (low < heap_guard) low = heap_guard;
    paint_low = low;
    for (uint32_t *p = low; p < sp - 16; p++) *p = PAINT;
}
#endif

void dut_port_mem(dut_mem_t *mem) {
#if defined(ARDUINO_ARCH_ESP32)
    mem->stack_size = (long)getArduinoLoopTaskStackSize();
    /* ESP-IDF's FreeRTOS counts the high-water mark in bytes. */
    mem->stack_peak = mem->stack_size - (long)uxTaskGetStackHighWaterMark(NULL);
#elif defined(ARDUINO_ARCH_STM32)
    const uint32_t *p = paint_low;
    while (*p == PAINT) p++;
    mem->ram_static = (long)(&_ebss - &_sdata);
    mem->stack_size = (long)(&_estack - (char *)paint_low);
    mem->stack_peak = (long)(&_estack - (const char *)p);
#else
    (void)mem;
#endif
}

/* ---- the rest of the port ------------------------------------------------------------- */

void dut_port_write(const char *s, size_t n) { Serial.write((const uint8_t *)s, n); }

const dut_target_t *dut_port_target(void) { return &target; }

int dut_port_exit(int code) {
    (void)code;
    return 0;
}

void setup() {
#if defined(ARDUINO_ARCH_STM32)
    stack_paint();
#endif
    Serial.begin(TS_BAUD);
    while (!Serial) {
    }
#if TINYSEEK_ENERGY_MODE
    timestamp_pin_init();
#endif
    timer_init();
    dut_init(&tinyseek_model);
}

void loop() {
    while (Serial.available() > 0) dut_feed((uint8_t)Serial.read());
}
