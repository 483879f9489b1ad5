//  The executor front: one public API (cf_submit, map, shutdown, progress)
//  over three back ends behind a table of operations:
//      CF_THREADS    cf_pool    direct in-process queue and worker threads
//      CF_PROCESSES  cf_client  + embedded cf_broker actor + cf_procs supervisor
//      CF_REMOTE     cf_client  to a cf-broker over tcp://
//  The front owns the executor struct, the progress counters and shutdown
//  state; a back end owns its threads, sockets and processes.

#ifndef CF_EXECUTOR_H
#define CF_EXECUTOR_H

#include "cf_client.h"
#include "cf_task.h"

#define CF_DEFAULT_RETRIES    3
//  How long cf_executor_connect waits for a broker unless told (cfutures.h).
#define CF_CONNECT_TIMEOUT_MS 5000

//  Number of online CPUs (at least 1): the ones this process may run on.
int cf_executor_cores(void);

//  cf_submit_raw without validating args: for callers that built the array
//  themselves (map's chunks). Same errors otherwise.
cf_future_t *cf_executor_submit_encoded(cf_executor_t *ex, const cf_task_opts_t *opts,
                                        const char *fn, const void *args, size_t len);
//  The same, the task adopting *args (malloc'd) instead of a copy: *args
//  is NULL after, freed when the submission is refused.
cf_future_t *cf_executor_submit_taking(cf_executor_t *ex, const cf_task_opts_t *opts,
                                       const char *fn, uint8_t **args, size_t len);

//  The client counters of a CF_REMOTE executor (cf_client.h: tasks moved
//  between brokers, late replies ignored): false, *counters untouched, for
//  another kind. Safe from any thread while ex lives.
bool cf_executor_client_counters(cf_executor_t *ex, cf_client_counters_t *counters);

#endif
