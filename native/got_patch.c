/* got_patch.c: native mode's patching of the loaded objects' import slots.
 *
 * How: every loaded shared object calls libc's allocator through its own import slots
 * (the GOT entries that the dynamic linker filled for R_*_JUMP_SLOT and R_*_GLOB_DAT
 * relocations). Native mode rewrites those slots, for the functions in nc_hooks
 * (native_wrappers.c), to point at wrappers that call the real function and then ask the
 * sampler whether the block is a sample. Nothing is rewritten in the code itself, and the
 * process keeps running throughout.
 *
 * Which objects (classify()):
 *  - extension libraries (everything below): all the hooks, so their malloc, calloc,
 *    realloc, reallocarray, free, posix_memalign, aligned_alloc, memalign, valloc,
 *    pvalloc, anonymous mmap, munmap, mremap, and dlopen are seen. C++'s operator new
 *    lives in libstdc++, which is patched too, so `new` in a C++ extension is seen.
 *  - the interpreter (the executable and libpython): only free/realloc (to forget a block
 *    a library allocated and the interpreter frees) and dlopen (imports load extension
 *    modules through it). Its allocations already go through PyMem and the PyMem hooks;
 *    hooking its malloc would count them twice.
 *  - never patched: libc and the dynamic loader (their internal calls do not go through
 *    a GOT anyway), the vDSO, this module (its tables use libc directly), a malloc
 *    replacement loaded with LD_PRELOAD (the object that defines the malloc everyone
 *    gets), and references to a function an object defines itself.
 *
 * Libraries loaded later are patched when they are loaded: dlopen is hooked and, once it
 * returns, objects the loader added since the last scan are patched (dl_iterate_phdr's
 * add/sub counters say whether anything changed). Python's imports call dlopen from
 * libpython, so every extension module and its dependencies are covered (a bare library
 * name is searched as its caller would: dlopen_search.c).
 *
 * Safety. Slots are written with one aligned pointer store; a read-only (RELRO) page is
 * made writable for that store and put back (nc_write_pointer). Patching runs inside
 * dl_iterate_phdr's callback, which holds the loader's lock, so no object can be unloaded
 * under us. Uninstall puts back the value each slot had, where the slot still holds our
 * hook (the wrappers stay valid forever: native_wrappers.c).
 */
#include "native_mode.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if NC_SUPPORTED

#include <dlfcn.h>
#include <elf.h>
#include <link.h>

#if defined(__x86_64__)
#  define NC_R_JUMP_SLOT R_X86_64_JUMP_SLOT
#  define NC_R_GLOB_DAT R_X86_64_GLOB_DAT
#else
#  define NC_R_JUMP_SLOT R_AARCH64_JUMP_SLOT
#  define NC_R_GLOB_DAT R_AARCH64_GLOB_DAT
#endif
#define NC_R_TYPE(info) ELF64_R_TYPE(info)
#define NC_R_SYM(info) ELF64_R_SYM(info)

/* The tables and scans below run with NAT.patch_lock held (the entry points at the end
 * and nc_rescan_if_changed take it). */

/* Original slot values (htable.h): slot address -> value, NULL slot an empty entry. */
#define SAVED_EMPTY(e) ((e)->slot == NULL)
#define SAVED_CLEAR(e) ((e)->slot = NULL)
#define SAVED_HASH(slot) (mp_hash_ptr(slot) >> 20)
#define SAVED_ENTRY_HASH(e) SAVED_HASH((e)->slot)
#define SAVED_MATCH(e, s) ((e)->slot == (s))
MP_HTABLE_FUNCS(saved, nc_saved_t, void **, SAVED_EMPTY, SAVED_CLEAR, SAVED_ENTRY_HASH,
                SAVED_HASH, SAVED_MATCH);

static int saved_put(void **slot, void *orig) {
    if ((NAT.saved.count + 1) * 2 > NAT.saved.cap &&                      /* load <= 1/2 */
        MP_HTABLE_RESIZE(saved, &NAT.saved, NAT.saved.cap ? NAT.saved.cap * 2 : 1024) != 0)
        return -1;
    int found;
    size_t i = saved_probe(NAT.saved.slots, NAT.saved.cap - 1, slot, &found);
    if (!found) NAT.saved.count++;
    NAT.saved.slots[i] = (nc_saved_t){slot, orig};
    return 0;
}

static void *saved_get(void **slot) {
    if (NAT.saved.cap == 0) return NULL;
    size_t i = saved_find(NAT.saved.slots, NAT.saved.cap - 1, slot);
    return i == SIZE_MAX ? NULL : NAT.saved.slots[i].orig;
}

/* Patched objects (htable.h): (base, phdr) -> record, NULL phdr an empty entry. */
typedef struct {
    uintptr_t base;
    const void *phdr;
} obj_key_t;
static inline uint64_t obj_hash(uintptr_t base, const void *phdr) {
    return mp_hash_ptr((const void *)(base ^ (uintptr_t)phdr)) >> 20;
}
#define OBJ_EMPTY(e) ((e)->phdr == NULL)
#define OBJ_CLEAR(e) ((e)->phdr = NULL)
#define OBJ_HASH(k) obj_hash((k)->base, (k)->phdr)
#define OBJ_MATCH(e, k) ((e)->base == (k)->base && (e)->phdr == (k)->phdr)
MP_HTABLE_FUNCS(objects, nc_object_t, const obj_key_t *, OBJ_EMPTY, OBJ_CLEAR, OBJ_HASH,
                OBJ_HASH, OBJ_MATCH);

static nc_object_t *find_object(uintptr_t base, const void *phdr) {
    if (NAT.objects.cap == 0) return NULL;
    obj_key_t key = {base, phdr};
    size_t i = objects_find(NAT.objects.slots, NAT.objects.cap - 1, &key);
    return i == SIZE_MAX ? NULL : &NAT.objects.slots[i];
}

/* A new record for the object (base, phdr), not in the table yet; NULL without memory. */
static nc_object_t *add_object(uintptr_t base, const void *phdr) {
    if ((NAT.objects.count + 1) * 2 > NAT.objects.cap &&                  /* load <= 1/2 */
        MP_HTABLE_RESIZE(objects, &NAT.objects,
                         NAT.objects.cap ? NAT.objects.cap * 2 : 256) != 0)
        return NULL;
    obj_key_t key = {base, phdr};
    int found;
    size_t i = objects_probe(NAT.objects.slots, NAT.objects.cap - 1, &key, &found);
    if (!found) NAT.objects.count++;
    NAT.objects.slots[i] = (nc_object_t){.base = base, .phdr = phdr};
    return &NAT.objects.slots[i];
}

enum { OBJ_SKIP = 0, OBJ_LIBRARY = 1, OBJ_PYTHON = 2 };

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int classify(const char *name, const char *self, const char *allocator) {
    if (self != NULL && strcmp(name, self) == 0) return OBJ_SKIP;
    if (allocator != NULL && strcmp(name, allocator) == 0) return OBJ_SKIP;
    if (name[0] == '\0') return OBJ_PYTHON;                 /* the executable */
    const char *b = base_name(name);
    if (starts_with(b, "linux-vdso") || starts_with(b, "linux-gate") ||
        starts_with(b, "libc.so") || starts_with(b, "ld-linux") || starts_with(b, "ld-musl") ||
        starts_with(b, "libc.musl"))
        return OBJ_SKIP;
    if (starts_with(b, "libpython")) return OBJ_PYTHON;
    return OBJ_LIBRARY;
}

static uint64_t hash_name(const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *name; name++) h = (h ^ (unsigned char)*name) * 0x100000001b3ull;
    return h;
}

/* Is `addr` inside one of the object's loaded segments? (An object unloaded and replaced
 * by another at the same address must not make us read past the new one's end.) */
static int in_object(const struct dl_phdr_info *info, uintptr_t addr) {
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = (uintptr_t)info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && addr >= start && addr + sizeof(void *) <= start + ph->p_memsz)
            return 1;
    }
    return 0;
}

typedef struct {
    int restore;               /* 0: patch; 1: put the original values back */
    const char *self;          /* this module's file name */
    const char *allocator;     /* the object whose malloc everyone gets (LD_PRELOAD) */
    nc_maps_t maps;
    int maps_loaded;
    unsigned long long adds, subs;
} nc_scan_t;

/* Patch (or restore) one object's relocations of one table. Returns slots touched. */
static uint64_t process_relocs(nc_scan_t *s, uintptr_t base, const ElfW(Rela) *rel,
                               size_t count, const ElfW(Sym) *symtab, const char *strtab,
                               int kind, void ***witness, void **witness_value) {
    uint64_t touched = 0;
    for (size_t i = 0; i < count; i++) {
        unsigned long type = NC_R_TYPE(rel[i].r_info);
        if (type != NC_R_JUMP_SLOT && type != NC_R_GLOB_DAT) continue;
        unsigned long symi = NC_R_SYM(rel[i].r_info);
        if (symi == 0) continue;
        const ElfW(Sym) *sym = &symtab[symi];
        if (sym->st_shndx != SHN_UNDEF) continue;    /* the object's own definition */
        const nc_hook_t *h = nc_find_hook(strtab + sym->st_name);
        if (h == NULL) continue;
        void **slot = (void **)(base + rel[i].r_offset);
        void *cur = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (!s->maps_loaded) {
            if (nc_maps_load(&s->maps) != 0) {
                NAT.failures++;
                return touched;
            }
            s->maps_loaded = 1;
        }
        if (s->restore) {
            if (!nc_is_our_wrapper(h, cur)) continue;
            void *orig = saved_get(slot);
            if (orig == NULL || nc_is_our_wrapper(h, orig)) orig = h->real;
            if (nc_write_pointer(&s->maps, slot, orig) != 0) NAT.failures++;
            else touched++;
            continue;
        }
        void *want = kind == OBJ_PYTHON ? h->python : h->library;
        if (want == NULL) continue;
        if (cur != want) {
            if (nc_is_our_wrapper(h, cur) || saved_put(slot, cur) != 0 ||
                nc_write_pointer(&s->maps, slot, want) != 0) {
                NAT.failures++;
                continue;
            }
        }
        touched++;
        if (*witness == NULL) {
            *witness = slot;
            *witness_value = want;
        }
    }
    return touched;
}

static uintptr_t dyn_ptr(uintptr_t base, uintptr_t value) {
    /* glibc stores the relocated address in most objects' dynamic sections; the vDSO and
     * a few others keep the link-time one. */
    return value < base ? value + base : value;
}

static int scan_object(struct dl_phdr_info *info, size_t size, void *arg) {
    nc_scan_t *s = arg;
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof(info->dlpi_subs)) {
        s->adds = info->dlpi_adds;
        s->subs = info->dlpi_subs;
    }
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    int kind = classify(name, s->self, s->allocator);
    if (kind == OBJ_SKIP) return 0;
    uintptr_t base = (uintptr_t)info->dlpi_addr;
    uint64_t name_hash = hash_name(name);
    nc_object_t *known = find_object(base, info->dlpi_phdr);
    if (!s->restore && known != NULL && known->name_hash == name_hash &&
        (known->witness == NULL ||
         (in_object(info, (uintptr_t)known->witness) &&
          __atomic_load_n(known->witness, __ATOMIC_RELAXED) == known->witness_value)))
        return 0;                                   /* patched already */
    const ElfW(Dyn) *dyn = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(base + info->dlpi_phdr[i].p_vaddr);
    if (dyn == NULL) return 0;
    const ElfW(Sym) *symtab = NULL;
    const char *strtab = NULL;
    const ElfW(Rela) *jmprel = NULL, *rela = NULL;
    size_t pltrelsz = 0, relasz = 0, relaent = sizeof(ElfW(Rela));
    int pltrel_is_rela = 1;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        switch (dyn->d_tag) {
        case DT_SYMTAB: symtab = (const ElfW(Sym) *)dyn_ptr(base, dyn->d_un.d_ptr); break;
        case DT_STRTAB: strtab = (const char *)dyn_ptr(base, dyn->d_un.d_ptr); break;
        case DT_JMPREL: jmprel = (const ElfW(Rela) *)dyn_ptr(base, dyn->d_un.d_ptr); break;
        case DT_PLTRELSZ: pltrelsz = dyn->d_un.d_val; break;
        case DT_PLTREL: pltrel_is_rela = dyn->d_un.d_val == DT_RELA; break;
        case DT_RELA: rela = (const ElfW(Rela) *)dyn_ptr(base, dyn->d_un.d_ptr); break;
        case DT_RELASZ: relasz = dyn->d_un.d_val; break;
        case DT_RELAENT: relaent = dyn->d_un.d_val; break;
        default: break;
        }
    }
    if (symtab == NULL || strtab == NULL || relaent != sizeof(ElfW(Rela)) || !pltrel_is_rela)
        return 0;
    void **witness = NULL;
    void *witness_value = NULL;
    uint64_t touched = 0;
    if (jmprel != NULL)
        touched += process_relocs(s, base, jmprel, pltrelsz / sizeof(ElfW(Rela)), symtab,
                                  strtab, kind, &witness, &witness_value);
    if (rela != NULL)
        touched += process_relocs(s, base, rela, relasz / sizeof(ElfW(Rela)), symtab, strtab,
                                  kind, &witness, &witness_value);
    if (s->restore) return 0;
    if (known == NULL) {
        known = add_object(base, info->dlpi_phdr);
        if (known == NULL) return 0;
    }
    *known = (nc_object_t){base, info->dlpi_phdr, name_hash, witness, witness_value,
                           kind == OBJ_PYTHON, touched};
    return 0;
}

static const char *object_of(const void *addr) {
    Dl_info info;
    if (dladdr(addr, &info) == 0 || info.dli_fname == NULL) return NULL;
    return info.dli_fname;
}

/* native.patch_lock held. */
static void scan_locked(int restore) {
    nc_scan_t s;
    memset(&s, 0, sizeof(s));
    s.restore = restore;
    s.self = object_of((const void *)scan_locked);   /* any function of this module */
    /* A malloc replacement loaded first (LD_PRELOAD jemalloc/tcmalloc/mimalloc) is an
     * allocator, not a client: its own mmap calls carve arenas for blocks that are already
     * counted where they were asked for. libc is skipped by name anyway. */
    s.allocator = object_of((const void *)malloc);
    dl_iterate_phdr(scan_object, &s);
    if (s.maps_loaded) nc_maps_free(&s.maps);
    NAT.seen_adds = s.adds;
    NAT.seen_subs = s.subs;
    NAT.scans++;
}

static int read_counters(struct dl_phdr_info *info, size_t size, void *arg) {
    unsigned long long *c = arg;
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof(info->dlpi_subs)) {
        c[0] = info->dlpi_adds;
        c[1] = info->dlpi_subs;
    } else {
        c[0] = c[1] = ~0ull;    /* unknown: always rescan */
    }
    return 1;                   /* the first object is enough */
}

/* Patch objects loaded since the last scan. */
void nc_rescan_if_changed(void) {
    pthread_mutex_lock(&NAT.patch_lock);
    if (NAT.installed) {
        unsigned long long c[2] = {0, 0};
        dl_iterate_phdr(read_counters, c);
        if (c[0] != NAT.seen_adds || c[1] != NAT.seen_subs || c[0] == ~0ull) scan_locked(0);
    }
    pthread_mutex_unlock(&NAT.patch_lock);
}

/* fork(): fork.c takes native.patch_lock first and releases it last. */
void nc_patch_fork_lock(void) { pthread_mutex_lock(&NAT.patch_lock); }
void nc_patch_fork_unlock(void) { pthread_mutex_unlock(&NAT.patch_lock); }

#else
void nc_patch_fork_lock(void) {}
void nc_patch_fork_unlock(void) {}
#endif  /* NC_SUPPORTED */

/* ---- entry points ----------------------------------------------------------------------- */

int mp_native_install(void) {
#if NC_SUPPORTED
    pthread_mutex_lock(&NAT.patch_lock);
    __atomic_store_n(&NAT.on, 1, __ATOMIC_RELAXED);
    NAT.installed = 1;
    scan_locked(0);
    pthread_mutex_unlock(&NAT.patch_lock);
    return 0;
#else
    mp_set_error("native mode needs Linux with glibc on x86-64 or aarch64");
    return -1;
#endif
}

int mp_native_rescan(void) {
#if NC_SUPPORTED
    nc_rescan_if_changed();
#endif
    return 0;
}

int mp_native_uninstall(void) {
    __atomic_store_n(&NAT.on, 0, __ATOMIC_RELAXED);
#if NC_SUPPORTED
    pthread_mutex_lock(&NAT.patch_lock);
    if (NAT.installed) {
        scan_locked(1);
        NAT.installed = 0;
        mp_os_free(NAT.saved.slots, NAT.saved.cap * sizeof(nc_saved_t));
        NAT.saved = (nc_saved_table_t){NULL, 0, 0};
        mp_os_free(NAT.objects.slots, NAT.objects.cap * sizeof(nc_object_t));
        NAT.objects = (nc_object_table_t){NULL, 0, 0};
    }
    pthread_mutex_unlock(&NAT.patch_lock);
#endif
    nc_purge_allocator(MP_ALLOC_NATIVE);
    return 0;
}

void nc_native_status(nc_native_status_t *out) {
    memset(out, 0, sizeof(*out));
    out->supported = NC_SUPPORTED;
#if NC_SUPPORTED
    pthread_mutex_lock(&NAT.patch_lock);
    out->installed = NAT.installed;
    for (size_t i = 0; i < NAT.objects.cap; i++) {
        if (OBJ_EMPTY(&NAT.objects.slots[i]) || NAT.objects.slots[i].slots == 0) continue;
        if (NAT.objects.slots[i].python) out->python_objects++;
        else out->objects++;
        out->slots += NAT.objects.slots[i].slots;
    }
    out->failures = NAT.failures;
    out->scans = NAT.scans;
    pthread_mutex_unlock(&NAT.patch_lock);
#endif
}

