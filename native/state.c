/* state.c: the one instance of the sampler's process-wide state (state.h says why one). */
#include "core.h"

mp_state_t mp_state;   /* zero-initialized (.bss); hidden visibility (core.h) */

/* The defaults that are not zero. A library constructor: it runs when the extension is
 * loaded, before any of its functions can be called, hence before any hook exists. */
__attribute__((constructor)) static void mp_state_init(void) {
    mp_state.config.sample_rate = 128 * 1024;
    mp_state.config.max_frames = 128;
    mp_state.config.generation = 1;   /* threads start at 0: their first sample reseeds */
    for (int d = 0; d < 3; d++) mp_state.hooks.top[d] = -1;
    mp_state.hooks.watermark_fd = -1;
    pthread_mutex_init(&mp_state.table.lock, NULL);
    pthread_mutex_init(&mp_state.capture.pending_lock, NULL);
    pthread_mutex_init(&mp_state.native.patch_lock, NULL);
}
