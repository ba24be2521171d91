/* capture_common.c: what the NumPy handler and native mode share.
 *
 * Deferred samples. Native libraries release the GIL around long work (Arrow's compute
 * functions, ctypes calls, many NumPy paths), and a thread without the GIL must not read
 * or reference Python objects: INCREF'ing a code object then would race with the thread
 * that holds the GIL. Yet the Python stack of such a thread cannot change while it runs
 * native code: only that thread pops its frames, and it needs the GIL to do so. So when
 * the *main* thread samples a block without the GIL, the block goes to a short list, and a
 * pending call (Py_AddPendingCall, which needs no GIL and allocates nothing) records it
 * when the main thread is back in the interpreter. CPython runs pending calls at its
 * eval-breaker checks, the first of which follows the return of the call into native
 * code, so the stack read then is the stack that called into the library. Other threads
 * record such blocks at once, without a stack (CPython only runs pending calls on the
 * main thread). A block freed before its sample is recorded is dropped from the list.
 */
#include "native_capture.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* This file's part of the process state (state.h): mp_state.capture. */
#define CAP mp_state.capture

/* ---- deferred samples ------------------------------------------------------------------ */


/* The deferred samples: a dense array (drained in order), an index on the pointer, and a
 * filter in front of both, so that the frees of other threads while a long native call
 * keeps samples waiting cost one relaxed load each, as in table.c. All but the filter's
 * bits are protected by capture.pending_lock. */

/* The calling thread holds the GIL (the same test stacks.c makes before reading frames). */
static int holds_gil(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return _PyThreadState_UncheckedGet() != NULL;
#else
    PyThreadState *ts = _PyThreadState_UncheckedGet();
    return ts != NULL && ts == PyGILState_GetThisThreadState();
#endif
}

static void filter_add_locked(const void *p) {
    mp_filter_add(CAP.fmap, NC_FILTER_BITS, p);
}

static void filter_remove_locked(const void *p) {
    mp_filter_remove(CAP.fmap, NC_FILTER_BITS, p);
}

/* The index (htable.h, fixed capacity NC_INDEX_CAP): pointer -> position in CAP.pending
 * + 1, 0 an empty slot. */
#define PIDX_MASK ((size_t)NC_INDEX_CAP - 1)
#define PIDX_EMPTY(e) (*(e) == 0)
#define PIDX_CLEAR(e) (*(e) = 0)
#define PIDX_HASH(p) (mp_hash_ptr(p) >> 40)
#define PIDX_ENTRY_HASH(e) PIDX_HASH(CAP.pending[*(e) - 1].ptr)
#define PIDX_MATCH(e, p) (CAP.pending[*(e) - 1].ptr == (p))
MP_HTABLE_FUNCS(pidx, uint16_t, const void *, PIDX_EMPTY, PIDX_CLEAR, PIDX_ENTRY_HASH,
                PIDX_HASH, PIDX_MATCH);

static size_t find_slot_locked(const void *p) {
    return pidx_find(CAP.index, PIDX_MASK, p);
}

static void set_count_locked(int n) {
    __atomic_store_n(&CAP.pending_count, n, __ATOMIC_RELAXED);
}

/* Returns 0, or -1 when the list is full. */
static int pending_add_locked(const nc_pending_t *e) {
    int found;
    size_t slot = pidx_probe(CAP.index, PIDX_MASK, e->ptr, &found);
    if (found) {                         /* the address came back without a free we saw */
        CAP.pending[CAP.index[slot] - 1] = *e;
        return 0;
    }
    int n = CAP.pending_count;
    if (n == NC_PENDING_MAX) return -1;
    CAP.pending[n] = *e;
    CAP.index[slot] = (uint16_t)(n + 1);   /* the empty slot the probe ended at */
    filter_add_locked(e->ptr);
    set_count_locked(n + 1);
    return 0;
}

/* Remove the entry at index slot `slot`; the last entry moves into its place. */
static void pending_remove_locked(size_t slot) {
    int pos = CAP.index[slot] - 1;
    filter_remove_locked(CAP.pending[pos].ptr);
    pidx_remove_at(CAP.index, PIDX_MASK, slot);
    int last = CAP.pending_count - 1;
    if (pos != last) {
        size_t moved = find_slot_locked(CAP.pending[last].ptr);
        CAP.pending[pos] = CAP.pending[last];
        CAP.index[moved] = (uint16_t)(pos + 1);
    }
    set_count_locked(last);
}

static void pending_clear_locked(void) {
    memset(CAP.index, 0, sizeof(CAP.index));
    mp_filter_clear(CAP.fmap, NC_FILTER_BITS);
    set_count_locked(0);
}

/* Record every waiting sample now. `with_stack`: we are the main thread, GIL held, back in
 * the interpreter; otherwise the samples go without a stack. Recording happens under
 * capture.pending_lock: a free that finds the lock taken waits, then finds the block in the
 * table (nc_forget asks the list first, the table second). */
static void record_all_locked(int with_stack) {
    uint32_t gen = __atomic_load_n(&mp_state.config.generation, __ATOMIC_RELAXED);
    int on = __atomic_load_n(&mp_state.config.enabled, __ATOMIC_RELAXED);
    for (int i = 0; i < CAP.pending_count; i++) {
        if (!on || CAP.pending[i].generation != gen) continue;
        mp_record_alloc(CAP.pending[i].ptr, CAP.pending[i].size, CAP.pending[i].allocator);
        __atomic_add_fetch(with_stack ? &CAP.deferred : &CAP.deferred_nostack, 1,
                           __ATOMIC_RELAXED);
    }
    pending_clear_locked();
}

/* The pending call: the main thread, GIL held, back in the interpreter. */
static int drain_pending(void *arg) {
    (void)arg;
    pthread_mutex_lock(&CAP.pending_lock);
    CAP.pending_scheduled = 0;
    record_all_locked(1);
    pthread_mutex_unlock(&CAP.pending_lock);
    return 0;
}

void nc_record(void *ptr, size_t size, int allocator) {
    uint64_t main_thread = __atomic_load_n(&CAP.main_thread, __ATOMIC_RELAXED);
    if (holds_gil() || main_thread == 0 || mp_thread_ident() != main_thread ||
        PyGILState_GetThisThreadState() == NULL) {
        mp_record_alloc(ptr, size, allocator);   /* with a stack if the GIL is held */
        return;
    }
    nc_pending_t e = {ptr, size, allocator,
                      __atomic_load_n(&mp_state.config.generation, __ATOMIC_RELAXED)};
    int schedule = 0, full;
    pthread_mutex_lock(&CAP.pending_lock);
    full = pending_add_locked(&e) != 0;
    if (!full && !CAP.pending_scheduled) CAP.pending_scheduled = schedule = 1;
    pthread_mutex_unlock(&CAP.pending_lock);
    if (full) {
        mp_record_alloc(ptr, size, allocator);
        __atomic_add_fetch(&CAP.deferred_nostack, 1, __ATOMIC_RELAXED);
        return;
    }
    if (schedule && Py_AddPendingCall(drain_pending, NULL) != 0) {
        /* The interpreter's queue is full or it is finalizing: record everything waiting
         * now, without a stack, rather than let it wait for a call that will not come. */
        pthread_mutex_lock(&CAP.pending_lock);
        CAP.pending_scheduled = 0;
        record_all_locked(0);
        pthread_mutex_unlock(&CAP.pending_lock);
    }
}

int nc_pending_forget_slow(void *ptr) {
    if (!mp_filter_test(CAP.fmap, NC_FILTER_BITS, ptr)) return 0;
    int found = 0;
    pthread_mutex_lock(&CAP.pending_lock);
    size_t slot = find_slot_locked(ptr);
    if (slot != SIZE_MAX) {
        pending_remove_locked(slot);
        found = 1;
    }
    pthread_mutex_unlock(&CAP.pending_lock);
    return found;
}

/* fork() (fork.c calls these in its lock order): the child must not inherit
 * capture.pending_lock held by a thread that is gone, nor samples whose pending call was
 * queued in the parent. */
void nc_pending_fork_lock(void) { pthread_mutex_lock(&CAP.pending_lock); }
void nc_pending_fork_parent(void) { pthread_mutex_unlock(&CAP.pending_lock); }
void nc_pending_fork_child(void) {
    CAP.pending_scheduled = 0;
    pending_clear_locked();
    pthread_mutex_unlock(&CAP.pending_lock);
}

/* ---- writing pointers into possibly read-only pages --------------------------------------- */

void nc_maps_free(nc_maps_t *m) {
    free(m->maps);
    m->maps = NULL;
    m->n = 0;
}

/* Reads /proc/self/maps with plain read(2): no stdio, nothing that could call back into
 * a hooked allocator. */
int nc_maps_load(nc_maps_t *out) {
    out->maps = NULL;
    out->n = 0;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    if (buf == NULL) {
        close(fd);
        return -1;
    }
    for (;;) {
        if (len == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (nb == NULL) break;
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
    out->maps = malloc((lines + 1) * sizeof(nc_map_t));
    if (out->maps == NULL) {
        free(buf);
        return -1;
    }
    char *p = buf;
    while (*p) {
        char *end;
        unsigned long long a = strtoull(p, &end, 16);
        if (*end != '-') break;
        unsigned long long b = strtoull(end + 1, &end, 16);
        if (*end != ' ') break;
        int prot = 0;
        if (end[1] == 'r') prot |= PROT_READ;
        if (end[2] == 'w') prot |= PROT_WRITE;
        if (end[3] == 'x') prot |= PROT_EXEC;
        out->maps[out->n++] = (nc_map_t){(uintptr_t)a, (uintptr_t)b, prot};
        char *nl = strchr(end, '\n');
        if (nl == NULL) break;
        p = nl + 1;
    }
    free(buf);
    return 0;
}

static const nc_map_t *find_map(const nc_maps_t *m, uintptr_t addr) {
    size_t lo = 0, hi = m->n;          /* the kernel lists mappings in address order */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (addr < m->maps[mid].start) hi = mid;
        else if (addr >= m->maps[mid].end) lo = mid + 1;
        else return &m->maps[mid];
    }
    return NULL;
}

int nc_write_pointer(const nc_maps_t *maps, void **slot, void *value) {
    nc_maps_t local = {NULL, 0};
    if (maps == NULL) {
        if (nc_maps_load(&local) != 0) return -1;
        maps = &local;
    }
    int rc = -1;
    const nc_map_t *m = find_map(maps, (uintptr_t)slot);
    if (m != NULL && (m->prot & PROT_READ)) {
        if (m->prot & PROT_WRITE) {
            __atomic_store_n(slot, value, __ATOMIC_RELEASE);
            rc = 0;
        } else {
            /* A RELRO page: writable for one store, then back to what it was. The page
             * stays readable throughout, so other threads calling through it are fine. */
            uintptr_t page = (uintptr_t)slot & ~((uintptr_t)sysconf(_SC_PAGESIZE) - 1);
            size_t span = (uintptr_t)(slot + 1) - page;
            if (mprotect((void *)page, span, m->prot | PROT_WRITE) == 0) {
                __atomic_store_n(slot, value, __ATOMIC_RELEASE);
                (void)mprotect((void *)page, span, m->prot);
                rc = 0;
            }
        }
    }
    nc_maps_free(&local);
    return rc;
}

/* ---- dropping one allocator's records ------------------------------------------------------ */

void nc_purge_allocator(int allocator) {
    mp_enter();
    mp_lock();
    size_t n = mp_table_count_locked();
    mp_live_t *live = malloc((n ? n : 1) * sizeof(mp_live_t));
    if (live != NULL) {
        n = mp_table_copy_locked(live, n);
        for (size_t i = 0; i < n; i++) {
            mp_live_t gone;
            if (live[i].allocator != (uint32_t)allocator) continue;
            if (mp_table_take_locked(live[i].ptr, &gone)) {
                /* the same adjustment as mp_record_take, under the lock we already hold */
                mp_state.table.counters.current_bytes -= gone.weight * (double)gone.size;
                if (mp_state.table.counters.current_bytes < 0.5)
                    mp_state.table.counters.current_bytes = 0.0;
            }
        }
        free(live);
    }
    mp_unlock();
    mp_leave();
    pthread_mutex_lock(&CAP.pending_lock);
    /* Downwards: the entry that moves into a removed place was already looked at. */
    for (int i = CAP.pending_count - 1; i >= 0; i--)
        if (CAP.pending[i].allocator == allocator)
            pending_remove_locked(find_slot_locked(CAP.pending[i].ptr));
    pthread_mutex_unlock(&CAP.pending_lock);
}

/* ---- entry points (mprofile.h) ------------------------------------------------------------ */

void mp_capture_set_main_thread(uint64_t thread_ident) {
    __atomic_store_n(&CAP.main_thread, thread_ident, __ATOMIC_RELAXED);
}

void mp_capture_status(mp_capture_status_t *out) {
    memset(out, 0, sizeof(*out));
    const char *name = "";
    nc_numpy_status(&out->numpy_installed, &out->numpy_feature_version, &name);
    snprintf(out->numpy_handler, sizeof(out->numpy_handler), "%s", name);
    nc_native_status_t ns;
    nc_native_status(&ns);
    out->native_supported = ns.supported;
    out->native_installed = ns.installed;
    out->native_objects = ns.objects;
    out->native_python_objects = ns.python_objects;
    out->native_slots = ns.slots;
    out->native_failures = ns.failures;
    out->native_scans = ns.scans;
    out->deferred = __atomic_load_n(&CAP.deferred, __ATOMIC_RELAXED);
    out->deferred_nostack = __atomic_load_n(&CAP.deferred_nostack, __ATOMIC_RELAXED);
    out->pending = (uint64_t)__atomic_load_n(&CAP.pending_count, __ATOMIC_RELAXED);
}
