/* sampler.c: which allocations become samples.
 *
 * Bytes are sampled as a Poisson process with mean gap `sample_rate`, the way tcmalloc and
 * Go's heap profiler do it: every thread counts down the bytes to its next sample point,
 * drawn from an exponential distribution. An allocation that crosses the point is
 * sampled; because the exponential distribution is memoryless, drawing a fresh gap after a
 * sampled allocation keeps each byte's chance equal, so a block of s bytes is sampled with
 * probability 1 - exp(-s/rate). The hot path is one thread-local subtraction and a compare.
 */
#include "core.h"

#include <math.h>
#include <stdlib.h>
#include <pthread.h>
#include <time.h>

/* This file's part of the process state (state.h): mp_state.config. */
#define CFG mp_state.config

/* Stale countdowns. A thread's countdown outlives stop() and start(): other threads'
 * thread-local state cannot be reset from here. The hooks' fast path normally compares
 * the thread's generation with CFG.generation, so that an old countdown is never used: its
 * first allocation after a start() goes to mp_sample_slow, which draws a fresh one.
 * That compare costs 3 of the ~11 instructions of the malloc fast path, and it is only
 * needed when the old countdown could be wrong for the new session. A countdown is an
 * exponential gap with mean `rate`, minus bytes allocated without a sample point; by
 * memorylessness, what is left of it at any moment chosen without looking at it is
 * again exponential with mean `rate`. So if every session of this process sampled at the
 * same rate (exact sessions aside: they never draw a gap, their countdowns stay as they
 * were or 0), an old countdown is exactly as good as a fresh one, and the hooks may skip
 * the compare (CFG.unchecked_ok; hooks.c installs the unchecked set). mp_sample_slow then
 * keeps a stale countdown (it only adopts the new generation) instead of redrawing it:
 * redrawing it *because* it crossed would drop that sample point, a bias. A different
 * rate (or the first session after one) installs the checked hooks, as before. Under the
 * GIL (configure) and read relaxed. */

_Thread_local mp_tls_t t_state __attribute__((tls_model("initial-exec")));

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t next_u64(mp_tls_t *t) {
    uint64_t x = t->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    t->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Exponential gap with mean CFG.sample_rate; at least one byte. */
static int64_t draw_gap(mp_tls_t *t) {
    /* u uniform in (0, 1]: never 0, so log(u) is finite. */
    double u = ((double)(next_u64(t) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double gap = -log(u) * (double)__atomic_load_n(&CFG.sample_rate, __ATOMIC_RELAXED);
    if (gap < 1.0) return 1;
    if (gap > 9.0e18) return INT64_MAX;
    return (int64_t)gap;
}

static void reseed(mp_tls_t *t, uint64_t stream) {
    t->rng = splitmix64(CFG.seed ^ splitmix64(stream + 1));
    if (t->rng == 0) t->rng = 0x853c49e6748fea9bull;
    t->generation = __atomic_load_n(&CFG.generation, __ATOMIC_ACQUIRE);
    /* Exact mode: a countdown of 0 sends every allocation, 0 bytes included, past the
     * hooks' fast path (mp_fast_skip) to the sampler. */
    t->countdown = __atomic_load_n(&CFG.exact, __ATOMIC_RELAXED) ? 0 : draw_gap(t);
}

void mp_sampler_configure(int64_t rate, uint64_t seed) {
    if (rate > 1) {
        if (CFG.first_rate == 0) CFG.first_rate = rate;
        else if (rate != CFG.first_rate) CFG.rates_mixed = 1;
    }
    __atomic_store_n(&CFG.unchecked_ok, rate > 1 && !CFG.rates_mixed, __ATOMIC_RELAXED);
    __atomic_store_n(&CFG.sample_rate, rate, __ATOMIC_RELAXED);
    __atomic_store_n(&CFG.exact, rate <= 1, __ATOMIC_RELAXED);
    CFG.seed = seed;
    __atomic_store_n(&CFG.thread_seq, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&CFG.generation, 1, __ATOMIC_RELEASE);
    /* The thread that starts the profiler takes stream 0, so a seeded single-threaded run
     * draws the same gaps every time, whatever other threads do. */
    reseed(&t_state, 0);
}

int mp_sample_slow(mp_tls_t *t, size_t size) {
    /* Paused by the profiler's own Python code: checked here, out of line, because an
     * allocation that does not reach a sample point needs no answer. */
    if (__builtin_expect(t->pause > 0, 0)) {
        if (t->pause_gen == __atomic_load_n(&CFG.generation, __ATOMIC_RELAXED)) return 0;
        t->pause = 0;                  /* a pause from before the last start() */
    }
    if (__atomic_load_n(&CFG.exact, __ATOMIC_RELAXED)) return 1;
    uint32_t gen = __atomic_load_n(&CFG.generation, __ATOMIC_RELAXED);
    if (t->generation != gen) {
        /* A countdown left by an earlier session at this same rate is kept when the
         * unchecked hooks may already have charged it ("Stale countdowns" above); 0 is a
         * thread that never drew one (or an exact session's). */
        if (t->countdown > 0 && __atomic_load_n(&CFG.unchecked_ok, __ATOMIC_RELAXED))
            t->generation = gen;
        else
            reseed(t, __atomic_fetch_add(&CFG.thread_seq, 1, __ATOMIC_RELAXED));
    }
    int64_t s = size > (size_t)INT64_MAX ? INT64_MAX : (int64_t)size;
    t->countdown -= s;
    if (t->countdown > 0) return 0;
    /* Memoryless: the next gap starts at the end of this block. */
    t->countdown = draw_gap(t);
    return 1;
}

/* Pauses. The profiler's Python code (snapshots, the magics' bookkeeping) must not be
 * sampled, and a KeyboardInterrupt may land between any two Python-level steps: a pause
 * taken by one call and ended by another can be left on forever. So a pause is a cffi
 * object (ffi.new_allocator(alloc=mp_pause_alloc, free=mp_pause_free)): it begins when
 * cffi creates it, in C, and ends when it is released (`with` exit, also in C) or garbage,
 * whichever comes first; nothing Python runs in between can separate the two. Each block
 * remembers its thread and generation: freed on another thread, or after a start() (which
 * ends every thread's pauses, see mp_sample_slow), it changes nothing. */
typedef struct {
    uint64_t thread;
    uint32_t generation;
} mp_pause_t;

void *mp_pause_alloc(size_t size) {
    mp_pause_t *p = malloc(size > sizeof(mp_pause_t) ? size : sizeof(mp_pause_t));
    if (p == NULL) return NULL;
    mp_tls_t *t = &t_state;
    uint32_t gen = __atomic_load_n(&CFG.generation, __ATOMIC_RELAXED);
    if (t->pause_gen != gen) {
        t->pause = 0;
        t->pause_gen = gen;
    }
    t->pause++;
    p->thread = mp_thread_ident();
    p->generation = gen;
    return p;
}

void mp_pause_free(void *ptr) {
    mp_pause_t *p = ptr;
    if (p == NULL) return;
    mp_tls_t *t = &t_state;
    if (p->thread == mp_thread_ident() && p->generation == t->pause_gen && t->pause > 0)
        t->pause--;
    free(p);
}

int mp_thread_paused(void) {
    mp_tls_t *t = &t_state;
    return t->pause > 0 && t->pause_gen == __atomic_load_n(&CFG.generation, __ATOMIC_RELAXED)
               ? t->pause : 0;
}

/* Labels: one TLS word, written only by its own thread, so no lock and no atomics. The
 * record path reads it under table.lock when it interns the traceback (stacks.c). */
void mp_set_thread_label(uint32_t label) { t_state.label = label; }
uint32_t mp_thread_label(void) { return t_state.label; }

uint64_t mp_thread_ident(void) { return (uint64_t)pthread_self(); }

double mp_weight(uint64_t size) {
    int64_t rate = __atomic_load_n(&CFG.sample_rate, __ATOMIC_RELAXED);
    if (__atomic_load_n(&CFG.exact, __ATOMIC_RELAXED) || rate <= 1) return 1.0;
    if (size == 0) return 1.0;
    /* 1 / (1 - exp(-s/R)) computed with expm1 so tiny blocks keep their precision. */
    return 1.0 / -expm1(-(double)size / (double)rate);
}
