//  Task registry and task execution. Functions are registered by name
//  (CF_TASK runs cf_task_register from a constructor, in a program or in a
//  task library loaded with cf_registry_load). cf_registry_run runs one task
//  from its encoded arguments and produces an encoded outcome; every executor
//  kind and cf-worker run tasks only through it, so a task behaves the same
//  everywhere.
//
//  Built-in function "cf.chunk": arguments [function, [args1, args2, ...]];
//  runs function on each argument list in order and returns an array with
//  one item per input: [0, value] on success or [1, type, message, host,
//  pid] on error (host and pid: where the input ran, as a single task's error
//  carries them; readers also accept the older [1, type, message]). map's
//  chunksize sends chunks through it on every executor kind.
//
//  Names starting with "cf." are reserved for such built-ins:
//  cf_task_register refuses them with CF_EINVAL.

#ifndef CF_REGISTRY_H
#define CF_REGISTRY_H

#include "cfutures.h"
#include "cf_proto.h"

#include <stdatomic.h>

#define CF_CHUNK_FUNCTION CF_PROTO_CHUNK_FUNCTION

//  The function registered under name (name_len bytes, not NUL-terminated),
//  or NULL. Safe from any thread; registration after startup is allowed.
cf_task_fn *cf_registry_find(const char *name, size_t name_len);
size_t cf_registry_count(void);
//  The names a worker can announce (docs/protocol.md, READY): every
//  registered function whose name a task can carry (UTF-8, no NUL), plus
//  the built-ins (cf.chunk), as one malloc'd block that is also the array
//  of *count NUL-terminated names (free the returned pointer alone). NULL
//  when out of memory. *generation (may be NULL) gets cf_registry_generation
//  as of the list.
char **cf_registry_names(size_t *count, uint64_t *generation);
//  Registrations so far: a worker that saw another value announces again.
uint64_t cf_registry_generation(void);

//  dlopen()s a task library so its CF_TASK constructors register its tasks.
//  CF_ENOTFOUND with cf_last_error() giving dlerror()'s text, or
//  CF_EINVAL when it registered nothing.
cf_err_t cf_registry_load(const char *path);

//  The outcome of running one task.
typedef struct {
    bool ok;
    uint8_t *value;    //  ok: one msgpack value (malloc'd, yours)
    size_t value_len;
    char *error_type;       //  !ok: malloc'd, yours
    char *error_message;    //  !ok: malloc'd, yours
} cf_outcome_t;

void cf_outcome_fini(cf_outcome_t *outcome);

//  What the code running a task lends it besides its arguments, for the
//  length of the run: the task reaches it through its cf_call_t (its
//  items in cf.chunk too). Every field may be NULL.
typedef struct {
    //  True once the task was asked to stop (cf_future_stop): the task
    //  reads it with cf_stop_requested.
    const atomic_bool *stop;
    //  Takes what the task reports with cf_task_progress /
    //  cf_task_partialf, on the task's own thread, every time: the latest
    //  done and total (0: not known), and a partial value (one msgpack
    //  value of at most CF_TASK_MAX_PARTIAL bytes, NULL when the report has
    //  none). The sink coalesces and rate-limits (core/cf_report.h).
    void (*progress)(void *arg, uint64_t done, uint64_t total, const void *partial,
                     size_t partial_len);
    void *progress_arg;
} cf_run_ctx_t;

//  Runs function (not NUL-terminated) on args (one msgpack array, validated
//  here). Never fails as a call: an unknown function gives UnknownFunction,
//  malformed args ProtocolError, a bad argument TypeError, all as outcomes.
//  Only CF_ENOMEM is returned as an error. Thread-safe; the task runs on the
//  calling thread. ctx may be NULL.
cf_err_t cf_registry_run(const char *function, size_t function_len, const void *args,
                         size_t args_len, const cf_run_ctx_t *ctx, cf_outcome_t *outcome);

//  This host's name (cached; for error reports).
const char *cf_registry_hostname(void);

#endif
