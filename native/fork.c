/* fork.c: the one fork handler of the native sampler.
 *
 * A child process must not inherit a lock held by a thread that does not exist in it, so
 * every lock is taken before fork() and released on both sides afterwards. All of them are
 * taken here, in one place, in the order every other path nests them:
 *
 *     native.patch_lock  ->  capture.pending_lock  ->  table.lock
 *     (got_patch.c)         (capture_common.c)         (table.c)   all in mp_state (state.h)
 *
 * and released in the reverse order. (Three handlers registered from three constructors
 * used to run in an order decided by the link order, which did not match this one: a rare
 * deadlock when a fork overlapped the no-GIL deferred path.)
 *
 * The child also drops the deferred samples: their pending call was queued in the parent.
 * Everything else (the live table, the interned frames, the counters) is consistent in the
 * child because no thread was inside it at the moment of the fork. The forking thread's
 * label (mp_set_thread_label) is not the child's: a child starts unlabelled.
 */
#include "native_capture.h"

#include <pthread.h>

static void fork_prepare(void) {
    nc_patch_fork_lock();
    nc_pending_fork_lock();
    mp_lock();
}

static void fork_parent(void) {
    mp_unlock();
    nc_pending_fork_parent();
    nc_patch_fork_unlock();
}

static void fork_child(void) {
    t_state.label = 0;
    mp_unlock();
    nc_pending_fork_child();
    nc_patch_fork_unlock();
}

__attribute__((constructor)) static void register_fork_handlers(void) {
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}
