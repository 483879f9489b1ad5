//  as_completed and wait, over any futures (of any executors, or none).
//
//  Both register one cf_future_waiter_t on the futures not yet done, so a
//  wait on N futures costs one wakeup per completion and no polling; the
//  registrations are removed before returning (or on destroy), so futures
//  never point at a freed waiter.
//
//  Inputs are sets, as in Python: a future given twice is yielded (or
//  reported) once. Distinct futures keep the order of their first
//  appearance, which makes the "already done first" part of as_completed and
//  the filled arrays of wait deterministic.

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_future.h"

#include <stdlib.h>
#include <string.h>

//  The distinct futures of fs in order of first appearance: *out is
//  malloc'd (yours), *n_out their number. CF_EINVAL for a NULL future,
//  CF_ENOMEM. Linear time: an open-addressing set of pointers sized to at
//  most half full (as_completed over a million futures is a benchmark).
static cf_err_t s_distinct(cf_future_t *const *fs, size_t count, cf_future_t ***out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (count == 0)
        return CF_OK;
    for (size_t i = 0; i < count; i++)
        if (!fs[i])
            return cf_error_set(CF_EINVAL, "future %zu of %zu is NULL", i, count);
    size_t slots = 16;
    while (slots < 2 * count)
        slots *= 2;
    cf_future_t **set = calloc(slots, sizeof *set);
    cf_future_t **result = malloc(count * sizeof *result);
    if (!set || !result) {
        free(set);
        free(result);
        return cf_error_set(CF_ENOMEM, "out of memory waiting on %zu futures", count);
    }
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        //  Fibonacci hashing of the address (its low bits are alignment).
        uint64_t h = ((uint64_t)(uintptr_t)fs[i] >> 4) * 0x9E3779B97F4A7C15ull;
        size_t at = (size_t)(h >> 32) & (slots - 1);
        while (set[at] && set[at] != fs[i])
            at = (at + 1) & (slots - 1);
        if (!set[at]) {
            set[at] = fs[i];
            result[n++] = fs[i];
        }
    }
    free(set);
    *out = result;
    *n_out = n;
    return CF_OK;
}

static int64_t s_deadline(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : cf_clock_now_ms() + timeout_ms;
}

// ---------------------------------------------------------------------------
//  as_completed

struct cf_as_completed {
    cf_future_waiter_t *waiter;
    cf_future_t **futures;    //  distinct, borrowed
    size_t count;
    cf_future_t **ready;    //  done at creation, yielded first
    size_t ready_head;
    size_t ready_count;
    size_t pending;         //  registered and not yet yielded
    int64_t deadline_ms;    //  -1: none
};

cf_as_completed_t *cf_as_completed_new(cf_future_t *const *fs, size_t count, int timeout_ms)
{
    if (count > 0 && !fs) {
        cf_error_set(CF_EINVAL, "no futures given for a count of %zu", count);
        return NULL;
    }
    cf_as_completed_t *it = cf_calloc(1, sizeof *it);
    if (!it)
        return NULL;
    it->deadline_ms = s_deadline(timeout_ms);
    if (s_distinct(fs, count, &it->futures, &it->count) != CF_OK) {
        free(it);
        return NULL;
    }
    it->waiter = cf_future_waiter_new();
    it->ready = malloc((it->count ? it->count : 1) * sizeof *it->ready);
    if (!it->waiter || !it->ready || cf_future_waiter_reserve(it->waiter, it->count) != CF_OK) {
        cf_error_set(CF_ENOMEM, "out of memory in as_completed");
        cf_as_completed_destroy(&it);
        return NULL;
    }
    for (size_t i = 0; i < it->count; i++) {
        bool done;
        if (cf_future_waiter_add(it->waiter, it->futures[i], &done) != CF_OK) {
            cf_error_set(CF_ENOMEM, "out of memory in as_completed");
            cf_as_completed_destroy(&it);
            return NULL;
        }
        if (done)
            it->ready[it->ready_count++] = it->futures[i];
        else
            it->pending++;
    }
    return it;
}

cf_err_t cf_as_completed_next(cf_as_completed_t *it, cf_future_t **f)
{
    if (!it || !f)
        return CF_EINVAL;
    *f = NULL;
    if (it->ready_head < it->ready_count) {
        *f = it->ready[it->ready_head++];
        return CF_OK;
    }
    if (it->pending == 0)
        return CF_ESTOP;
    cf_future_t *next = cf_future_waiter_next(it->waiter, it->deadline_ms);
    if (!next)
        return CF_ETIMEDOUT;
    it->pending--;
    *f = next;
    return CF_OK;
}

size_t cf_as_completed_pending(cf_as_completed_t *it)
{
    return it ? it->pending : 0;
}

void cf_as_completed_destroy(cf_as_completed_t **pit)
{
    if (!pit || !*pit)
        return;
    cf_as_completed_t *it = *pit;
    *pit = NULL;
    if (it->waiter) {
        //  Registrations of futures that completed already moved to the
        //  waiter; removing is a no-op for them.
        for (size_t i = 0; i < it->count; i++)
            cf_future_waiter_remove(it->waiter, it->futures[i]);
        cf_future_waiter_destroy(&it->waiter);
    }
    free(it->futures);
    free(it->ready);
    free(it);
}

// ---------------------------------------------------------------------------
//  wait

static bool s_satisfied(cf_wait_mode_t mode, size_t n_done, size_t count, bool any_failed)
{
    switch (mode) {
    case CF_FIRST_COMPLETED:
        return n_done > 0 || count == 0;
    case CF_FIRST_EXCEPTION:
        return any_failed || n_done == count;
    case CF_ALL_COMPLETED:
        return n_done == count;
    }
    return true;
}

cf_err_t cf_wait(cf_future_t *const *fs, size_t count, int timeout_ms, cf_wait_mode_t mode,
                 cf_future_t **done, size_t *n_done, cf_future_t **not_done, size_t *n_not_done)
{
    if (n_done)
        *n_done = 0;
    if (n_not_done)
        *n_not_done = 0;
    if (count > 0 && !fs)
        return cf_error_set(CF_EINVAL, "no futures given for a count of %zu", count);
    if (mode != CF_FIRST_COMPLETED && mode != CF_FIRST_EXCEPTION && mode != CF_ALL_COMPLETED)
        return cf_error_set(CF_EINVAL, "unknown wait mode %d", (int)mode);
    int64_t deadline_ms = s_deadline(timeout_ms);
    cf_future_t **futures;
    size_t n;
    cf_err_t rc = s_distinct(fs, count, &futures, &n);
    if (rc != CF_OK)
        return rc;

    size_t finished = 0;
    bool any_failed = false;
    for (size_t i = 0; i < n; i++) {
        cf_future_state_t state = cf_future_state(futures[i]);
        if (state >= CF_FUTURE_FINISHED)
            finished++;
        if (state == CF_FUTURE_FAILED)
            any_failed = true;
    }
    rc = CF_OK;
    if (!s_satisfied(mode, finished, n, any_failed)) {
        cf_future_waiter_t *waiter = timeout_ms == 0 ? NULL : cf_future_waiter_new();
        if (timeout_ms == 0)
            rc = CF_ETIMEDOUT;
        else if (!waiter || cf_future_waiter_reserve(waiter, n) != CF_OK) {
            rc = cf_error_set(CF_ENOMEM, "out of memory waiting on %zu futures", n);
            cf_future_waiter_destroy(&waiter);
        }
        else {
            //  Count again while registering: a future may finish between
            //  the first pass and its registration.
            finished = 0;
            any_failed = false;
            size_t registered = 0;
            for (; registered < n; registered++) {
                bool was_done;
                if (cf_future_waiter_add(waiter, futures[registered], &was_done) != CF_OK) {
                    rc = cf_error_set(CF_ENOMEM, "out of memory waiting on %zu futures", n);
                    break;
                }
                if (was_done) {
                    finished++;
                    if (cf_future_state(futures[registered]) == CF_FUTURE_FAILED)
                        any_failed = true;
                }
            }
            while (rc == CF_OK && !s_satisfied(mode, finished, n, any_failed)) {
                cf_future_t *f = cf_future_waiter_next(waiter, deadline_ms);
                if (!f) {
                    rc = CF_ETIMEDOUT;
                    break;
                }
                finished++;
                if (cf_future_state(f) == CF_FUTURE_FAILED)
                    any_failed = true;
            }
            for (size_t i = 0; i < registered; i++)
                cf_future_waiter_remove(waiter, futures[i]);
            cf_future_waiter_destroy(&waiter);
        }
    }
    //  The sets are a snapshot taken now, as Python builds them on return.
    size_t k_done = 0, k_not_done = 0;
    for (size_t i = 0; i < n; i++) {
        if (cf_future_done(futures[i])) {
            if (done)
                done[k_done] = futures[i];
            k_done++;
        }
        else {
            if (not_done)
                not_done[k_not_done] = futures[i];
            k_not_done++;
        }
    }
    if (n_done)
        *n_done = k_done;
    if (n_not_done)
        *n_not_done = k_not_done;
    free(futures);
    return rc;
}
