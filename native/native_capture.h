/* native_capture.h: what capture_common.c, numpy_handler.c and native mode share
 * (not seen by cffi; their entry points are at the end of mprofile.h).
 *
 * Two sources of memory that CPython's allocator hooks never see:
 *  - NumPy array data (numpy_handler.c): NumPy's default data-memory handler (NEP 49) is
 *    wrapped in place, so every context and thread that uses it is covered.
 *  - Native mode (native_mode.h): the malloc/mmap family imported by extension libraries,
 *    redirected in their GOT (the ELF relocation slots the dynamic linker filled).
 * Both record through the sampler's own paths (mp_should_sample, mp_record_alloc,
 * mp_record_free, ...). capture_common.c adds what both need: recording a sample made by a
 * thread that released the GIL, forgetting a freed pointer, and writing a pointer into
 * memory that may be read-only (RELRO).
 *
 * Threading: capture.pending_lock protects the deferred samples; it is taken before
 * table.lock, never after. Patching GOT slots is serialized by native.patch_lock (native
 * mode), always taken before the dynamic linker's own lock (dl_iterate_phdr). The whole
 * order, which fork.c follows: native.patch_lock, capture.pending_lock, table.lock (all
 * three in mp_state, state.h).
 */
#ifndef MPROFILE_NATIVE_CAPTURE_H
#define MPROFILE_NATIVE_CAPTURE_H

#include "core.h"

#pragma GCC visibility push(hidden)   /* internal, as in core.h */

/* ---- capture_common.c ----------------------------------------------------------------- */

/* Record a block that mp_should_sample() chose. With the GIL held, the Python stack is read
 * now (mp_record_alloc). Without it, on the main thread, the sample waits until that
 * thread is back in the interpreter (a pending call, run at the next eval-breaker check,
 * normally right after the call into native code returns): its stack is then the line that
 * called into the library. On other threads without the GIL: recorded with no stack. */
void nc_record(void *ptr, size_t size, int allocator);

int nc_pending_forget_slow(void *ptr);

/* A block is being freed (or unmapped, or moved by realloc): drop its deferred sample. */
static inline void nc_pending_forget(void *ptr) {
    if (__atomic_load_n(&mp_state.capture.pending_count, __ATOMIC_RELAXED) != 0)
        (void)nc_pending_forget_slow(ptr);
}

/* A block is being freed: forget it wherever it is recorded. The deferred list is asked
 * first: a sample moves from it to the table under capture.pending_lock, so asking in this
 * order cannot miss a sample that moves meanwhile. */
static inline void nc_forget(void *ptr) {
    if (ptr == NULL) return;
    nc_pending_forget(ptr);
    if (mp_maybe_tracked(ptr)) mp_record_free(ptr);
}

/* Remove the record of `ptr` before a realloc-like call; 1 if there was one (in *saved). */
static inline int nc_take(void *ptr, mp_live_t *saved) {
    if (ptr == NULL) return 0;
    nc_pending_forget(ptr);
    return mp_maybe_tracked(ptr) && mp_record_take(ptr, saved);
}

/* The process's mappings (/proc/self/maps), read once for a batch of writes. */
typedef struct {
    uintptr_t start, end;
    int prot;                 /* PROT_* bits */
} nc_map_t;
typedef struct {
    nc_map_t *maps;
    size_t n;
} nc_maps_t;
int nc_maps_load(nc_maps_t *out);    /* 0 on success */
void nc_maps_free(nc_maps_t *m);

/* Store `value` at `slot` even when the page is read-only (RELRO), restoring the page's
 * protection afterwards. 0 on success, -1 if the page is not mapped or mprotect fails.
 * `maps` is a recent nc_maps_load(), or NULL to read the mappings now. */
int nc_write_pointer(const nc_maps_t *maps, void **slot, void *value);

/* Drop every live record made by `allocator` (used when a capture is uninstalled while the
 * sampler keeps running: those blocks' frees would no longer be seen). */
void nc_purge_allocator(int allocator);

/* numpy_handler.c: what the status report shows. */
void nc_numpy_status(int *installed, unsigned int *feature, const char **name);

/* got_patch.c: what the status report shows. */
typedef struct {
    int supported, installed;
    uint64_t objects, python_objects, slots, failures, scans;
} nc_native_status_t;
void nc_native_status(nc_native_status_t *out);

/* fork.c's handlers: each module's part, called in the documented lock order. */
void nc_pending_fork_lock(void);
void nc_pending_fork_parent(void);
void nc_pending_fork_child(void);
void nc_patch_fork_lock(void);
void nc_patch_fork_unlock(void);

#pragma GCC visibility pop

#endif
