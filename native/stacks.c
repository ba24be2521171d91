/* stacks.c: read the Python stack inside an allocator hook, and intern it.
 *
 * Inside a hook we may not allocate Python objects, run the GC, touch the exception state
 * or take the GIL. So we never create frame objects (PyEval_GetFrame/PyFrame_GetBack do
 * on 3.11+, and a GC run in the middle of an allocation is how other profilers crashed).
 * We read the interpreter's own frame structs instead, which differ per version:
 *   3.10  tstate->frame, a PyFrameObject chain (f_back, f_code, ST.f_lasti in code units)
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

/* This file's part of the process state (state.h): mp_state.stacks. */
#define ST mp_state.stacks

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

static int reserve(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need) ncap *= 2;
    void *n = mp_os_realloc(*arr, *cap * elem, ncap * elem);
    if (n == NULL) return -1;
    *arr = n;
    *cap = ncap;
    return 0;
}

/* ---- interned frames: dense arrays + a hash index (htable.h) of ids + 1, 0 = empty ----- */
/* ST.f_codes[id] holds a strong reference, or NULL once the frame is resolved
 * (ST.f_res[id]) and has left the index: see "Letting code objects go" below. So every
 * id in the index has its code object, from which its hash is computed again. */

static uint32_t hash_frame(const PyObject *code, int32_t lasti) {
    uint64_t h = ((uint64_t)(uintptr_t)code >> 4) * 0x9E3779B97F4A7C15ull;
    h ^= (uint64_t)(uint32_t)lasti * 0xC2B2AE3D27D4EB4Full;
    return (uint32_t)(h ^ (h >> 32));
}

typedef struct {
    PyObject *code;
    int32_t lasti;
    uint32_t hash;
} frame_key_t;

#define IDX_EMPTY(e) (*(e) == 0)
#define IDX_CLEAR(e) (*(e) = 0)
#define FRAME_ENTRY_HASH(e) hash_frame(ST.f_codes[*(e) - 1], ST.f_lasti[*(e) - 1])
#define FRAME_KEY_HASH(k) ((k)->hash)
#define FRAME_MATCH(e, k) \
    (ST.f_codes[*(e) - 1] == (k)->code && ST.f_lasti[*(e) - 1] == (k)->lasti)
MP_HTABLE_FUNCS(fidx, uint32_t, const frame_key_t *, IDX_EMPTY, IDX_CLEAR, FRAME_ENTRY_HASH,
                FRAME_KEY_HASH, FRAME_MATCH);

static int rebuild_frame_index(size_t ncap) {
    uint32_t *idx = mp_os_alloc(ncap * sizeof(uint32_t));
    if (idx == NULL) return -1;
    size_t n = 0;
    for (size_t id = 0; id < ST.f_count; id++) {
        if (ST.f_codes[id] == NULL) continue;     /* resolved: never looked up again */
        uint32_t e = (uint32_t)id + 1;
        (void)fidx_place(idx, ncap - 1, &e);
        n++;
    }
    mp_os_free(ST.f_index.slots, ST.f_index.cap * sizeof(uint32_t));
    ST.f_index.slots = idx;
    ST.f_index.cap = ncap;
    ST.f_index.count = n;
    return 0;
}

/* Returns the frame id, or UINT32_MAX when out of memory. */
static uint32_t intern_frame_locked(PyObject *code, int32_t lasti) {
    /* Load <= 1/2, counted over every frame ever interned (resolved ones included), so
     * that the index grows at the same points, and reports the same memory, as always. */
    if ((ST.f_count + 1) * 2 > ST.f_index.cap &&
        rebuild_frame_index(ST.f_index.cap ? ST.f_index.cap * 2 : 1024) != 0)
        return UINT32_MAX;
    frame_key_t key = {code, lasti, hash_frame(code, lasti)};
    int found;
    size_t i = fidx_probe(ST.f_index.slots, ST.f_index.cap - 1, &key, &found);
    if (found) return ST.f_index.slots[i] - 1;
    size_t c1 = ST.f_cap, c2 = ST.f_cap, c3 = ST.f_cap;
    if (reserve((void **)&ST.f_codes, &c1, ST.f_count + 1, sizeof(PyObject *)) != 0 ||
        reserve((void **)&ST.f_lasti, &c2, ST.f_count + 1, sizeof(int32_t)) != 0 ||
        reserve((void **)&ST.f_res, &c3, ST.f_count + 1, sizeof(mp_resolved_t *)) != 0)
        return UINT32_MAX;
    ST.f_cap = c1 < c2 ? c1 : c2;
    if (c3 < ST.f_cap) ST.f_cap = c3;
    /* A refcount increment is all we do to a Python object here; the GIL is held. */
    Py_INCREF(code);
    ST.f_codes[ST.f_count] = code;
    ST.f_lasti[ST.f_count] = lasti;
    ST.f_res[ST.f_count] = NULL;
    ST.f_index.slots[i] = (uint32_t)ST.f_count + 1;   /* the empty slot the probe ended at */
    ST.f_index.count++;
    if (ST.f_count + 1 >= 2 * ST.compacted_at + 4096)
        __atomic_store_n(&ST.compact_wanted, 1, __ATOMIC_RELAXED);
    return (uint32_t)ST.f_count++;
}

/* A resolved frame leaves the index (compaction, table.lock held), *before* its code
 * pointer is cleared: the entries its removal shifts are rehashed from their codes. */
static void unindex_frame_locked(uint32_t id) {
    if (ST.f_index.cap == 0) return;
    frame_key_t key = {ST.f_codes[id], ST.f_lasti[id],
                       hash_frame(ST.f_codes[id], ST.f_lasti[id])};
    size_t i = fidx_find(ST.f_index.slots, ST.f_index.cap - 1, &key);
    if (i == SIZE_MAX || ST.f_index.slots[i] != id + 1) return;
    fidx_remove_at(ST.f_index.slots, ST.f_index.cap - 1, i);
    ST.f_index.count--;
}

/* ---- interned tracebacks: a dense array + a hash index of ids + 1 ----------------------- */

static uint32_t hash_frames(const uint32_t *ids, uint32_t n, uint32_t total,
                            uint32_t label) {
    uint64_t h = 0xcbf29ce484222325ull ^ total ^ ((uint64_t)label << 32);
    for (uint32_t k = 0; k < n; k++) h = (h ^ ids[k]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

/* A traceback's identity is (frames, total depth, label). */
typedef struct {
    const uint32_t *ids;
    uint32_t n, total, label, hash;
} tb_key_t;

static inline int tb_matches(uint32_t entry, const tb_key_t *k) {
    const mp_tb_t *t = &ST.tbs[entry - 1];
    return t->hash == k->hash && t->nframes == k->n && t->total == k->total &&
           t->label == k->label &&
           memcmp(&ST.tb_refs[t->first], k->ids, k->n * sizeof(uint32_t)) == 0;
}

#define TB_ENTRY_HASH(e) (ST.tbs[*(e) - 1].hash)
#define TB_KEY_HASH(k) ((k)->hash)
#define TB_MATCH(e, k) tb_matches(*(e), (k))
MP_HTABLE_FUNCS(tbidx, uint32_t, const tb_key_t *, IDX_EMPTY, IDX_CLEAR, TB_ENTRY_HASH,
                TB_KEY_HASH, TB_MATCH);

static uint32_t intern_tb_locked(const uint32_t *ids, uint32_t n, uint32_t total,
                                 uint32_t label) {
    if ((ST.tb_count + 1) * 2 > ST.tb_index.cap &&                       /* load <= 1/2 */
        MP_HTABLE_RESIZE(tbidx, &ST.tb_index,
                         ST.tb_index.cap ? ST.tb_index.cap * 2 : 1024) != 0)
        return MP_NO_STACK_TB;
    tb_key_t key = {ids, n, total, label, hash_frames(ids, n, total, label)};
    int found;
    size_t i = tbidx_probe(ST.tb_index.slots, ST.tb_index.cap - 1, &key, &found);
    if (found) return ST.tb_index.slots[i] - 1;
    if (reserve((void **)&ST.tbs, &ST.tb_cap, ST.tb_count + 1, sizeof(mp_tb_t)) != 0 ||
        reserve((void **)&ST.tb_refs, &ST.refs_cap, ST.refs_count + n, sizeof(uint32_t)) != 0)
        return MP_NO_STACK_TB;
    memcpy(&ST.tb_refs[ST.refs_count], ids, n * sizeof(uint32_t));
    ST.tbs[ST.tb_count] =
        (mp_tb_t){(uint32_t)ST.refs_count, n, total, key.hash, label, 0.0, 0.0, 0.0, 0.0};
    ST.refs_count += n;
    ST.tb_index.slots[i] = (uint32_t)ST.tb_count + 1;   /* the empty slot the probe ended at */
    ST.tb_index.count++;
    return (uint32_t)ST.tb_count++;
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

/* Walks the stack into ST.scratch[], most recent first. Returns frames kept; *total gets
 * the real depth. */
static uint32_t walk_locked(PyThreadState *ts, uint32_t *total) {
    uint32_t n = 0, depth = 0;
    uint32_t limit = (uint32_t)__atomic_load_n(&mp_state.config.max_frames, __ATOMIC_RELAXED);
#if PY_VERSION_HEX < 0x030B0000
    for (PyFrameObject *f = ts->frame; f != NULL; f = f->f_back) {
        PyObject *code = (PyObject *)f->f_code;
        if (code == NULL) continue;
        depth++;
        if (n >= limit) continue;
        /* ST.f_lasti counts 2-byte code units; -1 means the frame has not started yet. */
        int32_t lasti = f->f_lasti < 0 ? -1 : f->f_lasti * 2;
        uint32_t id = intern_frame_locked(code, lasti);
        if (id != UINT32_MAX) ST.scratch[n++] = id;
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
        if (id != UINT32_MAX) ST.scratch[n++] = id;
    }
#endif
    *total = depth;
    return n;
}

static void ensure_no_stack_tb_locked(void) {
    if (ST.tb_count == 0) (void)intern_tb_locked(NULL, 0, 0, 0);   /* becomes id 0 */
}

uint32_t mp_capture_traceback_locked(void) {
    ensure_no_stack_tb_locked();
    /* The label is the calling thread's own (TLS, no lock): a sample without a stack keeps
     * it too, as a traceback with no frames (id 0 stays "no stack, no label"). */
    uint32_t label = t_state.label;
    PyThreadState *ts = gil_holder_tstate();
    uint32_t total = 0;
    uint32_t n = ts != NULL ? walk_locked(ts, &total) : 0;
    if (n == 0) {
        if (label == 0) return MP_NO_STACK_TB;
        total = 0;
    }
    return intern_tb_locked(ST.scratch, n, total, label);
}

void mp_tb_account_locked(uint32_t tb, double weight, uint64_t size) {
    if (tb >= ST.tb_count) return;
    double s = (double)size;
    ST.tbs[tb].alloc_count += weight;
    ST.tbs[tb].alloc_bytes += weight * s;
    ST.tbs[tb].alloc_samples += 1.0;
    ST.tbs[tb].alloc_var += s * s * weight * (weight - 1.0);
}

PyObject **mp_intern_detach_locked(size_t *ncodes, size_t *bytes) {
    PyObject **codes = ST.f_codes;     /* NULL entries: resolved frames (Py_XDECREF) */
    *ncodes = ST.f_count;
    *bytes = ST.f_cap * sizeof(PyObject *);
    ST.f_codes = NULL;
    mp_os_free(ST.f_lasti, ST.f_cap * sizeof(int32_t));
    ST.f_lasti = NULL;
    mp_os_free(ST.f_res, ST.f_cap * sizeof(mp_resolved_t *));
    ST.f_res = NULL;
    ST.f_count = ST.f_cap = 0;
    ST.clear_epoch++;
    mp_names_release(ST.names);
    ST.names = NULL;
    ST.compacted_at = 0;
    mp_os_free(ST.f_index.slots, ST.f_index.cap * sizeof(uint32_t));
    ST.f_index.slots = NULL;
    ST.f_index.cap = ST.f_index.count = 0;
    mp_os_free(ST.tbs, ST.tb_cap * sizeof(mp_tb_t));
    ST.tbs = NULL;
    ST.tb_count = ST.tb_cap = 0;
    mp_os_free(ST.tb_refs, ST.refs_cap * sizeof(uint32_t));
    ST.tb_refs = NULL;
    ST.refs_count = ST.refs_cap = 0;
    mp_os_free(ST.tb_index.slots, ST.tb_index.cap * sizeof(uint32_t));
    ST.tb_index.slots = NULL;
    ST.tb_index.cap = ST.tb_index.count = 0;
    return codes;
}

uint64_t mp_intern_memory_locked(void) {
    return (uint64_t)ST.f_cap * (sizeof(PyObject *) + sizeof(int32_t) + sizeof(void *)) +
           (ST.names ? ST.names->bytes : 0) +
           (uint64_t)ST.f_index.cap * sizeof(uint32_t) +
           (uint64_t)ST.tb_cap * sizeof(mp_tb_t) + (uint64_t)ST.refs_cap * sizeof(uint32_t) +
           (uint64_t)ST.tb_index.cap * sizeof(uint32_t);
}

int mp_intern_copy_locked(mp_intern_copy_t *out) {
    memset(out, 0, sizeof(*out));
    ensure_no_stack_tb_locked();
    out->ntb = ST.tb_count;
    out->nrefs = ST.refs_count;
    out->nframes = ST.f_count;
    out->tbs = malloc((ST.tb_count ? ST.tb_count : 1) * 4 * sizeof(uint64_t));
    out->alloc = malloc((ST.tb_count ? ST.tb_count : 1) * 4 * sizeof(double));
    out->refs = malloc((ST.refs_count ? ST.refs_count : 1) * sizeof(uint32_t));
    out->codes = malloc((ST.f_count ? ST.f_count : 1) * sizeof(PyObject *));
    out->lasti = malloc((ST.f_count ? ST.f_count : 1) * sizeof(int32_t));
    out->res = malloc((ST.f_count ? ST.f_count : 1) * sizeof(mp_resolved_t *));
    if (!out->tbs || !out->alloc || !out->refs || !out->codes || !out->lasti || !out->res) {
        free(out->tbs); free(out->alloc); free(out->refs); free(out->codes); free(out->lasti);
        free(out->res);
        memset(out, 0, sizeof(*out));
        return -1;
    }
    for (size_t i = 0; i < ST.tb_count; i++) {
        out->tbs[4 * i] = ST.tbs[i].first;
        out->tbs[4 * i + 1] = ST.tbs[i].nframes;
        out->tbs[4 * i + 2] = ST.tbs[i].total;
        out->tbs[4 * i + 3] = ST.tbs[i].label;
        out->alloc[4 * i] = ST.tbs[i].alloc_count;
        out->alloc[4 * i + 1] = ST.tbs[i].alloc_bytes;
        out->alloc[4 * i + 2] = ST.tbs[i].alloc_samples;
        out->alloc[4 * i + 3] = ST.tbs[i].alloc_var;
    }
    if (ST.refs_count) memcpy(out->refs, ST.tb_refs, ST.refs_count * sizeof(uint32_t));
    /* The snapshot keeps its codes alive, and the resolved names, past a clear(). */
    if (ST.names) ST.names->refs++;
    out->names = ST.names;
    for (size_t i = 0; i < ST.f_count; i++) {
        Py_XINCREF(ST.f_codes[i]);
        out->codes[i] = ST.f_codes[i];
        out->lasti[i] = ST.f_lasti[i];
        out->res[i] = ST.f_res[i];
    }
    return 0;
}

/* ---- Letting code objects go ---------------------------------------------------------------
 *
 * An interned frame holds its code object, so that names and lines can be resolved at
 * snapshot time. In exact mode a program that generates many functions would otherwise be
 * kept alive by the profiler alone (100 k generated functions: +205 MB of RSS). So now and
 * then (every snapshot, when get_stats() sees the frames grown, and from a pending call when
 * interning doubled) the frames whose code object nobody but us holds are resolved into
 * names and lines, copied into a reference-counted arena (mp_names_t), and the code object
 * is released. A resolved frame keeps its id (tracebacks refer to it) but leaves the lookup
 * index: a new code object at the same address must not match it.
 *
 * Two phases, because resolving may allocate (PyUnicode_AsUTF8) and allocations re-enter
 * the hooks, which take table.lock: (1) under table.lock, pick the frames whose code's
 * reference count equals our references to it; (2) without table.lock, GIL held, copy
 * their names; (3) under table.lock, commit if the tables were not cleared meanwhile. The
 * GIL, held throughout, keeps every reference count still. The references are dropped
 * after table.lock is released. */

#define MP_NAMES_CHUNK (64 * 1024)

typedef struct mp_names_chunk {
    struct mp_names_chunk *next;
    size_t used, cap;
    char data[];
} mp_names_chunk_t;


static void *names_alloc(mp_names_t *n, size_t size) {
    size = (size + 7) & ~(size_t)7;
    mp_names_chunk_t *c = n->chunks;
    if (c == NULL || c->cap - c->used < size) {
        size_t cap = size > MP_NAMES_CHUNK ? size : MP_NAMES_CHUNK;
        c = mp_os_alloc(sizeof(*c) + cap);
        if (c == NULL) return NULL;
        c->next = n->chunks;
        c->used = 0;
        c->cap = cap;
        n->chunks = c;
        n->bytes += sizeof(*c) + cap;
    }
    void *p = c->data + c->used;
    c->used += size;
    return p;
}

static const char *names_strdup(mp_names_t *n, const char *s) {
    size_t len = strlen(s) + 1;
    char *d = names_alloc(n, len);
    if (d) memcpy(d, s, len);
    return d;
}

void mp_names_release(mp_names_t *n) {
    if (n == NULL || --n->refs > 0) return;
    for (mp_names_chunk_t *c = n->chunks, *next; c != NULL; c = next) {
        next = c->next;
        mp_os_free(c, sizeof(*c) + c->cap);
    }
    free(n);
}

/* Names that are not valid UTF-8 (a module file whose name has bytes the file system
 * encoding cannot decode comes back with lone surrogates, PEP 383) are kept as their
 * original bytes: the "surrogateescape" encoding, which Python decodes back to the same
 * str. The bytes objects live in this dict for the rest of the process (one per distinct
 * such name), so the pointers stay valid as long as any snapshot needs them. GIL held. */

static const char *utf8_or(PyObject *s, const char *fallback) {
    if (s == NULL || !PyUnicode_Check(s)) return fallback;
    const char *u = PyUnicode_AsUTF8(s);
    if (u != NULL) return u;
    PyErr_Clear();        /* lone surrogates: keep the original bytes */
    if (ST.escaped_names == NULL && (ST.escaped_names = PyDict_New()) == NULL) goto fail;
    PyObject *b = PyDict_GetItemWithError(ST.escaped_names, s);   /* borrowed */
    if (b == NULL) {
        if (PyErr_Occurred()) goto fail;
        b = PyUnicode_AsEncodedString(s, "utf-8", "surrogateescape");
        if (b == NULL) goto fail;
        int rc = PyDict_SetItem(ST.escaped_names, s, b);
        Py_DECREF(b);     /* the dict keeps it */
        if (rc < 0) goto fail;
    }
    return PyBytes_AS_STRING(b);
fail:
    PyErr_Clear();
    return fallback;
}

void mp_resolve_frame(PyObject *codeobj, int32_t lasti, mp_frame_info_t *out) {
    PyCodeObject *code = (PyCodeObject *)codeobj;
    out->filename = utf8_or(code->co_filename, "<unknown>");
#if PY_VERSION_HEX >= 0x030B0000
    out->name = utf8_or(code->co_qualname, "<unknown>");
#else
    out->name = utf8_or(code->co_name, "<unknown>");
#endif
    out->firstlineno = code->co_firstlineno;
    int line = lasti < 0 ? code->co_firstlineno : PyCode_Addr2Line(code, lasti);
    out->lineno = line < 0 ? 0 : line;
}

typedef struct {
    uint32_t id;
    PyObject *code;
    mp_resolved_t *res;
} mp_candidate_t;

/* Compaction's temporary set: code object -> our references to it (htable.h). */
typedef struct {
    PyObject *code;      /* NULL: empty */
    uint32_t count;
} code_count_t;
#define CODES_EMPTY(e) ((e)->code == NULL)
#define CODES_CLEAR(e) ((e)->code = NULL)
#define CODES_HASH(c) hash_frame((c), 0)
#define CODES_ENTRY_HASH(e) CODES_HASH((e)->code)
#define CODES_MATCH(e, c) ((e)->code == (c))
MP_HTABLE_FUNCS(codes, code_count_t, PyObject *, CODES_EMPTY, CODES_CLEAR, CODES_ENTRY_HASH,
                CODES_HASH, CODES_MATCH);

/* One round; returns the number of code objects released. */
static size_t compact_round(int force);

/* GIL held, table.lock not held. `force`: compact even if the frames have not grown much.
 * Releasing one code object can leave another held by us alone (a module's code keeps its
 * functions' codes in co_consts), hence a few rounds. */
void mp_intern_compact(int force) {
    for (int round = 0; round < 8; round++)
        if (compact_round(force || round > 0) == 0) break;
}

static size_t compact_round(int force) {
    mp_lock();
    size_t n = ST.f_count;
    if (n == 0 || (!force && n < ST.compacted_at + ST.compacted_at / 8 + 1024)) {
        mp_unlock();
        return 0;
    }
    /* (1) Our references per code object, in a temporary set keyed by address. */
    size_t cap = 1;
    while (cap < 2 * n) cap <<= 1;
    code_count_t *counts = mp_os_alloc(cap * sizeof(code_count_t));
    mp_candidate_t *cand = malloc(n * sizeof(mp_candidate_t));
    size_t ncand = 0;
    uint64_t epoch = ST.clear_epoch;
    if (counts && cand) {
        for (size_t id = 0; id < n; id++) {
            PyObject *c = ST.f_codes[id];
            if (c == NULL) continue;
            int found;
            size_t i = codes_probe(counts, cap - 1, c, &found);
            counts[i].code = c;
            counts[i].count++;
        }
        for (size_t id = 0; id < n; id++) {
            PyObject *c = ST.f_codes[id];
            if (c == NULL) continue;
            size_t i = codes_find(counts, cap - 1, c);
            if ((size_t)Py_REFCNT(c) == counts[i].count)
                cand[ncand++] = (mp_candidate_t){(uint32_t)id, c, NULL};
        }
    }
    ST.compacted_at = n;
    __atomic_store_n(&ST.compact_wanted, 0, __ATOMIC_RELAXED);
    mp_unlock();
    mp_os_free(counts, cap * sizeof(code_count_t));
    if (ncand == 0) {
        free(cand);
        return 0;
    }
    /* (2) Names and lines, copied into the arena (a new one if there is none yet). */
    mp_names_t *names = ST.names;
    if (names == NULL) {
        names = calloc(1, sizeof(*names));
        if (names == NULL) {
            free(cand);
            return 0;
        }
        names->refs = 1;
    }
    PyObject *last_file = NULL;
    const char *last_file_copy = NULL;
    for (size_t k = 0; k < ncand; k++) {
        mp_frame_info_t info;
        mp_resolve_frame(cand[k].code, ST.f_lasti[cand[k].id], &info);
        PyObject *file = ((PyCodeObject *)cand[k].code)->co_filename;
        mp_resolved_t *r = names_alloc(names, sizeof(mp_resolved_t));
        if (r == NULL) break;
        r->filename = file == last_file ? last_file_copy : names_strdup(names, info.filename);
        r->name = names_strdup(names, info.name);
        if (r->filename == NULL || r->name == NULL) break;
        last_file = file;
        last_file_copy = r->filename;
        r->lineno = info.lineno;
        r->firstlineno = info.firstlineno;
        cand[k].res = r;
    }
    /* (3) Commit: the resolved frames drop their code. */
    size_t ndrop = 0;
    mp_lock();
    if (ST.clear_epoch == epoch) {
        ST.names = names;
        for (size_t k = 0; k < ncand && cand[k].res != NULL; k++) {
            /* Resolved already by a compaction nested in (2) (a collection it triggered
             * ran Python code): that one dropped the reference. */
            if (ST.f_codes[cand[k].id] != cand[k].code) continue;
            unindex_frame_locked(cand[k].id);
            ST.f_res[cand[k].id] = cand[k].res;
            ST.f_codes[cand[k].id] = NULL;
            cand[ndrop++].code = cand[k].code;
        }
    } else if (names != ST.names) {
        mp_names_release(names);       /* cleared meanwhile: nothing to commit */
    }
    mp_unlock();
    for (size_t k = 0; k < ndrop; k++) Py_DECREF(cand[k].code);
    free(cand);
    return ndrop;
}

/* From the record path, table.lock not held: interning doubled, so let the main thread
 * compact at its next eval-breaker check (Py_AddPendingCall needs no GIL and allocates
 * nothing). */
static int compact_pending(void *arg) {
    (void)arg;
    mp_intern_compact(0);
    return 0;
}

void mp_intern_maybe_schedule_compact(void) {
    if (__atomic_exchange_n(&ST.compact_wanted, 0, __ATOMIC_RELAXED))
        (void)Py_AddPendingCall(compact_pending, NULL);
}
