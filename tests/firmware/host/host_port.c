/* Host build of the DUT interpreter for tests: stdin bytes in, replies on stdout.
 * The timer is a fake that advances by 7 per read, and the board cannot exit, so `quit%` gets
 * the error reply a real board gives. */
#include <stdio.h>

#include "dut.h"
#include "dut_port.h"
#include "model_glue.h"

static uint64_t fake_ticks;

void dut_port_write(const char *s, size_t n) { fwrite(s, 1, n, stdout); }

uint64_t dut_port_ticks(void) { return fake_ticks += 7u; }

uint64_t dut_port_ticks_to_units(uint64_t ticks) { return 3u * ticks; }

void dut_port_timer_sync(void) { fake_ticks += 1u; }

/* Energy builds: a marker line where a board pulses its timestamp pin. */
void dut_port_timestamp_pulse(void) { fputs("t-pulse\r\n", stdout); }

const dut_target_t *dut_port_target(void) {
    static const dut_target_t target = {"host", "x86-64", 1000000000UL, "fake", "ticks", 1000UL};
    return &target;
}

void dut_port_mem(dut_mem_t *mem) {
    mem->flash_used = 1000;
    mem->ram_static = 200;
    /* stack_size and stack_peak stay -1: the host has no painted stack */
}

int dut_port_exit(int code) {
    (void)code;
    return 0;
}

int main(void) {
    int c;
    dut_init(&tinyseek_model);
    while ((c = getchar()) != EOF) dut_feed((uint8_t)c);
    return 0;
}
