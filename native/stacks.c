/* stacks.c: read the Python stack inside an allocator hook, and intern it.
 *
 * Inside a hook we may not allocate Python objects, run the GC, touch the exception state
 * or take the GIL. So we never create frame objects (PyEval_GetFrame/PyFrame_GetBack do
 * on 3.11+, and a GC run in the middle of an allocation is how other profilers crashed).
 * We read the interpreter's own frame structs instead, which differ per version:
 *   3.10  tstate->frame, a PyFrameObject chain (f_back, f_code, f_lasti in code units)
 *   3.11  tstate->cframe->current_frame, _PyInterpreterFrame chain (previous, f_code,
 *         prev_instr); frames still being set up are "incomplete" and skipped
 *   3.12  as 3.11, plus shim frames owned by the C stack (FRAME_OWNED_BY_CSTACK) to skip
 *   3.13  tstate->current_frame; the code lives in f_executable, which may be None
 * A frame is interned as (code object, instruction byte offset): a strong reference to the
 * code object is the only Python-level effect (a refcount increment, allowed under the
 * GIL). Line numbers and names are resolved later, at snapshot time, outside any hook.
 */
#include "core.h"

#include <stdlib.h>

#if PY_VERSION_HEX >= 0x030E0000 || PY_VERSION_HEX < 0x030A0000
#  error "mprofile-ipy supports CPython 3.10 to 3.13: the stack walker reads each version's frame structs and does not know this version's layout"
#endif
#include <string.h>

#if PY_VERSION_HEX < 0x030B0000
#  include <frameobject.h>
#else
/* The internal header needs Py_BUILD_CORE; define it for this include only so the rest of
 * the file uses the public API. */
#  define Py_BUILD_CORE 1
#  include "internal/pycore_frame.h"
#  undef Py_BUILD_CORE
#endif

/* ---- interned frames: dense arrays + open-addressing index (ids + 1, 0 = empty) ------- */
static PyObject **f_codes = NULL;
static int32_t *f_lasti = NULL;
static size_t f_count = 0, f_cap = 0;
static uint32_t *f_index = NULL;
static size_t f_index_cap = 0;

/* ---- interned tracebacks --------------------------------------------------------------- */
typedef struct {
    uint32_t first;       /* offset into tb_refs */
    uint32_t nframes;
    uint32_t total;       /* real depth of the stack */
    uint32_t hash;
    double alloc_count;   /* estimated allocations made with this traceback */
    double alloc_bytes;   /* estimated bytes, freed ones included */
    double alloc_samples; /* sampled allocations behind those estimates */
    double alloc_var;     /* variance of alloc_bytes: sum of s^2 w (w - 1) */
} mp_tb_t;
static mp_tb_t *tbs = NULL;
static size_t tb_count = 0, tb_cap = 0;
static uint32_t *tb_refs = NULL;
static size_t refs_count = 0, refs_cap = 0;
static uint32_t *tb_index = NULL;
static size_t tb_index_cap = 0;

/* Scratch buffer for one capture: guarded by g_lock like the rest. */
static uint32_t scratch[MP_MAX_FRAMES_LIMIT];

static int reserve(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need) ncap *= 2;
    void *n = realloc(*arr, ncap * elem);
    if (n == NULL) return -1;
    *arr = n;
    *cap = ncap;
    return 0;
}

static uint32_t hash_frame(const PyObject *code, int32_t lasti) {
    uint64_t h = ((uint64_t)(uintptr_t)code >> 4) * 0x9E3779B97F4A7C15ull;
    h ^= (uint64_t)(uint32_t)lasti * 0xC2B2AE3D27D4EB4Full;
    return (uint32_t)(h ^ (h >> 32));
}

static int rebuild_frame_index(size_t ncap) {
    uint32_t *idx = calloc(ncap, sizeof(uint32_t));
    if (idx == NULL) return -1;
    for (size_t id = 0; id < f_count; id++) {
        size_t i = hash_frame(f_codes[id], f_lasti[id]) & (ncap - 1);
        while (idx[i]) i = (i + 1) & (ncap - 1);
        idx[i] = (uint32_t)id + 1;
    }
    free(f_index);
    f_index = idx;
    f_index_cap = ncap;
    return 0;
}

/* Returns the frame id, or UINT32_MAX when out of memory. */
static uint32_t intern_frame_locked(PyObject *code, int32_t lasti) {
    if ((f_count + 1) * 2 > f_index_cap &&
        rebuild_frame_index(f_index_cap ? f_index_cap * 2 : 1024) != 0)
        return UINT32_MAX;
    size_t i = hash_frame(code, lasti) & (f_index_cap - 1);
    while (f_index[i]) {
        uint32_t id = f_index[i] - 1;
        if (f_codes[id] == code && f_lasti[id] == lasti) return id;
        i = (i + 1) & (f_index_cap - 1);
    }
    size_t c1 = f_cap, c2 = f_cap;
    if (reserve((void **)&f_codes, &c1, f_count + 1, sizeof(PyObject *)) != 0 ||
        reserve((void **)&f_lasti, &c2, f_count + 1, sizeof(int32_t)) != 0)
        return UINT32_MAX;
    f_cap = c1 < c2 ? c1 : c2;
    /* A refcount increment is all we do to a Python object here; the GIL is held. */
    Py_INCREF(code);
    f_codes[f_count] = code;
    f_lasti[f_count] = lasti;
    f_index[i] = (uint32_t)f_count + 1;
    return (uint32_t)f_count++;
}

static uint32_t hash_frames(const uint32_t *ids, uint32_t n, uint32_t total) {
    uint64_t h = 0xcbf29ce484222325ull ^ total;
    for (uint32_t k = 0; k < n; k++) h = (h ^ ids[k]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

static int rebuild_tb_index(size_t ncap) {
    uint32_t *idx = calloc(ncap, sizeof(uint32_t));
    if (idx == NULL) return -1;
    for (size_t id = 0; id < tb_count; id++) {
        size_t i = tbs[id].hash & (ncap - 1);
        while (idx[i]) i = (i + 1) & (ncap - 1);
        idx[i] = (uint32_t)id + 1;
    }
    free(tb_index);
    tb_index = idx;
    tb_index_cap = ncap;
    return 0;
}

static uint32_t intern_tb_locked(const uint32_t *ids, uint32_t n, uint32_t total) {
    if ((tb_count + 1) * 2 > tb_index_cap &&
        rebuild_tb_index(tb_index_cap ? tb_index_cap * 2 : 1024) != 0)
        return MP_NO_STACK_TB;
    uint32_t h = hash_frames(ids, n, total);
    size_t i = h & (tb_index_cap - 1);
    while (tb_index[i]) {
        mp_tb_t *t = &tbs[tb_index[i] - 1];
        if (t->hash == h && t->nframes == n && t->total == total &&
            memcmp(&tb_refs[t->first], ids, n * sizeof(uint32_t)) == 0)
            return tb_index[i] - 1;
        i = (i + 1) & (tb_index_cap - 1);
    }
    if (reserve((void **)&tbs, &tb_cap, tb_count + 1, sizeof(mp_tb_t)) != 0 ||
        reserve((void **)&tb_refs, &refs_cap, refs_count + n, sizeof(uint32_t)) != 0)
        return MP_NO_STACK_TB;
    memcpy(&tb_refs[refs_count], ids, n * sizeof(uint32_t));
    tbs[tb_count] = (mp_tb_t){(uint32_t)refs_count, n, total, h, 0.0, 0.0, 0.0, 0.0};
    refs_count += n;
    tb_index[i] = (uint32_t)tb_count + 1;
    return (uint32_t)tb_count++;
}

/* The thread state of the calling thread, only if this thread holds the GIL right now.
 * RAW-domain hooks can run without the GIL (and even without a thread state); then the
 * answer is NULL and we record no stack rather than take the GIL. */
static PyThreadState *gil_holder_tstate(void) {
#if PY_VERSION_HEX >= 0x030C0000
    /* 3.12+: a thread-local pointer, NULL unless this thread is attached (holds the GIL). */
    return _PyThreadState_UncheckedGet();
#else
    /* 3.10/3.11: the process-wide "current" thread state is whoever holds the GIL; it is
     * ours only if it equals this thread's own state (a plain TSS lookup, no allocation). */
    PyThreadState *ts = _PyThreadState_UncheckedGet();
    if (ts == NULL) return NULL;
    return ts == PyGILState_GetThisThreadState() ? ts : NULL;
#endif
}

/* Walks the stack into scratch[], most recent first. Returns frames kept; *total gets
 * the real depth. */
static uint32_t walk_locked(PyThreadState *ts, uint32_t *total) {
    uint32_t n = 0, depth = 0;
    uint32_t limit = (uint32_t)__atomic_load_n(&g_max_frames, __ATOMIC_RELAXED);
#if PY_VERSION_HEX < 0x030B0000
    for (PyFrameObject *f = ts->frame; f != NULL; f = f->f_back) {
        PyObject *code = (PyObject *)f->f_code;
        if (code == NULL) continue;
        depth++;
        if (n >= limit) continue;
        /* f_lasti counts 2-byte code units; -1 means the frame has not started yet. */
        int32_t lasti = f->f_lasti < 0 ? -1 : f->f_lasti * 2;
        uint32_t id = intern_frame_locked(code, lasti);
        if (id != UINT32_MAX) scratch[n++] = id;
    }
#else
#  if PY_VERSION_HEX >= 0x030D0000
    _PyInterpreterFrame *f = ts->current_frame;
#  else
    _PyInterpreterFrame *f = ts->cframe ? ts->cframe->current_frame : NULL;
#  endif
    for (; f != NULL; f = f->previous) {
#  if PY_VERSION_HEX >= 0x030C0000
        if (f->owner == FRAME_OWNED_BY_CSTACK) continue;   /* entry shims, not user code */
#  endif
#  if PY_VERSION_HEX >= 0x030D0000
        if (f->f_executable == NULL || !PyCode_Check(f->f_executable)) continue;
#  endif
        if (_PyFrame_IsIncomplete(f)) continue;            /* still being pushed */
#  if PY_VERSION_HEX >= 0x030D0000
        PyObject *code = f->f_executable;
#  else
        PyObject *code = (PyObject *)f->f_code;
#  endif
        depth++;
        if (n >= limit) continue;
        int32_t lasti = (int32_t)(_PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT));
        uint32_t id = intern_frame_locked(code, lasti);
        if (id != UINT32_MAX) scratch[n++] = id;
    }
#endif
    *total = depth;
    return n;
}

static void ensure_no_stack_tb_locked(void) {
    if (tb_count == 0) (void)intern_tb_locked(NULL, 0, 0);   /* becomes id 0 */
}

uint32_t mp_capture_traceback_locked(void) {
    ensure_no_stack_tb_locked();
    PyThreadState *ts = gil_holder_tstate();
    if (ts == NULL) return MP_NO_STACK_TB;
    uint32_t total = 0;
    uint32_t n = walk_locked(ts, &total);
    if (n == 0) return MP_NO_STACK_TB;
    return intern_tb_locked(scratch, n, total);
}

void mp_tb_account_locked(uint32_t tb, double weight, uint64_t size) {
    if (tb >= tb_count) return;
    double s = (double)size;
    tbs[tb].alloc_count += weight;
    tbs[tb].alloc_bytes += weight * s;
    tbs[tb].alloc_samples += 1.0;
    tbs[tb].alloc_var += s * s * weight * (weight - 1.0);
}

PyObject **mp_intern_detach_locked(size_t *ncodes) {
    PyObject **codes = f_codes;
    *ncodes = f_count;
    f_codes = NULL;
    free(f_lasti);
    f_lasti = NULL;
    f_count = f_cap = 0;
    free(f_index);
    f_index = NULL;
    f_index_cap = 0;
    free(tbs);
    tbs = NULL;
    tb_count = tb_cap = 0;
    free(tb_refs);
    tb_refs = NULL;
    refs_count = refs_cap = 0;
    free(tb_index);
    tb_index = NULL;
    tb_index_cap = 0;
    return codes;
}

uint64_t mp_intern_memory_locked(void) {
    return (uint64_t)f_cap * (sizeof(PyObject *) + sizeof(int32_t)) +
           (uint64_t)f_index_cap * sizeof(uint32_t) + (uint64_t)tb_cap * sizeof(mp_tb_t) +
           (uint64_t)refs_cap * sizeof(uint32_t) + (uint64_t)tb_index_cap * sizeof(uint32_t);
}

int mp_intern_copy_locked(mp_intern_copy_t *out) {
    memset(out, 0, sizeof(*out));
    ensure_no_stack_tb_locked();
    out->ntb = tb_count;
    out->nrefs = refs_count;
    out->nframes = f_count;
    out->tbs = malloc((tb_count ? tb_count : 1) * 3 * sizeof(uint64_t));
    out->alloc = malloc((tb_count ? tb_count : 1) * 4 * sizeof(double));
    out->refs = malloc((refs_count ? refs_count : 1) * sizeof(uint32_t));
    out->codes = malloc((f_count ? f_count : 1) * sizeof(PyObject *));
    out->lasti = malloc((f_count ? f_count : 1) * sizeof(int32_t));
    if (!out->tbs || !out->alloc || !out->refs || !out->codes || !out->lasti) {
        free(out->tbs); free(out->alloc); free(out->refs); free(out->codes); free(out->lasti);
        memset(out, 0, sizeof(*out));
        return -1;
    }
    for (size_t i = 0; i < tb_count; i++) {
        out->tbs[3 * i] = tbs[i].first;
        out->tbs[3 * i + 1] = tbs[i].nframes;
        out->tbs[3 * i + 2] = tbs[i].total;
        out->alloc[4 * i] = tbs[i].alloc_count;
        out->alloc[4 * i + 1] = tbs[i].alloc_bytes;
        out->alloc[4 * i + 2] = tbs[i].alloc_samples;
        out->alloc[4 * i + 3] = tbs[i].alloc_var;
    }
    if (refs_count) memcpy(out->refs, tb_refs, refs_count * sizeof(uint32_t));
    for (size_t i = 0; i < f_count; i++) {
        Py_INCREF(f_codes[i]);     /* the snapshot keeps its codes alive past a clear() */
        out->codes[i] = f_codes[i];
        out->lasti[i] = f_lasti[i];
    }
    return 0;
}
