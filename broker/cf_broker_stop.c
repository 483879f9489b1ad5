//  Stopping a task, even a running one (docs/protocol.md, "STOP"; the
//  client's cf_future_stop). A client's STOP [[id, grace_ms], ...]:
//    - a task queued here is removed and answered cancelled, as CANCEL;
//    - a task on a worker that announced feature STOP gets STOP [[broker
//      id, grace_ms]] forwarded and the mark CF_BROKER_STOP_ASKED: its
//      worker answers (cancelled if it still queued it, Interrupted if it
//      stopped or had to end its process, or its own result), an error is
//      never retried, and if the worker goes before answering the task
//      fails with Interrupted (lost, or its process ended) or is answered
//      cancelled (it said DISCONNECT: what it hands back never ran);
//    - a task on a worker without STOP runs to its end (nothing to send);
//    - ids the broker does not hold are ignored, as for CANCEL.

#include "cf_broker_int.h"

#include <inttypes.h>
#include <stdio.h>

#define S_LOG "broker"

//  Asks the worker holding task to stop it.
static void s_forward(cf_broker_state_t *self, cf_broker_task_t *task, uint32_t grace_ms)
{
    cf_broker_worker_t *worker = task->worker;
    if (!worker->says_stop) {
        if (cf_broker_log_event(self))
            cf_log_debug(S_LOG,
                         "STOP of task %" PRIu64 " not sent: worker %s does not take STOP, the "
                         "task runs to its end",
                         task->client_task_id, worker->peer.label);
        return;
    }
    cf_proto_enc_begin(self->enc, CF_MSG_STOP);
    cf_err_t rc = cf_proto_enc_stop(self->enc, task->id, grace_ms);
    if (rc == CF_OK)
        rc = cf_proto_enc_send(self->enc, self->workers_sock, worker->peer.id, worker->peer.id_len);
    if (rc != CF_OK) {
        //  Unasked, it runs on; its RESULT comes as usual.
        if (cf_broker_log_event(self))
            cf_log_debug(S_LOG, "STOP of task %" PRIu64 " not sent to worker %s: %s",
                         task->client_task_id, worker->peer.label, cf_strerror(rc));
        return;
    }
    task->marks |= CF_BROKER_STOP_ASKED;
}

void cf_broker_stop_client(cf_broker_state_t *self, cf_broker_client_t *client,
                           const cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        cf_broker_task_t *task = cf_idmap_get(client->tasks, msg->stops[i].id);
        if (!task)
            continue;    //  done already, or never ours: its RESULT says what happened
        if (task->state == CF_BROKER_QUEUED) {
            cf_broker_task_unqueue(self, task);
            cf_broker_client_cancelled(self, task);
        }
        else if (task->state == CF_BROKER_RUNNING)
            s_forward(self, task, msg->stops[i].grace_ms);
    }
}

void cf_broker_stop_release(cf_broker_state_t *self, cf_broker_task_t *task, bool lost, bool ran)
{
    if (!lost) {
        //  Handed back by its worker's DISCONNECT: it never ran there.
        cf_broker_task_unassign(self, task);
        cf_broker_client_cancelled(self, task);
        return;
    }
    char message[512];
    cf_broker_worker_t *worker = task->worker;
    if (ran)
        snprintf(message, sizeof message,
                 "%s() was asked to stop and did not return within its grace: its worker "
                 "process %d was killed (and replaced); the task is not retried",
                 cf_broker_task_function(task), (int)worker->pid);
    else
        snprintf(message, sizeof message,
                 "%s() was asked to stop and its worker %s was lost before it answered "
                 "(a worker process ends itself when its task overruns the grace); the task "
                 "is not retried",
                 cf_broker_task_function(task), worker->peer.label);
    cf_broker_client_runtime_error(self, task, CF_INTERRUPTED, message);
    self->stats.failed++;
    cf_broker_task_unassign(self, task);
    cf_broker_task_finish(self, task);
}
