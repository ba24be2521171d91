/* mprofile.h: the C API that Python sees (cffi reads this file as its cdef).
 *
 * Keep it to plain declarations: no #include, no #if, no macros. Every function here is
 * called through cffi, which RELEASES the GIL around the call; the functions that touch
 * Python objects take it back themselves (PyGILState_Ensure).
 *
 * Units: sizes are bytes (64-bit); estimates are doubles (unbiased, see estimate.py);
 * tracebacks are stored most recent frame first.
 */

typedef struct {
    int tracing;              /* 1 while sampling is on */
    int exact;                /* 1 when every allocation is traced (sample_rate <= 1) */
    int64_t sample_rate;      /* mean bytes between samples */
    int max_frames;           /* traceback depth limit */
    uint64_t samples;         /* allocations sampled since start / clear */
    uint64_t live_samples;    /* sampled allocations still alive */
    double current_bytes;     /* estimated bytes alive (traced memory) */
    double peak_bytes;        /* estimated peak of current_bytes since start / reset_peak */
    double alloc_bytes;       /* estimated bytes allocated since start, freed ones included */
    double alloc_count;       /* estimated allocations since start, freed ones included */
    uint64_t profiler_memory; /* bytes the sampler's own tables use */
    int foreign_hooks;        /* 1 when another tool replaced or stacked on our hooks */
} mp_stats_t;

typedef struct {
    const char *filename;     /* UTF-8, valid until mp_snapshot_free */
    const char *name;         /* qualified function name, UTF-8 */
    int lineno;
    int firstlineno;
} mp_frame_info_t;

typedef struct mp_snapshot mp_snapshot;

/* Lifecycle. Return 0 on success, -1 on error (message in mp_last_error()). */
int mp_start(int64_t sample_rate, int max_frames, uint64_t seed, int use_seed);
int mp_stop(void);
int mp_clear(void);
void mp_reset_peak(void);
void mp_get_stats(mp_stats_t *out);
/* The budget's watermark: when the estimated live bytes reach `bytes`, one 8-byte write to
 * the eventfd `fd` and, if `call_main`, a pending call of mprofile_ipy.budget._on_watermark
 * in the main thread (once per call; bytes <= 0 turns it off). */
void mp_set_watermark(double bytes, int fd, int call_main);
const char *mp_last_error(void);
int mp_max_frames_limit(void);
unsigned long mp_python_version_built(void);   /* PY_VERSION_HEX of the headers built against */
/* Pauses of the calling thread's sampling, for the profiler's own Python code: used as
 * ffi.new_allocator(alloc=mp_pause_alloc, free=mp_pause_free), so that a pause is a cffi
 * object whose creation and release run in C (sampler.c says why). */
void *mp_pause_alloc(size_t size);
void mp_pause_free(void *ptr);
int mp_thread_paused(void);   /* the calling thread's pause depth (0: sampled) */
/* The calling thread's label (0: none), e.g. the Dask task prefix it runs, as an id the
 * caller maps to a name. Each traceback recorded afterwards carries it: the same stack
 * under two labels is two tracebacks. A fork child starts at 0. */
void mp_set_thread_label(uint32_t label);
uint32_t mp_thread_label(void);

/* Snapshots: a consistent copy of the live table and the interned tracebacks. */
mp_snapshot *mp_snapshot_take(void);
mp_snapshot *mp_snapshot_of_object(uintptr_t object_address);
void mp_snapshot_free(mp_snapshot *snap);
size_t mp_snapshot_ntraces(mp_snapshot *snap);
const uint64_t *mp_snapshot_traces(mp_snapshot *snap);      /* 4 per trace: size, tb, allocator, thread */
const uint64_t *mp_snapshot_addresses(mp_snapshot *snap);   /* 1 per trace: block address */
size_t mp_snapshot_ntracebacks(mp_snapshot *snap);
const uint64_t *mp_snapshot_tracebacks(mp_snapshot *snap);  /* 4 per tb: first, nframes, total_nframe, label */
/* 4 per tb: estimated count, estimated bytes, samples, variance of the bytes estimate */
const double *mp_snapshot_tb_allocated(mp_snapshot *snap);
size_t mp_snapshot_nframe_refs(mp_snapshot *snap);
const uint32_t *mp_snapshot_frame_refs(mp_snapshot *snap);  /* frame ids, indexed by tb "first" */
size_t mp_snapshot_nframes(mp_snapshot *snap);
int mp_snapshot_frame_info(mp_snapshot *snap, size_t frame_id, mp_frame_info_t *out);

/* Test hooks: exercise the C paths deterministically from Python. */
void *mp_test_raw_malloc_nogil(size_t size);
void mp_test_raw_free_nogil(void *ptr);
void *mp_test_raw_realloc_nogil(void *ptr, size_t size);
/* Which function set serves the OBJ domain: 1 unchecked, 0 checked, -1 not ours. */
int mp_test_hooks_unchecked(void);

/* ==== native capture: NumPy array data and native mode ===================================
 * (native/capture_common.c, numpy_handler.c, native_mode.h; Python side:
 * mprofile_ipy/native_capture.py, which documents what each mode sees and misses.) */

typedef struct {
    int numpy_installed;            /* 1 while NumPy's default data handler is wrapped */
    unsigned int numpy_feature_version;  /* NumPy's C-API feature version (0 if unknown) */
    char numpy_handler[128];        /* the wrapped handler's name ("default_allocator") */
    int native_supported;           /* 1 on Linux/glibc x86-64 and aarch64 */
    int native_installed;           /* 1 while native mode's slots are patched */
    uint64_t native_objects;        /* extension libraries with patched import slots */
    uint64_t native_python_objects; /* interpreter objects with patched free/dlopen slots */
    uint64_t native_slots;          /* import slots pointing at our wrappers */
    uint64_t native_failures;       /* slots that could not be written */
    uint64_t native_scans;          /* scans of the loaded objects so far */
    uint64_t deferred;              /* samples recorded when the main thread got back */
    uint64_t deferred_nostack;      /* deferred samples that had to go without a stack */
    uint64_t pending;               /* deferred samples waiting right now */
} mp_capture_status_t;

/* The thread whose samples made without the GIL wait for its stack (main thread). */
void mp_capture_set_main_thread(uint64_t thread_ident);
void mp_capture_status(mp_capture_status_t *out);
/* 0: NumPy's default handler wrapped; 1: NumPy is not imported; -1: error. */
int mp_numpy_install(void);
int mp_numpy_uninstall(void);
/* Native mode: patch (install), patch newly loaded objects (rescan), restore (uninstall). */
int mp_native_install(void);
int mp_native_rescan(void);
int mp_native_uninstall(void);
void *mp_native_hook_address(const char *name);
