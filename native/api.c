/* api.c: the entry points Python calls through cffi (declared in mprofile.h).
 *
 * cffi releases the GIL around every call, so each entry point that touches Python state
 * (installing allocators, reference counts, code objects) takes it back with
 * PyGILState_Ensure first. Code objects are DECREF'd only after table.lock is released: a
 * DECREF can free memory, and a free re-enters our hooks, which may take table.lock.
 */
#include "core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* The last error, per thread: two threads failing at once each read their own message
 * (cffi calls mp_last_error on the thread that got the -1, right after). */
static _Thread_local char t_error[256];

void mp_set_error(const char *msg) { snprintf(t_error, sizeof(t_error), "%s", msg); }
const char *mp_last_error(void) { return t_error; }
int mp_max_frames_limit(void) { return MP_MAX_FRAMES_LIMIT; }
unsigned long mp_python_version_built(void) { return PY_VERSION_HEX; }

/* A fresh seed for every start() without seed=: two starts in the same second must not
 * draw the same samples. getrandom(2) does not block once the kernel's pool is ready
 * (always, long before a Python process runs); the clock is only a fallback. */
static uint64_t os_seed(void) {
    uint64_t seed = 0;
    ssize_t got;
    do {
        got = getrandom(&seed, sizeof(seed), GRND_NONBLOCK);
    } while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof(seed)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed ^= (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec ^
                ((uint64_t)getpid() << 32);
    }
    return seed;
}

/* Drop every trace, interned frame and counter. GIL held, table.lock not held. */
static void clear_state(void) {
    size_t ncodes = 0, bytes = 0;
    mp_lock();
    mp_table_clear_locked();
    memset(&mp_state.table.counters, 0, sizeof(mp_state.table.counters));
    PyObject **codes = mp_intern_detach_locked(&ncodes, &bytes);
    mp_unlock();
    for (size_t i = 0; i < ncodes; i++) Py_XDECREF(codes[i]);
    mp_os_free(codes, bytes);
}

int mp_start(int64_t sample_rate, int max_frames, uint64_t seed, int use_seed) {
    if (sample_rate < 0) {
        mp_set_error("sample_rate must be >= 0");
        return -1;
    }
    if (max_frames < 1 || max_frames > MP_MAX_FRAMES_LIMIT) {
        mp_set_error("max_frames out of range");
        return -1;
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = 0;
    if (__atomic_load_n(&mp_state.config.enabled, __ATOMIC_RELAXED)) {
        /* Already tracing: like tracemalloc, only the traceback limit may change. */
        int64_t cur = mp_state.config.sample_rate <= 1 ? 1 : mp_state.config.sample_rate;
        int64_t req = sample_rate <= 1 ? 1 : sample_rate;
        if (cur != req) {
            snprintf(t_error, sizeof(t_error),
                     "already tracing with sample_rate=%lld; call stop() before changing it",
                     (long long)mp_state.config.sample_rate);
            rc = -1;
        } else {
            __atomic_store_n(&mp_state.config.max_frames, max_frames, __ATOMIC_RELAXED);
        }
        PyGILState_Release(gil);
        return rc;
    }
    clear_state();
    if (!use_seed) seed = os_seed();
    __atomic_store_n(&mp_state.config.max_frames, max_frames, __ATOMIC_RELAXED);
    mp_sampler_configure(sample_rate, seed);
    if (mp_hooks_install() != 0) {
        rc = -1;
    } else {
        __atomic_store_n(&mp_state.config.enabled, 1, __ATOMIC_RELEASE);
    }
    PyGILState_Release(gil);
    return rc;
}

int mp_stop(void) {
    PyGILState_STATE gil = PyGILState_Ensure();
    __atomic_store_n(&mp_state.config.enabled, 0, __ATOMIC_RELEASE);
    mp_hooks_uninstall();
    clear_state();
    PyGILState_Release(gil);
    return 0;
}

int mp_clear(void) {
    PyGILState_STATE gil = PyGILState_Ensure();
    clear_state();
    PyGILState_Release(gil);
    return 0;
}

void mp_reset_peak(void) {
    mp_lock();
    mp_state.table.counters.peak_bytes = mp_state.table.counters.current_bytes;
    mp_unlock();
}

void mp_get_stats(mp_stats_t *out) {
    PyGILState_STATE gil = PyGILState_Ensure();
    mp_intern_compact(0);   /* what the profiler keeps alive: only what it must */
    memset(out, 0, sizeof(*out));
    out->tracing = __atomic_load_n(&mp_state.config.enabled, __ATOMIC_RELAXED);
    out->exact = mp_state.config.exact;
    out->sample_rate = mp_state.config.sample_rate;
    out->max_frames = mp_state.config.max_frames;
    out->foreign_hooks = out->tracing ? mp_hooks_foreign() : 0;
    mp_lock();
    out->samples = mp_state.table.counters.samples;
    out->live_samples = mp_table_count_locked();
    out->current_bytes = mp_state.table.counters.current_bytes;
    out->peak_bytes = mp_state.table.counters.peak_bytes;
    out->alloc_bytes = mp_state.table.counters.alloc_bytes;
    out->alloc_count = mp_state.table.counters.alloc_count;
    out->profiler_memory = mp_table_memory_locked() + mp_intern_memory_locked();
    mp_unlock();
    PyGILState_Release(gil);
}

/* ---- snapshots ------------------------------------------------------------------------ */

struct mp_snapshot {
    size_t ntraces;
    uint64_t *traces;          /* 4 per trace */
    uint64_t *addresses;       /* 1 per trace: the block's address, same order */
    mp_intern_copy_t intern;
};

/* GIL held. `only` != 0 restricts the copy to the record at that address. */
static mp_snapshot *snapshot_locked_copy(uintptr_t only) {
    mp_snapshot *snap = calloc(1, sizeof(*snap));
    if (snap == NULL) return NULL;
    mp_lock();
    size_t n = only ? 1 : mp_table_count_locked();
    mp_live_t *live = malloc((n ? n : 1) * sizeof(mp_live_t));
    snap->traces = malloc((n ? n : 1) * 4 * sizeof(uint64_t));
    snap->addresses = malloc((n ? n : 1) * sizeof(uint64_t));
    if (live == NULL || snap->traces == NULL || snap->addresses == NULL ||
        mp_intern_copy_locked(&snap->intern) != 0) {
        mp_unlock();
        free(live);
        free(snap->traces);
        free(snap->addresses);
        free(snap);
        return NULL;
    }
    if (only) {
        const mp_live_t *rec = mp_table_find_locked(only);
        n = 0;
        if (rec) live[n++] = *rec;
    } else {
        n = mp_table_copy_locked(live, n);
    }
    mp_unlock();
    for (size_t i = 0; i < n; i++) {
        snap->traces[4 * i] = live[i].size;
        snap->traces[4 * i + 1] = live[i].tb;
        snap->traces[4 * i + 2] = live[i].allocator;
        snap->traces[4 * i + 3] = live[i].thread;
        snap->addresses[i] = (uint64_t)live[i].ptr;
    }
    snap->ntraces = n;
    free(live);
    return snap;
}

mp_snapshot *mp_snapshot_take(void) {
    PyGILState_STATE gil = PyGILState_Ensure();
    mp_intern_compact(1);
    mp_snapshot *snap = snapshot_locked_copy(0);
    PyGILState_Release(gil);
    return snap;
}

/* The block behind an object starts before the object when the type keeps a header in
 * front of it: the GC links (two pointers on 3.10-3.13), and on 3.11+ the managed
 * dict/weakref pointers. This mirrors CPython's _PyType_PreHeaderSize. */
static size_t object_preheader(PyObject *op) {
    PyTypeObject *tp = Py_TYPE(op);
    size_t pre = PyType_IS_GC(tp) ? 2 * sizeof(void *) : 0;
#if PY_VERSION_HEX >= 0x030C0000
    if (PyType_HasFeature(tp, Py_TPFLAGS_MANAGED_DICT | Py_TPFLAGS_MANAGED_WEAKREF))
        pre += 2 * sizeof(PyObject *);
#elif PY_VERSION_HEX >= 0x030B0000
    if (PyType_HasFeature(tp, Py_TPFLAGS_MANAGED_DICT)) pre += 2 * sizeof(PyObject *);
#endif
    return pre;
}

mp_snapshot *mp_snapshot_of_object(uintptr_t object_address) {
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *op = (PyObject *)object_address;
    uintptr_t block = object_address - object_preheader(op);
    mp_snapshot *snap = snapshot_locked_copy(block ? block : 1);
    PyGILState_Release(gil);
    return snap;
}

void mp_snapshot_free(mp_snapshot *snap) {
    if (snap == NULL) return;
    PyGILState_STATE gil = PyGILState_Ensure();
    for (size_t i = 0; i < snap->intern.nframes; i++) Py_XDECREF(snap->intern.codes[i]);
    mp_names_release(snap->intern.names);
    PyGILState_Release(gil);
    free(snap->intern.res);
    free(snap->intern.codes);
    free(snap->intern.lasti);
    free(snap->intern.tbs);
    free(snap->intern.alloc);
    free(snap->intern.refs);
    free(snap->traces);
    free(snap->addresses);
    free(snap);
}

size_t mp_snapshot_ntraces(mp_snapshot *snap) { return snap->ntraces; }
const uint64_t *mp_snapshot_traces(mp_snapshot *snap) { return snap->traces; }
const uint64_t *mp_snapshot_addresses(mp_snapshot *snap) { return snap->addresses; }
size_t mp_snapshot_ntracebacks(mp_snapshot *snap) { return snap->intern.ntb; }
const uint64_t *mp_snapshot_tracebacks(mp_snapshot *snap) { return snap->intern.tbs; }
const double *mp_snapshot_tb_allocated(mp_snapshot *snap) { return snap->intern.alloc; }
size_t mp_snapshot_nframe_refs(mp_snapshot *snap) { return snap->intern.nrefs; }
const uint32_t *mp_snapshot_frame_refs(mp_snapshot *snap) { return snap->intern.refs; }
size_t mp_snapshot_nframes(mp_snapshot *snap) { return snap->intern.nframes; }

int mp_snapshot_frame_info(mp_snapshot *snap, size_t frame_id, mp_frame_info_t *out) {
    if (frame_id >= snap->intern.nframes) return -1;
    PyObject *code = snap->intern.codes[frame_id];
    if (code == NULL) {               /* resolved: the code object is gone */
        const mp_resolved_t *r = snap->intern.res[frame_id];
        out->filename = r->filename;
        out->name = r->name;
        out->lineno = r->lineno;
        out->firstlineno = r->firstlineno;
        return 0;
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    mp_resolve_frame(code, snap->intern.lasti[frame_id], out);
    PyGILState_Release(gil);
    return 0;
}
