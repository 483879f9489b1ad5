//  Shared workers (READY feature SHARED; docs/protocol.md, "Shared workers"),
//  the broker's half: module cf_broker_shared, prefix cf_broker_shared_.
//
//  Such a worker splits its slots between several brokers, so it alone
//  says what each may send: the credit changes only by READY, CREDIT, a
//  TASK sent and REFUND, never by a result (a busy broker that kept the
//  slot of each result would keep the worker for good and starve the
//  others). The broker asks with WANT [n] when its credit is 0 and a task
//  waits that a pick would give it, once until it grants again, and gives
//  back with REFUND [k] credit no waiting task can use. Both ask one
//  question, s_shared_could_use, so a grant refunded is not wanted again
//  until the queue changes: no WANT, CREDIT, REFUND round in a loop.

#include "cf_broker_int.h"

#define S_LOG "broker"

//  True when a task waiting here could go to worker now: a pick would find
//  one, or it holds nothing and a suspect it serves waits. Nothing while
//  it holds a suspect (that runs alone).
static bool s_shared_could_use(const cf_broker_state_t *self, const cf_broker_worker_t *worker)
{
    if (worker->suspects)
        return false;
    if (cf_queue_empty(&worker->running))
        for (cf_queue_node_t *at = cf_queue_front(&self->suspects); at;
             at = cf_queue_next(&self->suspects, at))
            if (cf_broker_queue_serves(worker,
                                       cf_queue_entry(at, cf_broker_task_t, node)->lane->fn))
                return true;
    return self->queued > 0 && cf_broker_queue_has_for(self, worker);
}

//  Sends WANT or REFUND [n] to worker. CF_ENOTFOUND: the ROUTER no longer
//  knows it.
static cf_err_t s_shared_send(cf_broker_state_t *self, cf_broker_worker_t *worker,
                              cf_msg_type_t type, uint32_t n)
{
    if (type == CF_MSG_WANT)
        cf_proto_enc_want(self->enc, n);
    else
        cf_proto_enc_refund(self->enc, n);
    cf_err_t rc = cf_proto_enc_send(self->enc, self->workers_sock, worker->peer.id,
                                    worker->peer.id_len);
    if (rc != CF_OK && cf_broker_log_event(self))
        cf_log_debug(S_LOG, "%s not sent to worker %s: %s", cf_proto_command_name(type),
                     worker->peer.label, cf_strerror(rc));
    return rc;
}

//  WANT [n], n the tasks waiting (a hint: how many it could use). ack: the
//  answer to a SHARED READY, sent even with nothing to want (n 0), so the
//  worker knows this broker grants by WANT; only a WANT of something
//  waits for a grant (a WANT 0 taken as "asked" would leave a worker that
//  granted nothing never asked again).
static cf_err_t s_shared_want(cf_broker_state_t *self, cf_broker_worker_t *worker, bool ack)
{
    size_t waiting = self->queued + cf_queue_size(&self->suspects);
    uint32_t n = !s_shared_could_use(self, worker) ? 0
                 : waiting > CF_BROKER_MAX_CREDIT  ? CF_BROKER_MAX_CREDIT
                                                   : (uint32_t)waiting;
    if (n == 0 && !ack)
        return CF_OK;
    cf_err_t rc = s_shared_send(self, worker, CF_MSG_WANT, n);
    if (rc == CF_OK && n > 0)
        worker->want_sent = true;
    return rc;
}

//  Gives all of worker's credit back (REFUND): nothing waiting can use it.
//  Tasks sent before it reach the worker first (one ordered pipe), so the
//  worker knows to the slot what this broker may still send. A refused
//  send keeps the credit; the next dispatch tries again.
static cf_err_t s_shared_refund(cf_broker_state_t *self, cf_broker_worker_t *worker)
{
    cf_err_t rc = s_shared_send(self, worker, CF_MSG_REFUND, worker->credit);
    if (rc == CF_OK) {
        worker->credit = 0;
        cf_broker_worker_set_available(self, worker);
        self->want_due = true;
    }
    return rc;
}

//  After a dispatch looked at a SHARED worker: credit 0 may call for a
//  WANT; credit left over that no waiting task can use goes back.
void cf_broker_shared_settle(cf_broker_state_t *self, cf_broker_worker_t *worker)
{
    if (worker->credit == 0)
        self->want_due = true;
    else if ((worker->exhausted || self->queued == 0 || worker->suspects)
             && s_shared_refund(self, worker) == CF_ENOTFOUND)
        cf_broker_worker_remove(self, worker, "gone", true);
}

//  WANT to every SHARED worker at credit 0 not asked yet that a waiting
//  task could go to. Runs only after something changed (want_due).
void cf_broker_shared_wants(cf_broker_state_t *self)
{
    self->want_due = false;
    cf_queue_node_t *node = cf_queue_front(&self->shared), *next;
    for (; node; node = next) {
        next = cf_queue_next(&self->shared, node);
        cf_broker_worker_t *worker = cf_queue_entry(node, cf_broker_worker_t, shared_node);
        if (worker->credit == 0 && !worker->want_sent && !worker->blocked_until_ms
            && s_shared_want(self, worker, false) == CF_ENOTFOUND)
            cf_broker_worker_remove(self, worker, "gone", true);
    }
}

//  With nothing queued: SHARED workers' credit is of no use here.
void cf_broker_shared_refund_idle(cf_broker_state_t *self)
{
    cf_queue_node_t *node = cf_queue_front(&self->available), *next;
    for (; node; node = next) {
        next = cf_queue_next(&self->available, node);
        cf_broker_worker_t *worker = cf_queue_entry(node, cf_broker_worker_t, avail_node);
        if (worker->shared && s_shared_refund(self, worker) == CF_ENOTFOUND)
            cf_broker_worker_remove(self, worker, "gone", true);
    }
}

//  A SHARED READY is answered with WANT at once (see s_shared_want).
void cf_broker_shared_ack(cf_broker_state_t *self, cf_broker_worker_t *worker)
{
    if (worker->shared && s_shared_want(self, worker, true) == CF_ENOTFOUND)
        cf_broker_worker_remove(self, worker, "gone", true);
}

//  After a CREDIT: the grant ends its WANT; one that nothing waiting can
//  use goes straight back.
void cf_broker_shared_granted(cf_broker_state_t *self, cf_broker_worker_t *worker)
{
    worker->want_sent = false;
    if (worker->credit > 0 && !s_shared_could_use(self, worker)
        && s_shared_refund(self, worker) == CF_ENOTFOUND)
        cf_broker_worker_remove(self, worker, "gone", true);
}
