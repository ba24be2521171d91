/* core.h: what the native sampler's files share with each other (not seen by cffi).
 *
 * Threading model, in one place:
 *  - table.lock (mp_state.table.lock, a pthread mutex; state.h) protects the live-pointer
 *    table, the interned frames and tracebacks, and the counters. It is held only for
 *    short, non-allocating work (our own tables grow with mmap, mp_os_alloc, which no
 *    hook of ours intercepts), never while calling the wrapped allocator, and never while
 *    calling into Python.
 *  - The GIL is never *taken* inside an allocator hook. MEM and OBJ hooks always run with
 *    it held (CPython's rule); RAW hooks may not, and then record no Python stack.
 *  - Per-thread sampling state lives in thread-local storage and needs no lock.
 *  - Functions named *_locked must be called with table.lock held.
 */
#ifndef MPROFILE_CORE_H
#define MPROFILE_CORE_H

#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

/* Every symbol declared from here on is internal to the extension. Saying so lets the
 * compiler address our state (mp_state, state.h) directly (one RIP-relative load) instead
 * of through the GOT (a load of the address, then the value): one instruction less on
 * every hook's fast path. Only PyInit_* (declared by cffi with PyMODINIT_FUNC) is
 * exported. CPython's own headers stay outside, above: their symbols live in the
 * interpreter. */
#pragma GCC visibility push(hidden)

#include "mprofile.h"
#include "state.h"     /* mp_state: every process-wide variable, one struct */

/* Allocator codes, the same numbers as mprofile_ipy.model.Allocator. */
enum { MP_ALLOC_RAW = 0, MP_ALLOC_MEM = 1, MP_ALLOC_OBJ = 2, MP_ALLOC_NUMPY = 3,
       MP_ALLOC_NATIVE = 4 };

#define MP_NO_STACK_TB 0u          /* traceback id 0: an allocation with no Python frame */

/* ---- sampler.c: per-thread countdown ------------------------------------------------ */

typedef struct {
    int64_t countdown;    /* bytes until the next sample point */
    uint64_t rng;         /* xorshift64* state */
    uint32_t generation;  /* mp_state.config.generation this state was drawn for */
    int busy;             /* reentrancy depth: >0 while inside a hook or the profiler */
    uint32_t probe;       /* 1 while hooks.c probes which of its layers are reachable */
    int32_t pause;        /* pauses of the profiler's Python code (mp_pause_alloc) ... */
    uint32_t pause_gen;   /* ... counted only while this equals mp_state.config.generation */
    uint32_t label;       /* mp_set_thread_label: part of every traceback this thread
                           * records (0: none); reset to 0 in a fork child */
} mp_tls_t;

/* Per-thread state, read on every allocation. The initial-exec TLS model makes that one
 * %fs-relative load instead of a call to __tls_get_addr (measured: the call alone cost
 * ~40% on small-object churn). It takes 40 bytes of the static TLS surplus that glibc
 * reserves for dlopen'ed libraries (rtld.optional_static_tls, 512 bytes by default). */
extern _Thread_local mp_tls_t t_state __attribute__((tls_model("initial-exec")));

/* Reentrancy guard. While a hook calls the allocator it wraps, nested calls must pass
 * through untouched: pymalloc serves blocks over 512 bytes from PyMem_RawMalloc, and
 * counting that block in both the OBJ and the RAW domain would count it twice. The
 * profiler's own work (snapshots, bookkeeping) is guarded the same way. */
static inline int mp_busy(void) { return t_state.busy != 0; }
static inline void mp_enter(void) { t_state.busy++; }
static inline void mp_leave(void) { t_state.busy--; }

void mp_sampler_configure(int64_t rate, uint64_t seed);  /* new generation, GIL held */
int mp_sample_slow(mp_tls_t *t, size_t size);            /* countdown crossed or stale */

/* The hot-path decision: is this allocation of `size` bytes a sample? One subtraction and
 * a compare on the calling thread's countdown; everything else is out of line. */
static inline int mp_should_sample_t(mp_tls_t *t, size_t size) {
    if (t->busy || !__atomic_load_n(&mp_state.config.enabled, __ATOMIC_RELAXED)) return 0;
    int64_t s = size > (size_t)INT64_MAX ? INT64_MAX : (int64_t)size;
    if (t->countdown > s && !__atomic_load_n(&mp_state.config.exact, __ATOMIC_RELAXED) &&
        t->generation == __atomic_load_n(&mp_state.config.generation, __ATOMIC_RELAXED)) {
        t->countdown -= s;
        return 0;
    }
    return mp_sample_slow(t, size);
}

static inline int mp_should_sample(size_t size) { return mp_should_sample_t(&t_state, size); }

/* The PyMem hooks' fast path, decided *before* calling the wrapped allocator so that the
 * hook can end in a tail call (no stack frame, no saved registers): true when this
 * allocation certainly is not a sample, and then its bytes are already charged to the
 * countdown. It skips the busy/enabled/exact checks of mp_should_sample_t on purpose:
 *  - exact mode keeps the countdown at 0 (mp_sample_slow never draws a gap), and a
 *    restart bumps mp_state.config.generation, so neither can take this path by mistake;
 *  - a busy thread (the profiler's own work) may charge its bytes to the countdown: the
 *    gap is exponential, hence memoryless, so the user's bytes still see sample points
 *    at the same rate, and a point that falls inside busy work is dropped by the slow
 *    path, which draws a fresh gap;
 *  - with sampling off, the only hooks still called are pass-through layers, whose slow
 *    path checks their `active` flag.
 * The countdown is never negative, so comparing it as unsigned with a size_t is exact for
 * every size, 64-bit ones included. */
static inline int mp_fast_skip(size_t size) {
    mp_tls_t *t = &t_state;
    if ((uint64_t)t->countdown > size &&
        t->generation == __atomic_load_n(&mp_state.config.generation, __ATOMIC_RELAXED)) {
        t->countdown -= (int64_t)size;
        return 1;
    }
    return 0;
}

/* The same without the generation check, for the hooks installed while
 * mp_state.config.unchecked_ok:
 * every countdown a thread can hold was then drawn at the current rate, so an old one is
 * as good as a new one (sampler.c, "Stale countdowns"). `size` <= MP_POOL_MAX.
 * On x86-64 it subtracts first and branches on the result, in one instruction on the
 * thread-local countdown and a jump (GCC emits a load, compare, subtract and store for
 * the C below): the malloc fast path is then 7 instructions, 3 of them the floor's.
 * A crossing (countdown <= size) gives the bytes back before returning 0, so the slow
 * path sees the countdown untouched; nothing else runs on this thread in between. The
 * countdown is >= 0 and size <= 512, so the signed subtraction cannot overflow. The
 * countdown is an input operand (its address) with a "memory" clobber, not an output:
 * GCC 12 dropped the give-back on the jump path when it was a "+m" output. */
static inline int mp_fast_skip_unchecked(size_t size) {
#if defined(__x86_64__) && defined(__GNUC__)
    __asm__ goto("subq %1, %0\n\tjle %l[crossed]"
                 : /* no outputs: the classic asm goto; the clobber says memory changed */
                 : "m"(t_state.countdown), "r"((int64_t)size)
                 : "cc", "memory"
                 : crossed);
    return 1;
crossed:
    t_state.countdown += (int64_t)size;
    return 0;
#else
    mp_tls_t *t = &t_state;
    if ((uint64_t)t->countdown > size) {
        t->countdown -= (int64_t)size;
        return 1;
    }
    return 0;
#endif
}
uint64_t mp_thread_ident(void);
double mp_weight(uint64_t size);                         /* 1 / P(sampled) */

/* ---- table.c: live pointers, counters, the free-path filter --------------------------- */

void mp_lock(void);
void mp_unlock(void);

/* The sampler's long-lived tables (live table, interned frames and tracebacks, names)
 * live in their own mappings, not in the C heap: in the heap they sat between the
 * program's blocks and stopped glibc from growing blocks in place (json's and str.join's
 * buffers), which then cost a copy per realloc (up to 1.6% more instructions on a json
 * workload). Whole pages, zero-filled; `bytes` must be what the block was allocated or
 * last resized with. mp_os_realloc keeps the contents (mremap) and returns NULL, leaving
 * the block as it was, when the memory cannot be had. No lock, no allocation. */
void *mp_os_alloc(size_t bytes);
void mp_os_free(void *p, size_t bytes);
void *mp_os_realloc(void *p, size_t old_bytes, size_t new_bytes);

/* Counting filters, used in front of the live table (table.c explains why) and of the
 * deferred samples (capture_common.c): one byte per bucket of addresses, the number of
 * members in that bucket, non-zero while it holds at least one. Bytes are read without a
 * lock (relaxed loads) and written under the owner's lock. A count that reaches
 * UINT8_MAX saturates and stays (only ever a false "maybe"). A bucket is 16 bytes of
 * address space (every allocator we wrap returns 16-byte aligned blocks; a finer one only
 * leaves buckets unused), taken modulo the map's size: blocks that live within
 * 16 << nbits bytes of each other never share a bucket, and heap addresses a multiple of
 * that apart are as likely as any others. No hash: the free path's test is a shift, a
 * mask and one byte compare (8 instructions with the tail call, 13 with the
 * multiplicative hash and bitset this replaced), and nearby frees read nearby bytes. Called with a
 * constant `nbits`, everything folds into constants. */
static inline size_t mp_filter_slot(const void *ptr, unsigned nbits) {
    return (size_t)((uintptr_t)ptr >> 4) & (((size_t)1 << nbits) - 1);
}
static inline int mp_filter_test(const uint8_t *counts, unsigned nbits, const void *ptr) {
    /* A plain read on purpose, although writers may run meanwhile: a byte load cannot tear
     * on any target (the writers' stores are relaxed atomics), the value is used once, and
     * GCC then compares the byte in memory (cmpb), one instruction less per free than the
     * load and test it emits for __atomic_load_n. Why a stale answer is harmless: table.c. */
    return counts[mp_filter_slot(ptr, nbits)] != 0;
}
static inline void mp_filter_add(uint8_t *counts, unsigned nbits, const void *ptr) {
    size_t i = mp_filter_slot(ptr, nbits);
    uint8_t c = counts[i];
    if (c != UINT8_MAX) __atomic_store_n(&counts[i], (uint8_t)(c + 1), __ATOMIC_RELAXED);
}
static inline void mp_filter_remove(uint8_t *counts, unsigned nbits, const void *ptr) {
    size_t i = mp_filter_slot(ptr, nbits);
    uint8_t c = counts[i];
    if (c != UINT8_MAX && c != 0)
        __atomic_store_n(&counts[i], (uint8_t)(c - 1), __ATOMIC_RELAXED);
}
static inline void mp_filter_clear(uint8_t *counts, unsigned nbits) {
    /* Word stores (relaxed atomics, like every write a lock-free reader may see). */
    uint64_t *words = (uint64_t *)(void *)counts;
    for (size_t i = 0; i < ((size_t)1 << nbits) / 8; i++)
        __atomic_store_n(&words[i], (uint64_t)0, __ATOMIC_RELAXED);
}

/* The free-path filter of the live table: may `ptr` be a live sampled pointer? */
static inline int mp_maybe_tracked(const void *ptr) {
    return mp_filter_test(mp_state.table.filter_map, MP_FILTER_BITS, ptr);
}
/* 0: inserted, 1: replaced a stale record (copied to *replaced), -1: out of memory */
int mp_table_insert_locked(const mp_live_t *rec, mp_live_t *replaced);
int mp_table_take_locked(uintptr_t ptr, mp_live_t *out); /* remove; 1 if it was there */
const mp_live_t *mp_table_find_locked(uintptr_t ptr);
void mp_table_clear_locked(void);
size_t mp_table_count_locked(void);
size_t mp_table_copy_locked(mp_live_t *out, size_t cap);
uint64_t mp_table_memory_locked(void);

/* ---- stacks.c: safe frame walk and interning ----------------------------------------- */

/* Interns the calling thread's Python stack (if this thread holds the GIL) together with
 * the thread's label and returns its traceback id; MP_NO_STACK_TB when there is no Python
 * frame to read and no label. */
uint32_t mp_capture_traceback_locked(void);
void mp_tb_account_locked(uint32_t tb, double weight, uint64_t size);
/* Detach all interned frames: returns an array of code objects the caller must DECREF
 * with the GIL held and *without* table.lock (a DECREF can free, which re-enters the
 * hooks). */
PyObject **mp_intern_detach_locked(size_t *ncodes, size_t *bytes);   /* mp_os_free(codes, bytes) */
uint64_t mp_intern_memory_locked(void);

/* A frame whose code object the profiler let go: its names and lines, kept in an arena. */
typedef struct mp_resolved {
    const char *filename, *name;
    int32_t lineno, firstlineno;
} mp_resolved_t;
typedef struct mp_names {
    int refs;                       /* the interning tables + each snapshot; GIL held */
    uint64_t bytes;
    struct mp_names_chunk *chunks;
} mp_names_t;
void mp_names_release(mp_names_t *n);          /* GIL held */
void mp_intern_compact(int force);              /* GIL held, table.lock not held */
void mp_intern_maybe_schedule_compact(void);    /* table.lock not held */
/* Names and line of (code, lasti); GIL held, may allocate (never with table.lock held). */
void mp_resolve_frame(PyObject *code, int32_t lasti, mp_frame_info_t *out);

typedef struct {
    size_t ntb;
    uint64_t *tbs;      /* 4 per tb: first, nframes, total, label */
    double *alloc;      /* 4 per tb: count, bytes, samples, variance of bytes */
    size_t nrefs;
    uint32_t *refs;
    size_t nframes;
    PyObject **codes;   /* strong references, NULL for a resolved frame (res[i]) */
    int32_t *lasti;     /* byte offset of the instruction, -1 if not started */
    mp_resolved_t **res;
    mp_names_t *names;  /* one reference, for res */
} mp_intern_copy_t;
int mp_intern_copy_locked(mp_intern_copy_t *out);        /* INCREFs need the GIL: held */

/* ---- hooks.c: allocator wrappers -------------------------------------------------------- */

int mp_hooks_install(void);      /* GIL held */
void mp_hooks_uninstall(void);   /* GIL held */
int mp_hooks_foreign(void);

/* ---- api.c ------------------------------------------------------------------------------ */
void mp_set_error(const char *msg);

/* The record paths, shared by every hook (PyMem domains, NumPy handler, native mode). */
void mp_record_alloc(void *ptr, size_t size, int allocator);
void mp_record_free(void *ptr);
int mp_record_take(void *ptr, mp_live_t *saved);
void mp_record_restore(const mp_live_t *saved);

#pragma GCC visibility pop

#endif
