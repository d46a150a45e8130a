/* Host driver of the audio front end's tests: int16 little-endian samples on stdin, one
 * frame of int8 features per complete hop on stdout. */
#include <stdio.h>
#include <stdlib.h>

#include "audio_frontend.h"

int main(void) {
    static int32_t scratch[AUDIO_FE_SCRATCH_WORDS];
    int16_t hop[AUDIO_FE_HOP];
    int8_t features[AUDIO_FE_CHANNELS];
    audio_fe_state state;
    audio_fe_init(&state);
    while (fread(hop, sizeof hop[0], AUDIO_FE_HOP, stdin) == AUDIO_FE_HOP) {
        audio_fe_frame(&state, hop, features, scratch);
        if (fwrite(features, 1, sizeof features, stdout) != sizeof features) return 1;
    }
    return ferror(stdin) ? 1 : 0;
}
