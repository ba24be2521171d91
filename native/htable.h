/* htable.h: the one open-addressing hash table of the native sampler.
 *
 * Linear probing over a power-of-two array of entries, no tombstones: a removal pulls the
 * later entries of its probe run back into the hole (backward-shift deletion), so a
 * lookup stops at the first empty slot whatever was removed before. Every table of the
 * sampler is one of these: the live pointers (table.c), the frame and traceback indexes
 * and compaction's code-object set (stacks.c), the index of the deferred samples
 * (capture_common.c), native mode's saved slots and patched objects (got_patch.c).
 *
 * A table is an array of entries of its own type; an all-zero entry must be an empty
 * slot (new arrays come zero-filled from mp_os_alloc). The owner instantiates the probing
 * logic for its entry type with
 *
 *     MP_HTABLE_FUNCS(prefix, entry_t, key_t, IS_EMPTY, CLEAR, ENTRY_HASH, KEY_HASH, MATCH)
 *
 * where IS_EMPTY(e) and CLEAR(e) test and empty the slot `e` (an entry_t *), ENTRY_HASH(e)
 * is the hash of the key held in the occupied slot `e`, KEY_HASH(k) the hash of key `k`
 * (the two must agree), and MATCH(e, k) says whether occupied slot `e` holds key `k`.
 * These are macros or static inline functions, so each instance compiles to the loop a
 * hand-written table would have: the live table's lookup and removal execute exactly the
 * instructions they did before this file existed, its insert fewer (callgrind). An entry
 * may be an index into the owner's own arrays (stacks.c's indexes store id + 1), its hash
 * and key then read from there.
 *
 * The instance gets these functions (unused ones cost nothing):
 *   prefix_probe(slots, mask, key, &found)  the slot holding `key`, or the empty slot that
 *                                            ends its run (where it would be inserted)
 *   prefix_find(slots, mask, key)           the slot holding `key`, or SIZE_MAX
 *   prefix_place(slots, mask, &entry)       store an entry whose key is known to be absent
 *   prefix_remove_at(slots, mask, i)        empty slot i, with backward shift
 *   prefix_rehash(old, oldcap, slots, mask) place every entry of `old` into `slots`
 * and, for a table declared with MP_HTABLE_TYPE, MP_HTABLE_RESIZE(prefix, &table, ncap):
 * move into a new zero-filled array of ncap slots (mp_os_alloc, out of line); -1, and
 * the table as it was, when the memory cannot be had. `mask` is capacity - 1. Growth and
 * shrink policies (load limits) stay with each owner: they decide the memory the profiler
 * reports, which this file must not change.
 *
 * None of this locks or allocates through a hooked allocator: the owner holds its lock.
 */
#ifndef MPROFILE_HTABLE_H
#define MPROFILE_HTABLE_H

#include <stddef.h>
#include <stdint.h>

/* A table that owns its array: slots (cap a power of two, or 0 with slots NULL) and the
 * number of occupied ones. Declared in state.h for each entry type. */
#define MP_HTABLE_TYPE(name, entry_t) \
    typedef struct {                  \
        entry_t *slots;               \
        size_t cap;                   \
        size_t count;                 \
    } name

/* The multiplicative hash of an address (Fibonacci hashing): the owners take a different
 * window of its high bits for their home slot. */
static inline uint64_t mp_hash_ptr(const void *p) {
    return ((uint64_t)(uintptr_t)p >> 3) * 0x9E3779B97F4A7C15ull;
}

/* An empty asm that makes the home slot opaque to the compiler (no instruction). Without
 * it GCC 12 folds the home's `& mask` into the loop's `(i + 1) & mask` and enters every
 * probe loop with a jump: one instruction more per lookup, insert and probe than the
 * hand-written tables this file replaced (measured on the live table with callgrind). */
#define MP_HTABLE_HOME_BARRIER(i) __asm__("" : "+r"(i))

#define MP_HTABLE_FUNCS(P, entry_t, key_t, IS_EMPTY, CLEAR, ENTRY_HASH, KEY_HASH, MATCH)  \
    static inline size_t P##_probe(const entry_t *slots, size_t mask, key_t key,          \
                                   int *found) {                                          \
        size_t i = (size_t)(KEY_HASH(key)) & mask;                                        \
        MP_HTABLE_HOME_BARRIER(i);                                                        \
        while (!IS_EMPTY(&slots[i])) {                                                    \
            if (MATCH(&slots[i], key)) {                                                  \
                *found = 1;                                                               \
                return i;                                                                 \
            }                                                                             \
            i = (i + 1) & mask;                                                           \
        }                                                                                 \
        *found = 0;                                                                       \
        return i;                                                                         \
    }                                                                                     \
    /* The lookup alone (no `found` flag to return). */                                   \
    static inline size_t P##_find(const entry_t *slots, size_t mask, key_t key) {         \
        size_t i = (size_t)(KEY_HASH(key)) & mask;                                        \
        MP_HTABLE_HOME_BARRIER(i);                                                        \
        while (!IS_EMPTY(&slots[i])) {                                                    \
            if (MATCH(&slots[i], key)) return i;                                          \
            i = (i + 1) & mask;                                                           \
        }                                                                                 \
        return SIZE_MAX;                                                                  \
    }                                                                                     \
    static inline size_t P##_place(entry_t *slots, size_t mask, const entry_t *e) {       \
        size_t i = (size_t)(ENTRY_HASH(e)) & mask;                                        \
        MP_HTABLE_HOME_BARRIER(i);                                                        \
        while (!IS_EMPTY(&slots[i])) i = (i + 1) & mask;                                  \
        slots[i] = *e;                                                                    \
        return i;                                                                         \
    }                                                                                     \
    static inline void P##_remove_at(entry_t *slots, size_t mask, size_t i) {             \
        /* Move each later entry j of the run into the hole unless its home lies          \
         * cyclically in (hole, j]: then it is still reachable from its home. */          \
        size_t hole = i, j = i;                                                           \
        for (;;) {                                                                        \
            j = (j + 1) & mask;                                                           \
            if (IS_EMPTY(&slots[j])) break;                                               \
            size_t home = (size_t)(ENTRY_HASH(&slots[j])) & mask;                         \
            int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j); \
            if (!stays) {                                                                 \
                slots[hole] = slots[j];                                                   \
                hole = j;                                                                 \
            }                                                                             \
        }                                                                                 \
        CLEAR(&slots[hole]);                                                              \
    }                                                                                     \
    static inline void P##_rehash(const entry_t *old, size_t oldcap, entry_t *slots,      \
                                  size_t mask) {                                          \
        for (size_t i = 0; i < oldcap; i++)                                               \
            if (!IS_EMPTY(&old[i])) (void)P##_place(slots, mask, &old[i]);                \
    }                                                                                     \
    /* Out of line: inlined, the grow path's registers would be saved and restored on     \
     * every insert and remove of the live table, fast path included (8 instructions). */  \
    static __attribute__((noinline, unused)) int P##_resize_slots(entry_t **slots,        \
                                                                  size_t *cap, size_t ncap) { \
        entry_t *ns = mp_os_alloc(ncap * sizeof(entry_t));                                \
        if (ns == NULL) return -1;                                                        \
        P##_rehash(*slots, *cap, ns, ncap - 1);                                           \
        mp_os_free(*slots, *cap * sizeof(entry_t));                                       \
        *slots = ns;                                                                      \
        *cap = ncap;                                                                      \
        return 0;                                                                         \
    }                                                                                     \
    struct P##_unused_ /* swallows the instantiation's semicolon */

/* For a table declared with MP_HTABLE_TYPE: resize it in place. */
#define MP_HTABLE_RESIZE(P, table, ncap) \
    P##_resize_slots(&(table)->slots, &(table)->cap, (ncap))

#endif
