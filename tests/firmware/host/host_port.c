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

#if TINYSEEK_OTA
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* The updatable region: the file named by TS_FLASH_FILE, mapped shared, so what the firmware
 * wrote survives a power cut (the process exits at once) as QEMU's file-backed region does. */
uint8_t *dut_port_flash(uint32_t *size) {
    const char *path = getenv("TS_FLASH_FILE");
    int fd;
    off_t n;
    void *p;
    if (!path || (fd = open(path, O_RDWR)) < 0) return NULL;
    n = lseek(fd, 0, SEEK_END);
    p = mmap(NULL, (size_t)n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return NULL;
    *size = (uint32_t)n;
    return (uint8_t *)p;
}

void dut_port_power_cut(void) {
    fflush(stdout);
    _exit(3);
}
#endif

int main(void) {
    int c;
    dut_init(&tinyseek_model);
    while ((c = getchar()) != EOF) dut_feed((uint8_t)c);
    return 0;
}
