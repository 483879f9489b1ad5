//  CF_THREADS back end: a direct queue and worker threads in this process.
//  Measured decision (docs/architecture.md): no broker hop for threads; the
//  arguments and results are still msgpack-encoded and run through
//  cf_registry_run, so semantics match the other kinds exactly.

#ifndef CF_POOL_H
#define CF_POOL_H

#include "cf_task.h"

extern const cf_backend_ops_t cf_pool_ops;

//  A new pool of max_workers threads (opts already validated). NULL with
//  cf_last_error() on failure.
void *cf_pool_new(const cf_options_t *opts, int max_workers);

#endif
