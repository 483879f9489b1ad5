//  The executor front: one public API (cf_submit, map, shutdown, progress)
//  over three back ends behind a table of operations:
//      CF_THREADS    cf_pool    direct in-process queue and worker threads
//      CF_PROCESSES  cf_client  + embedded cf_broker actor + cf_procs supervisor
//      CF_REMOTE     cf_client  to a cf-broker over tcp://
//  The front owns the executor struct, the progress counters and shutdown
//  state; a back end owns its threads, sockets and processes.

#ifndef CF_EXECUTOR_H
#define CF_EXECUTOR_H

#include "cf_future.h"

//  One task on its way: what a back end receives from the front.
//  The front allocates a task inside its future's block, with the function
//  and (small) arguments (one malloc per submission): never free the task,
//  its function or its args directly. A back end that replaces function or
//  args with its own malloc'd copy may do so; cf_task_destroy frees it.
typedef struct cf_task {
    cf_future_t *future;        //  a reference owned by the task
    char *function;             //  NUL-terminated, owned by the task
    uint8_t *args;              //  one msgpack array, owned by the task
    size_t args_len;
    int32_t retries;            //  resolved: <0 none
    uint32_t timeout_ms;        //  resolved: 0 none
    uint32_t flags;             //  CF_TASK_* of cf_proto.h
} cf_task_t;

//  Frees a task made by cf_task_new and drops its future reference. Safe
//  with NULL and twice.
void cf_task_destroy(cf_task_t **task);

typedef struct {
    const char *name;
    //  Takes the task (also on error). The back end must resolve the
    //  future eventually: result, error or cancelled.
    cf_err_t (*submit)(void *backend, cf_task_t **task);
    //  Stop taking tasks; cancel_futures: cancel queued ones; wait: return
    //  when everything in flight is resolved.
    cf_err_t (*shutdown)(void *backend, bool wait, bool cancel_futures);
    //  Frees the back end after shutdown(wait = true): no thread or process
    //  left behind.
    void (*destroy)(void **backend);
    int (*max_workers)(void *backend);
    //  Optional. Asked by cf_future_cancel (through the front, which keeps
    //  the back end alive meanwhile) to cancel f, a future it took and has
    //  not resolved: true if the task was removed before it started. NULL:
    //  the future is cancelled while pending and the back end sees that when
    //  cf_future_set_running fails. A back end never sets cancellers itself.
    bool (*cancel)(void *backend, cf_future_t *f);
} cf_backend_ops_t;

#define CF_DEFAULT_RETRIES 3

//  Number of online CPUs (at least 1): the ones this process may run on.
int cf_executor_cores(void);

//  A new task with a new pending future, function and args copied (see
//  cf_task_t); NULL on ENOMEM. Exposed for tests and back ends that build
//  tasks themselves; free it with cf_task_destroy.
cf_task_t *cf_task_new(const char *function, size_t function_len, const void *args,
                       size_t args_len);

//  cf_submit_raw without validating args: for callers that built the array
//  themselves (map's chunks). Same errors otherwise.
cf_future_t *cf_executor_submit_encoded(cf_executor_t *ex, const cf_task_opts_t *opts,
                                        const char *fn, const void *args, size_t len);

#endif
