//  A supervisor of worker processes, for cf-worker --procs and for the
//  CF_PROCESSES executor.
//
//  Processes are forked by a zygote: a process forked once, from the
//  supervisor's thread, when the supervisor starts. The zygote is single
//  threaded and forks every worker (first ones and replacements), so no worker
//  is ever forked from a multi-threaded process that might hold a lock in
//  another thread; and no worker ever touches its parent's ZeroMQ context
//  (each closes inherited descriptors and makes its own). Task functions
//  registered with CF_TASK reach the workers because each is a copy of the
//  program: the C counterpart of Python's rule that a worker must be able to
//  import the function (see docs/architecture.md).
//
//  A worker that exits (crash, signal, OOM kill, max_tasks reached) is
//  reported through on_exit and replaced, until the supervisor is destroyed.
//  Workers and the zygote die with their supervisor (PR_SET_PDEATHSIG, and a
//  lost broker ends a worker).

#ifndef CF_PROCS_H
#define CF_PROCS_H

#include "cfutures.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct cf_procs cf_procs_t;

//  pid exited with wait status; identity is the routing id it used with the
//  broker; running holds the broker ids of the tasks its threads were
//  running when it exited (n_running of them, none for a process that was
//  between tasks): read from memory the supervisor shares with the process,
//  so they are exact even when the process crashed (NULL: not known, out of
//  memory). Called on the supervisor's thread.
typedef void(cf_procs_exit_fn)(void *arg, pid_t pid, const char *identity, int status,
                               const uint64_t *running, size_t n_running);

typedef struct {
    int count;               //  worker processes (>= 1)
    int threads;             //  execution threads in each (>= 1)
    const char *endpoint;    //  broker worker endpoint for the children
    //  Several brokers (endpoint_count > 1): each child serves all of them
    //  (cf_worker_config_t's endpoints); endpoint is then not used.
    const char *const *endpoints;
    int endpoint_count;
    void (*initializer)(void *arg);    //  run in each worker before its first task
    void *initarg;
    int max_tasks_per_worker;     //  replace after this many tasks (0: never)
    bool exit_on_broker_loss;     //  passed to each cf_worker_config_t
    bool announce_functions;      //  passed to each cf_worker_config_t
    int heartbeat_ivl_ms;         //  passed on; 0: CF_HEARTBEAT_IVL_MS
    int heartbeat_liveness;       //  passed on; 0: CF_HEARTBEAT_LIVENESS
    cf_procs_exit_fn *on_exit;    //  NULL: exits are only logged
    void *on_exit_arg;
    //  Passed to each worker's cf_worker_config_t (CURVE keys, ...). Runs
    //  in the worker process, on a copy of the memory the supervisor had
    //  when it started: arg must be ready before cf_procs_new.
    cf_err_t (*socket_setup)(void *socket, const char *endpoint, void *arg);
    void *socket_setup_arg;
} cf_procs_config_t;

//  Forks the zygote and count workers; returns once each worker process
//  started. NULL with cf_last_error().
cf_procs_t *cf_procs_new(const cf_procs_config_t *config);
//  Worker processes currently alive.
int cf_procs_alive(cf_procs_t *procs);
//  The exit status of a worker process whose key the broker refused (its
//  cf_worker ended with CF_EAUTH). Such a process is not replaced: a new one
//  would present the same key.
#define CF_PROCS_EXIT_REFUSED 77
//  The exit status of a worker process that ended itself because a task
//  asked to stop (cf_future_stop) still ran after its grace: the task dies
//  with it; the process is replaced at once (no crash backoff).
#define CF_PROCS_EXIT_STOPPED 78
//  True once a worker process exited with CF_PROCS_EXIT_REFUSED.
bool cf_procs_refused(cf_procs_t *procs);
//  SIGTERM to every worker (they finish their task and say DISCONNECT),
//  SIGKILL after grace_ms, reaps all, ends the zygote, frees. Safe with NULL.
void cf_procs_destroy(cf_procs_t **procs, int grace_ms);

#endif
