//  wait and as_completed over futures resolved by the test itself (now, or
//  from a helper thread in a fixed order), so no timing is asserted: a
//  timeout is only ever expected when nothing can complete.

#include "cf_future.h"
#include "cf_unitkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static const uint8_t s_42[] = { 0x2a };

#define N 4

static void s_make(cf_future_t **fs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fs[i] = cf_future_new("fn", 2);
        assert_non_null(fs[i]);
    }
}

//  A helper thread resolving futures in order: actions[i] is 'r' (result),
//  'e' (error) or 'c' (cancel) for fs[i]; '-' skips.
typedef struct {
    cf_future_t **fs;
    const char *actions;
    pthread_t thread;
} s_resolver_t;

static void *s_resolver_main(void *arg)
{
    s_resolver_t *r = arg;
    for (size_t i = 0; r->actions[i]; i++) {
        switch (r->actions[i]) {
        case 'r':
            cf_future_set_result(r->fs[i], s_42, 1);
            break;
        case 'e':
            cf_future_set_error(r->fs[i], "ValueError", "boom", "", 0);
            break;
        case 'c':
            cf_future_set_cancelled(r->fs[i]);
            break;
        default:
            break;
        }
    }
    return NULL;
}

static void s_resolve_later(s_resolver_t *r, cf_future_t **fs, const char *actions)
{
    r->fs = fs;
    r->actions = actions;
    assert_int_equal(pthread_create(&r->thread, NULL, s_resolver_main, r), 0);
}

static bool s_contains(cf_future_t **set, size_t n, cf_future_t *f)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == f)
            return true;
    return false;
}

// ---------------------------------------------------------------------------
//  wait

static void test_first_completed_returns_with_one_done(void **state)
{
    (void)state;
    cf_future_t *fs[N];
    s_make(fs, N);
    cf_future_set_result(fs[2], s_42, 1);
    cf_future_t *done[N], *not_done[N];
    size_t n_done = 99, n_not_done = 99;
    assert_int_equal(cf_wait(fs, N, -1, CF_FIRST_COMPLETED, done, &n_done, not_done, &n_not_done),
                     CF_OK);
    assert_int_equal(n_done, 1);
    assert_ptr_equal(done[0], fs[2]);
    assert_int_equal(n_not_done, 3);
    assert_ptr_equal(not_done[0], fs[0]);
    assert_ptr_equal(not_done[1], fs[1]);
    assert_ptr_equal(not_done[2], fs[3]);
    cf_unitkit_release_all(fs, N);
}

static void test_first_completed_wakes_on_a_completion(void **state)
{
    (void)state;
    cf_future_t *fs[N];
    s_make(fs, N);
    s_resolver_t r;
    s_resolve_later(&r, fs, "-c");
    size_t n_done = 0;
    assert_int_equal(cf_wait(fs, N, -1, CF_FIRST_COMPLETED, NULL, &n_done, NULL, NULL), CF_OK);
    assert_true(n_done >= 1);
    assert_true(cf_future_cancelled(fs[1]));
    pthread_join(r.thread, NULL);
    cf_unitkit_release_all(fs, N);
}

static void test_wait_times_out_with_sets_filled(void **state)
{
    (void)state;
    cf_future_t *fs[N];
    s_make(fs, N);
    cf_future_t *done[N], *not_done[N];
    size_t n_done = 99, n_not_done = 99;
    assert_int_equal(cf_wait(fs, N, 0, CF_FIRST_COMPLETED, done, &n_done, not_done, &n_not_done),
                     CF_ETIMEDOUT);
    assert_int_equal(n_done, 0);
    assert_int_equal(n_not_done, N);
    cf_future_set_result(fs[0], s_42, 1);
    assert_int_equal(cf_wait(fs, N, 20, CF_ALL_COMPLETED, done, &n_done, not_done, &n_not_done),
                     CF_ETIMEDOUT);
    assert_int_equal(n_done, 1);
    assert_ptr_equal(done[0], fs[0]);
    assert_int_equal(n_not_done, 3);
    cf_unitkit_release_all(fs, N);
}

static void test_first_exception_returns_on_a_failure(void **state)
{
    (void)state;
    cf_future_t *fs[N];
    s_make(fs, N);
    s_resolver_t r;
    s_resolve_later(&r, fs, "r-e");
    cf_future_t *done[N];
    size_t n_done = 0, n_not_done = 0;
    assert_int_equal(cf_wait(fs, N, -1, CF_FIRST_EXCEPTION, done, &n_done, NULL, &n_not_done),
                     CF_OK);
    pthread_join(r.thread, NULL);
    assert_true(s_contains(done, n_done, fs[2]));
    assert_true(cf_future_error(fs[2]) != NULL);
    assert_int_equal(n_done + n_not_done, N);
    cf_unitkit_release_all(fs, N);
}

static void test_first_exception_ignores_cancelled_and_waits_for_all(void **state)
{
    (void)state;
    cf_future_t *fs[N];
    s_make(fs, N);
    cf_future_set_cancelled(fs[0]);
    cf_future_set_result(fs[1], s_42, 1);
    size_t n_done = 0, n_not_done = 0;
    //  A cancelled future is not an exception: still waiting on two.
    assert_int_equal(cf_wait(fs, N, 10, CF_FIRST_EXCEPTION, NULL, &n_done, NULL, &n_not_done),
                     CF_ETIMEDOUT);
    assert_int_equal(n_done, 2);
    assert_int_equal(n_not_done, 2);
    s_resolver_t r;
    s_resolve_later(&r, fs, "--rr");
    assert_int_equal(cf_wait(fs, N, -1, CF_FIRST_EXCEPTION, NULL, &n_done, NULL, &n_not_done),
                     CF_OK);
    pthread_join(r.thread, NULL);
    assert_int_equal(n_done, N);
    assert_int_equal(n_not_done, 0);
    cf_unitkit_release_all(fs, N);
}

static void test_all_completed_waits_for_every_future(void **state)
{
    (void)state;
    cf_future_t *fs[N];
    s_make(fs, N);
    s_resolver_t r;
    s_resolve_later(&r, fs, "recr");
    cf_future_t *done[N];
    size_t n_done = 0, n_not_done = 99;
    assert_int_equal(cf_wait(fs, N, -1, CF_ALL_COMPLETED, done, &n_done, NULL, &n_not_done), CF_OK);
    pthread_join(r.thread, NULL);
    assert_int_equal(n_done, N);
    assert_int_equal(n_not_done, 0);
    for (size_t i = 0; i < N; i++)
        assert_ptr_equal(done[i], fs[i]);
    cf_unitkit_release_all(fs, N);
}

static void test_wait_treats_duplicates_as_one(void **state)
{
    (void)state;
    cf_future_t *fs[2];
    s_make(fs, 2);
    cf_future_set_result(fs[1], s_42, 1);
    cf_future_t *input[5] = { fs[1], fs[0], fs[1], fs[0], fs[1] };
    cf_future_t *done[5], *not_done[5];
    size_t n_done, n_not_done;
    assert_int_equal(cf_wait(input, 5, 0, CF_ALL_COMPLETED, done, &n_done, not_done, &n_not_done),
                     CF_ETIMEDOUT);
    assert_int_equal(n_done, 1);
    assert_ptr_equal(done[0], fs[1]);
    assert_int_equal(n_not_done, 1);
    assert_ptr_equal(not_done[0], fs[0]);
    cf_unitkit_release_all(fs, 2);
}

static void test_wait_rejects_bad_arguments(void **state)
{
    (void)state;
    size_t n_done = 7;
    assert_int_equal(cf_wait(NULL, 2, 0, CF_ALL_COMPLETED, NULL, &n_done, NULL, NULL), CF_EINVAL);
    assert_int_equal(n_done, 0);
    cf_future_t *fs[2] = { NULL, NULL };
    assert_int_equal(cf_wait(fs, 2, 0, CF_ALL_COMPLETED, NULL, NULL, NULL, NULL), CF_EINVAL);
    s_make(fs, 1);
    assert_int_equal(cf_wait(fs, 1, 0, (cf_wait_mode_t)42, NULL, NULL, NULL, NULL), CF_EINVAL);
    //  Nothing to wait for is always satisfied.
    assert_int_equal(cf_wait(fs, 0, -1, CF_ALL_COMPLETED, NULL, &n_done, NULL, NULL), CF_OK);
    assert_int_equal(cf_wait(NULL, 0, -1, CF_FIRST_COMPLETED, NULL, NULL, NULL, NULL), CF_OK);
    cf_unitkit_release_all(fs, 1);
}

// ---------------------------------------------------------------------------
//  as_completed

static void test_as_completed_yields_done_first_then_in_completion_order(void **state)
{
    (void)state;
    cf_future_t *fs[N];
    s_make(fs, N);
    cf_future_set_result(fs[3], s_42, 1);
    cf_future_set_error(fs[1], "E", "m", "", 0);
    cf_as_completed_t *it = cf_as_completed_new(fs, N, -1);
    assert_non_null(it);
    assert_int_equal(cf_as_completed_pending(it), 2);
    cf_future_t *f = NULL;
    //  Done ones first, in input order.
    assert_int_equal(cf_as_completed_next(it, &f), CF_OK);
    assert_ptr_equal(f, fs[1]);
    assert_int_equal(cf_as_completed_next(it, &f), CF_OK);
    assert_ptr_equal(f, fs[3]);
    s_resolver_t r;
    cf_future_t *order[2] = { fs[2], fs[0] };
    s_resolve_later(&r, order, "rc");
    assert_int_equal(cf_as_completed_next(it, &f), CF_OK);
    assert_ptr_equal(f, fs[2]);
    assert_int_equal(cf_as_completed_next(it, &f), CF_OK);
    assert_ptr_equal(f, fs[0]);
    assert_int_equal(cf_as_completed_pending(it), 0);
    assert_int_equal(cf_as_completed_next(it, &f), CF_ESTOP);
    assert_null(f);
    assert_int_equal(cf_as_completed_next(it, &f), CF_ESTOP);
    pthread_join(r.thread, NULL);
    cf_as_completed_destroy(&it);
    assert_null(it);
    cf_as_completed_destroy(&it);
    cf_unitkit_release_all(fs, N);
}

static void test_as_completed_yields_duplicates_once(void **state)
{
    (void)state;
    cf_future_t *fs[2];
    s_make(fs, 2);
    cf_future_set_result(fs[0], s_42, 1);
    cf_future_t *input[4] = { fs[0], fs[1], fs[0], fs[1] };
    cf_as_completed_t *it = cf_as_completed_new(input, 4, -1);
    assert_non_null(it);
    cf_future_set_result(fs[1], s_42, 1);
    cf_future_t *f;
    assert_int_equal(cf_as_completed_next(it, &f), CF_OK);
    assert_ptr_equal(f, fs[0]);
    assert_int_equal(cf_as_completed_next(it, &f), CF_OK);
    assert_ptr_equal(f, fs[1]);
    assert_int_equal(cf_as_completed_next(it, &f), CF_ESTOP);
    cf_as_completed_destroy(&it);
    cf_unitkit_release_all(fs, 2);
}

static void test_as_completed_times_out_and_counts_pending(void **state)
{
    (void)state;
    cf_future_t *fs[N];
    s_make(fs, N);
    cf_future_set_result(fs[0], s_42, 1);
    cf_as_completed_t *it = cf_as_completed_new(fs, N, 20);
    assert_non_null(it);
    cf_future_t *f;
    assert_int_equal(cf_as_completed_next(it, &f), CF_OK);
    assert_ptr_equal(f, fs[0]);
    assert_int_equal(cf_as_completed_next(it, &f), CF_ETIMEDOUT);
    assert_null(f);
    assert_int_equal(cf_as_completed_pending(it), 3);
    //  Destroying unregisters: completing afterwards touches no freed waiter.
    cf_as_completed_destroy(&it);
    cf_future_set_result(fs[1], s_42, 1);
    cf_unitkit_release_all(fs, N);
}

static void test_as_completed_over_nothing_stops(void **state)
{
    (void)state;
    cf_as_completed_t *it = cf_as_completed_new(NULL, 0, -1);
    assert_non_null(it);
    cf_future_t *f;
    assert_int_equal(cf_as_completed_next(it, &f), CF_ESTOP);
    assert_int_equal(cf_as_completed_next(NULL, &f), CF_EINVAL);
    cf_as_completed_destroy(&it);
    assert_null(cf_as_completed_new(NULL, 3, -1));
    assert_int_equal(cf_last_err(), CF_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_completed_returns_with_one_done),
        cmocka_unit_test(test_first_completed_wakes_on_a_completion),
        cmocka_unit_test(test_wait_times_out_with_sets_filled),
        cmocka_unit_test(test_first_exception_returns_on_a_failure),
        cmocka_unit_test(test_first_exception_ignores_cancelled_and_waits_for_all),
        cmocka_unit_test(test_all_completed_waits_for_every_future),
        cmocka_unit_test(test_wait_treats_duplicates_as_one),
        cmocka_unit_test(test_wait_rejects_bad_arguments),
        cmocka_unit_test(test_as_completed_yields_done_first_then_in_completion_order),
        cmocka_unit_test(test_as_completed_yields_duplicates_once),
        cmocka_unit_test(test_as_completed_times_out_and_counts_pending),
        cmocka_unit_test(test_as_completed_over_nothing_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
