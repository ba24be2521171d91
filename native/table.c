/* table.c: the live sampled pointers, and the filter that keeps frees cheap.
 *
 * Every free must ask "was this pointer sampled?". Asking the table would take table.lock
 * on every free of the process. Instead a filter sits in front of it (core.h): one byte
 * per 16-byte bucket of addresses, the number of live sampled pointers in it (kept under
 * table.lock). A free whose byte is 0 cannot be a sampled pointer and returns after one
 * relaxed load and no lock. The map is 256 KiB, indexed by address bits, so frees of
 * nearby blocks read the same cache lines (a 2 MiB counter array indexed by a hash cost a
 * cache miss per free). With L live samples, about L / 2^18 of the unsampled frees take
 * the lock for nothing (2% at 5,000 live samples). The table itself is htable.h's.
 *
 * Why the lock-free read is safe: a pointer cannot be freed by one thread while another
 * thread is inserting it, because insertion happens before malloc returns it, and removal
 * happens before the real free hands the address back to the allocator.
 */
#include "core.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* This file's part of the process state (state.h): mp_state.table. */
#define TBL mp_state.table

void mp_lock(void) { pthread_mutex_lock(&TBL.lock); }
void mp_unlock(void) { pthread_mutex_unlock(&TBL.lock); }

/* ---- the tables' own memory (core.h says why) ----------------------------------------- */

static size_t page_round(size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (page == 0 || page == (size_t)-1) page = 4096;
    if (bytes > SIZE_MAX - page) return 0;
    return (bytes + page - 1) & ~(page - 1);
}

void *mp_os_alloc(size_t bytes) {
    size_t len = page_round(bytes ? bytes : 1);
    if (len == 0) return NULL;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void mp_os_free(void *p, size_t bytes) {
    if (p != NULL) munmap(p, page_round(bytes ? bytes : 1));
}

void *mp_os_realloc(void *p, size_t old_bytes, size_t new_bytes) {
    if (p == NULL) return mp_os_alloc(new_bytes);
    size_t old_len = page_round(old_bytes ? old_bytes : 1);
    size_t new_len = page_round(new_bytes ? new_bytes : 1);
    if (new_len == 0) return NULL;
    if (new_len == old_len) return p;
#ifdef MREMAP_MAYMOVE
    void *n = mremap(p, old_len, new_len, MREMAP_MAYMOVE);
    return n == MAP_FAILED ? NULL : n;
#else
    void *n = mp_os_alloc(new_len);
    if (n == NULL) return NULL;
    memcpy(n, p, old_len < new_len ? old_len : new_len);
    munmap(p, old_len);
    return n;
#endif
}

static void filter_add_locked(uintptr_t p) {
    mp_filter_add(TBL.filter_map, MP_FILTER_BITS, (const void *)p);
}

static void filter_remove_locked(uintptr_t p) {
    mp_filter_remove(TBL.filter_map, MP_FILTER_BITS, (const void *)p);
}

/* The live table (htable.h): ptr -> record, ptr 0 an empty slot, home slot from bits 17
 * and up of the address's multiplicative hash. */
#define LIVE_EMPTY(e) ((e)->ptr == 0)
#define LIVE_CLEAR(e) ((e)->ptr = 0)
#define LIVE_HASH(p) (mp_hash_ptr((const void *)(p)) >> 17)
#define LIVE_ENTRY_HASH(e) LIVE_HASH((e)->ptr)
#define LIVE_MATCH(e, p) ((e)->ptr == (p))
MP_HTABLE_FUNCS(live, mp_live_t, uintptr_t, LIVE_EMPTY, LIVE_CLEAR, LIVE_ENTRY_HASH, LIVE_HASH,
                LIVE_MATCH);

static size_t find_slot_locked(uintptr_t p) {
    if (TBL.live.cap == 0) return SIZE_MAX;
    return live_find(TBL.live.slots, TBL.live.cap - 1, p);
}

int mp_table_insert_locked(const mp_live_t *rec, mp_live_t *replaced) {
    size_t i = find_slot_locked(rec->ptr);
    if (i != SIZE_MAX) {
        /* The address came back without a free we saw (another tool unhooked us for a
         * while): the old record is stale, the caller takes it off the counters. */
        *replaced = TBL.live.slots[i];
        TBL.live.slots[i] = *rec;
        return 1;
    }
    if ((TBL.live.count + 1) * 4 > TBL.live.cap * 3 &&                     /* load <= 3/4 */
        MP_HTABLE_RESIZE(live, &TBL.live, TBL.live.cap ? TBL.live.cap * 2 : 1024) != 0)
        return -1;
    (void)live_place(TBL.live.slots, TBL.live.cap - 1, rec);
    TBL.live.count++;
    filter_add_locked(rec->ptr);
    return 0;
}

int mp_table_take_locked(uintptr_t p, mp_live_t *out) {
    size_t i = find_slot_locked(p);
    if (i == SIZE_MAX) return 0;
    if (out) *out = TBL.live.slots[i];
    live_remove_at(TBL.live.slots, TBL.live.cap - 1, i);
    TBL.live.count--;
    filter_remove_locked(p);
    /* Give memory back after a peak (load < 1/8; halving keeps the cost amortized). If
     * the smaller array cannot be had, the large one simply stays. */
    if (TBL.live.cap > 1024 && TBL.live.count * 8 < TBL.live.cap)
        (void)MP_HTABLE_RESIZE(live, &TBL.live, TBL.live.cap / 2);
    return 1;
}

const mp_live_t *mp_table_find_locked(uintptr_t p) {
    size_t i = find_slot_locked(p);
    return i == SIZE_MAX ? NULL : &TBL.live.slots[i];
}

void mp_table_clear_locked(void) {
    mp_os_free(TBL.live.slots, TBL.live.cap * sizeof(mp_live_t));
    TBL.live.slots = NULL;
    TBL.live.cap = 0;
    TBL.live.count = 0;
    mp_filter_clear(TBL.filter_map, MP_FILTER_BITS);
}

size_t mp_table_count_locked(void) { return TBL.live.count; }

size_t mp_table_copy_locked(mp_live_t *out, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < TBL.live.cap && n < cap; i++)
        if (TBL.live.slots[i].ptr != 0) out[n++] = TBL.live.slots[i];
    return n;
}

uint64_t mp_table_memory_locked(void) {
    return (uint64_t)TBL.live.cap * sizeof(mp_live_t) + sizeof(TBL.filter_map);
}
