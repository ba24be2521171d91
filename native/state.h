/* state.h: the native sampler's process-wide state, in one struct (`mp_state`).
 *
 * CPython keeps tracemalloc's state in one runtime struct (_PyRuntime.tracemalloc); this
 * is the same idea. There is one instance, defined in state.c with hidden visibility
 * (core.h): a field is addressed like a global variable, with one RIP-relative access
 * and no pointer to load first, so the hooks' fast paths cost what they cost with
 * separate globals. Each component has its own sub-struct and is the file that writes it
 * (a field written elsewhere says so). Per-thread state (t_state, api.c's t_error) is
 * thread-local and not here; constant tables (hooks.c's g_hook_fns, the native wrappers'
 * list) are not state and stay `static const` where they are used.
 *
 * For each field: who writes it, under what (the GIL, or a lock), and how it is read
 * elsewhere; "relaxed" means __atomic_load_n(..., __ATOMIC_RELAXED) without a lock.
 * Locks and their order (fork.c takes them all, in this order):
 *     native.patch_lock  ->  capture.pending_lock  ->  table.lock
 *
 * The instance is zero-initialized (.bss: the maps and lists below, 400 KiB, take no room
 * in the shared object); mp_state_init (state.c, a library constructor that runs before
 * any hook can be installed) sets the defaults that are not zero, each named below.
 */
#ifndef MPROFILE_STATE_H
#define MPROFILE_STATE_H

#include <pthread.h>

#include "htable.h"

/* ---- element types -------------------------------------------------------------------- */

/* One live sampled block (the live table's entry; ptr 0: an empty slot). */
typedef struct {
    uintptr_t ptr;
    uint64_t size;
    uint64_t thread;
    double weight;
    uint32_t tb;
    uint32_t allocator;
} mp_live_t;

/* Counters (estimates) */
typedef struct {
    uint64_t samples;
    double current_bytes, peak_bytes, alloc_bytes, alloc_count;
} mp_counters_t;

/* One allocator layer of a PyMem domain (hooks.c, "Layers"). */
typedef struct {
    PyMemAllocatorEx prev;   /* the allocator this layer wraps */
} mp_layer_t;

/* One interned traceback (stacks.c). */
typedef struct {
    uint32_t first;       /* offset into tb_refs */
    uint32_t nframes;
    uint32_t total;       /* real depth of the stack */
    uint32_t hash;
    uint32_t label;       /* the recording thread's label (mp_set_thread_label), 0: none */
    double alloc_count;   /* estimated allocations made with this traceback */
    double alloc_bytes;   /* estimated bytes, freed ones included */
    double alloc_samples; /* sampled allocations behind those estimates */
    double alloc_var;     /* variance of alloc_bytes: sum of s^2 w (w - 1) */
} mp_tb_t;

struct mp_names;            /* stacks.c's arena of resolved names (core.h) */
struct mp_resolved;

/* A deferred sample (capture_common.c). */
typedef struct {
    void *ptr;
    size_t size;
    int allocator;
    uint32_t generation;   /* config.generation when sampled: a restart drops older ones */
} nc_pending_t;

/* Native mode: an import slot's value before we patched it (slot NULL: empty). */
typedef struct {
    void **slot;
    void *orig;
} nc_saved_t;

/* Native mode: an object already patched, so that a rescan parses only new ones. Keyed by
 * (base, phdr); phdr NULL: an empty slot. `witness` is one slot we wrote: if it no longer
 * holds our wrapper, the object at that address was replaced. */
typedef struct {
    uintptr_t base;
    const void *phdr;
    uint64_t name_hash;
    void **witness;
    void *witness_value;
    int python;
    uint64_t slots;
} nc_object_t;

/* NumPy's NEP 49 allocator struct, version 1 (numpy/ndarraytypes.h), declared here so
 * that building needs no NumPy. */
typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} nc_np_allocator_t;

typedef struct {
    char name[127];
    uint8_t version;
    nc_np_allocator_t allocator;
} nc_np_handler_t;

MP_HTABLE_TYPE(mp_live_table_t, mp_live_t);
MP_HTABLE_TYPE(mp_index_t, uint32_t);       /* ids + 1 into the owner's arrays, 0: empty */
MP_HTABLE_TYPE(nc_saved_table_t, nc_saved_t);
MP_HTABLE_TYPE(nc_object_table_t, nc_object_t);

#define MP_MAX_FRAMES_LIMIT 1024
#define MP_MAX_LAYERS 8              /* slots per PyMem domain (hooks.c, MP_FOR_EACH_SLOT) */
#define MP_FILTER_BITS 18            /* the live table's free-path filter: 256 KiB */
#define NC_PENDING_MAX 4096          /* deferred samples; beyond that, recorded at once */
#define NC_INDEX_CAP 8192            /* the deferred samples' index; load <= 1/2 */
#define NC_FILTER_BITS 14

/* ---- the state, one sub-struct per component ------------------------------------------- */

typedef struct {
    /* ---- config (sampler.c): read on every allocation, written with the GIL held ---- */
    struct {
        int enabled;            /* sampling on; api.c writes (release), hooks read relaxed */
        int exact;              /* every allocation is a sample (rate <= 1); relaxed reads */
        int64_t sample_rate;    /* mean bytes between samples; default 128 KiB; relaxed */
        int max_frames;         /* depth limit; api.c writes; default 128; relaxed reads */
        uint32_t generation;    /* bumped by every configure (release); default 1; relaxed */
        int unchecked_ok;       /* the PyMem hooks may skip the generation check (sampler.c,
                                 * "Stale countdowns"); relaxed reads */
        int64_t first_rate;     /* the first sampled (non-exact) rate; 0: none yet */
        int rates_mixed;        /* a later session sampled at another rate */
        uint64_t seed;          /* the session's seed; read by threads that reseed */
        uint64_t thread_seq;    /* atomic: the next per-thread stream number */
    } config;

    /* ---- hooks (hooks.c): the PyMem layers and the budget's watermark ---- */
    struct {
        /* Records: read by the hooks without a lock; written only while their slot is
         * neither installed nor (within the grace period) retired, GIL held (hooks.c,
         * "Layer records"). */
        mp_layer_t layers[3][MP_MAX_LAYERS];
        int active[3][MP_MAX_LAYERS];    /* 1 for the newest layer while sampling; relaxed */
        /* Bookkeeping, GIL held (start/stop/stats only). */
        int slot_state[3][MP_MAX_LAYERS];
        int slot_used[3][MP_MAX_LAYERS];           /* the record has been written once */
        int64_t slot_retired_at[3][MP_MAX_LAYERS];
        int top[3];                                /* the newest layer; default -1: none */
        uint32_t probe_hits[3];   /* written by the probing thread only (hooks.c) */
        /* The watermark (hooks.c): under table.lock. */
        double watermark;
        int watermark_fd;         /* default -1: off */
        int watermark_call;       /* schedule the pending call too */
        int watermark_fired;
    } hooks;

    /* ---- table (table.c): the live sampled blocks and the counters ---- */
    struct {
        pthread_mutex_t lock;     /* guards live, counters and all of stacks.* */
        mp_live_table_t live;     /* ptr -> record; under lock; slots in their own mapping */
        mp_counters_t counters;   /* under lock; written by hooks.c, api.c, capture_common.c */
        /* The free-path filter (core.h): written under lock (relaxed stores), read without
         * one. 64-byte aligned, and 8-byte for mp_filter_clear's word stores. */
        uint8_t filter_map[1u << MP_FILTER_BITS] __attribute__((aligned(64)));
    } table;

    /* ---- stacks (stacks.c): interned frames and tracebacks; all under table.lock unless
     * a field says otherwise. Arrays are in their own mappings (mp_os_alloc). ---- */
    struct {
        PyObject **f_codes;       /* strong references; NULL once resolved (f_res[id]) */
        int32_t *f_lasti;
        struct mp_resolved **f_res;
        size_t f_count, f_cap;
        mp_index_t f_index;       /* (code, lasti) -> frame id + 1 */
        struct mp_names *names;   /* the arena of resolved frames; refs under the GIL */
        size_t compacted_at;      /* f_count after the last compaction */
        uint64_t clear_epoch;     /* bumped by every detach */
        int compact_wanted;       /* interning doubled since the last compaction; relaxed */
        mp_tb_t *tbs;
        size_t tb_count, tb_cap;
        uint32_t *tb_refs;
        size_t refs_count, refs_cap;
        mp_index_t tb_index;      /* (frames, total, label) -> traceback id + 1 */
        uint32_t scratch[MP_MAX_FRAMES_LIMIT];   /* one capture's frame ids */
        PyObject *escaped_names;  /* names kept as surrogateescape bytes; GIL held */
    } stacks;

    /* ---- capture (capture_common.c): samples deferred until the main thread is back ---- */
    struct {
        uint64_t main_thread;     /* the thread that may defer (0: none); GIL held, relaxed */
        pthread_mutex_t pending_lock;   /* guards pending, index, pending_scheduled */
        nc_pending_t pending[NC_PENDING_MAX];   /* dense, drained in order */
        uint16_t index[NC_INDEX_CAP];           /* pointer -> position + 1; 0: empty */
        /* Pending pointers per bucket (core.h's counting filter): lock-free reads. */
        uint8_t fmap[1u << NC_FILTER_BITS] __attribute__((aligned(64)));
        int pending_scheduled;    /* a pending call is queued */
        int pending_count;        /* written under pending_lock, read relaxed on every free */
        uint64_t deferred;        /* atomic counters, for the status report only */
        uint64_t deferred_nostack;
    } capture;

    /* ---- native (native mode: native_wrappers.c, got_patch.c) ---- */
    struct {
        int on;                   /* the wrappers sample; relaxed reads */
        pthread_mutex_t patch_lock;   /* guards everything below */
        int installed;
        unsigned long long seen_adds, seen_subs;   /* dl_iterate_phdr's counters */
        uint64_t scans, failures;
        nc_saved_table_t saved;   /* slot address -> original value */
        nc_object_table_t objects;   /* (base, phdr) -> the object's patch record */
    } native;

    /* ---- numpy (numpy_handler.c): written with the GIL held by install/uninstall ---- */
    struct {
        nc_np_handler_t *handler;  /* the wrapped default handler, NULL: none */
        nc_np_allocator_t orig;    /* its own functions; never cleared: a wrapper still
                                    * running on another thread keeps calling valid ones */
        int active;                /* relaxed reads in the wrappers */
        unsigned int feature;
        char name[128];
    } numpy;
} mp_state_t;

extern mp_state_t mp_state;

#endif
