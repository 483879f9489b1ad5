//  Futures: the only objects shared between threads. Each has a mutex and a
//  condition variable held briefly, never while user code (callbacks) runs.
//
//  State machine:  PENDING -> RUNNING -> FINISHED | FAILED
//                  PENDING -> CANCELLED
//  The first transition to a final state wins; later ones return false, so
//  a result that arrives after a cancel or a timeout is dropped harmlessly.
//
//  Executors resolve futures; cancel is forwarded to the executor through
//  the canceller hook, which decides (a queued task can be removed, a
//  running one cannot). The canceller is called only while f is not final,
//  and f's completion hook waits for it (see cf_future_set_complete_hook).
//
//  Waiters (cf_wait, cf_as_completed, map) register a cf_future_waiter_t and
//  are notified on completion; the notification only touches the waiter's own
//  lock, so a waiter on thousands of futures costs one wakeup per completion.

#ifndef CF_FUTURE_H
#define CF_FUTURE_H

#include "cfutures.h"

#include <pthread.h>
#include <stdatomic.h>

typedef enum {
    CF_FUTURE_PENDING,
    CF_FUTURE_RUNNING,
    CF_FUTURE_FINISHED,
    CF_FUTURE_FAILED,
    CF_FUTURE_CANCELLED
} cf_future_state_t;

//  Asked to cancel f; returns true if the task was removed before starting
//  (the canceller then calls cf_future_set_cancelled itself or lets
//  cf_future_cancel do it: see cf_future_cancel in cf_future.c).
typedef bool(cf_canceller_fn)(void *executor, cf_future_t *f);

//  A new pending future with one reference (the caller's). NULL on ENOMEM.
cf_future_t *cf_future_new(const char *function, size_t function_len);
//  The same with extra bytes (16-byte aligned, uninitialised) in the same
//  allocation at *extra_out, living as long as the future: the executor
//  keeps its task there, one allocation per submission.
cf_future_t *cf_future_new_with(const char *function, size_t function_len, size_t extra,
                                void **extra_out);
//  The extra bytes of a future made by cf_future_new_with, or NULL.
void *cf_future_extra(cf_future_t *f);
//  Another reference (the executor keeps one while the task is in flight).
cf_future_t *cf_future_ref(cf_future_t *f);

void cf_future_set_canceller(cf_future_t *f, cf_canceller_fn *fn, void *executor);
cf_future_state_t cf_future_state(cf_future_t *f);

//  Transitions; each returns true when it happened. Results and errors are
//  copied. Completion wakes waiters, runs callbacks then the completion hook,
//  all before returning, so the caller must hold a reference to f. The
//  result bytes are not checked here (that would cost a pass over them on
//  the hot path): the first reader decodes them, and malformed bytes turn
//  into a ProtocolError seen by cf_future_result and cf_future_error (the
//  state stays FINISHED).
//  Futures of the process not final yet (what decides whether a waiter
//  spins; for tests).
long cf_future_pending_count(void);
bool cf_future_set_running(cf_future_t *f);
bool cf_future_set_result(cf_future_t *f, const void *value, size_t len);
//  Takes value (malloc'd) instead of copying it; frees it when not taken.
bool cf_future_take_result(cf_future_t *f, uint8_t *value, size_t len);
//  Result bytes that live in something else (a received message's body):
//  value points at them, and release frees what keeps them (and the hold),
//  from whichever thread drops the future's last reference.
typedef struct cf_future_hold {
    const uint8_t *value;
    void (*release)(struct cf_future_hold *hold);
} cf_future_hold_t;
//  Takes hold's len bytes as the result instead of copying them, the future
//  releasing hold once it is freed; releases it at once when not taken.
bool cf_future_hold_result(cf_future_t *f, cf_future_hold_t *hold, size_t len);
bool cf_future_set_error(cf_future_t *f, const char *type, const char *message, const char *host,
                         int pid);
bool cf_future_set_cancelled(cf_future_t *f);

//  Called once after f completes, after its callbacks, with the final state:
//  executors use it for progress counters. One hook per future. It runs on
//  the completing thread, unless a canceller of f is running then: the last
//  canceller to return runs it, so the hook may release what the canceller
//  uses (the executor front relies on this). Returns true
//  when f was not done yet, so the hook set here (or the one replaced by
//  NULL) is the one that runs (or never runs); false when f already
//  completed and the previous hook ran.
typedef void(cf_complete_fn)(void *arg, cf_future_t *f, cf_future_state_t state);
bool cf_future_set_complete_hook(cf_future_t *f, cf_complete_fn *fn, void *arg);

//  Stopping (cf_future_stop, in cfutures.h, lives in the executor front).
//  The flag cf_future_stop sets, for a runner in this process to lend the
//  task (cf_run_ctx_t.stop, CF_THREADS); lives as long as f.
void cf_future_request_stop(cf_future_t *f);
const atomic_bool *cf_future_stop_flag(cf_future_t *f);
//  True once cf_future_request_stop was called on f.
bool cf_future_stop_asked(cf_future_t *f);
//  Calls fn(hook_arg, f, arg), hook_arg being what f's completion hook was
//  set with, while f is not final and its hook is hook: f's completion
//  hook (and what it would release, such as the executor) waits for fn, as
//  for a canceller. False, without calling fn, when f is final or has
//  another hook. fn must not block for long.
typedef void(cf_hooked_fn)(void *hook_arg, cf_future_t *f, void *arg);
bool cf_future_with_hook(cf_future_t *f, cf_complete_fn *hook, cf_hooked_fn *fn, void *arg);
//  Progress: the runner of f's task hands over the latest report it has
//  (seq: 1, 2, ... per task, growing; done, total; partial: one msgpack
//  value, or NULL when this report brings none, and f keeps the last one).
//  A report not newer than f's latest, or arriving once f is done, is
//  dropped (false); a malformed partial is dropped alone. Runs f's progress
//  callback on this thread (cf_future_on_progress), unless another thread
//  is running it: that one passes the report on. Returns true when taken.
bool cf_future_put_progress(cf_future_t *f, uint32_t seq, uint64_t done, uint64_t total,
                            const void *partial, size_t partial_len);

//  Waiters. A waiter is signalled (under its own lock) each time one of its
//  futures completes; the future is appended to its ready list.
typedef struct cf_future_waiter cf_future_waiter_t;
cf_future_waiter_t *cf_future_waiter_new(void);
void cf_future_waiter_destroy(cf_future_waiter_t **waiter);
//  Allocates registrations for count futures at once (instead of one
//  allocation per cf_future_waiter_add). Optional; CF_OK or CF_ENOMEM.
cf_err_t cf_future_waiter_reserve(cf_future_waiter_t *waiter, size_t count);
//  Registers waiter on f. CF_OK with *done = true if f was already done
//  (then nothing is registered and the caller treats it as ready), CF_OK
//  with *done = false once registered, or CF_ENOMEM.
cf_err_t cf_future_waiter_add(cf_future_waiter_t *waiter, cf_future_t *f, bool *done);
//  Unregisters from f (safe if f already completed).
void cf_future_waiter_remove(cf_future_waiter_t *waiter, cf_future_t *f);
//  Pops the next completed future, waiting until deadline_ms (absolute
//  cf_clock_now_ms time, -1: none). NULL on timeout.
cf_future_t *cf_future_waiter_next(cf_future_waiter_t *waiter, int64_t deadline_ms);

#endif
