//  CF_PROCESSES back end: worker processes on this host, nothing else to
//  start. Wires the same parts a cluster uses: a cf_broker actor inside this
//  process (clients on inproc://, workers on ipc:// in a private temporary
//  directory), a cf_procs supervisor forking the workers, and a cf_client
//  actor. When the supervisor sees a worker process die it tells the broker at
//  once, so the task it ran is retried (or fails with WorkerLost) without
//  waiting for heartbeats, and the pool keeps working.

#ifndef CF_PROCESSES_H
#define CF_PROCESSES_H

#include "cf_executor.h"

extern const cf_backend_ops_t cf_processes_ops;

void *cf_processes_new(const cf_options_t *opts, int max_workers);

#endif
