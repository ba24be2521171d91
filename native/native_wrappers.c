/* native_wrappers.c: native mode's wrappers of the malloc/mmap family, and the list of
 * the functions native mode hooks (got_patch.c points import slots at them).
 *
 * Every wrapper calls the real function inside the reentrancy guard, so an allocator that
 * calls mmap through its own patched slot is not counted twice, and NumPy's handler
 * (which holds the guard) is not counted again here; then it offers the new block to the
 * sampler (mp_should_sample, the same per-thread byte countdown as the PyMem hooks), and
 * a sample is recorded through nc_record (capture_common.c: deferred when the main thread
 * runs without the GIL). Frees forget a sampled block before the real call, when the
 * address cannot yet belong to another thread's new block.
 *
 * The wrappers stay valid forever (this module is never unloaded): a function pointer
 * someone copied from a patched slot keeps working, and after uninstall it only passes
 * through (NAT.on is 0).
 */
#include "native_mode.h"

#include <string.h>

#if NC_SUPPORTED

#include <dlfcn.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static inline int native_sampling(void) {
    return __atomic_load_n(&NAT.on, __ATOMIC_RELAXED);
}

static inline void sample(void *p, size_t size) {
    if (native_sampling() && mp_should_sample(size)) nc_record(p, size, MP_ALLOC_NATIVE);
}

static inline size_t mul_or_max(size_t nelem, size_t elsize) {
    size_t size;
    return __builtin_mul_overflow(nelem, elsize, &size) ? SIZE_MAX : size;
}

/* ---- the allocators: one list ----------------------------------------------------------- */

/* The functions that return a new block (or NULL) and take no block: one line each,
 * X(name, parameters, arguments, the block's size). The wrapper h_<name> calls <name>
 * inside the reentrancy guard, then offers the block to the sampler; its hooks-table
 * entry (below) patches extension libraries only (the interpreter's allocations are the
 * PyMem hooks'). GCC knows these as builtins that touch no memory of ours and drops the
 * guard's increment around them (so did the hand-written wrappers): harmless, because
 * the real allocator is libc's, or a replacement this module never patches, so nothing
 * it calls comes back through one of our slots. */
#define NC_ALLOCATORS(X)                                                                  \
    X(malloc, (size_t size), (size), size)                                                \
    X(calloc, (size_t nelem, size_t elsize), (nelem, elsize), mul_or_max(nelem, elsize))   \
    X(valloc, (size_t size), (size), size)                                                \
    X(pvalloc, (size_t size), (size), size)                                               \
    X(memalign, (size_t align, size_t size), (align, size), size)                         \
    X(aligned_alloc, (size_t align, size_t size), (align, size), size)

#define NC_DEFINE_ALLOCATOR(name, params, args, block_size)                               \
    static void *h_##name params {                                                        \
        mp_enter();                                                                       \
        void *p = name args;                                                              \
        mp_leave();                                                                       \
        if (p != NULL) sample(p, block_size);                                             \
        return p;                                                                         \
    }
NC_ALLOCATORS(NC_DEFINE_ALLOCATOR)

/* ---- the other hooks: written out, each for the reason it gives ------------------------- */

/* realloc: a free of the old block and an allocation of `size` bytes, as in the PyMem
 * hooks: the old record goes before the call (after it, the address may already be
 * another thread's), and comes back if the call fails (realloc(p, 0) freed p; any other
 * failure left it alive). Not in the list: it takes a block, and it has two wrappers.
 * `library` (a constant in each): extension libraries' realloc guards the call and
 * samples the new block; the interpreter's realloc (under PyMem_RawRealloc, whose hook
 * counts the new block) only forgets a block a library allocated. */
static inline void *realloc_as(void *ptr, size_t size, int library) {
    mp_live_t saved;
    int had = nc_take(ptr, &saved);
    if (library) mp_enter();
    void *p = realloc(ptr, size);
    if (library) mp_leave();
    if (p == NULL) {
        if (had && size != 0) mp_record_restore(&saved);
        return NULL;
    }
    if (library) sample(p, size);
    return p;
}

static void *h_realloc(void *ptr, size_t size) { return realloc_as(ptr, size, 1); }
static void *h_py_realloc(void *ptr, size_t size) { return realloc_as(ptr, size, 0); }

/* reallocarray: realloc with an overflow check, which only the real function can report
 * (ENOMEM, the block untouched). */
static void *h_reallocarray(void *ptr, size_t nelem, size_t elsize) {
    size_t size;
    if (__builtin_mul_overflow(nelem, elsize, &size)) return reallocarray(ptr, nelem, elsize);
    return h_realloc(ptr, size);
}

/* free: no block to sample, one to forget; the same wrapper serves libraries and the
 * interpreter (which frees blocks that libraries allocated). */
static void h_free(void *ptr) {
    nc_forget(ptr);
    free(ptr);
}

/* posix_memalign: the block comes back through a pointer, success as a status. */
static int h_posix_memalign(void **out, size_t align, size_t size) {
    mp_enter();
    int rc = posix_memalign(out, align, size);
    mp_leave();
    if (rc == 0 && *out != NULL) sample(*out, size);
    return rc;
}

static size_t page_round(size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return n > SIZE_MAX - page ? SIZE_MAX : (n + page - 1) & ~(page - 1);
}

/* mmap: only anonymous memory that can be used (not PROT_NONE address space reserved for
 * later, not MAP_NORESERVE arenas) is an allocation; file mappings are page cache, not
 * counted. MAP_FIXED replaces whatever was mapped there. */
static void *h_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    mp_enter();
    void *p = mmap(addr, len, prot, flags, fd, off);
    mp_leave();
    if (p == MAP_FAILED) return p;
    if (flags & MAP_FIXED) nc_forget(p);
    if ((flags & MAP_ANONYMOUS) && prot != PROT_NONE && !(flags & MAP_NORESERVE))
        sample(p, len);
    return p;
}

/* munmap of a sampled region from its start: the record goes, or shrinks to the part
 * still mapped. An unmap that starts inside a region is not seen (the region stays
 * reported until its start is unmapped). */
static int h_munmap(void *addr, size_t len) {
    mp_live_t saved;
    int had = nc_take(addr, &saved);
    int rc = munmap(addr, len);
    if (had) {
        size_t gone = page_round(len);
        if (rc != 0) {
            mp_record_restore(&saved);
        } else if (gone < page_round((size_t)saved.size)) {
            saved.ptr += gone;
            saved.size -= gone;
            mp_record_restore(&saved);
        }
    }
    return rc;
}

/* mremap: variadic (MREMAP_FIXED's new address), and like realloc for a sampled region
 * only: a region we never sampled may be a file mapping, so its new size is not sampled
 * either. */
static void *h_mremap(void *old, size_t old_size, size_t new_size, int flags, ...) {
    void *new_address = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        new_address = va_arg(ap, void *);
        va_end(ap);
    }
    mp_live_t saved;
    int had = nc_take(old, &saved);
    mp_enter();
    void *p = (flags & MREMAP_FIXED) ? mremap(old, old_size, new_size, flags, new_address)
                                     : mremap(old, old_size, new_size, flags);
    mp_leave();
    if (p == MAP_FAILED) {
        if (had) mp_record_restore(&saved);
        return p;
    }
    if (had) sample(p, new_size);
    return p;
}

/* dlopen: not an allocator. A library loaded now gets patched once dlopen returns, and a
 * bare name is searched as the original caller would (dlopen_search.c). */
static void *h_dlopen(const char *file, int mode) {
    const void *caller = __builtin_return_address(0);
    void *h = (file == NULL || strchr(file, '/') != NULL) ? dlopen(file, mode)
                                                          : nc_dlopen_as(file, mode, caller);
    if (h != NULL) nc_rescan_if_changed();
    return h;
}

static void *h_dlsym(void *handle, const char *name);

/* ---- the hooks table -------------------------------------------------------------------- */

/* The hooks written out above, for the table: X(symbol, wrapper in extension libraries,
 * wrapper in the interpreter (NULL: its slot is left alone), the real function). */
#define NC_OTHER_HOOKS(X)                                                                 \
    X(realloc, h_realloc, h_py_realloc, realloc)                                          \
    X(reallocarray, h_reallocarray, NULL, reallocarray)                                   \
    X(free, h_free, h_free, free)                                                         \
    X(posix_memalign, h_posix_memalign, NULL, posix_memalign)                             \
    X(mmap, h_mmap, NULL, mmap)                                                           \
    X(mmap64, h_mmap, NULL, mmap)                                                         \
    X(munmap, h_munmap, NULL, munmap)                                                     \
    X(mremap, h_mremap, NULL, mremap)                                                     \
    X(dlopen, h_dlopen, h_dlopen, dlopen)                                                 \
    X(dlsym, h_dlsym, NULL, dlsym)

#define NC_ALLOCATOR_HOOK(name, params, args, block_size) \
    {#name, (void *)h_##name, NULL, (void *)name},
#define NC_OTHER_HOOK(name, library, python, real) \
    {#name, (void *)library, (void *)python, (void *)real},
static const nc_hook_t nc_hooks[] = {NC_ALLOCATORS(NC_ALLOCATOR_HOOK)
                                         NC_OTHER_HOOKS(NC_OTHER_HOOK)};
#define NC_NHOOKS (sizeof(nc_hooks) / sizeof(nc_hooks[0]))

const nc_hook_t *nc_find_hook(const char *name) {
    for (size_t i = 0; i < NC_NHOOKS; i++)
        if (name[0] == nc_hooks[i].name[0] && strcmp(name, nc_hooks[i].name) == 0)
            return &nc_hooks[i];
    return NULL;
}

/* dlsym: a library that looks an allocator function up by name (ctypes: `libc.malloc`)
 * calls it through the pointer it got, not through an import slot. When dlsym answers
 * with the very function we wrap, it gets the wrapper instead; another library's own
 * malloc (jemalloc linked into an extension) is returned as it is. Names we do not wrap
 * and RTLD_NEXT (whose answer depends on the calling object, which from here would be this
 * module) go straight to dlsym, as a tail call that keeps the caller's return address. */
static void *h_dlsym(void *handle, const char *name) {
    const nc_hook_t *h = (handle != RTLD_NEXT && name != NULL) ? nc_find_hook(name) : NULL;
    if (h == NULL || h->library == (void *)h_dlopen || h->library == (void *)h_dlsym)
        return dlsym(handle, name);
    void *p = dlsym(handle, name);
    return p == h->real ? h->library : p;
}

#endif  /* NC_SUPPORTED */

/* ---- test entry point ------------------------------------------------------------------- */

/* The wrapper native mode would put in a slot for `name`, NULL if none: lets the tests
 * check that a library's slot really points at it. */
void *mp_native_hook_address(const char *name) {
#if NC_SUPPORTED
    const nc_hook_t *h = nc_find_hook(name);
    return h ? h->library : NULL;
#else
    (void)name;
    return NULL;
#endif
}
