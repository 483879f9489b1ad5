//  A task's life on the client's actor (cf_client_int.h has the map): taken
//  from the inbox with the cancels and stops that came with it, parked on
//  BUSY, resent when the broker may have forgotten it, resolved and
//  forgotten; and the reports that tell application threads.

#include "cf_client_int.h"

#include "cf_clock.h"
#include "cf_log.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define S_LOG "client"

//  Removes item from every structure and frees it; the caller resolved (or
//  resolves next) its future through the reference it took.
void cf_client_task_forget(cf_client_t *self, cf_client_item_t *item)
{
    if (item->where == CF_CLIENT_AT_OUTBOX)
        cf_queue_remove(&self->own.outbox, &item->node);
    else if (item->where == CF_CLIENT_AT_PARKED)
        cf_queue_remove(&self->own.parked, &item->node);
    else if (item->where == CF_CLIENT_AT_BROKER && item->link != CF_CLIENT_NO_LINK)
        self->links[item->link].at_broker--;
    cf_idmap_remove(self->own.pending, item->id);
    if (item->cancel_asked)
        self->own.answered = true;
    item->where = CF_CLIENT_GONE;
    self->own.resolved++;
    //  Last: the item lives in the task's memory, which may go with it.
    cf_client_item_drop(item);
}

//  Runs fn's transition on the future of item, then forgets item. The
//  future outlives the item through the extra reference.
void cf_client_task_cancelled(cf_client_t *self, cf_client_item_t *item)
{
    cf_future_t *f = cf_future_ref(cf_client_item_task(item)->future);
    cf_client_task_forget(self, item);
    cf_future_set_cancelled(f);
    cf_future_release(&f);
}

void cf_client_task_error(cf_client_t *self, cf_client_item_t *item, const char *type,
                          const char *message, const char *host, int pid)
{
    cf_future_t *f = cf_future_ref(cf_client_item_task(item)->future);
    cf_client_task_forget(self, item);
    cf_future_set_error(f, type, message, host, pid);
    cf_future_release(&f);
}

//  Reports resolutions and cancel answers to waiting application threads:
//  one lock per loop iteration, not per task.
void cf_client_task_report(cf_client_t *self)
{
    if (!self->own.resolved && !self->own.answered && !self->own.reach_changed)
        return;
    pthread_mutex_lock(&self->shared.mutex);
    assert(self->shared.outstanding >= self->own.resolved);
    self->shared.outstanding -= self->own.resolved;
    if (self->shared.outstanding == 0)
        pthread_cond_broadcast(&self->shared.idle_cond);
    self->shared.cancel_handled = self->own.cancel_taken;
    self->shared.broker_unreachable = self->own.unreachable;
    if (self->own.answered || self->own.reach_changed)
        pthread_cond_broadcast(&self->shared.cancel_cond);
    pthread_mutex_unlock(&self->shared.mutex);
    self->own.resolved = 0;
    self->own.answered = false;
    self->own.reach_changed = false;
}

//  The CANCEL goes to the broker the task was sent to, the one that can
//  remove it.
static void s_queue_cancel_id(cf_client_t *self, cf_client_item_t *item)
{
    cf_client_link_t *link = &self->links[item->link];
    if (link->cancel_ids_len == link->cancel_ids_cap) {
        size_t cap = link->cancel_ids_cap ? link->cancel_ids_cap * 2 : 64;
        uint64_t *grown = realloc(link->cancel_ids, cap * sizeof *grown);
        if (!grown) {
            //  The canceller times out and reports false: honest, since
            //  the task was not cancelled.
            cf_log_warn_rated(S_LOG, "out of memory queueing a cancel");
            return;
        }
        link->cancel_ids = grown;
        link->cancel_ids_cap = cap;
    }
    link->cancel_ids[link->cancel_ids_len++] = item->id;
    item->cancel_asked = true;
}

//  Every task sent on link and unanswered goes back to the outbox (a lost
//  or restarted broker may have forgotten it), from where the spread sends
//  it to this broker or another. One that a canceller is waiting on is back
//  in our hands, so it is cancelled here instead.
void cf_client_task_resend_all(cf_client_t *self, cf_client_link_t *link, const char *why)
{
    cf_queue_t resend, cancel, interrupted;
    cf_queue_init(&resend);
    cf_queue_init(&cancel);
    cf_queue_init(&interrupted);
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value)) {
        cf_client_item_t *item = value;
        if (item->where != CF_CLIENT_AT_BROKER || item->link != link->index)
            continue;
        if (item->cancel_asked && !item->started) {
            cf_queue_push_back(&cancel, &item->node);
            continue;
        }
        if (item->stop_asked) {
            cf_queue_push_back(&interrupted, &item->node);
            continue;
        }
        item->where = CF_CLIENT_AT_OUTBOX;
        link->at_broker--;
        cf_queue_push_back(&resend, &item->node);
    }
    if (!cf_queue_empty(&resend) || !cf_queue_empty(&cancel)) {
        cf_log_info(S_LOG, "%s: resending %zu tasks", why, cf_queue_size(&resend));
        self->own.resends++;
    }
    //  One resubmission per restart (docs/protocol.md section 7): this one
    //  answers every sign seen so far.
    link->resend_on_contact = false;
    link->resent_ms = cf_clock_now_ms();
    //  Resent tasks go first: they are the oldest.
    cf_queue_prepend(&self->own.outbox, &resend);
    cf_client_item_t *item;
    while ((item = cf_client_pop_front(&cancel))) {
        item->where = CF_CLIENT_AT_BROKER;    //  in no list now
        cf_client_task_cancelled(self, item);
    }
    //  Asked to stop, then forgotten by the broker: run again it would not
    //  be stopped, so it ends here.
    while ((item = cf_client_pop_front(&interrupted))) {
        item->where = CF_CLIENT_AT_BROKER;
        cf_client_task_error(self, item, CF_INTERRUPTED,
                             "the task was asked to stop and the broker forgot it (restarted or "
                             "lost this client): not resubmitted",
                             "", 0);
    }
    link->blocked = false;
}

void cf_client_task_park(cf_client_t *self, cf_client_item_t *item, int64_t now)
{
    self->links[item->link].at_broker--;
    item->where = CF_CLIENT_AT_PARKED;
    cf_queue_push_back(&self->own.parked, &item->node);
    if (self->own.resend_at_ms < 0)
        self->own.resend_at_ms = now + self->own.backoff_ms;
}

// ---------------------------------------------------------------------------
//  The inbox

static void s_accept_tasks(cf_client_t *self, cf_queue_t *tasks)
{
    cf_client_item_t *item;
    while ((item = cf_client_pop_front(tasks))) {
        if (++self->own.next_id == 0)
            self->own.next_id = 1;    //  0 means "no task" in ERROR refs
        item->id = self->own.next_id;
        item->link = CF_CLIENT_NO_LINK;
        if (cf_idmap_put(self->own.pending, item->id, item) != CF_OK) {
            item->where =
                CF_CLIENT_AT_BROKER;    //  in no list: cf_client_task_forget unlinks nothing
            cf_client_task_error(self, item, "MemoryError", "out of memory in the client", "", 0);
            continue;
        }
        //  Behind parked tasks while the broker pushes back.
        if (!cf_queue_empty(&self->own.parked)) {
            item->where = CF_CLIENT_AT_PARKED;
            cf_queue_push_back(&self->own.parked, &item->node);
        }
        else {
            item->where = CF_CLIENT_AT_OUTBOX;
            cf_queue_push_back(&self->own.outbox, &item->node);
        }
    }
}

static void s_handle_cancel(cf_client_t *self, cf_future_t *f)
{
    cf_task_t *task = cf_task_of(f);
    cf_client_item_t *item = task ? cf_task_backend(task) : NULL;
    if (!item || item->where == CF_CLIENT_GONE) {
        self->own.answered = true;    //  already resolved: the state says so
        return;
    }
    switch ((cf_client_where_t)item->where) {
    case CF_CLIENT_AT_OUTBOX:
    case CF_CLIENT_AT_PARKED:
        cf_client_task_cancelled(self, item);
        self->own.answered = true;
        break;
    case CF_CLIENT_AT_BROKER:
        if (item->started)
            self->own.answered = true;
        else if (!item->cancel_asked)
            s_queue_cancel_id(self, item);
        break;
    case CF_CLIENT_AT_INBOX:
    case CF_CLIENT_GONE:
        assert(false);    //  the inbox was drained first; CF_CLIENT_GONE returned above
        break;
    }
}

//  Resolves every task the client holds with resolve(self, item, why):
//  first what the caller took from the inbox (under the mutex, with the
//  state change that keeps new ones out), then the outbox and the parked
//  list in order, then what only the pending map holds (at the broker).
void cf_client_task_resolve_all(cf_client_t *self, cf_queue_t *inbox,
                                void (*resolve)(cf_client_t *, cf_client_item_t *, const char *),
                                const char *why)
{
    s_accept_tasks(self, inbox);
    cf_client_item_t *item;
    while ((item = cf_client_front(&self->own.outbox)))
        resolve(self, item, why);
    while ((item = cf_client_front(&self->own.parked)))
        resolve(self, item, why);
    cf_queue_t rest;
    cf_queue_init(&rest);
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value))
        cf_queue_push_back(&rest, &((cf_client_item_t *)value)->node);
    while ((item = cf_client_pop_front(&rest)))
        resolve(self, item, why);
    cf_client_task_report(self);
}

//  shutdown(cancel_futures) with no broker to answer: every task at the
//  broker not known to have started is cancelled here (its CANCEL, if it
//  ever arrives, makes the broker drop it; a late STARTED or result is
//  then stale).
void cf_client_task_cancel_locally(cf_client_t *self)
{
    cf_queue_t cancel;
    cf_queue_init(&cancel);
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value)) {
        cf_client_item_t *item = value;
        if (item->where == CF_CLIENT_AT_BROKER && !item->started)
            cf_queue_push_back(&cancel, &item->node);
    }
    cf_client_item_t *item;
    while ((item = cf_client_pop_front(&cancel)))
        cf_client_task_cancelled(self, item);
}

static void s_cancel_everything_queued(cf_client_t *self)
{
    self->own.cancel_all_asked = true;
    cf_client_item_t *item;
    while ((item = cf_client_front(&self->own.outbox)))
        cf_client_task_cancelled(self, item);
    while ((item = cf_client_front(&self->own.parked)))
        cf_client_task_cancelled(self, item);
    self->own.resend_at_ms = -1;
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value)) {
        item = value;
        if (item->where == CF_CLIENT_AT_BROKER && !item->started && !item->cancel_asked)
            s_queue_cancel_id(self, item);
    }
    if (self->own.unreachable)
        cf_client_task_cancel_locally(self);
}

// ---------------------------------------------------------------------------
//  Stopping (cf_future_stop; cf_client.c queues the requests)

static void s_queue_stop_item(cf_client_t *self, cf_client_item_t *item, uint32_t grace_ms)
{
    cf_client_link_t *link = &self->links[item->link];
    if (link->stop_items_len == link->stop_items_cap) {
        size_t cap = link->stop_items_cap ? link->stop_items_cap * 2 : 16;
        cf_proto_stop_t *grown = realloc(link->stop_items, cap * sizeof *grown);
        if (!grown) {
            cf_log_warn_rated(S_LOG, "out of memory: a stop request was dropped");
            return;
        }
        link->stop_items = grown;
        link->stop_items_cap = cap;
    }
    link->stop_items[link->stop_items_len++] = (cf_proto_stop_t){ item->id, grace_ms };
    item->stop_asked = true;
}

//  On the actor, after the inbox was taken (so every task is found where
//  it is); frees stops.
static void s_handle_stops(cf_client_t *self, cf_client_stop_req_t *stops, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        cf_task_t *task = cf_task_of(stops[i].future);
        cf_client_item_t *item = task ? cf_task_backend(task) : NULL;
        if (item && (item->where == CF_CLIENT_AT_OUTBOX || item->where == CF_CLIENT_AT_PARKED))
            cf_client_task_cancelled(self, item);    //  never sent: it never runs
        else if (item && item->where == CF_CLIENT_AT_BROKER)
            s_queue_stop_item(self, item, stops[i].grace_ms);
        cf_future_release(&stops[i].future);
    }
    free(stops);
}

// ---------------------------------------------------------------------------
//  Taking what application threads left

//  Called before the actor blocks in poll (and by a submitter acting for
//  it): true when application threads left work (then it must not block).
//  Otherwise "signalled" is cleared under the same lock that showed the
//  inbox empty, so the next submission kicks the actor and none is missed.
bool cf_client_task_inbox_has_work(cf_client_t *self)
{
    pthread_mutex_lock(&self->shared.mutex);
    bool work = !cf_queue_empty(&self->shared.inbox) || self->shared.cancels_len
                || self->shared.cancel_all || self->shared.stops_len;
    if (!work)
        self->shared.signalled = false;
    pthread_mutex_unlock(&self->shared.mutex);
    return work;
}

void cf_client_task_drain_inbox(cf_client_t *self)
{
    pthread_mutex_lock(&self->shared.mutex);
    cf_queue_t tasks;
    cf_queue_init(&tasks);
    cf_queue_append(&tasks, &self->shared.inbox);
    //  The two cancel arrays swap roles, so neither side allocates in the
    //  steady state.
    cf_future_t **cancels = self->shared.cancels;
    size_t cancels_len = self->shared.cancels_len;
    size_t cancels_cap = self->shared.cancels_cap;
    self->shared.cancels = self->own.cancels_spare;
    self->shared.cancels_cap = self->own.cancels_spare_cap;
    self->shared.cancels_len = 0;
    bool cancel_all = self->shared.cancel_all;
    self->shared.cancel_all = false;
    self->own.cancel_taken = self->shared.cancel_seq;
    cf_client_stop_req_t *stops = self->shared.stops;
    size_t stops_len = self->shared.stops_len;
    self->shared.stops = NULL;
    self->shared.stops_len = self->shared.stops_cap = 0;
    pthread_mutex_unlock(&self->shared.mutex);

    //  Tasks first: a cancel always follows its task's submission.
    s_accept_tasks(self, &tasks);
    for (size_t i = 0; i < cancels_len; i++) {
        s_handle_cancel(self, cancels[i]);
        cf_future_release(&cancels[i]);
    }
    if (cancels_len)
        self->own.answered = true;    //  cancel_handled moves on in cf_client_task_report
    self->own.cancels_spare = cancels;
    self->own.cancels_spare_cap = cancels_cap;
    s_handle_stops(self, stops, stops_len);
    if (cancel_all)
        s_cancel_everything_queued(self);
}
