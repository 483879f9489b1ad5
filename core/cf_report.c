//  Progress reports on their way to a future (see cf_report.h).

#include "cf_report.h"

#include "cf_clock.h"
#include "cf_log.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define S_LOG "report"

void cf_report_slot_init(cf_report_slot_t *slot)
{
    assert(slot);
    memset(slot, 0, sizeof *slot);
}

void cf_report_slot_fini(cf_report_slot_t *slot)
{
    if (!slot)
        return;
    free(slot->partial);
    memset(slot, 0, sizeof *slot);
}

cf_err_t cf_report_slot_put(cf_report_slot_t *slot, uint64_t done, uint64_t total,
                            const void *partial, size_t partial_len)
{
    assert(slot);
    slot->done = done;
    slot->total = total;
    slot->puts++;
    slot->dirty = true;
    if (!partial)
        return CF_OK;
    if (partial_len > slot->partial_cap) {
        //  Grown in steps, never shrunk while the task runs: a task sending
        //  partials of one size copies without allocating.
        size_t cap = partial_len < 256 ? 256 : partial_len;
        uint8_t *grown = realloc(slot->partial, cap);
        if (!grown)
            return CF_ENOMEM;
        slot->partial = grown;
        slot->partial_cap = cap;
    }
    memcpy(slot->partial, partial, partial_len);
    slot->partial_len = partial_len;
    slot->has_partial = true;
    slot->partial_puts++;
    return CF_OK;
}

int64_t cf_report_slot_due_ms(const cf_report_slot_t *slot)
{
    if (!slot->dirty)
        return INT64_MAX;
    return slot->sent_ms ? slot->sent_ms + CF_REPORT_INTERVAL_MS : 0;
}

void cf_report_slot_peek(const cf_report_slot_t *slot, cf_report_mark_t *mark, uint64_t *done,
                         uint64_t *total, const uint8_t **partial, size_t *partial_len)
{
    mark->puts = slot->puts;
    mark->partial_puts = slot->partial_puts;
    //  Wraps after 4 billion sent reports: at 20 a second, 6 years of one task.
    mark->seq = slot->seq + 1 ? slot->seq + 1 : 1;
    *done = slot->done;
    *total = slot->total;
    *partial = slot->has_partial ? slot->partial : NULL;
    *partial_len = slot->has_partial ? slot->partial_len : 0;
}

bool cf_report_slot_sent(cf_report_slot_t *slot, const cf_report_mark_t *mark, int64_t now_ms)
{
    slot->seq = mark->seq;
    slot->sent_ms = now_ms > 0 ? now_ms : 1;
    if (slot->partial_puts == mark->partial_puts)
        slot->has_partial = false;
    if (slot->puts == mark->puts)
        slot->dirty = false;
    return !slot->dirty;
}

// ---------------------------------------------------------------------------
//  The direct reporter

void cf_report_direct_init(cf_report_direct_t *direct, cf_future_t *future)
{
    assert(direct && future);
    cf_report_slot_init(&direct->slot);
    direct->future = future;
}

static void s_direct_send(cf_report_direct_t *direct, int64_t now_ms)
{
    cf_report_mark_t mark;
    uint64_t done, total;
    const uint8_t *partial;
    size_t partial_len;
    cf_report_slot_peek(&direct->slot, &mark, &done, &total, &partial, &partial_len);
    //  Taken or dropped (the future is done, out of memory): either way it
    //  is not offered again.
    (void)cf_future_put_progress(direct->future, mark.seq, done, total, partial, partial_len);
    cf_report_slot_sent(&direct->slot, &mark, now_ms);
}

void cf_report_direct_sink(void *arg, uint64_t done, uint64_t total, const void *partial,
                           size_t partial_len)
{
    cf_report_direct_t *direct = arg;
    if (cf_report_slot_put(&direct->slot, done, total, partial, partial_len) != CF_OK)
        cf_log_warn_rated(S_LOG, "out of memory: a partial value of %s dropped",
                          cf_future_function(direct->future));
    int64_t due = cf_report_slot_due_ms(&direct->slot);
    if (due == 0) {
        s_direct_send(direct, cf_clock_now_ms());
        return;
    }
    int64_t now = cf_clock_now_ms();
    if (now >= due)
        s_direct_send(direct, now);
}

void cf_report_direct_flush(cf_report_direct_t *direct)
{
    if (direct->slot.dirty)
        s_direct_send(direct, cf_clock_now_ms());
}

void cf_report_direct_fini(cf_report_direct_t *direct)
{
    if (!direct)
        return;
    cf_report_direct_flush(direct);
    cf_report_slot_fini(&direct->slot);
}
