//  map and argument lists, on CF_THREADS (the chunk path is the same on
//  every kind: "cf.chunk" through the registry).
//
//  Laziness is checked by counting how often the source was asked for an
//  input; nothing depends on timing except a timeout that a task blocked on
//  a closed gate cannot beat.

#include "cfutures.h"

#include "cf_unitkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

//  A hang guard for what must happen, not a timing assertion.
#define S_WAIT_MS 20000

static void twice(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    //  Early inputs finish last, so order comes from map, not from luck.
    usleep((useconds_t)((16 - x % 16) * 50));
    cf_return_int(call, 2 * x);
}
CF_TASK(twice);

static void fail_at_5(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    if (x == 5)
        cf_raise(call, "ValueError", "bad %lld", (long long)x);
    else
        cf_return_int(call, x);
}
CF_TASK(fail_at_5);

static void sum2(cf_call_t *call)
{
    cf_return_int(call, cf_arg_int(call, 0) + cf_arg_int(call, 1));
}
CF_TASK(sum2);

static void length(cf_call_t *call)
{
    cf_return_int(call, (int64_t)strlen(cf_arg_str(call, 0)));
}
CF_TASK(length);

//  Waits at the gate the test opens (tests/cf_unitkit.h).
static void block(cf_call_t *call)
{
    (void)call;
    cf_unitkit_gate_pass();
}
CF_TASK(block);

static void echo_bytes(cf_call_t *call)
{
    size_t len = 0;
    const void *data = cf_arg_bytes(call, 0, &len);
    cf_return_bytes(call, data, len);
}
CF_TASK(echo_bytes);

static cf_executor_t *s_threads(int max_workers)
{
    cf_executor_t *ex = cf_executor_new(CF_THREADS, &(cf_options_t){ .max_workers = max_workers });
    assert_non_null(ex);
    return ex;
}

static const int64_t s_zero_to_nine[10] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 };

//  A source counting how often it was asked; endless unless limit > 0.
typedef struct {
    size_t asked;
    size_t limit;
    size_t fail_at;    //  return -1 here (0: never)
} s_counter_t;

static int s_counting_source(void *state, size_t index, cf_args_t *args)
{
    s_counter_t *counter = state;
    counter->asked++;
    if (counter->limit && index >= counter->limit)
        return 0;
    if (counter->fail_at && index == counter->fail_at)
        return -1;
    return cf_args_add_int(args, (int64_t)index) == CF_OK ? 1 : -1;
}

//  A map of fn over the counting source; one that cannot start fails the
//  test.
static cf_map_t *s_map_counted(cf_executor_t *ex, const char *fn, s_counter_t *counter,
                               const cf_map_opts_t *opts)
{
    cf_map_t *map = cf_map_new(ex, fn, s_counting_source, counter, opts);
    assert_non_null(map);
    return map;
}

static void s_expect_ints(cf_map_t *map, size_t count, int64_t factor)
{
    for (size_t i = 0; i < count; i++) {
        const cf_value_t *value = NULL;
        assert_int_equal(cf_map_next(map, &value), CF_OK);
        int64_t got = -1;
        assert_int_equal(cf_value_get_int(value, &got), CF_OK);
        assert_int_equal(got, factor * (int64_t)i);
        assert_int_equal(cf_map_index(map), i);
    }
}

//  Input i: a bytes argument of one of these sizes, around the task's
//  inline limit and the size from which arguments are adopted, not copied.
static const size_t s_byte_sizes[] = { 0, 100, 250, 300, 5000, 200000 };
#define S_BYTE_INPUTS 12

static void s_fill_bytes(uint8_t *data, size_t len, size_t index)
{
    for (size_t j = 0; j < len; j++)
        data[j] = (uint8_t)(index * 31 + j);
}

static int s_bytes_source(void *state, size_t index, cf_args_t *args)
{
    uint8_t *buffer = state;
    if (index >= S_BYTE_INPUTS)
        return 0;
    size_t len = s_byte_sizes[index % 6];
    s_fill_bytes(buffer, len, index);
    cf_err_t rc = cf_args_add_bytes(args, buffer, len);
    //  Overwritten at once: the map must have taken its own copy.
    memset(buffer, 0xee, len);
    return rc == CF_OK ? 1 : -1;
}

// ---------------------------------------------------------------------------

static void test_results_come_in_submission_order(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(4);
    int64_t inputs[100];
    for (int i = 0; i < 100; i++)
        inputs[i] = i;
    cf_map_t *map = cf_map_ints(ex, "twice", inputs, 100, &(cf_map_opts_t){ .window = 8 });
    assert_non_null(map);
    s_expect_ints(map, 100, 2);
    const cf_value_t *value = (const cf_value_t *)&value;
    assert_int_equal(cf_map_next(map, &value), CF_ESTOP);
    assert_null(value);
    assert_int_equal(cf_map_next(map, &value), CF_ESTOP);
    assert_null(cf_map_error(map));
    cf_map_destroy(&map);
    assert_null(map);
    cf_map_destroy(&map);
    cf_executor_destroy(&ex);
}

static void test_inputs_are_pulled_only_as_the_window_allows(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(2);
    s_counter_t counter = { 0 };
    cf_map_t *map = s_map_counted(ex, "twice", &counter, &(cf_map_opts_t){ .window = 4 });
    assert_true(counter.asked <= 4);
    s_expect_ints(map, 3, 2);
    //  An endless source, three results taken: at most window + 3 asked.
    assert_true(counter.asked >= 3);
    assert_true(counter.asked <= 4 + 3);
    cf_map_destroy(&map);
    cf_executor_destroy(&ex);
}

static void test_an_endless_source_runs_in_bounded_memory(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(2);
    s_counter_t counter = { 0 };
    cf_map_t *map = s_map_counted(ex, "twice", &counter,
                                  &(cf_map_opts_t){ .window = 8, .chunksize = 10 });
    s_expect_ints(map, 2000, 2);
    //  In flight at most a window of chunks beyond what was consumed.
    assert_true(counter.asked <= 2000 + (8 + 1) * 10);
    cf_map_destroy(&map);
    cf_executor_destroy(&ex);
}

static void test_a_bad_argument_in_a_chunk_fails_its_own_input(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(2);
    s_counter_t counter = { 0 };
    //  sum2 wants two arguments and gets one: a TypeError inside the chunk.
    cf_map_t *map = s_map_counted(ex, "sum2", &counter,
                                  &(cf_map_opts_t){ .window = 8, .chunksize = 10 });
    const cf_value_t *value;
    assert_int_equal(cf_map_next(map, &value), CF_ETASK);
    assert_int_equal(cf_map_index(map), 0);
    assert_string_equal(cf_map_error(map)->type, "TypeError");
    assert_string_equal(cf_map_error(map)->function, "sum2");
    cf_map_destroy(&map);
    cf_executor_destroy(&ex);
}

static void test_chunks_carry_several_inputs_each(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(2);
    cf_map_t *map = cf_map_ints(ex, "twice", s_zero_to_nine, 10,
                                &(cf_map_opts_t){ .chunksize = 3 });
    assert_non_null(map);
    s_expect_ints(map, 10, 2);
    assert_int_equal(cf_map_next(map, NULL), CF_ESTOP);
    cf_map_destroy(&map);
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    //  3 + 3 + 3 + 1 inputs: four tasks.
    assert_int_equal(cf_executor_progress(ex).submitted, 4);
    cf_executor_destroy(&ex);
}

//  Every size of bytes argument comes back whole, alone or in chunks.
static void test_bytes_inputs_of_every_size_come_back_whole(void **state)
{
    (void)state;
    uint8_t *buffer = malloc(200000);
    uint8_t *expected = malloc(200000);
    assert_non_null(buffer);
    assert_non_null(expected);
    cf_executor_t *ex = s_threads(2);
    for (size_t chunksize = 1; chunksize <= 4; chunksize += 3) {
        cf_map_t *map = cf_map_new(ex, "echo_bytes", s_bytes_source, buffer,
                                   &(cf_map_opts_t){ .window = 4, .chunksize = chunksize });
        assert_non_null(map);
        for (size_t i = 0; i < S_BYTE_INPUTS; i++) {
            const cf_value_t *value = NULL;
            assert_int_equal(cf_map_next(map, &value), CF_OK);
            size_t len = 0;
            const void *bin = cf_value_bin(value, &len);
            assert_int_equal(len, s_byte_sizes[i % 6]);
            s_fill_bytes(expected, len, i);
            if (len)
                assert_memory_equal(bin, expected, len);
        }
        assert_int_equal(cf_map_next(map, NULL), CF_ESTOP);
        cf_map_destroy(&map);
    }
    cf_executor_destroy(&ex);
    free(buffer);
    free(expected);
}

static void s_check_first_error_stops(size_t chunksize)
{
    cf_executor_t *ex = s_threads(3);
    cf_map_t *map = cf_map_ints(ex, "fail_at_5", s_zero_to_nine, 10,
                                &(cf_map_opts_t){ .chunksize = chunksize });
    assert_non_null(map);
    s_expect_ints(map, 5, 1);
    const cf_value_t *value;
    assert_int_equal(cf_map_next(map, &value), CF_ETASK);
    assert_null(value);
    assert_int_equal(cf_map_index(map), 5);
    const cf_task_error_t *error = cf_map_error(map);
    assert_non_null(error);
    assert_string_equal(error->type, "ValueError");
    assert_string_equal(error->message, "bad 5");
    assert_string_equal(error->function, "fail_at_5");
    assert_int_equal(cf_map_next(map, &value), CF_ESTOP);
    assert_non_null(cf_map_error(map));    //  still readable
    cf_map_destroy(&map);
    cf_executor_destroy(&ex);
}

static void test_first_failing_input_stops_iteration(void **state)
{
    (void)state;
    s_check_first_error_stops(1);
}

static void test_first_failing_input_in_a_chunk_stops_at_its_index(void **state)
{
    (void)state;
    s_check_first_error_stops(4);
}

static void test_timeout_covers_the_whole_iteration(void **state)
{
    (void)state;
    cf_unitkit_gate_close();
    cf_executor_t *ex = s_threads(1);
    s_counter_t counter = { .limit = 5 };
    cf_map_t *map = s_map_counted(ex, "block", &counter,
                                  &(cf_map_opts_t){ .timeout_ms = 20, .window = 4 });
    //  Wait for the first block to run, so the cancellations below are exact.
    cf_unitkit_expect_at_gate(1, S_WAIT_MS);
    const cf_value_t *value;
    assert_int_equal(cf_map_next(map, &value), CF_ETIMEDOUT);
    assert_int_equal(cf_map_index(map), 0);
    assert_null(cf_map_error(map));
    //  Like Python, a timed-out map is finished and cancelled what it could.
    assert_int_equal(cf_map_next(map, &value), CF_ESTOP);
    cf_unitkit_gate_open();
    cf_map_destroy(&map);
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    cf_progress_t p = cf_executor_progress(ex);
    assert_int_equal(p.submitted, 4);
    assert_int_equal(p.cancelled, 3);
    cf_executor_destroy(&ex);
}

static void test_destroy_cancels_what_is_queued(void **state)
{
    (void)state;
    cf_unitkit_gate_close();
    cf_executor_t *ex = s_threads(1);
    s_counter_t counter = { 0 };
    cf_map_t *map = s_map_counted(ex, "block", &counter, &(cf_map_opts_t){ .window = 6 });
    cf_unitkit_expect_at_gate(1, S_WAIT_MS);
    cf_map_destroy(&map);    //  returns without waiting for the running one
    cf_unitkit_gate_open();
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    cf_progress_t p = cf_executor_progress(ex);
    assert_int_equal(p.submitted, 6);
    assert_int_equal(p.cancelled, 5);
    assert_int_equal(counter.asked, 6);
    cf_executor_destroy(&ex);
}

static void test_source_error_comes_after_earlier_results(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(2);
    s_counter_t counter = { .fail_at = 3 };
    cf_map_t *map = s_map_counted(ex, "twice", &counter, NULL);
    s_expect_ints(map, 3, 2);
    assert_int_equal(cf_map_next(map, NULL), CF_EINVAL);
    assert_int_equal(cf_map_index(map), 3);
    assert_int_equal(cf_map_next(map, NULL), CF_ESTOP);
    assert_int_equal(counter.asked, 4);
    cf_map_destroy(&map);
    cf_executor_destroy(&ex);
}

static void test_empty_source_stops_at_once(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(1);
    s_counter_t counter = { .limit = 1 };
    cf_map_t *map = cf_map_ints(ex, "twice", NULL, 0, NULL);
    assert_non_null(map);
    assert_int_equal(cf_map_next(map, NULL), CF_ESTOP);
    cf_map_destroy(&map);
    assert_null(cf_map_new(ex, "twice", NULL, &counter, NULL));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(cf_map_ints(ex, "twice", NULL, 3, NULL));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    cf_executor_destroy(&ex);
}

static void test_shutdown_mid_map_ends_it_after_the_submitted_results(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(2);
    cf_map_t *map = cf_map_ints(ex, "twice", s_zero_to_nine, 10, &(cf_map_opts_t){ .window = 2 });
    s_expect_ints(map, 1, 2);
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    size_t ok = 1;
    cf_err_t rc;
    const cf_value_t *value;
    while ((rc = cf_map_next(map, &value)) == CF_OK)
        ok++;
    assert_int_equal(rc, CF_ESHUTDOWN);
    assert_int_equal(cf_map_index(map), ok);
    assert_true(ok >= 2 && ok < 10);
    cf_map_destroy(&map);
    cf_executor_destroy(&ex);
}

static int s_pairs_source(void *state, size_t index, cf_args_t *args)
{
    (void)state;
    if (index >= 5)
        return 0;
    return cf_args_addf(args, "ii", (int)index, 10) == CF_OK ? 1 : -1;
}

static void test_argument_lists_take_several_values(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(2);
    cf_map_t *map = cf_map_new(ex, "sum2", s_pairs_source, NULL,
                               &(cf_map_opts_t){ .chunksize = 2 });
    for (int64_t i = 0; i < 5; i++) {
        const cf_value_t *value;
        int64_t got;
        assert_int_equal(cf_map_next(map, &value), CF_OK);
        assert_int_equal(cf_value_get_int(value, &got), CF_OK);
        assert_int_equal(got, i + 10);
    }
    assert_int_equal(cf_map_next(map, NULL), CF_ESTOP);
    cf_map_destroy(&map);
    cf_executor_destroy(&ex);
}

static void test_map_strs_passes_one_string_each(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(2);
    const char *const words[] = { "a", "bb", "", "dddd" };
    cf_map_t *map = cf_map_strs(ex, "length", words, 4, NULL);
    int64_t expected[] = { 1, 2, 0, 4 };
    for (size_t i = 0; i < 4; i++) {
        const cf_value_t *value;
        int64_t got;
        assert_int_equal(cf_map_next(map, &value), CF_OK);
        assert_int_equal(cf_value_get_int(value, &got), CF_OK);
        assert_int_equal(got, expected[i]);
    }
    assert_int_equal(cf_map_next(map, NULL), CF_ESTOP);
    cf_map_destroy(&map);
    cf_executor_destroy(&ex);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_results_come_in_submission_order),
        cmocka_unit_test(test_inputs_are_pulled_only_as_the_window_allows),
        cmocka_unit_test(test_an_endless_source_runs_in_bounded_memory),
        cmocka_unit_test(test_a_bad_argument_in_a_chunk_fails_its_own_input),
        cmocka_unit_test(test_chunks_carry_several_inputs_each),
        cmocka_unit_test(test_first_failing_input_stops_iteration),
        cmocka_unit_test(test_first_failing_input_in_a_chunk_stops_at_its_index),
        cmocka_unit_test(test_timeout_covers_the_whole_iteration),
        cmocka_unit_test(test_destroy_cancels_what_is_queued),
        cmocka_unit_test(test_source_error_comes_after_earlier_results),
        cmocka_unit_test(test_empty_source_stops_at_once),
        cmocka_unit_test(test_shutdown_mid_map_ends_it_after_the_submitted_results),
        cmocka_unit_test(test_argument_lists_take_several_values),
        cmocka_unit_test(test_map_strs_passes_one_string_each),
        cmocka_unit_test(test_bytes_inputs_of_every_size_come_back_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
