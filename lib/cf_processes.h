//  CF_PROCESSES back end: worker processes on this host, nothing else to
//  start. Wires the same parts a cluster uses: a cf_broker actor inside this
//  process (clients on inproc://, workers on ipc:// in a private temporary
//  directory), a cf_procs supervisor forking the workers, and a cf_client
//  actor. When the supervisor sees a worker process die it tells the broker at
//  once, so the task it ran is retried (or fails with WorkerLost) without
//  waiting for heartbeats, and the pool keeps working.
//
//  Each worker process runs one execution thread; opts->initializer runs in
//  it before its first task, and opts->max_tasks_per_worker replaces it after
//  that many. The private directory is made under TMPDIR (or /tmp when that
//  path is too long for a Unix socket) and removed at destroy. Destroy stops,
//  in order, the client, the worker processes (SIGTERM, then SIGKILL after a
//  grace period), the broker, then removes the directory: no process, thread
//  or file is left behind.

#ifndef CF_PROCESSES_H
#define CF_PROCESSES_H

#include "cf_task.h"

extern const cf_backend_ops_t cf_processes_ops;

//  A pool of max_workers (>= 1) processes; opts may be NULL. NULL with
//  cf_last_error() on failure.
void *cf_processes_new(const cf_options_t *opts, int max_workers);

#endif
