/* native_mode.h: what native mode's three files share (not seen by cffi).
 *
 * Native mode samples the malloc/mmap family that extension libraries call:
 *  - native_wrappers.c: the wrappers, generated from one list where they share a shape,
 *    and the table of hooked functions (nc_hooks);
 *  - got_patch.c: pointing the loaded objects' import slots (GOT) at the wrappers, and
 *    back; the entry points mp_native_install/rescan/uninstall;
 *  - dlopen_search.c: dlopen of a bare library name with the original caller's search
 *    path (the dlopen wrapper's caller is this module).
 * Their state is mp_state.native (state.h); its patch_lock comes first in the lock order.
 */
#ifndef MPROFILE_NATIVE_MODE_H
#define MPROFILE_NATIVE_MODE_H

#include "native_capture.h"

#if defined(__linux__) && defined(__GLIBC__) && (defined(__x86_64__) || defined(__aarch64__))
#  define NC_SUPPORTED 1
#else
#  define NC_SUPPORTED 0   /* elsewhere: entry points report "unsupported", nothing else */
#endif

#pragma GCC visibility push(hidden)   /* internal, as in core.h */

/* The native-mode part of the process state (state.h). */
#define NAT mp_state.native

/* A hooked function: declared once, for patching, restoring, dlsym and the tests. */
typedef struct {
    const char *name;
    void *library;   /* wrapper used in extension libraries */
    void *python;    /* wrapper used in the interpreter's objects, NULL: left alone */
    void *real;      /* put back when a slot's original value is unknown */
} nc_hook_t;

#if NC_SUPPORTED
/* native_wrappers.c */
const nc_hook_t *nc_find_hook(const char *name);     /* NULL: not a function we hook */

static inline int nc_is_our_wrapper(const nc_hook_t *h, void *value) {
    return value != NULL && (value == h->library || value == h->python);
}

/* got_patch.c: patch the objects loaded since the last scan (takes patch_lock). */
void nc_rescan_if_changed(void);

/* dlopen_search.c: dlopen(file, mode) of a bare name (no '/') as `caller` would. */
void *nc_dlopen_as(const char *file, int mode, const void *caller);
#endif

#pragma GCC visibility pop

#endif
