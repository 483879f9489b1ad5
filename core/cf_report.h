//  Progress reports on their way from a running task to its future (see
//  cf_task_progress in cfutures.h): the coalescing slot every runner keeps
//  per running task, and the direct reporter of runners that hold the
//  future themselves (CF_THREADS).
//
//  A slot keeps the latest report only (latest wins): a newer one replaces
//  done and total, and, when it brings one, the partial value. The runner
//  takes what waits at most once per CF_REPORT_INTERVAL_MS (the first
//  report at once), so a task reporting a million times a second costs its
//  readers about 20 reports a second. Taking is two steps, peek then sent,
//  so a runner whose send fails keeps the report; reports that came in
//  between are kept either way.

#ifndef CF_REPORT_H
#define CF_REPORT_H

#include "cf_future.h"
#include "cfutures.h"

#include <stdbool.h>
#include <stdint.h>

#define CF_REPORT_INTERVAL_MS CF_TASK_REPORT_INTERVAL_MS

//  Not thread-safe: the caller serialises puts and takes.
typedef struct {
    uint64_t done, total;    //  the latest
    uint8_t *partial;        //  the latest partial value not sent (capacity kept)
    size_t partial_len, partial_cap;
    uint64_t puts;            //  reports put so far
    uint64_t partial_puts;    //  reports put with a partial value so far
    uint32_t seq;             //  the seq of the last report sent (0: none)
    bool dirty;               //  a report waits
    bool has_partial;         //  partial holds a value not sent
    int64_t sent_ms;          //  when the last one was sent (0: never)
} cf_report_slot_t;

//  What a peek saw, for cf_report_slot_sent.
typedef struct {
    uint64_t puts, partial_puts;
    uint32_t seq;
} cf_report_mark_t;

void cf_report_slot_init(cf_report_slot_t *slot);
void cf_report_slot_fini(cf_report_slot_t *slot);
//  Records a report (partial: one msgpack value of at most
//  CF_TASK_MAX_PARTIAL bytes, or NULL). CF_OK, or CF_ENOMEM when the
//  partial value could not be kept (done and total are).
cf_err_t cf_report_slot_put(cf_report_slot_t *slot, uint64_t done, uint64_t total,
                            const void *partial, size_t partial_len);
//  When the waiting report may go (the first one at once, then one per
//  interval): a cf_clock_now_ms time, or INT64_MAX when none waits.
int64_t cf_report_slot_due_ms(const cf_report_slot_t *slot);
//  The waiting report (check dirty first): its seq, done, total and
//  partial value (NULL when none is new; valid until the next put), and a
//  mark for cf_report_slot_sent.
void cf_report_slot_peek(const cf_report_slot_t *slot, cf_report_mark_t *mark, uint64_t *done,
                         uint64_t *total, const uint8_t **partial, size_t *partial_len);
//  The report peeked with mark went at now_ms. True when nothing newer
//  waits (the slot is clean).
bool cf_report_slot_sent(cf_report_slot_t *slot, const cf_report_mark_t *mark, int64_t now_ms);

//  A runner that holds the future (CF_THREADS): reports go to it straight
//  from the task's thread, rate-limited by the slot. Only the task's own
//  thread uses it.
typedef struct {
    cf_report_slot_t slot;
    cf_future_t *future;    //  borrowed for the run
} cf_report_direct_t;

void cf_report_direct_init(cf_report_direct_t *direct, cf_future_t *future);
//  A cf_run_ctx_t progress sink: arg is the cf_report_direct_t.
void cf_report_direct_sink(void *arg, uint64_t done, uint64_t total, const void *partial,
                           size_t partial_len);
//  The task returned: hands over what waits, before the future completes,
//  so the last report comes before the result.
void cf_report_direct_flush(cf_report_direct_t *direct);
//  Flushes, then frees the slot.
void cf_report_direct_fini(cf_report_direct_t *direct);

#endif
