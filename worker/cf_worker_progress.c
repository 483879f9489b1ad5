//  Progress reports of a worker's running tasks (see cf_worker_progress.h).
//
//  Locks: the set's mutex, then a record's. An execution thread puts under
//  its record's mutex alone and takes the set's only to link the record
//  (after its first report, and again after the actor sent what waited);
//  it reads `linked` under the record's mutex, which the actor also holds
//  when it unlinks, so a report put after the actor's look is never left
//  unlinked. The actor encodes under both, sends under neither, and marks
//  what went under both.

#include "cf_worker_progress.h"

#include "cf_log.h"
#include "cf_queue.h"
#include "cf_report.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>

#define S_LOG "worker"

struct cf_worker_progress_task {
    cf_queue_node_t node;    //  in the set while a report waits (linked)
    pthread_mutex_t lock;    //  slot, ended
    cf_report_slot_t slot;
    cf_report_mark_t mark;    //  what the actor's PROGRESS in flight carries
    uint64_t id;              //  the broker's task id
    bool linked;              //  in the set (see the locks above)
    bool in_flight;           //  encoded in the PROGRESS being sent (actor only)
    bool ended;               //  the run ended: the set owns it
};

struct cf_worker_progress {
    pthread_mutex_t lock;
    cf_queue_t waiting;    //  records holding a report not sent
    void (*wake)(void *arg);
    void *wake_arg;
};

static void s_record_free(cf_worker_progress_task_t *record)
{
    cf_report_slot_fini(&record->slot);
    pthread_mutex_destroy(&record->lock);
    free(record);
}

cf_worker_progress_t *cf_worker_progress_new(void (*wake)(void *arg), void *wake_arg)
{
    cf_worker_progress_t *set = calloc(1, sizeof *set);
    if (!set)
        return NULL;
    if (pthread_mutex_init(&set->lock, NULL) != 0) {
        free(set);
        return NULL;
    }
    cf_queue_init(&set->waiting);
    set->wake = wake;
    set->wake_arg = wake_arg;
    return set;
}

void cf_worker_progress_destroy(cf_worker_progress_t **pset)
{
    if (!pset || !*pset)
        return;
    cf_worker_progress_t *set = *pset;
    *pset = NULL;
    cf_queue_node_t *node;
    while ((node = cf_queue_pop_front(&set->waiting))) {
        cf_worker_progress_task_t *record = cf_queue_entry(node, cf_worker_progress_task_t, node);
        //  A run still going would own it; the worker ends runs first.
        if (record->ended)
            s_record_free(record);
        else
            record->linked = false;
    }
    pthread_mutex_destroy(&set->lock);
    free(set);
}

static cf_worker_progress_task_t *s_record_new(uint64_t id)
{
    cf_worker_progress_task_t *record = calloc(1, sizeof *record);
    if (!record)
        return NULL;
    if (pthread_mutex_init(&record->lock, NULL) != 0) {
        free(record);
        return NULL;
    }
    cf_queue_node_init(&record->node);
    cf_report_slot_init(&record->slot);
    record->id = id;
    return record;
}

void cf_worker_progress_sink(void *arg, uint64_t done, uint64_t total, const void *partial,
                             size_t partial_len)
{
    cf_worker_progress_run_t *run = arg;
    if (!run->record) {
        run->record = s_record_new(run->id);
        if (!run->record) {
            cf_log_warn_rated(S_LOG, "out of memory: progress of task %" PRIu64 " not reported",
                              run->id);
            return;
        }
    }
    cf_worker_progress_task_t *record = run->record;
    pthread_mutex_lock(&record->lock);
    if (cf_report_slot_put(&record->slot, done, total, partial, partial_len) != CF_OK)
        cf_log_warn_rated(S_LOG, "out of memory: a partial value of task %" PRIu64 " dropped",
                          run->id);
    bool link = !record->linked;
    pthread_mutex_unlock(&record->lock);
    if (!link)
        return;
    cf_worker_progress_t *set = run->set;
    pthread_mutex_lock(&set->lock);
    bool first = cf_queue_empty(&set->waiting);
    if (!record->linked) {
        cf_queue_push_back(&set->waiting, &record->node);
        record->linked = true;
    }
    else
        first = false;
    pthread_mutex_unlock(&set->lock);
    if (first && set->wake)
        set->wake(set->wake_arg);
}

void cf_worker_progress_end(cf_worker_progress_run_t *run)
{
    cf_worker_progress_task_t *record = run->record;
    run->record = NULL;
    if (!record)
        return;
    pthread_mutex_lock(&run->set->lock);
    pthread_mutex_lock(&record->lock);
    record->ended = true;
    bool owned_by_set = record->linked;
    pthread_mutex_unlock(&record->lock);
    pthread_mutex_unlock(&run->set->lock);
    //  A linked record's report goes at the actor's next PROGRESS, due at
    //  once now that it ended; the actor wakes for the RESULT anyway.
    if (!owned_by_set)
        s_record_free(record);
}

//  Encodes every due report into one PROGRESS; under the set's lock.
static size_t s_encode(cf_worker_progress_t *set, cf_proto_enc_t *enc, int64_t now_ms)
{
    size_t count = 0;
    cf_proto_enc_begin(enc, CF_MSG_PROGRESS);
    cf_queue_node_t *node = cf_queue_front(&set->waiting);
    for (; node; node = cf_queue_next(&set->waiting, node)) {
        cf_worker_progress_task_t *record = cf_queue_entry(node, cf_worker_progress_task_t, node);
        pthread_mutex_lock(&record->lock);
        if (record->slot.dirty
            && (record->ended || cf_report_slot_due_ms(&record->slot) <= now_ms)) {
            uint64_t done, total;
            const uint8_t *partial;
            size_t partial_len;
            cf_report_slot_peek(&record->slot, &record->mark, &done, &total, &partial,
                                &partial_len);
            cf_err_t rc = cf_proto_enc_progress(enc, record->id, record->mark.seq, done, total,
                                                partial, partial_len);
            if (rc == CF_OK) {
                record->in_flight = true;
                count++;
            }
            else if (rc != CF_ETOOBIG || count == 0)
                cf_log_warn_rated(S_LOG, "progress of task %" PRIu64 " not sent: %s", record->id,
                                  cf_strerror(rc));
        }
        pthread_mutex_unlock(&record->lock);
    }
    return count;
}

//  Marks what went (ok) or unmarks it (refused); under the set's lock.
static void s_settle(cf_worker_progress_t *set, bool ok, int64_t now_ms)
{
    cf_queue_node_t *node = cf_queue_front(&set->waiting), *next;
    for (; node; node = next) {
        next = cf_queue_next(&set->waiting, node);
        cf_worker_progress_task_t *record = cf_queue_entry(node, cf_worker_progress_task_t, node);
        if (!record->in_flight)
            continue;
        record->in_flight = false;
        if (!ok)
            continue;
        pthread_mutex_lock(&record->lock);
        bool clean = cf_report_slot_sent(&record->slot, &record->mark, now_ms);
        if (clean) {
            cf_queue_remove(&set->waiting, node);
            record->linked = false;
        }
        bool ended = record->ended;
        pthread_mutex_unlock(&record->lock);
        if (clean && ended)
            s_record_free(record);
    }
}

cf_err_t cf_worker_progress_send(cf_worker_progress_t *set, cf_proto_enc_t *enc, void *sock,
                                 int64_t now_ms, size_t *sent)
{
    assert(set && enc && sent);
    *sent = 0;
    pthread_mutex_lock(&set->lock);
    size_t count = cf_queue_empty(&set->waiting) ? 0 : s_encode(set, enc, now_ms);
    pthread_mutex_unlock(&set->lock);
    if (count == 0)
        return CF_OK;
    //  Sent without the lock: execution threads keep putting meanwhile.
    cf_err_t rc = cf_proto_enc_send(enc, sock, NULL, 0);
    pthread_mutex_lock(&set->lock);
    s_settle(set, rc == CF_OK, now_ms);
    pthread_mutex_unlock(&set->lock);
    if (rc == CF_OK)
        *sent = count;
    return rc;
}

int64_t cf_worker_progress_due_ms(cf_worker_progress_t *set)
{
    int64_t due = INT64_MAX;
    pthread_mutex_lock(&set->lock);
    cf_queue_node_t *node = cf_queue_front(&set->waiting);
    for (; node; node = cf_queue_next(&set->waiting, node)) {
        cf_worker_progress_task_t *record = cf_queue_entry(node, cf_worker_progress_task_t, node);
        pthread_mutex_lock(&record->lock);
        int64_t at = record->ended ? 0 : cf_report_slot_due_ms(&record->slot);
        pthread_mutex_unlock(&record->lock);
        if (at < due)
            due = at;
    }
    pthread_mutex_unlock(&set->lock);
    return due;
}
