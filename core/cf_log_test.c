//  cf_log: the rate limit of one call site (cf_log_rate_t, cf_log_rated):
//  N lines, then one marked line, then a count carried by the next line of
//  a later interval; shared safely by threads; free when the level is off.
//  A handler records the lines; intervals are waited out on the monotonic
//  clock, never slept blindly.

#include "cf_clock.h"
#include "cf_log.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#define S_MAX_LINES 64

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static char s_lines[S_MAX_LINES][512];
static size_t s_count;    //  lines seen (may pass S_MAX_LINES; only the first are kept)

static void s_record(cf_log_level_t level, const char *component, const char *message, void *arg)
{
    (void)level;
    (void)component;
    (void)arg;
    pthread_mutex_lock(&s_lock);
    if (s_count < S_MAX_LINES)
        snprintf(s_lines[s_count], sizeof s_lines[0], "%s", message);
    s_count++;
    pthread_mutex_unlock(&s_lock);
}

static int s_setup(void **state)
{
    (void)state;
    s_count = 0;
    cf_log_set_handler(s_record, NULL, CF_LOG_INFO);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    cf_log_set_handler(NULL, NULL, CF_LOG_INFO);
    return 0;
}

//  Waits until the interval that began at start_ms is over.
static void s_wait_past(int64_t start_ms, int interval_ms)
{
    while (cf_clock_now_ms() - start_ms < interval_ms + 1)
        ;
}

static void test_lines_past_the_limit_are_marked_then_counted(void **state)
{
    (void)state;
    cf_log_rate_t rate = CF_LOG_RATE_INIT(3, 200);
    int64_t start = cf_clock_now_ms();
    for (int i = 0; i < 100; i++)
        cf_log_rate(&rate, CF_LOG_WARN, "test", "task %d not handed back", i);
    //  Unless this machine stalled for 200 ms in the loop: 3 lines, then
    //  the marked fourth, then nothing.
    if (cf_clock_now_ms() - start < 200) {
        assert_int_equal(s_count, 4);
        assert_string_equal(s_lines[0], "task 0 not handed back");
        assert_string_equal(s_lines[2], "task 2 not handed back");
        assert_string_equal(s_lines[3], "task 3 not handed back (over 3 lines in 200 ms: more "
                                        "like this suppressed)");
        s_wait_past(start, 200);
        cf_log_rate(&rate, CF_LOG_WARN, "test", "task %d not handed back", 100);
        assert_int_equal(s_count, 5);
        assert_string_equal(s_lines[4], "task 100 not handed back (96 more like this suppressed)");
        //  The count was given once: the next line is plain.
        cf_log_rate(&rate, CF_LOG_WARN, "test", "task %d not handed back", 101);
        assert_string_equal(s_lines[5], "task 101 not handed back");
    }
}

static void test_a_level_that_is_off_costs_nothing_and_counts_nothing(void **state)
{
    (void)state;
    cf_log_rate_t rate = CF_LOG_RATE_INIT(1, 60000);
    for (int i = 0; i < 10; i++)
        cf_log_rate(&rate, CF_LOG_DEBUG, "test", "debug %d", i);
    assert_int_equal(s_count, 0);
    assert_int_equal(rate.logged, 0);
    assert_int_equal(rate.suppressed, 0);
    cf_log_rate(&rate, CF_LOG_WARN, "test", "first");
    assert_string_equal(s_lines[0], "first");
}

//  Each use of the macro is a site of its own with its own limit.
static void s_site_a(int i)
{
    cf_log_rated(CF_LOG_WARN, "test", 2, 60000, "a %d", i);
}

static void s_site_b(int i)
{
    cf_log_warn_rated("test", "b %d", i);
}

static void test_each_call_site_has_its_own_limit(void **state)
{
    (void)state;
    int64_t start = cf_clock_now_ms();
    for (int i = 0; i < 50; i++) {
        s_site_a(i);
        s_site_b(i);
    }
    if (cf_clock_now_ms() - start < CF_LOG_RATE_MS) {
        //  a: 2 + the marked one; b: CF_LOG_RATE_LINES + the marked one.
        assert_int_equal(s_count, 3 + CF_LOG_RATE_LINES + 1);
        assert_string_equal(s_lines[0], "a 0");
        assert_string_equal(s_lines[1], "b 0");
    }
}

typedef struct {
    cf_log_rate_t *rate;
    int calls;
} s_worker_arg_t;

static void *s_hammer(void *arg)
{
    s_worker_arg_t *w = arg;
    for (int i = 0; i < w->calls; i++)
        cf_log_rate(w->rate, CF_LOG_WARN, "test", "line");
    return NULL;
}

//  Threads share a site's state: every call is either logged or counted,
//  never lost, never both (ThreadSanitizer runs this too).
static void test_threads_share_a_site_and_no_call_is_lost(void **state)
{
    (void)state;
    cf_log_rate_t rate = CF_LOG_RATE_INIT(4, 60000);
    enum { THREADS = 4, CALLS = 5000 };
    pthread_t threads[THREADS];
    s_worker_arg_t arg = { &rate, CALLS };
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&threads[t], NULL, s_hammer, &arg), 0);
    for (int t = 0; t < THREADS; t++)
        pthread_join(threads[t], NULL);
    assert_int_equal(s_count, 5);    //  4 + the marked one, within one long interval
    assert_int_equal(s_count + rate.suppressed, THREADS * CALLS);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, s_setup, s_teardown)
    const struct CMUnitTest tests[] = {
        T(test_lines_past_the_limit_are_marked_then_counted),
        T(test_a_level_that_is_off_costs_nothing_and_counts_nothing),
        T(test_each_call_site_has_its_own_limit),
        T(test_threads_share_a_site_and_no_call_is_lost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
