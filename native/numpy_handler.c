/* numpy_handler.c: NumPy array data, sampled in the default mode.
 *
 * NumPy >= 1.22 allocates array data through a data-memory handler (NEP 49): a capsule
 * named "mem_handler" holding a PyDataMem_Handler, whose four functions every array
 * allocation, resize and free goes through. NumPy <= 2.4 implements the default one with
 * malloc/calloc (so no PyMem hook sees array data), NumPy 2.5 with PyMem_Raw*.
 *
 * Why wrap the default handler *in place* rather than install our own handler:
 * PyDataMem_SetHandler stores the handler in a context variable, so it would cover only
 * the calling context; new threads, asyncio tasks and IPython cells run in other contexts
 * and would get the default handler back. The default handler is one static, writable
 * struct inside NumPy's extension module, reached through NumPy's C-API table (slot 306,
 * PyDataMem_DefaultHandler, there since 1.22). Replacing its four function pointers covers
 * every context and thread at once; a handler that a user sets explicitly is left alone
 * (its arrays are not seen). Each array keeps a reference to the handler capsule it was
 * made with and frees through it, so arrays made before install are freed through our
 * wrapper (a miss in the filter), and arrays made while installed and freed after
 * uninstall are handled by purging their records at uninstall.
 *
 * No NumPy header is needed: the handler layout is fixed by NEP 49 (version 1), and the
 * C-API table is read at run time, only once NumPy has been imported.
 *
 * Double counting: the wrapped functions run inside the reentrancy guard, so NumPy 2.5's
 * PyMem_RawMalloc underneath (and, in native mode, NumPy's own malloc) is not sampled a
 * second time. Array data is recorded as allocator NUMPY (domain NUMPY_DOMAIN, the domain
 * NumPy itself reports to tracemalloc) on every NumPy version.
 */
#include "native_capture.h"

#include <string.h>

/* This file's part of the process state (state.h): mp_state.numpy. */
#define NP mp_state.numpy

#define NC_NP_API_FEATURE_VERSION 211   /* PyArray_GetNDArrayCFeatureVersion */
#define NC_NP_API_DEFAULT_HANDLER 306   /* PyDataMem_DefaultHandler (a PyObject **) */
#define NC_NP_FEATURE_1_22 0x0000000f   /* NPY_1_22_API_VERSION: NEP 49 */


static inline int np_sampling(void) { return __atomic_load_n(&NP.active, __ATOMIC_RELAXED); }

static void *np_malloc(void *ctx, size_t size) {
    mp_enter();
    void *p = NP.orig.malloc(ctx, size);
    mp_leave();
    if (p != NULL && np_sampling() && mp_should_sample(size)) nc_record(p, size, MP_ALLOC_NUMPY);
    return p;
}

static void *np_calloc(void *ctx, size_t nelem, size_t elsize) {
    size_t size;
    if (__builtin_mul_overflow(nelem, elsize, &size)) size = SIZE_MAX;
    mp_enter();
    void *p = NP.orig.calloc(ctx, nelem, elsize);
    mp_leave();
    if (p != NULL && np_sampling() && mp_should_sample(size)) nc_record(p, size, MP_ALLOC_NUMPY);
    return p;
}

static void *np_realloc(void *ctx, void *ptr, size_t size) {
    mp_live_t saved;
    /* Forget the old block before the real realloc: once it returns, the old address may
     * already belong to another thread's block. */
    int had = nc_take(ptr, &saved);
    mp_enter();
    void *p = NP.orig.realloc(ctx, ptr, size);
    mp_leave();
    if (p == NULL) {
        if (had) mp_record_restore(&saved);   /* failed: the old block is still alive */
        return NULL;
    }
    if (np_sampling() && mp_should_sample(size)) nc_record(p, size, MP_ALLOC_NUMPY);
    return p;
}

static void np_free(void *ctx, void *ptr, size_t size) {
    nc_forget(ptr);
    NP.orig.free(ctx, ptr, size);
}

/* Store one of the handler's function pointers. The default handler is a non-const static
 * in NumPy's data segment, so it is writable; with /proc/self/maps at hand (Linux) the
 * page is checked (and made writable for the store if it ever were not); without it
 * (other systems) the store is made directly. */
static int np_store(const nc_maps_t *maps, void **slot, void *value) {
    if (maps == NULL) {
        __atomic_store_n(slot, value, __ATOMIC_RELEASE);
        return 0;
    }
    return nc_write_pointer(maps, slot, value);
}

/* NumPy's C-API table, if NumPy's core extension module is already imported. Never
 * imports anything itself. GIL held. */
static void **numpy_api_table(void) {
    static const char *const modules[] = {"numpy._core._multiarray_umath",
                                          "numpy.core._multiarray_umath"};
    for (size_t i = 0; i < sizeof(modules) / sizeof(modules[0]); i++) {
        PyObject *name = PyUnicode_FromString(modules[i]);
        if (name == NULL) {
            PyErr_Clear();
            return NULL;
        }
        PyObject *mod = PyImport_GetModule(name);
        Py_DECREF(name);
        if (mod == NULL) {
            PyErr_Clear();
            continue;
        }
        PyObject *cap = PyObject_GetAttrString(mod, "_ARRAY_API");
        Py_DECREF(mod);
        if (cap == NULL) {
            PyErr_Clear();
            continue;
        }
        void **api = NULL;
        if (PyCapsule_CheckExact(cap)) api = PyCapsule_GetPointer(cap, PyCapsule_GetName(cap));
        if (api == NULL) PyErr_Clear();
        Py_DECREF(cap);   /* the table is static in NumPy's module, which is never unloaded */
        if (api != NULL) return api;
    }
    return NULL;
}

/* 0: wrapped (or already was); 1: NumPy is not imported; -1: error (mp_last_error). */
int mp_numpy_install(void) {
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = -1;
    void **api = numpy_api_table();
    if (api == NULL) {
        rc = 1;
        goto done;
    }
    unsigned int (*feature)(void) = (unsigned int (*)(void))api[NC_NP_API_FEATURE_VERSION];
    NP.feature = feature();
    if (NP.feature < NC_NP_FEATURE_1_22) {
        mp_set_error("NumPy is older than 1.22 (no data-memory handler API): array data "
                     "is not seen; upgrade NumPy");
        goto done;
    }
    PyObject *handler_capsule = *(PyObject **)api[NC_NP_API_DEFAULT_HANDLER];
    if (handler_capsule == NULL || !PyCapsule_IsValid(handler_capsule, "mem_handler")) {
        mp_set_error("NumPy's default data-memory handler was not found");
        goto done;
    }
    nc_np_handler_t *h = PyCapsule_GetPointer(handler_capsule, "mem_handler");
    if (h == NULL || h->version != 1) {
        PyErr_Clear();
        mp_set_error("NumPy's default data-memory handler has an unknown layout "
                     "(version != 1): array data is not seen");
        goto done;
    }
    if (h->allocator.malloc == np_malloc) {       /* ours already */
        NP.handler = h;
        __atomic_store_n(&NP.active, 1, __ATOMIC_RELAXED);
        rc = 0;
        goto done;
    }
    if (!h->allocator.malloc || !h->allocator.calloc || !h->allocator.realloc ||
        !h->allocator.free) {
        mp_set_error("NumPy's default data-memory handler has empty functions");
        goto done;
    }
    memcpy(NP.name, h->name, sizeof(h->name));
    NP.name[sizeof(h->name)] = '\0';
    NP.orig = h->allocator;
    __atomic_store_n(&NP.active, 1, __ATOMIC_RELAXED);
    nc_maps_t maps;
    const nc_maps_t *m = nc_maps_load(&maps) == 0 ? &maps : NULL;
    /* Frees first: from now on a block we record is always freed through our wrapper. */
    int bad = np_store(m, (void **)&h->allocator.free, (void *)np_free);
    bad |= np_store(m, (void **)&h->allocator.realloc, (void *)np_realloc);
    bad |= np_store(m, (void **)&h->allocator.calloc, (void *)np_calloc);
    bad |= np_store(m, (void **)&h->allocator.malloc, (void *)np_malloc);
    if (m != NULL) nc_maps_free(&maps);
    NP.handler = h;
    if (bad) {
        mp_set_error("cannot write NumPy's data-memory handler (page not writable)");
        goto done;
    }
    rc = 0;
done:
    PyGILState_Release(gil);
    return rc;
}

/* Put NumPy's own functions back (where they are still ours) and drop the records of
 * array data, whose frees we would no longer see. */
int mp_numpy_uninstall(void) {
    PyGILState_STATE gil = PyGILState_Ensure();
    __atomic_store_n(&NP.active, 0, __ATOMIC_RELAXED);
    nc_np_handler_t *h = NP.handler;
    int rc = 0;
    if (h != NULL) {
        nc_maps_t maps;
        const nc_maps_t *m = nc_maps_load(&maps) == 0 ? &maps : NULL;
        /* Allocation functions first, frees last: the reverse of install. */
        if (h->allocator.malloc == np_malloc)
            rc |= np_store(m, (void **)&h->allocator.malloc, (void *)NP.orig.malloc);
        if (h->allocator.calloc == np_calloc)
            rc |= np_store(m, (void **)&h->allocator.calloc, (void *)NP.orig.calloc);
        if (h->allocator.realloc == np_realloc)
            rc |= np_store(m, (void **)&h->allocator.realloc, (void *)NP.orig.realloc);
        if (h->allocator.free == np_free)
            rc |= np_store(m, (void **)&h->allocator.free, (void *)NP.orig.free);
        if (m != NULL) nc_maps_free(&maps);
        NP.handler = NULL;
    }
    nc_purge_allocator(MP_ALLOC_NUMPY);
    if (rc != 0) mp_set_error("cannot restore NumPy's data-memory handler");
    PyGILState_Release(gil);
    return rc ? -1 : 0;
}

/* For the status report (capture_common's caller fills the rest). */
void nc_numpy_status(int *installed, unsigned int *feature, const char **name) {
    nc_np_handler_t *h = NP.handler;
    *installed = h != NULL && h->allocator.malloc == np_malloc &&
                 __atomic_load_n(&NP.active, __ATOMIC_RELAXED);
    *feature = NP.feature;
    *name = NP.name;
}
