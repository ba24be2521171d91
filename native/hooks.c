/* hooks.c: wrappers around CPython's three allocator domains.
 *
 * Each wrapper calls the allocator it replaced, then asks the sampler whether this block is
 * a sample. Frees ask a lock-free filter first (table.c), so an unsampled free costs one
 * load.
 *
 * Torn allocator structs. PyMem_SetAllocator copies a {ctx, malloc, calloc, realloc, free}
 * struct with plain stores, while threads that released the GIL (bz2, lzma, zlib, NumPy)
 * keep calling PyMem_RawMalloc, which reads the function pointer and the ctx separately.
 * Such a thread can see any mix of the old and the new struct. Two rules make every mix
 * harmless:
 *  - our hooks never use their ctx: each (domain, slot) has its own set of functions,
 *    generated from one list (MP_FOR_EACH_SLOT), which find their layer statically;
 *  - the struct we install carries the ctx of the allocator it wraps, so a thread that
 *    pairs the old function with our ctx hands it the ctx it expects.
 *
 * Layers. Another tool (tracemalloc) may stack its hooks on top of ours, or remove ours
 * when it stops. A layer that may still be called is never rewritten: when our hook is not
 * the top of a domain at stop(), a probe (one allocation through the current allocator,
 * noted by our slow paths) tells whether the layer is still reachable. A reachable layer
 * stays as a pass-through (sampling off costs one relaxed load); an unreachable one is
 * retired. A retired slot is reused at once when the allocator it wrapped is the one to
 * wrap now (nothing is written, so a thread still inside it sees no change), otherwise only
 * after MP_RETIRE_GRACE_NS, long after any thread that read the old function pointer has
 * left. Only the newest layer samples.
 *
 * Layer records live in static storage (mp_state.hooks) and are written only while their
 * slot is neither installed nor (within the grace period) retired, before the store that
 * publishes them (PyMem_SetAllocator, an external call: the compiler cannot move the
 * record's stores past it; x86-64 keeps stores in order). Hooks read them with the same
 * number of instructions as a read through ctx (RIP-relative loads instead of loads off a
 * register).
 */
#include "core.h"

#include <unistd.h>

#include <string.h>
#include <time.h>

/* This file's part of the process state (state.h): mp_state.hooks. */
#define HK mp_state.hooks
/* The counters are table.c's; the record paths below update them too, under table.lock. */
#define CNT mp_state.table.counters

#define MP_RETIRE_GRACE_NS 2000000000ll        /* 2 s before a retired slot is rewritten */

enum { SLOT_FREE = 0, SLOT_INSTALLED = 1, SLOT_RETIRED = 2 };


static const PyMemAllocatorDomain mp_domains[3] = {
    PYMEM_DOMAIN_RAW, PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ};
static const int mp_domain_allocator[3] = {MP_ALLOC_RAW, MP_ALLOC_MEM, MP_ALLOC_OBJ};

/* The budget's watermark (mprofile_ipy/budget.py). When the estimated live bytes reach
 * HK.watermark, the record path (1) writes once to an eventfd, which wakes the watcher
 * thread, and (2) schedules a pending call, which the main thread runs at its next
 * bytecode boundary, the way a signal handler runs: mprofile_ipy.budget._on_watermark()
 * checks the budget right there and stops the user's code before it allocates further,
 * without waiting for the watcher to get the GIL. Memory that grows faster than any poll
 * (calloc'ed blocks no page of which is touched yet) is stopped at the crossing.
 * write() on an eventfd and Py_AddPendingCall neither allocate nor need the GIL. The
 * three variables are protected by table.lock; the pending call is scheduled after it is
 * released. */

void mp_set_watermark(double bytes, int fd, int call_main) {
    mp_lock();
    HK.watermark = bytes;
    HK.watermark_fd = bytes > 0 ? fd : -1;
    HK.watermark_call = bytes > 0 && call_main;
    HK.watermark_fired = 0;
    mp_unlock();
}

/* 1 when this record crossed the watermark and the main thread must be asked. */
static inline int watermark_check_locked(void) {
    if (HK.watermark_fd < 0 || HK.watermark_fired || CNT.current_bytes < HK.watermark)
        return 0;
    uint64_t one = 1;
    HK.watermark_fired = 1;
    ssize_t rc = write(HK.watermark_fd, &one, sizeof one);
    (void)rc;   /* a full or closed eventfd: the watcher's poll still sees the crossing */
    return HK.watermark_call;
}

/* Runs in the main thread with the GIL held (a pending call). The budget decides; the
 * only exception that may leave here is its MemoryBudgetExceeded (a MemoryError), which
 * then lands in the user's code at this bytecode, as a KeyboardInterrupt from a signal
 * handler does. Anything else is reported as unraisable and dropped. */
static int watermark_pending(void *arg) {
    (void)arg;
    /* The check is the profiler's own work: what it allocates (the import lookup, the
     * decision, the exception's report) must never be sampled at the user's line. A pause
     * as the Python side takes one (NULL on OOM: then unpaused, still correct). */
    void *pause = mp_pause_alloc(0);
    PyObject *mod = PyImport_ImportModule("mprofile_ipy.budget");
    PyObject *res = mod != NULL ? PyObject_CallMethod(mod, "_on_watermark", NULL) : NULL;
    Py_XDECREF(mod);
    mp_pause_free(pause);
    if (res != NULL) {
        Py_DECREF(res);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_MemoryError)) {
        /* The budget's interrupt, which the watcher thread may queue at any moment, can
         * land inside the call above (3.12+ check for it at the start of every function):
         * drop the frames of that call, so that the exception leaves from the interrupted
         * frame with a traceback of the user's code only, as it does everywhere else. */
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *exc = PyErr_GetRaisedException();
        PyException_SetTraceback(exc, Py_None);
        PyErr_SetRaisedException(exc);
#else
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        Py_XDECREF(tb);
        PyErr_Restore(type, value, NULL);
#endif
        return -1;
    }
    PyErr_WriteUnraisable(NULL);
    return 0;
}

void mp_record_alloc(void *ptr, size_t size, int allocator) {
    mp_live_t rec;
    int call_main = 0;
    mp_enter();   /* our own bookkeeping is never sampled */
    rec.ptr = (uintptr_t)ptr;
    rec.size = (uint64_t)size;
    rec.thread = mp_thread_ident();
    rec.weight = mp_weight(rec.size);
    rec.allocator = (uint32_t)allocator;
    mp_lock();
    rec.tb = mp_capture_traceback_locked();
    mp_live_t stale;
    int rc = mp_table_insert_locked(&rec, &stale);
    if (rc == 1) CNT.current_bytes -= stale.weight * (double)stale.size;
    if (rc >= 0) {
        double est = rec.weight * (double)rec.size;
        CNT.samples++;
        CNT.current_bytes += est;
        if (CNT.current_bytes > CNT.peak_bytes)
            CNT.peak_bytes = CNT.current_bytes;
        CNT.alloc_bytes += est;
        CNT.alloc_count += rec.weight;
        mp_tb_account_locked(rec.tb, rec.weight, rec.size);
        call_main = watermark_check_locked();
    }
    mp_unlock();
    if (call_main) (void)Py_AddPendingCall(watermark_pending, NULL);   /* full queue: the
                                                                          watcher still runs */
    if (__builtin_expect(__atomic_load_n(&mp_state.stacks.compact_wanted, __ATOMIC_RELAXED),
                         0))
        mp_intern_maybe_schedule_compact();
    mp_leave();
}

int mp_record_take(void *ptr, mp_live_t *saved) {
    mp_lock();
    int had = mp_table_take_locked((uintptr_t)ptr, saved);
    if (had) {
        CNT.current_bytes -= saved->weight * (double)saved->size;
        if (CNT.current_bytes < 0.5) CNT.current_bytes = 0.0;
    }
    mp_unlock();
    return had;
}

void mp_record_free(void *ptr) {
    mp_live_t dummy;
    (void)mp_record_take(ptr, &dummy);
}

void mp_record_restore(const mp_live_t *saved) {
    mp_live_t stale;
    mp_lock();
    int rc = mp_table_insert_locked(saved, &stale);
    if (rc == 1) CNT.current_bytes -= stale.weight * (double)stale.size;
    if (rc >= 0) CNT.current_bytes += saved->weight * (double)saved->size;
    mp_unlock();
}

/* pymalloc serves requests up to 512 bytes from its own pools (arenas come from mmap, not
 * from PyMem_Raw*), so only larger requests can nest into the RAW domain; only those pay
 * for the reentrancy guard.
 *
 * Each hook is split in two. The inline fast path handles what almost every call is, a
 * small block that is not a sample: mp_fast_skip charges the countdown and the hook ends
 * in a tail call to the wrapped allocator (x86-64, OBJ domain: 7 instructions per malloc
 * with the unchecked set, 11 with the checked one, and 8 per free). The slow path, out of line and shared by all slots, wraps the call
 * in the guard when needed and asks the sampler. */
#define MP_POOL_MAX 512
#define MP_NOINLINE __attribute__((noinline))
#define MP_INLINE static inline __attribute__((always_inline))
#define MP_LIKELY(x) __builtin_expect(!!(x), 1)
#define MP_UNLIKELY(x) __builtin_expect(!!(x), 0)

static inline int layer_active(int d, int k) {
    return __atomic_load_n(&HK.active[d][k], __ATOMIC_RELAXED);
}

static inline void note_probe(int d, int k) {
    if (MP_UNLIKELY(t_state.probe)) HK.probe_hits[d] |= 1u << k;
}

/* The slow paths' layer record, addressed from a base the compiler cannot share with
 * their other accesses to mp_state (an empty asm makes it opaque; no instruction): shared,
 * &mp_state stayed in a callee-saved register across the wrapped call, a push, a pop and
 * a stack adjustment more per slow call than with separate arrays. The fast paths keep
 * the plain address: there (d, k) are constants and the record is one RIP-relative load.
 * hook_realloc_slow keeps it too: it has more values live across its call, and GCC 12
 * spills one either way (about 2 instructions per call more than with separate arrays,
 * measured with callgrind; it is not on the fast path). */
static inline const mp_layer_t *layer_of(int d, int k) {
    mp_layer_t (*layers)[MP_MAX_LAYERS] = HK.layers;
    __asm__("" : "+r"(layers));
    return &layers[d][k];
}

static MP_NOINLINE void *hook_malloc_slow(int d, int k, size_t size) {
    const mp_layer_t *l = layer_of(d, k);
    void *p;
    note_probe(d, k);
    if (size <= MP_POOL_MAX) {
        p = l->prev.malloc(l->prev.ctx, size);
    } else {
        mp_enter();
        p = l->prev.malloc(l->prev.ctx, size);
        mp_leave();
    }
    if (p != NULL && layer_active(d, k) && mp_should_sample(size))
        mp_record_alloc(p, size, mp_domain_allocator[d]);
    return p;
}

/* `u`: the unchecked set (no generation compare, sampler.c "Stale countdowns"); a
 * constant in every generated function. */
#define MP_SKIP(u, size) ((u) ? mp_fast_skip_unchecked(size) : mp_fast_skip(size))

MP_INLINE void *hook_malloc(int d, int k, int u, size_t size) {
    const mp_layer_t *l = &HK.layers[d][k];
    if (MP_LIKELY(size <= MP_POOL_MAX && MP_SKIP(u, size)))
        return l->prev.malloc(l->prev.ctx, size);
    return hook_malloc_slow(d, k, size);
}

static MP_NOINLINE void *hook_calloc_slow(int d, int k, size_t nelem, size_t elsize,
                                          size_t size) {
    const mp_layer_t *l = layer_of(d, k);
    void *p;
    note_probe(d, k);
    if (size <= MP_POOL_MAX) {
        p = l->prev.calloc(l->prev.ctx, nelem, elsize);
    } else {
        mp_enter();
        p = l->prev.calloc(l->prev.ctx, nelem, elsize);
        mp_leave();
    }
    if (p != NULL && layer_active(d, k) && mp_should_sample(size))
        mp_record_alloc(p, size, mp_domain_allocator[d]);
    return p;
}

MP_INLINE void *hook_calloc(int d, int k, int u, size_t nelem, size_t elsize) {
    const mp_layer_t *l = &HK.layers[d][k];
    size_t size;
    if (__builtin_mul_overflow(nelem, elsize, &size)) size = SIZE_MAX;
    if (MP_LIKELY(size <= MP_POOL_MAX && MP_SKIP(u, size)))
        return l->prev.calloc(l->prev.ctx, nelem, elsize);
    return hook_calloc_slow(d, k, nelem, elsize, size);
}

static MP_NOINLINE void *hook_realloc_slow(int d, int k, void *ptr, size_t size) {
    const mp_layer_t *l = &HK.layers[d][k];   /* not layer_of(): see there */
    mp_live_t saved;
    note_probe(d, k);
    /* Remove the old record *before* the real realloc: once it returns, the old address
     * may already belong to another thread's new block. */
    int had = ptr != NULL && mp_maybe_tracked(ptr) && mp_record_take(ptr, &saved);
    int nested = mp_busy();
    mp_enter();
    void *p = l->prev.realloc(l->prev.ctx, ptr, size);
    mp_leave();
    if (p == NULL) {
        /* Failed: the old block is untouched and still alive, so is its record. */
        if (had) mp_record_restore(&saved);
        return NULL;
    }
    /* A realloc is a free of the old block and an allocation of `size` bytes, whether it
     * moved or not; the new block takes its chance like any other allocation (unless this
     * call is nested inside another hook, which accounts for it). */
    if (!nested && layer_active(d, k) &&
        __atomic_load_n(&mp_state.config.enabled, __ATOMIC_RELAXED) && mp_should_sample(size))
        mp_record_alloc(p, size, mp_domain_allocator[d]);
    return p;
}

/* The common realloc of the MEM and OBJ domains (a list or a str growing) is not sampled:
 * the old block is not a live sample (its filter byte is 0) and the new size is not a
 * sample either. It still runs inside the reentrancy guard, so no tail call: pymalloc
 * hands every block it does not manage, whatever the new size, to PyMem_RawRealloc, and
 * that nested call must not charge the countdown a second time. The RAW domain, where
 * such reallocs land, always takes the slow path (it sees few calls). */
MP_INLINE void *hook_realloc(int d, int k, int u, void *ptr, size_t size) {
    if (d != 0 && MP_LIKELY(!mp_maybe_tracked(ptr) && size <= MP_POOL_MAX &&
                            MP_SKIP(u, size))) {
        const mp_layer_t *l = &HK.layers[d][k];
        mp_enter();
        void *p = l->prev.realloc(l->prev.ctx, ptr, size);
        mp_leave();
        return p;
    }
    return hook_realloc_slow(d, k, ptr, size);
}

static MP_NOINLINE void hook_free_slow(int d, int k, void *ptr) {
    const mp_layer_t *l = layer_of(d, k);
    if (ptr != NULL) mp_record_free(ptr);
    l->prev.free(l->prev.ctx, ptr);
}

MP_INLINE void hook_free(int d, int k, void *ptr) {
    const mp_layer_t *l = &HK.layers[d][k];
    /* Every layer, active or not, forgets a freed sampled pointer: removal is idempotent,
     * and a stale record would be reported as alive forever. An unsampled free is one
     * filter load and a tail call. */
    if (MP_LIKELY(!mp_maybe_tracked(ptr))) {
        l->prev.free(l->prev.ctx, ptr);
        return;
    }
    hook_free_slow(d, k, ptr);
}

/* Two sets (checked, unchecked) of four functions per (domain, slot), each with its layer
 * as constants. The ctx argument is ignored on purpose (see the top of this file). Both
 * sets of a slot serve the same layer, so a thread that sees a mix of the two (the set of
 * an installed layer is switched in place when the next session needs the other one) is
 * served correctly either way. */
#define MP_FOR_EACH_SLOT(X, d) X(d, 0) X(d, 1) X(d, 2) X(d, 3) X(d, 4) X(d, 5) X(d, 6) X(d, 7)
#define MP_FOR_EACH_DOMAIN_SLOT(X) MP_FOR_EACH_SLOT(X, 0) MP_FOR_EACH_SLOT(X, 1) \
    MP_FOR_EACH_SLOT(X, 2)

#define MP_DEFINE_HOOKS(d, k)                                                              \
    static void *hook_malloc_##d##_##k(void *ctx, size_t size) {                          \
        return hook_malloc(d, k, 0, size);                                                 \
    }                                                                                      \
    static void *hook_calloc_##d##_##k(void *ctx, size_t nelem, size_t elsize) {          \
        return hook_calloc(d, k, 0, nelem, elsize);                                        \
    }                                                                                      \
    static void *hook_realloc_##d##_##k(void *ctx, void *ptr, size_t size) {              \
        return hook_realloc(d, k, 0, ptr, size);                                           \
    }                                                                                      \
    static void *hook_umalloc_##d##_##k(void *ctx, size_t size) {                         \
        return hook_malloc(d, k, 1, size);                                                 \
    }                                                                                      \
    static void *hook_ucalloc_##d##_##k(void *ctx, size_t nelem, size_t elsize) {         \
        return hook_calloc(d, k, 1, nelem, elsize);                                        \
    }                                                                                      \
    static void *hook_urealloc_##d##_##k(void *ctx, void *ptr, size_t size) {             \
        return hook_realloc(d, k, 1, ptr, size);                                           \
    }                                                                                      \
    static void hook_free_##d##_##k(void *ctx, void *ptr) { hook_free(d, k, ptr); }
MP_FOR_EACH_DOMAIN_SLOT(MP_DEFINE_HOOKS)

typedef struct {
    void *(*malloc)(void *, size_t);
    void *(*calloc)(void *, size_t, size_t);
    void *(*realloc)(void *, void *, size_t);
    void (*free)(void *, void *);
} mp_hook_fns_t;

#define MP_HOOK_FNS(d, k) [d][k] = {hook_malloc_##d##_##k, hook_calloc_##d##_##k,        \
                                    hook_realloc_##d##_##k, hook_free_##d##_##k},
#define MP_UHOOK_FNS(d, k) [d][k] = {hook_umalloc_##d##_##k, hook_ucalloc_##d##_##k,     \
                                     hook_urealloc_##d##_##k, hook_free_##d##_##k},
/* [0]: checked, [1]: unchecked (mp_state.config.unchecked_ok) */
static const mp_hook_fns_t g_hook_fns[2][3][MP_MAX_LAYERS] = {
    {MP_FOR_EACH_DOMAIN_SLOT(MP_HOOK_FNS)}, {MP_FOR_EACH_DOMAIN_SLOT(MP_UHOOK_FNS)}};

/* The function set this session installs: [0] checked, [1] unchecked (sampler.c). */
static int hook_set(void) {
    return __atomic_load_n(&mp_state.config.unchecked_ok, __ATOMIC_RELAXED) ? 1 : 0;
}

/* Which of our slots does this allocator struct call first? -1 if none (a foreign one).
 * Decided by the function pointer alone: the ctx is the wrapped allocator's. */
static int slot_of_allocator(int d, const PyMemAllocatorEx *a) {
    for (int k = 0; k < MP_MAX_LAYERS; k++)
        if (a->malloc == g_hook_fns[0][d][k].malloc || a->malloc == g_hook_fns[1][d][k].malloc)
            return k;
    return -1;
}

/* Install our slot k of domain d on top, with the function set this session needs. */
static void set_top(int d, int k, const PyMemAllocatorEx *wrapped) {
    const mp_hook_fns_t *f =
        &g_hook_fns[hook_set()][d][k];
    PyMemAllocatorEx hook = {wrapped->ctx, f->malloc, f->calloc, f->realloc, f->free};
    PyMem_SetAllocator(mp_domains[d], &hook);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static void retire(int d, int k) {
    __atomic_store_n(&HK.active[d][k], 0, __ATOMIC_RELAXED);
    HK.slot_state[d][k] = SLOT_RETIRED;
    HK.slot_retired_at[d][k] = now_ns();
    if (HK.top[d] == k) HK.top[d] = -1;
}

/* Retire the installed layers of domain d that no call can reach any more (another tool
 * replaced the chain above them). GIL held. A probe allocation of more than
 * MP_POOL_MAX bytes (always our slow path) goes through the current allocator; each of
 * our layers it passes marks itself. If the probe fails, everything counts as reachable. */
static void retire_unreachable(int d) {
    uint32_t installed = 0;
    for (int k = 0; k < MP_MAX_LAYERS; k++)
        if (HK.slot_state[d][k] == SLOT_INSTALLED) installed |= 1u << k;
    if (installed == 0) return;
    PyMemAllocatorEx cur;
    PyMem_GetAllocator(mp_domains[d], &cur);
    HK.probe_hits[d] = 0;
    mp_enter();                 /* the probe itself is never a sample */
    t_state.probe = 1;
    void *p = cur.malloc(cur.ctx, MP_POOL_MAX + 64);
    t_state.probe = 0;
    if (p != NULL) cur.free(cur.ctx, p);
    mp_leave();
    if (p == NULL) return;
    for (int k = 0; k < MP_MAX_LAYERS; k++)
        if ((installed >> k & 1) && !(HK.probe_hits[d] >> k & 1)) retire(d, k);
}

/* A slot for a new layer wrapping `prev`: a retired one that wrapped the very same
 * allocator (reused without writing), else a never used one, else one retired for longer
 * than the grace period. -1 if none. */
static int pick_slot(int d, const PyMemAllocatorEx *prev) {
    for (int k = 0; k < MP_MAX_LAYERS; k++)
        if (HK.slot_state[d][k] != SLOT_INSTALLED && HK.slot_used[d][k] &&
            memcmp(&HK.layers[d][k].prev, prev, sizeof(*prev)) == 0)
            return k;
    for (int k = 0; k < MP_MAX_LAYERS; k++)
        if (HK.slot_state[d][k] == SLOT_FREE && !HK.slot_used[d][k]) return k;
    int64_t now = now_ns();
    for (int k = 0; k < MP_MAX_LAYERS; k++)
        if (HK.slot_state[d][k] == SLOT_RETIRED &&
            now - HK.slot_retired_at[d][k] >= MP_RETIRE_GRACE_NS)
            return k;
    return -1;
}

int mp_hooks_install(void) {
    for (int d = 0; d < 3; d++) {
        retire_unreachable(d);
        PyMemAllocatorEx cur;
        PyMem_GetAllocator(mp_domains[d], &cur);
        int k = slot_of_allocator(d, &cur);
        if (k >= 0 && HK.slot_state[d][k] == SLOT_INSTALLED) {
            /* One of our layers is on top (a pass-through left by an earlier stop()). */
            if (HK.top[d] >= 0 && HK.top[d] != k)
                __atomic_store_n(&HK.active[d][HK.top[d]], 0, __ATOMIC_RELAXED);
            HK.top[d] = k;
            __atomic_store_n(&HK.active[d][k], 1, __ATOMIC_RELAXED);
            /* Its functions may be the other set than this session needs: switch them
             * (the same layer either way, so any mix a thread sees is fine). */
            if (cur.malloc != g_hook_fns[hook_set()][d][k].malloc)
                set_top(d, k, &cur);
            continue;
        }
        k = pick_slot(d, &cur);
        if (k < 0) {
            mp_set_error("too many allocator layers: another tool keeps replacing the "
                         "hooks; stop it (e.g. tracemalloc.stop()) and start again");
            return -1;
        }
        if (HK.top[d] >= 0)   /* buried under a foreign layer: a pass-through from now on */
            __atomic_store_n(&HK.active[d][HK.top[d]], 0, __ATOMIC_RELAXED);
        if (!HK.slot_used[d][k] || memcmp(&HK.layers[d][k].prev, &cur, sizeof(cur)) != 0) {
            HK.layers[d][k].prev = cur;      /* nobody can be inside this slot (see top) */
            HK.slot_used[d][k] = 1;
            __atomic_thread_fence(__ATOMIC_RELEASE);
        }
        HK.slot_state[d][k] = SLOT_INSTALLED;
        HK.top[d] = k;
        __atomic_store_n(&HK.active[d][k], 1, __ATOMIC_RELAXED);
        set_top(d, k, &cur);
    }
    return 0;
}

void mp_hooks_uninstall(void) {
    for (int d = 0; d < 3; d++) {
        if (HK.top[d] >= 0) __atomic_store_n(&HK.active[d][HK.top[d]], 0, __ATOMIC_RELAXED);
        HK.top[d] = -1;
        /* Unhook every layer of ours that is on top, newest first (a pass-through left
         * under a tool that has gone since is on top again now). */
        for (;;) {
            PyMemAllocatorEx cur;
            PyMem_GetAllocator(mp_domains[d], &cur);
            int k = slot_of_allocator(d, &cur);
            if (k < 0 || HK.slot_state[d][k] != SLOT_INSTALLED) break;
            PyMem_SetAllocator(mp_domains[d], &HK.layers[d][k].prev);
            retire(d, k);
        }
        /* Someone else is on top: layers still reachable through them stay as
         * pass-throughs rather than cut the chain under their feet; the others go. */
        retire_unreachable(d);
    }
}

int mp_hooks_foreign(void) {
    /* True while sampling and another allocator sits on top of ours, or replaced it. */
    for (int d = 0; d < 3; d++) {
        int top = HK.top[d];
        if (top < 0 || !layer_active(d, top)) continue;
        PyMemAllocatorEx cur;
        PyMem_GetAllocator(mp_domains[d], &cur);
        if (slot_of_allocator(d, &cur) != top) return 1;
    }
    return 0;
}

/* ---- test entry points: RAW-domain calls from a thread that does not hold the GIL ---- */
/* cffi releases the GIL around these calls, so they exercise the no-GIL RAW path. */
void *mp_test_raw_malloc_nogil(size_t size) { return PyMem_RawMalloc(size); }
void mp_test_raw_free_nogil(void *ptr) { PyMem_RawFree(ptr); }
void *mp_test_raw_realloc_nogil(void *ptr, size_t size) { return PyMem_RawRealloc(ptr, size); }

int mp_test_hooks_unchecked(void) {
    PyMemAllocatorEx cur;
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &cur);   /* a struct copy: no GIL needed */
    for (int k = 0; k < MP_MAX_LAYERS; k++) {
        if (cur.malloc == g_hook_fns[1][2][k].malloc) return 1;
        if (cur.malloc == g_hook_fns[0][2][k].malloc) return 0;
    }
    return -1;
}
