/* Host driver for the class probabilities of dut.c on any logits: stdin holds
 * "C K" and then rows of C int16 logits; each row's m-results / m-logits lines go to stdout.
 * dut.c is included so its static out_results() runs as the firmware runs it. */
#include <stdio.h>
#include <stdlib.h>

#include "dut.c"

void dut_port_write(const char *s, size_t n) { fwrite(s, 1, n, stdout); }
uint64_t dut_port_ticks(void) { return 0; }
uint64_t dut_port_ticks_to_units(uint64_t ticks) { return ticks; }
void dut_port_timer_sync(void) {}
const dut_target_t *dut_port_target(void) {
    static const dut_target_t target = {"host", "x86-64", 1, "none", "ticks", 1};
    return &target;
}
void dut_port_mem(dut_mem_t *mem) { (void)mem; }
int dut_port_exit(int code) { return code * 0; }

int main(void) {
    static tinyseek_model_api api;
    static dut_model_t model;
    int c, k, v;
    unsigned long mult;
    int16_t *row;
    if (scanf("%d %lu", &c, &mult) != 2 || c < 1) return 2;
    row = calloc((size_t)c, sizeof *row);
    if (!row) return 2;
    api.num_classes = c;
    api.softmax_mult = (uint32_t)mult;
    model.api = &api;
    model.logits_out = row;
    M = &model;
    A = &api;
    for (;;) {
        for (k = 0; k < c; k++) {
            if (scanf("%d", &v) != 1) {
                free(row);
                return k == 0 ? 0 : 2;
            }
            row[k] = (int16_t)v;
        }
        out_results();
    }
}
