/* floor.c: the cheapest possible allocator hooks, for benchmarks/callgrind.py.
 *
 * The "floor" of the PyMem_SetAllocator design: wrappers on CPython's three allocator
 * domains (RAW, MEM, OBJ) that only call the allocator they replaced. Whatever a sampling
 * profiler built on these hooks costs beyond this is the profiler's own work; the floor
 * itself is the price of sitting between CPython and its allocator at all (one indirect
 * call and a few instructions per malloc/calloc/realloc/free).
 *
 * A second set of hooks also counts the calls per domain, so the harness knows how many
 * allocations and frees a workload makes. The counting hooks are never the floor: they
 * are installed only in a separate, untimed run.
 *
 * Counters are plain relaxed atomics: RAW-domain calls may come from threads that do not
 * hold the GIL, and a lost increment would only skew a count, never crash.
 */
#include <Python.h>

typedef struct {
    PyMemAllocatorEx prev;   /* the allocator this hook replaced */
    int domain;              /* 0 RAW, 1 MEM, 2 OBJ: index into g_counts */
} floor_layer_t;

/* Written with the GIL held (install/uninstall), read by the hooks through their ctx. */
static floor_layer_t g_layers[3];
static int g_installed;
static const PyMemAllocatorDomain g_domains[3] = {
    PYMEM_DOMAIN_RAW, PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ};

/* [domain][0 malloc, 1 calloc, 2 realloc, 3 free] */
static unsigned long long g_counts[3][4];

/* ---- the floor: forward, nothing else ---- */
static void *floor_malloc(void *ctx, size_t size) {
    floor_layer_t *l = ctx;
    return l->prev.malloc(l->prev.ctx, size);
}
static void *floor_calloc(void *ctx, size_t nelem, size_t elsize) {
    floor_layer_t *l = ctx;
    return l->prev.calloc(l->prev.ctx, nelem, elsize);
}
static void *floor_realloc(void *ctx, void *ptr, size_t size) {
    floor_layer_t *l = ctx;
    return l->prev.realloc(l->prev.ctx, ptr, size);
}
static void floor_free(void *ctx, void *ptr) {
    floor_layer_t *l = ctx;
    l->prev.free(l->prev.ctx, ptr);
}

/* ---- counting: forward and count the call ---- */
#define COUNT(l, op) __atomic_fetch_add(&g_counts[(l)->domain][op], 1, __ATOMIC_RELAXED)
static void *count_malloc(void *ctx, size_t size) {
    floor_layer_t *l = ctx;
    COUNT(l, 0);
    return l->prev.malloc(l->prev.ctx, size);
}
static void *count_calloc(void *ctx, size_t nelem, size_t elsize) {
    floor_layer_t *l = ctx;
    COUNT(l, 1);
    return l->prev.calloc(l->prev.ctx, nelem, elsize);
}
static void *count_realloc(void *ctx, void *ptr, size_t size) {
    floor_layer_t *l = ctx;
    COUNT(l, 2);
    return l->prev.realloc(l->prev.ctx, ptr, size);
}
static void count_free(void *ctx, void *ptr) {
    floor_layer_t *l = ctx;
    COUNT(l, 3);
    l->prev.free(l->prev.ctx, ptr);
}

/* Install the hooks on all three domains (counting != 0: the counting set).
 * Returns 0, or -1 if already installed. Call with the GIL held. */
int floor_install(int counting) {
    if (g_installed) return -1;
    for (int d = 0; d < 3; d++) {
        floor_layer_t *l = &g_layers[d];
        PyMem_GetAllocator(g_domains[d], &l->prev);
        l->domain = d;
        PyMemAllocatorEx hook = counting
            ? (PyMemAllocatorEx){l, count_malloc, count_calloc, count_realloc, count_free}
            : (PyMemAllocatorEx){l, floor_malloc, floor_calloc, floor_realloc, floor_free};
        PyMem_SetAllocator(g_domains[d], &hook);
    }
    g_installed = 1;
    return 0;
}

/* Put the replaced allocators back. Only correct when nothing was stacked on top of the
 * floor meanwhile (the harness installs nothing else). Call with the GIL held. */
void floor_uninstall(void) {
    if (!g_installed) return;
    for (int d = 2; d >= 0; d--) PyMem_SetAllocator(g_domains[d], &g_layers[d].prev);
    g_installed = 0;
}

void floor_reset(void) {
    for (int d = 0; d < 3; d++)
        for (int op = 0; op < 4; op++) __atomic_store_n(&g_counts[d][op], 0, __ATOMIC_RELAXED);
}

/* out: 12 counters, [domain][malloc, calloc, realloc, free], domains RAW, MEM, OBJ. */
void floor_counts(unsigned long long *out) {
    for (int d = 0; d < 3; d++)
        for (int op = 0; op < 4; op++)
            out[d * 4 + op] = __atomic_load_n(&g_counts[d][op], __ATOMIC_RELAXED);
}
