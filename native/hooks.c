/* hooks.c: wrappers around CPython's three allocator domains.
 *
 * Each wrapper calls the allocator it replaced, then asks the sampler whether this block is
 * a sample. Frees ask a lock-free filter first (table.c), so an unsampled free costs one
 * load. The hooked functions are declared once (mp_domains) and used for install,
 * uninstall and naming, so they cannot drift apart.
 *
 * Layers. Another tool (tracemalloc) may stack its hooks on top of ours, or remove ours
 * when it stops. We therefore never overwrite a layer that may still be called: when our
 * hook is no longer the top of a domain at stop(), that layer stays installed as a
 * pass-through (sampling off costs one relaxed load), and the next start() installs a new
 * layer with its own saved "previous" allocator. Only the newest layer samples.
 */
#include "core.h"

#define MP_MAX_LAYERS 8

typedef struct {
    PyMemAllocatorEx prev;   /* the allocator this layer wraps */
    int allocator;           /* MP_ALLOC_RAW / MEM / OBJ */
    int active;              /* 1 for the newest layer of this domain */
    int installed;           /* 1 while it may still be called */
} mp_layer_t;

/* Written only with the GIL held (start/stop); read by hooks through their ctx. */
static mp_layer_t g_layers[3][MP_MAX_LAYERS];
static int g_nlayers[3];

static const PyMemAllocatorDomain mp_domains[3] = {
    PYMEM_DOMAIN_RAW, PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ};
static const int mp_domain_allocator[3] = {MP_ALLOC_RAW, MP_ALLOC_MEM, MP_ALLOC_OBJ};

void mp_record_alloc(void *ptr, size_t size, int allocator) {
    mp_live_t rec;
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
    if (rc == 1) g_counters.current_bytes -= stale.weight * (double)stale.size;
    if (rc >= 0) {
        double est = rec.weight * (double)rec.size;
        g_counters.samples++;
        g_counters.current_bytes += est;
        if (g_counters.current_bytes > g_counters.peak_bytes)
            g_counters.peak_bytes = g_counters.current_bytes;
        g_counters.alloc_bytes += est;
        g_counters.alloc_count += rec.weight;
        mp_tb_account_locked(rec.tb, rec.weight, rec.size);
    }
    mp_unlock();
    mp_leave();
}

int mp_record_take(void *ptr, mp_live_t *saved) {
    mp_lock();
    int had = mp_table_take_locked((uintptr_t)ptr, saved);
    if (had) {
        g_counters.current_bytes -= saved->weight * (double)saved->size;
        if (g_counters.current_bytes < 0.5) g_counters.current_bytes = 0.0;
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
    if (rc == 1) g_counters.current_bytes -= stale.weight * (double)stale.size;
    if (rc >= 0) g_counters.current_bytes += saved->weight * (double)saved->size;
    mp_unlock();
}

static inline int layer_samples(const mp_layer_t *l) {
    return l->active && __atomic_load_n(&g_enabled, __ATOMIC_RELAXED);
}

/* pymalloc serves requests up to 512 bytes from its own pools (arenas come from mmap, not
 * from PyMem_Raw*), so only larger requests can nest into the RAW domain; only those pay
 * for the reentrancy guard.
 *
 * Each hook is split in two. The inline fast path handles what almost every call is, a
 * small block that is not a sample: mp_fast_skip charges the countdown and the hook ends
 * in a tail call to the wrapped allocator (measured with callgrind on small-object churn:
 * ~37 instructions per malloc and ~25 per free before the split, ~12 and ~10 after). The
 * slow path, out of line, wraps the call in the guard when needed and asks the sampler. */
#define MP_POOL_MAX 512
#define MP_NOINLINE __attribute__((noinline))
#define MP_LIKELY(x) __builtin_expect(!!(x), 1)

static MP_NOINLINE void *hook_malloc_slow(mp_layer_t *l, size_t size) {
    void *p;
    if (size <= MP_POOL_MAX) {
        p = l->prev.malloc(l->prev.ctx, size);
    } else {
        mp_enter();
        p = l->prev.malloc(l->prev.ctx, size);
        mp_leave();
    }
    if (p != NULL && l->active && mp_should_sample(size)) mp_record_alloc(p, size, l->allocator);
    return p;
}

static void *hook_malloc(void *ctx, size_t size) {
    mp_layer_t *l = ctx;
    if (MP_LIKELY(size <= MP_POOL_MAX && mp_fast_skip(size)))
        return l->prev.malloc(l->prev.ctx, size);
    return hook_malloc_slow(l, size);
}

static MP_NOINLINE void *hook_calloc_slow(mp_layer_t *l, size_t nelem, size_t elsize,
                                          size_t size) {
    void *p;
    if (size <= MP_POOL_MAX) {
        p = l->prev.calloc(l->prev.ctx, nelem, elsize);
    } else {
        mp_enter();
        p = l->prev.calloc(l->prev.ctx, nelem, elsize);
        mp_leave();
    }
    if (p != NULL && l->active && mp_should_sample(size)) mp_record_alloc(p, size, l->allocator);
    return p;
}

static void *hook_calloc(void *ctx, size_t nelem, size_t elsize) {
    mp_layer_t *l = ctx;
    size_t size;
    if (__builtin_mul_overflow(nelem, elsize, &size)) size = SIZE_MAX;
    if (MP_LIKELY(size <= MP_POOL_MAX && mp_fast_skip(size)))
        return l->prev.calloc(l->prev.ctx, nelem, elsize);
    return hook_calloc_slow(l, nelem, elsize, size);
}

static void *hook_realloc(void *ctx, void *ptr, size_t size) {
    mp_layer_t *l = ctx;
    mp_live_t saved;
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
    if (!nested && layer_samples(l) && mp_should_sample(size))
        mp_record_alloc(p, size, l->allocator);
    return p;
}

static MP_NOINLINE void hook_free_slow(mp_layer_t *l, void *ptr) {
    if (ptr != NULL) mp_record_free(ptr);
    l->prev.free(l->prev.ctx, ptr);
}

static void hook_free(void *ctx, void *ptr) {
    mp_layer_t *l = ctx;
    /* Every layer, active or not, forgets a freed sampled pointer: removal is idempotent,
     * and a stale record would be reported as alive forever. An unsampled free is one
     * filter load and a tail call. */
    if (MP_LIKELY(!mp_maybe_tracked(ptr))) {
        l->prev.free(l->prev.ctx, ptr);
        return;
    }
    hook_free_slow(l, ptr);
}

static int is_layer(const PyMemAllocatorEx *a, int d, int k) {
    return a->malloc == hook_malloc && a->ctx == &g_layers[d][k];
}

int mp_hooks_install(void) {
    for (int d = 0; d < 3; d++) {
        PyMemAllocatorEx cur;
        PyMem_GetAllocator(mp_domains[d], &cur);
        int top = g_nlayers[d] - 1;
        if (top >= 0 && is_layer(&cur, d, top) && g_layers[d][top].installed) {
            g_layers[d][top].active = 1;            /* our pass-through layer is on top */
            continue;
        }
        if (g_nlayers[d] == MP_MAX_LAYERS) {
            mp_set_error("too many allocator layers: another tool keeps replacing the "
                         "hooks; stop it (e.g. tracemalloc.stop()) and start again");
            return -1;
        }
        if (top >= 0) g_layers[d][top].active = 0;   /* buried: pass-through from now */
        mp_layer_t *l = &g_layers[d][g_nlayers[d]++];
        l->prev = cur;
        l->allocator = mp_domain_allocator[d];
        l->active = 1;
        l->installed = 1;
        PyMemAllocatorEx hook = {l, hook_malloc, hook_calloc, hook_realloc, hook_free};
        PyMem_SetAllocator(mp_domains[d], &hook);
    }
    return 0;
}

void mp_hooks_uninstall(void) {
    for (int d = 0; d < 3; d++) {
        int top = g_nlayers[d] - 1;
        if (top < 0) continue;
        mp_layer_t *l = &g_layers[d][top];
        l->active = 0;
        PyMemAllocatorEx cur;
        PyMem_GetAllocator(mp_domains[d], &cur);
        if (is_layer(&cur, d, top)) {
            PyMem_SetAllocator(mp_domains[d], &l->prev);
            l->installed = 0;
            g_nlayers[d]--;
        }
        /* else: someone stacked on top of us (or unhooked us): leave this layer as a
         * pass-through rather than cut the chain under their feet. */
    }
}

int mp_hooks_foreign(void) {
    /* True while sampling and another allocator sits on top of ours, or replaced it. */
    int foreign = 0;
    for (int d = 0; d < 3 && !foreign; d++) {
        int top = g_nlayers[d] - 1;
        if (top < 0 || !g_layers[d][top].active) continue;
        PyMemAllocatorEx cur;
        PyMem_GetAllocator(mp_domains[d], &cur);
        if (!is_layer(&cur, d, top)) foreign = 1;
    }
    return foreign;
}

/* ---- test entry points: RAW-domain calls from a thread that does not hold the GIL ---- */
/* cffi releases the GIL around these calls, so they exercise the no-GIL RAW path. */
void *mp_test_raw_malloc_nogil(size_t size) { return PyMem_RawMalloc(size); }
void mp_test_raw_free_nogil(void *ptr) { PyMem_RawFree(ptr); }
void *mp_test_raw_realloc_nogil(void *ptr, size_t size) { return PyMem_RawRealloc(ptr, size); }
