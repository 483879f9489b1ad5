//  CF_PROCESSES (see cf_processes.h): a process pool built from the parts a
//  cluster uses, all on this host and owned by this object:
//
//      cf_client --inproc--> cf_broker --ipc--> worker processes (cf_procs)
//
//  One zmq context serves the client and the broker (inproc:// needs that);
//  workers reach the broker over ipc:// in a private mkdtemp() directory, so
//  two pools, or two programs, never meet. The supervisor reports each worker
//  that exits straight to the broker, which retries or fails its task at
//  once instead of after heartbeats; the pool keeps its size because the
//  supervisor replaces the worker.
//
//  Forking: the supervisor's zygote is forked when cf_procs_new runs, before
//  the broker and the client start their threads, and forks every worker
//  itself; no code of this file runs in a child, and children never touch
//  this process's context. Forking first matters: a fork copies every lock
//  as it is, and an allocator without fork handlers (GCC 12's ASan was seen
//  to hang this way) would hand workers a lock another of our threads held.
//  Workers connect to the ipc path before the broker binds it; ZeroMQ queues
//  their READY until it does.

#include "cf_processes.h"

#include "cf_broker.h"
#include "cf_client.h"
#include "cf_error.h"
#include "cf_log.h"
#include "cf_procs.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>
#include <zmq.h>

#define S_LOG         "processes"
//  How long worker processes get to finish after SIGTERM at destroy.
#define S_GRACE_MS    2000
//  The worker socket's file name inside the private directory.
#define S_SOCKET_NAME "workers"

typedef struct {
    void *ctx;    //  shared by broker and client
    //  Set after the workers were forked; read by the supervisor's thread.
    _Atomic(cf_broker_t *) broker;
    cf_procs_t *procs;
    void *client;
    int max_workers;
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];    //  "" when none
} cf_processes_t;

//  On the supervisor's thread: a worker process is gone. The broker hears
//  it now, by the identity the worker used, so the task it ran is retried
//  (or fails with WorkerLost) without waiting for missed heartbeats.
static void s_worker_exited(void *arg, pid_t pid, const char *identity, int status,
                            const uint64_t *running, size_t n_running)
{
    cf_processes_t *self = arg;
    cf_log_debug(S_LOG, "worker %d (%s) exited, status 0x%x", (int)pid, identity ? identity : "?",
                 status);
    if (!identity || !*identity)
        return;
    cf_broker_t *broker = atomic_load(&self->broker);
    if (!broker)
        return;    //  still starting: the broker never knew it
    //  What it ran when it died is exact: only that uses a retry.
    cf_err_t rc = cf_broker_worker_died(broker, identity, strlen(identity), running, n_running);
    //  CF_ENOTFOUND is the normal case for a worker that ended cleanly (it
    //  said DISCONNECT first) or never got to READY.
    if (rc == CF_ENOTFOUND)
        cf_log_debug(S_LOG, "worker %s was already gone from the broker", identity);
    else if (rc != CF_OK)
        cf_log_warn(S_LOG, "cannot report worker %s lost: %s", identity, cf_strerror(rc));
}

//  The directory for the ipc socket: under TMPDIR when its path leaves room
//  (a Unix socket path holds about 107 bytes), else /tmp.
static cf_err_t s_make_dir(cf_processes_t *self)
{
    const char *base = getenv("TMPDIR");
    size_t room = sizeof self->dir - sizeof "/cf-XXXXXX/" S_SOCKET_NAME;
    if (!base || !*base || base[0] != '/' || strlen(base) > room)
        base = "/tmp";
    snprintf(self->dir, sizeof self->dir, "%s/cf-XXXXXX", base);
    if (!mkdtemp(self->dir)) {
        int err = errno;
        self->dir[0] = '\0';
        return cf_error_set(CF_ESYS, "processes: cannot create a directory in %s: %s", base,
                            strerror(err));
    }
    return CF_OK;
}

static void s_remove_dir(cf_processes_t *self)
{
    if (!self->dir[0])
        return;
    char path[sizeof self->dir + sizeof "/" S_SOCKET_NAME];
    snprintf(path, sizeof path, "%s/%s", self->dir, S_SOCKET_NAME);
    //  zmq unlinks the socket file when the listener closes; this covers
    //  versions and paths where it does not.
    if (unlink(path) != 0 && errno != ENOENT)
        cf_log_debug(S_LOG, "unlink %s: %s", path, strerror(errno));
    if (rmdir(self->dir) != 0)
        cf_log_warn(S_LOG, "cannot remove %s: %s", self->dir, strerror(errno));
    self->dir[0] = '\0';
}

//  Tears down in dependency order: the client (nothing submits any more),
//  the workers (they may still talk to the broker), the broker, the
//  context, the directory.
static void s_destroy(void **backend_p)
{
    if (!backend_p || !*backend_p)
        return;
    cf_processes_t *self = *backend_p;
    *backend_p = NULL;
    cf_client_ops.destroy(&self->client);
    cf_procs_destroy(&self->procs, S_GRACE_MS);
    cf_broker_t *broker = atomic_exchange(&self->broker, NULL);
    cf_broker_destroy(&broker);
    if (self->ctx) {
        while (zmq_ctx_term(self->ctx) != 0 && errno == EINTR)
            ;
        self->ctx = NULL;
    }
    s_remove_dir(self);
    free(self);
}

void *cf_processes_new(const cf_options_t *opts, int max_workers)
{
    if (max_workers < 1) {
        cf_error_set(CF_EINVAL, "max_workers must be > 0, got %d", max_workers);
        return NULL;
    }
    static const cf_options_t defaults = { 0 };
    if (!opts)
        opts = &defaults;
    cf_processes_t *self = cf_calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->max_workers = max_workers;
    void *backend = self;

    if (s_make_dir(self) != CF_OK)
        goto failed;
    self->ctx = zmq_ctx_new();
    if (!self->ctx) {
        cf_error_set(CF_ESYS, "processes: zmq_ctx_new: %s", zmq_strerror(errno));
        goto failed;
    }
    //  The context is private, so a fixed inproc name cannot collide.
    char worker_endpoint[sizeof self->dir + 16];
    snprintf(worker_endpoint, sizeof worker_endpoint, "ipc://%s/%s", self->dir, S_SOCKET_NAME);
    self->procs = cf_procs_new(&(cf_procs_config_t){
        .count = max_workers,
        .threads = 1,
        .endpoint = worker_endpoint,
        .initializer = opts->initializer,
        .initarg = opts->initarg,
        .max_tasks_per_worker = opts->max_tasks_per_worker,
        //  Children die with their pool even if this process is killed.
        .exit_on_broker_loss = true,
        .on_exit = s_worker_exited,
        .on_exit_arg = self,
    });
    if (!self->procs)
        goto failed;    //  cf_last_error() says why
    cf_broker_t *broker = cf_broker_new(&(cf_broker_config_t){
        .client_endpoint = "inproc://cf-processes-clients",
        .worker_endpoint = worker_endpoint,
        .zmq_context = self->ctx,
    });
    if (!broker)
        goto failed;
    atomic_store(&self->broker, broker);
    self->client = cf_client_new(&(cf_client_config_t){
        .endpoint = cf_broker_client_endpoint(broker),
        .zmq_context = self->ctx,
    });
    if (!self->client)
        goto failed;
    return self;

failed:;
    //  Keep the first error: teardown may log but never overwrites it.
    cf_err_t err = cf_last_err();
    char message[256];
    snprintf(message, sizeof message, "%s", cf_last_error());
    s_destroy(&backend);
    cf_error_set(err == CF_OK ? CF_ESYS : err, "%s", message);
    return NULL;
}

static cf_err_t s_submit(void *backend, cf_task_t **task)
{
    cf_processes_t *self = backend;
    assert(self);
    return cf_client_ops.submit(self->client, task);
}

static cf_err_t s_shutdown(void *backend, bool wait, bool cancel_futures)
{
    cf_processes_t *self = backend;
    assert(self);
    return cf_client_ops.shutdown(self->client, wait, cancel_futures);
}

static int s_max_workers(void *backend)
{
    cf_processes_t *self = backend;
    assert(self);
    return self->max_workers;
}

static bool s_cancel(void *backend, cf_future_t *f)
{
    cf_processes_t *self = backend;
    return cf_client_ops.cancel(self->client, f);
}

//  cf_future_stop: STOP through the embedded broker to the worker process,
//  which ends itself if the task is still running after the grace.
static void s_stop(void *backend, cf_future_t *f, uint32_t grace_ms)
{
    cf_processes_t *self = backend;
    cf_client_ops.stop(self->client, f, grace_ms);
}

const cf_backend_ops_t cf_processes_ops = {
    .name = "processes",
    .submit = s_submit,
    .shutdown = s_shutdown,
    .destroy = s_destroy,
    .max_workers = s_max_workers,
    .cancel = s_cancel,
    .stop = s_stop,
    .task_size = CF_CLIENT_TASK_SIZE,    //  its client keeps its record there
};
