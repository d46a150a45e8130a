/* Compiled into the `pio test` build (this suite's only source; the checks themselves run on
 * the host): the line limit must fit a `db` command with the 64-byte chunks the host harness
 * sends by default (tinyseek.harness.protocol.DutClient.load). */
#include "dut.h"

typedef char dut_line_fits_a_64_byte_db_chunk[(DUT_LINE_MAX >= 3 + 2 * 64) ? 1 : -1];
