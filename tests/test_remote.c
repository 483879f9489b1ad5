//  A real cluster on loopback: one cf-broker, cf-workers loaded with the
//  example task library, clients through cf_executor_connect. Results,
//  errors and values must cross two process boundaries intact.

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

static void test_is_prime_runs_on_two_workers(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_proc_t *worker_a = cf_testkit_start_worker(kit, cf_testkit_workers(broker),
                                                          "--threads", "1", NULL);
    cf_testkit_proc_t *worker_b = cf_testkit_start_worker(kit, cf_testkit_workers(broker),
                                                          "--threads", "1", NULL);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), 0);

    //  Answers checked independently (Miller-Rabin in Python).
    static const struct {
        uint64_t n;
        bool prime;
    } cases[] = {
        { 0, false },
        { 1, false },
        { 2, true },
        { 3, true },
        { 4, false },
        { 97, true },
        { 7919, true },
        { 7921, false },
        { 112272535095293ULL, true },
        { 112582705942171ULL, true },
        { 1099726899285419ULL, false },
        { 11111111111111111ULL, false },
        { 11111111111111113ULL, false },
        { 9999999999999999ULL, false },
        { 999999999999999989ULL, true },
        { 1000000000000000001ULL, false },
    };
    enum { CASES = sizeof cases / sizeof cases[0] };
    cf_future_t *futures[CASES];
    for (size_t i = 0; i < CASES; i++) {
        futures[i] = cf_submit(executor, "is_prime", "U", cases[i].n);
        assert_non_null(futures[i]);
    }
    for (size_t i = 0; i < CASES; i++) {
        cf_testkit_expect_bool(kit, futures[i], cases[i].prime);
        cf_future_release(&futures[i]);
    }

    //  Both workers take part: with one thread each and eight tasks of
    //  300 ms queued at once, neither can hold them all.
    enum { SLOW = 8 };
    cf_future_t *slow[SLOW];
    for (size_t i = 0; i < SLOW; i++) {
        slow[i] = cf_submit(executor, "sleep_pid", "i", 300);
        assert_non_null(slow[i]);
    }
    int ran_on_a = 0, ran_on_b = 0;
    for (size_t i = 0; i < SLOW; i++) {
        cf_testkit_expect_done(kit, slow[i]);
        int64_t pid = 0;
        assert_int_equal(cf_future_int(slow[i], 0, &pid), CF_OK);
        if (pid == cf_testkit_pid(worker_a))
            ran_on_a++;
        else if (pid == cf_testkit_pid(worker_b))
            ran_on_b++;
        else
            fail_msg("task ran in pid %lld, which is neither worker", (long long)pid);
        cf_future_release(&slow[i]);
    }
    assert_int_equal(ran_on_a + ran_on_b, SLOW);
    assert_true(ran_on_a > 0);
    assert_true(ran_on_b > 0);
    cf_executor_destroy(&executor);
}

static void test_map_keeps_input_order_across_workers(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "3", NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "2", NULL);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), 0);

    enum { INPUTS = 200 };
    int64_t inputs[INPUTS];
    for (int i = 0; i < INPUTS; i++)
        inputs[i] = i - 50;
    //  One task per input, then chunks of 7 (through cf.chunk on workers).
    for (size_t chunksize = 1; chunksize <= 7; chunksize += 6) {
        cf_map_opts_t opts = { .chunksize = chunksize };
        cf_map_t *map = cf_map_ints(executor, "square", inputs, INPUTS, &opts);
        assert_non_null(map);
        const cf_value_t *value;
        size_t count = 0;
        cf_err_t rc;
        while ((rc = cf_map_next(map, &value)) == CF_OK) {
            int64_t got = 0;
            assert_int_equal(cf_value_get_int(value, &got), CF_OK);
            assert_int_equal(cf_map_index(map), count);
            assert_int_equal(got, inputs[count] * inputs[count]);
            count++;
        }
        assert_int_equal(rc, CF_ESTOP);
        assert_int_equal(count, INPUTS);
        cf_map_destroy(&map);
    }
    cf_executor_destroy(&executor);
}

static void test_a_task_error_keeps_its_type_message_and_origin(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_proc_t *worker = cf_testkit_start_worker(kit, cf_testkit_workers(broker), NULL);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), 0);

    cf_future_t *plain = cf_submit(executor, "fail", "s", "bad value 42");
    cf_future_t *typed = cf_submit(executor, "fail", "ss", "no such key: 'x'", "KeyError");
    cf_future_t *unicode = cf_submit(executor, "fail", "s", "na\xc3\xafve \xe2\x9c\x93 failed");
    cf_future_t *fine = cf_submit(executor, "add", "ii", 2, 3);

    const cf_task_error_t *error = cf_testkit_expect_error(kit, plain, "ValueError", NULL);
    assert_string_equal(error->message, "bad value 42");
    assert_string_equal(error->function, "fail");
    assert_int_equal(error->pid, cf_testkit_pid(worker));
    assert_non_null(error->host);

    error = cf_testkit_expect_error(kit, typed, "KeyError", NULL);
    assert_string_equal(error->message, "no such key: 'x'");

    error = cf_testkit_expect_error(kit, unicode, "ValueError", NULL);
    assert_string_equal(error->message, "na\xc3\xafve \xe2\x9c\x93 failed");

    //  A failure is the failing task's alone.
    cf_testkit_expect_int(kit, fine, 5);
    assert_null(cf_future_error(fine));

    cf_future_release(&plain);
    cf_future_release(&typed);
    cf_future_release(&unicode);
    cf_future_release(&fine);
    cf_executor_destroy(&executor);
}

//  Strict input, clean output: a function name that is not UTF-8 never
//  travels (the client fails it alone), and an error made of bytes that
//  are not UTF-8 arrives as UTF-8, U+FFFD in their place.
static void test_text_that_is_not_utf8_fails_alone_or_arrives_replaced(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), NULL);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), 0);

    cf_future_t *bad = cf_submit(executor,
                                 "squ\xff"
                                 "are",
                                 "i", 3);
    cf_future_t *good = cf_submit(executor, "square", "i", 3);
    cf_future_t *raised = cf_submit(executor, "fail", "ss", "bad \xff byte", "Odd\xc3");
    cf_testkit_expect_error(kit, bad, "ProtocolError", "cannot encode");
    cf_testkit_expect_int(kit, good, 9);
    const cf_task_error_t *error = cf_testkit_expect_error(kit, raised, "Odd\xef\xbf\xbd",
                                                           "bad \xef\xbf\xbd byte");
    assert_string_equal(error->message, "bad \xef\xbf\xbd byte");
    cf_future_release(&bad);
    cf_future_release(&good);
    cf_future_release(&raised);
    cf_executor_destroy(&executor);
}

static void test_wrong_argument_types_fail_with_type_error(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), NULL);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), 0);

    cf_future_t *text = cf_submit(executor, "is_prime", "s", "abc");
    cf_future_t *none = cf_submit(executor, "is_prime", "");
    cf_future_t *negative = cf_submit(executor, "is_prime", "i", -7);
    cf_future_t *floating = cf_submit(executor, "is_prime", "d", 7.5);
    cf_future_t *mixed = cf_submit(executor, "add", "si", "a", 1);
    cf_future_t *right = cf_submit(executor, "is_prime", "i", 7);

    const cf_task_error_t *error = cf_testkit_expect_error(kit, text, "TypeError", NULL);
    assert_string_equal(error->function, "is_prime");
    assert_true(strlen(error->message) > 0);
    cf_testkit_expect_error(kit, none, "TypeError", NULL);
    cf_testkit_expect_error(kit, negative, "TypeError", NULL);
    cf_testkit_expect_error(kit, floating, "TypeError", NULL);
    cf_testkit_expect_error(kit, mixed, "TypeError", NULL);
    cf_testkit_expect_bool(kit, right, true);

    cf_future_release(&text);
    cf_future_release(&none);
    cf_future_release(&negative);
    cf_future_release(&floating);
    cf_future_release(&mixed);
    cf_future_release(&right);
    cf_executor_destroy(&executor);
}

static void test_values_cross_the_cluster_intact(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), NULL);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), 0);

    static const uint8_t bytes[] = { 0, 1, 2, 0xff, 0 };
    cf_future_t *f = cf_submit(executor, "echo", "[Ls{sd}bny]", (int64_t)INT64_MIN, "two", "three",
                               3.5, true, bytes, sizeof bytes);
    cf_testkit_expect_done(kit, f);
    const cf_value_t *value = NULL;
    assert_int_equal(cf_future_result(f, 0, &value), CF_OK);
    assert_int_equal(cf_value_type(value), CF_TYPE_ARRAY);
    assert_int_equal(cf_value_len(value), 6);

    int64_t i = 0;
    assert_int_equal(cf_value_get_int(cf_value_at(value, 0), &i), CF_OK);
    assert_true(i == INT64_MIN);
    assert_string_equal(cf_value_str(cf_value_at(value, 1), NULL), "two");
    double d = 0;
    assert_int_equal(cf_value_get_double(cf_value_get(cf_value_at(value, 2), "three"), &d), CF_OK);
    assert_true(d == 3.5);
    bool b = false;
    assert_int_equal(cf_value_get_bool(cf_value_at(value, 3), &b), CF_OK);
    assert_true(b);
    assert_int_equal(cf_value_type(cf_value_at(value, 4)), CF_TYPE_NIL);
    size_t len = 0;
    const void *bin = cf_value_bin(cf_value_at(value, 5), &len);
    assert_non_null(bin);
    assert_int_equal(len, sizeof bytes);
    assert_memory_equal(bin, bytes, sizeof bytes);
    cf_future_release(&f);

    //  A large value both ways (1 MiB of string).
    size_t big_len = 1024 * 1024;
    char *big = malloc(big_len + 1);
    assert_non_null(big);
    for (size_t k = 0; k < big_len; k++)
        big[k] = (char)('a' + k % 26);
    big[big_len] = '\0';
    f = cf_submit(executor, "echo", "s", big);
    cf_testkit_expect_done(kit, f);
    const char *echoed = NULL;
    assert_int_equal(cf_future_str(f, 0, &echoed), CF_OK);
    assert_int_equal(strlen(echoed), big_len);
    assert_memory_equal(echoed, big, big_len);
    cf_future_release(&f);
    free(big);
    cf_executor_destroy(&executor);
}

static void test_two_clients_share_the_workers(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "2", NULL);
    cf_executor_t *first = cf_testkit_connect(cf_testkit_clients(broker), 0);
    cf_executor_t *second = cf_testkit_connect(cf_testkit_clients(broker), 0);

    enum { TASKS = 50 };
    cf_future_t *a[TASKS], *b[TASKS];
    for (int i = 0; i < TASKS; i++) {
        a[i] = cf_submit(first, "add", "ii", i, 1000);
        b[i] = cf_submit(second, "add", "ii", i, 2000);
        assert_non_null(a[i]);
        assert_non_null(b[i]);
    }
    //  Each client gets its own results, none of the other's.
    for (int i = 0; i < TASKS; i++) {
        cf_testkit_expect_int(kit, a[i], i + 1000);
        cf_testkit_expect_int(kit, b[i], i + 2000);
        cf_future_release(&a[i]);
        cf_future_release(&b[i]);
    }
    cf_executor_destroy(&first);
    cf_executor_destroy(&second);
}

//  cf-worker prefetches once it measured short tasks: tasks then wait in
//  its local queue. They have not started: running() is false for them,
//  cancel() returns true and reaches into the worker's queue, and the
//  worker never runs them (the broker counts what workers completed).
static void test_cancel_reaches_into_a_workers_prefetch_queue(void **state)
{
    cf_testkit_t *kit = *state;
    enum { WARM = 3000, N = 30, THREADS = 2 };
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "2", NULL);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), 0);
    assert_non_null(executor);
    static int64_t inputs[WARM];
    cf_map_t *map = cf_map_ints(executor, "square", inputs, WARM, NULL);
    assert_non_null(map);
    const cf_value_t *value;
    while (cf_map_next(map, &value) == CF_OK)
        ;
    cf_map_destroy(&map);

    cf_future_t *fs[N];
    for (int i = 0; i < N; i++) {
        fs[i] = cf_submit(executor, "sleep_ms", "i", 300);
        assert_non_null(fs[i]);
    }
    int64_t deadline = cf_testkit_now_ms() + 30000;
    int running = 0;
    while (running == 0 && cf_testkit_now_ms() < deadline) {
        for (int i = 0; i < N; i++)
            running += cf_future_running(fs[i]);
        if (running == 0)
            cf_testkit_nap_ms(1);
    }
    assert_in_range(running, 1, THREADS);
    int cancelled = 0;
    for (int i = N - 1; i >= 0; i--)
        cancelled += cf_future_cancel(fs[i]);
    assert_int_equal(cf_executor_shutdown(executor, true, false), CF_OK);
    int ran = 0;
    for (int i = 0; i < N; i++) {
        ran += !cf_future_cancelled(fs[i]);
        cf_future_release(&fs[i]);
    }
    assert_int_equal(ran + cancelled, N);
    assert_true(ran <= 3 * THREADS);
    uint64_t completed = 0;
    assert_true(cf_testkit_broker_stat(cf_testkit_clients(broker), "completed", 5000, &completed));
    assert_int_equal(completed, WARM + (uint64_t)ran);
    cf_executor_destroy(&executor);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_is_prime_runs_on_two_workers, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_map_keeps_input_order_across_workers, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_task_error_keeps_its_type_message_and_origin,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_text_that_is_not_utf8_fails_alone_or_arrives_replaced,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_argument_types_fail_with_type_error,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_values_cross_the_cluster_intact, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_reaches_into_a_workers_prefetch_queue,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_two_clients_share_the_workers, cf_testkit_setup,
                                        cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
