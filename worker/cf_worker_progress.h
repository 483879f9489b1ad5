//  Progress reports of a worker's running tasks (docs/protocol.md,
//  PROGRESS), between the execution threads that put them and the actor
//  that sends them.
//
//  Each running task that reports gets a record, made on its first report:
//  a coalescing slot (core/cf_report.h: latest wins) under a mutex of its
//  own, so threads reporting in tight loops never contend with each other,
//  only now and then with the actor. A record holding a report not sent is
//  linked into the worker's list (the set, under the set's mutex); the
//  first one to be linked wakes the actor, which otherwise sleeps until the
//  next report is due. The actor sends one PROGRESS per turn with every
//  report that is due: a task's first at once, then at most one per
//  CF_REPORT_INTERVAL_MS per task, and an ended task's last one at once,
//  before its RESULT (the worker flushes PROGRESS before RESULT), so the
//  client gets a task's final report before its result.
//
//  Ownership: a record belongs to its run until the run ends; then to the
//  set if a report still waits (freed once sent), else it is freed at once.

#ifndef CF_WORKER_PROGRESS_H
#define CF_WORKER_PROGRESS_H

#include "cf_proto.h"
#include "cfutures.h"

#include <stdint.h>

typedef struct cf_worker_progress cf_worker_progress_t;
typedef struct cf_worker_progress_task cf_worker_progress_task_t;

//  A set for one worker; wake(arg) is called (from an execution thread)
//  when a report waits and none did. NULL when out of memory.
cf_worker_progress_t *cf_worker_progress_new(void (*wake)(void *arg), void *wake_arg);
//  Frees the set and every record it owns. The runs must have ended.
void cf_worker_progress_destroy(cf_worker_progress_t **set);

//  One run of a task, on the execution thread's stack: set and the broker
//  task id, record NULL until the first report.
typedef struct {
    cf_worker_progress_t *set;
    uint64_t id;
    cf_worker_progress_task_t *record;
} cf_worker_progress_run_t;

//  A cf_run_ctx_t progress sink; arg is the cf_worker_progress_run_t.
void cf_worker_progress_sink(void *arg, uint64_t done, uint64_t total, const void *partial,
                             size_t partial_len);
//  The run ended (before its result is queued): a report still waiting
//  goes with the actor's next PROGRESS, at once.
void cf_worker_progress_end(cf_worker_progress_run_t *run);

//  Actor: sends one PROGRESS to sock with every report due at now_ms.
//  *sent gets how many items went. CF_OK (nothing due is CF_OK with 0), or
//  the send's error (CF_EBUSY: the reports wait for the next turn).
cf_err_t cf_worker_progress_send(cf_worker_progress_t *set, cf_proto_enc_t *enc, void *sock,
                                 int64_t now_ms, size_t *sent);
//  When the next report is due (a cf_clock_now_ms time; INT64_MAX: none).
int64_t cf_worker_progress_due_ms(cf_worker_progress_t *set);

#endif
