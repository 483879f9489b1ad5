//  A task on its way from the executor front to a back end, and the table
//  of operations every back end fills. Back ends include this header, never
//  the front's (cf_executor.h), so the front can include every back end
//  without a cycle.

#ifndef CF_TASK_H
#define CF_TASK_H

#include "cf_future.h"

//  One task on its way: what a back end receives from the front.
//  The front allocates a task inside its future's block, with the function
//  and (small) arguments (one malloc per submission): never free the task,
//  its function or its args directly; cf_task_destroy does.
//  A client holds one per outstanding task, so it is packed: 40 bytes
//  with the front's own fields (lib/cf_task.c), 16 less than with a
//  function pointer and 32-bit flags, which is what kept the client under
//  its bound (bench: client.mem.bookkeeping). The function is the future's
//  name (cf_task_function).
typedef struct cf_task {
    cf_future_t *future;    //  a reference owned by the task
    const uint8_t *args;    //  one msgpack array, owned by the task
    uint32_t args_len;      //  at most CF_PROTO_MAX_FRAME
    int32_t retries;        //  resolved: <0 none
    uint32_t timeout_ms;    //  resolved: 0 none
    int32_t priority;       //  higher first
    uint32_t wait_ms;       //  CF_REMOTE: for a worker serving it; 0 the broker's default
    uint8_t flags;          //  CF_TASK_* of cf_proto.h
    //  The front's own (lib/cf_task.c), in what would be padding.
    bool args_owned_;          //  args is a separate allocation
    uint16_t backend_size_;    //  the back end's bytes, then the inline args
} cf_task_t;

_Static_assert(sizeof(cf_task_t) == 40, "a client holds one per outstanding task");

//  The task's function, NUL-terminated: its future's name.
static inline const char *cf_task_function(const cf_task_t *task)
{
    return cf_future_function(task->future);
}

//  A new task with a new pending future, function and args copied (see
//  cf_task_t), and backend_size zeroed bytes for the back end's own record
//  of it (cf_task_backend); NULL on ENOMEM. Free it with cf_task_destroy.
cf_task_t *cf_task_new(const char *function, size_t function_len, const void *args, size_t args_len,
                       size_t backend_size);
//  Arguments up to this size are kept inside the task's block by
//  cf_task_new; larger ones are copied into a block of their own, which a
//  caller holding them in a malloc'd block of its own saves by handing it
//  over (cf_task_new_taking).
#define CF_TASK_INLINE_ARGS_MAX 256
//  cf_task_new adopting *args (malloc'd, args_len bytes) instead of copying
//  them: *args is set to NULL, and freed when the task cannot be made.
cf_task_t *cf_task_new_taking(const char *function, size_t function_len, uint8_t **args,
                              size_t args_len, size_t backend_size);
//  The back end's bytes of task (8-byte aligned), NULL when none were
//  reserved. They live as long as the task's future, not the task: a back
//  end that keeps its record there uses it only while it holds the task.
void *cf_task_backend(cf_task_t *task);
//  The task made with future f, or NULL (a future made otherwise).
cf_task_t *cf_task_of(cf_future_t *f);
//  The task whose back-end bytes start at backend.
cf_task_t *cf_task_of_backend(void *backend);

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
    //  Optional. Called by cf_executor_destroy before its waiting shutdown:
    //  the back end may then bound that wait (a client gives up on a lost
    //  broker, failing what it cannot know about).
    void (*destroying)(void *backend);
    int (*max_workers)(void *backend);
    //  Bytes the back end keeps in each task (cf_task_backend): the front
    //  reserves them in the task's one allocation.
    size_t task_size;
    //  Optional. Asked by cf_future_cancel (through the front, which keeps
    //  the back end alive meanwhile) to cancel f, a future it took and has
    //  not resolved: true if the task was removed before it started. NULL:
    //  the future is cancelled while pending and the back end sees that when
    //  cf_future_set_running fails. A back end never sets cancellers itself.
    bool (*cancel)(void *backend, cf_future_t *f);
    //  Optional. Asked by cf_future_stop (through the front, as cancel) to
    //  stop f, a future it took and has not resolved, whose stop flag is
    //  set: a task not begun is cancelled, a running one asked to stop
    //  (grace_ms: how long a worker process may take before it is killed).
    //  Must not block on the network. NULL: the flag alone does it (the
    //  back end lends it to the task), and a pending future is cancelled.
    void (*stop)(void *backend, cf_future_t *f, uint32_t grace_ms);
} cf_backend_ops_t;

#endif
