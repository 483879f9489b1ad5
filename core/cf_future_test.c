//  Futures: the state machine, results and errors, callbacks, the completion
//  hook, the canceller hook and waiters. No executor: the tests resolve
//  futures themselves, from this thread or a helper thread.

#include "cf_future.h"

#include "cf_clock.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

static const uint8_t s_42[] = { 0x2a };    //  42
static const uint8_t s_hello[] = { 0xa5, 'h', 'e', 'l', 'l', 'o' };
static const uint8_t s_never_used[] = { 0xc1 };         //  not msgpack
static const uint8_t s_truncated[] = { 0x92, 0x01 };    //  [1, ...

static cf_future_t *s_new(void)
{
    cf_future_t *f = cf_future_new("fn", 2);
    assert_non_null(f);
    return f;
}

static void test_new_future_is_pending_and_named(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    assert_int_equal(cf_future_state(f), CF_FUTURE_PENDING);
    assert_false(cf_future_done(f));
    assert_false(cf_future_running(f));
    assert_false(cf_future_cancelled(f));
    assert_null(cf_future_error(f));
    assert_string_equal(cf_future_function(f), "fn");
    cf_future_release(&f);
    assert_null(f);
    cf_future_release(&f);
}

//  The count of futures not final yet (a waiter spins only when its own is
//  the only one) comes back to where it was however they end, from
//  whichever thread: a result, an error, a cancel, or a release unfinished.
static void *s_finish_in_thread(void *arg)
{
    cf_future_set_error(arg, "E", "from another thread", "", 0);
    return NULL;
}

static void test_pending_futures_are_counted_however_they_end(void **state)
{
    (void)state;
    long base = cf_future_pending_count();
    cf_future_t *fs[4];
    for (int i = 0; i < 4; i++) {
        fs[i] = cf_future_new("count", 5);
        assert_non_null(fs[i]);
    }
    assert_int_equal(cf_future_pending_count(), base + 4);
    assert_true(cf_future_set_running(fs[0]));
    assert_true(cf_future_set_result(fs[0], "\x01", 1));
    assert_false(cf_future_set_result(fs[0], "\x02", 1));    //  no second count
    assert_int_equal(cf_future_pending_count(), base + 3);
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_finish_in_thread, fs[1]), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(cf_future_pending_count(), base + 2);
    assert_true(cf_future_set_cancelled(fs[2]));
    assert_int_equal(cf_future_pending_count(), base + 1);
    cf_future_release(&fs[3]);    //  never completed
    assert_int_equal(cf_future_pending_count(), base);
    for (int i = 0; i < 3; i++)
        cf_future_release(&fs[i]);
    assert_int_equal(cf_future_pending_count(), base);
}

static void test_result_is_decoded_and_later_transitions_lose(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    assert_true(cf_future_set_running(f));
    assert_true(cf_future_running(f));
    assert_false(cf_future_set_running(f));
    assert_true(cf_future_set_result(f, s_42, sizeof s_42));
    assert_int_equal(cf_future_state(f), CF_FUTURE_FINISHED);
    assert_true(cf_future_done(f));
    assert_false(cf_future_set_error(f, "ValueError", "late", "", 0));
    assert_false(cf_future_set_cancelled(f));
    assert_false(cf_future_set_result(f, s_hello, sizeof s_hello));
    assert_false(cf_future_cancel(f));

    int64_t value = 0;
    assert_int_equal(cf_future_int(f, -1, &value), CF_OK);
    assert_int_equal(value, 42);
    const char *str = NULL;
    assert_int_equal(cf_future_str(f, 0, &str), CF_ETYPE);
    const void *raw;
    size_t len;
    assert_int_equal(cf_future_raw(f, 0, &raw, &len), CF_OK);
    assert_int_equal(len, 1);
    assert_memory_equal(raw, s_42, 1);
    assert_null(cf_future_error(f));
    cf_future_release(&f);
}

static void test_take_result_frees_what_it_does_not_take(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    uint8_t *bytes = malloc(sizeof s_hello);
    memcpy(bytes, s_hello, sizeof s_hello);
    assert_true(cf_future_take_result(f, bytes, sizeof s_hello));
    uint8_t *late = malloc(1);
    late[0] = 0x01;
    assert_false(cf_future_take_result(f, late, 1));    //  freed, or ASan says so
    const char *str;
    assert_int_equal(cf_future_str(f, 0, &str), CF_OK);
    assert_string_equal(str, "hello");
    cf_future_release(&f);
}

//  A bin result is read where the future keeps its bytes, not copied.
static void test_a_bin_result_is_read_in_place(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    static const uint8_t bin[] = { 0xc4, 0x03, 'a', 0, 'b' };
    uint8_t *bytes = malloc(sizeof bin);
    memcpy(bytes, bin, sizeof bin);
    assert_true(cf_future_take_result(f, bytes, sizeof bin));
    const cf_value_t *value = NULL;
    assert_int_equal(cf_future_result(f, 0, &value), CF_OK);
    size_t len = 0;
    assert_ptr_equal(cf_value_bin(value, &len), bytes + 2);
    assert_int_equal(len, 3);
    cf_future_release(&f);
}

//  A hold counting its releases.
typedef struct {
    cf_future_hold_t pub;
    int releases;
} s_hold_t;

static void s_hold_release(cf_future_hold_t *hold)
{
    ((s_hold_t *)hold)->releases++;
}

//  A held result is read where the hold keeps it and released once, when
//  the future is freed; one not taken is released at once.
static void test_a_held_result_is_read_in_place_and_released_once(void **state)
{
    (void)state;
    static const uint8_t bytes[] = { 0xc4, 0x03, 'a', 0, 'b' };
    s_hold_t hold = { { bytes, s_hold_release }, 0 };
    s_hold_t late = { { bytes, s_hold_release }, 0 };
    cf_future_t *f = s_new();
    assert_true(cf_future_hold_result(f, &hold.pub, sizeof bytes));
    assert_false(cf_future_hold_result(f, &late.pub, sizeof bytes));
    assert_int_equal(late.releases, 1);
    const void *raw = NULL;
    size_t len = 0;
    assert_int_equal(cf_future_raw(f, 0, &raw, &len), CF_OK);
    assert_ptr_equal(raw, bytes);
    assert_int_equal(len, sizeof bytes);
    const cf_value_t *value = NULL;
    assert_int_equal(cf_future_result(f, 0, &value), CF_OK);
    assert_ptr_equal(cf_value_bin(value, NULL), bytes + 2);
    cf_future_t *other = cf_future_ref(f);
    cf_future_release(&f);
    assert_int_equal(hold.releases, 0);
    cf_future_release(&other);
    assert_int_equal(hold.releases, 1);
}

static void test_error_carries_type_message_function_host_pid(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    assert_true(cf_future_set_error(f, "ValueError", "bad input 7", "hostA", 1234));
    assert_int_equal(cf_future_state(f), CF_FUTURE_FAILED);
    const cf_value_t *value = (const cf_value_t *)&value;
    assert_int_equal(cf_future_result(f, -1, &value), CF_ETASK);
    assert_null(value);
    const cf_task_error_t *error = cf_future_error(f);
    assert_non_null(error);
    assert_string_equal(error->type, "ValueError");
    assert_string_equal(error->message, "bad input 7");
    assert_string_equal(error->function, "fn");
    assert_string_equal(error->host, "hostA");
    assert_int_equal(error->pid, 1234);
    assert_false(cf_future_set_result(f, s_42, 1));
    cf_future_release(&f);
}

static void test_timeout_of_wait_is_not_a_task_timeout(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    assert_int_equal(cf_future_wait(f, 0), CF_ETIMEDOUT);
    assert_int_equal(cf_future_wait(f, 10), CF_ETIMEDOUT);
    assert_int_equal(cf_future_result(f, 10, NULL), CF_ETIMEDOUT);
    assert_true(cf_future_set_error(f, "TimeoutError", "ran too long", "", 0));
    assert_int_equal(cf_future_wait(f, 0), CF_OK);
    assert_int_equal(cf_future_result(f, 0, NULL), CF_ETASK);
    assert_string_equal(cf_future_error(f)->type, "TimeoutError");
    cf_future_release(&f);
}

//  Completes a future after the given number of microseconds.
typedef struct {
    cf_future_t *f;
    long delay_us;
} s_later_t;

static void *s_complete_later(void *arg)
{
    s_later_t *later = arg;
    if (later->delay_us > 0) {
        struct timespec ts = { 0, later->delay_us * 1000L };
        nanosleep(&ts, NULL);
    }
    cf_future_set_result(later->f, s_42, sizeof s_42);
    return NULL;
}

static void s_wait_for_completion_by_thread(cf_future_t *f, long delay_us)
{
    s_later_t later = { f, delay_us };
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_complete_later, &later), 0);
    assert_int_equal(cf_future_wait(f, -1), CF_OK);
    assert_int_equal(pthread_join(thread, NULL), 0);
    int64_t value = 0;
    assert_int_equal(cf_future_int(f, 0, &value), CF_OK);
    assert_int_equal(value, 42);
}

//  A thread whose waits were short spins before sleeping: its timeouts
//  still hold, and results that come during or after the spin are seen;
//  with spinning off, waits still work.
static void test_spinning_waits_keep_timeouts_and_results(void **state)
{
    (void)state;
    cf_set_wait_spin(500);
    for (int i = 0; i < 8; i++) {
        cf_future_t *f = s_new();
        s_wait_for_completion_by_thread(f, 0);
        cf_future_release(&f);
    }
    cf_future_t *f = s_new();
    int64_t start_us = cf_clock_now_us();
    assert_int_equal(cf_future_wait(f, 1), CF_ETIMEDOUT);
    assert_true(cf_clock_now_us() - start_us >= 1000);
    s_wait_for_completion_by_thread(f, 2000);
    cf_future_release(&f);

    cf_set_wait_spin(0);
    f = s_new();
    s_wait_for_completion_by_thread(f, 100);
    cf_future_release(&f);
    cf_set_wait_spin(500);
}

static void test_cancel_works_only_before_start(void **state)
{
    (void)state;
    cf_future_t *pending = s_new();
    assert_true(cf_future_cancel(pending));
    assert_true(cf_future_cancelled(pending));
    assert_true(cf_future_done(pending));
    assert_true(cf_future_cancel(pending));    //  already cancelled
    assert_int_equal(cf_future_result(pending, -1, NULL), CF_ECANCELLED);
    assert_null(cf_future_error(pending));
    assert_false(cf_future_set_running(pending));
    assert_false(cf_future_set_result(pending, s_42, 1));
    cf_future_release(&pending);

    cf_future_t *running = s_new();
    assert_true(cf_future_set_running(running));
    assert_false(cf_future_cancel(running));
    assert_false(cf_future_cancelled(running));
    assert_true(cf_future_set_result(running, s_42, 1));
    assert_false(cf_future_cancel(running));
    cf_future_release(&running);
}

static int s_canceller_calls;

static bool s_refusing_canceller(void *executor, cf_future_t *f)
{
    (void)f;
    assert_ptr_equal(executor, &s_canceller_calls);
    s_canceller_calls++;
    return false;
}

static bool s_removing_canceller(void *executor, cf_future_t *f)
{
    (void)executor;
    s_canceller_calls++;
    //  Like a back end: it may resolve the future itself.
    assert_true(cf_future_set_cancelled(f));
    return true;
}

static void test_cancel_asks_the_canceller(void **state)
{
    (void)state;
    s_canceller_calls = 0;
    cf_future_t *f = s_new();
    cf_future_set_canceller(f, s_refusing_canceller, &s_canceller_calls);
    assert_false(cf_future_cancel(f));
    assert_int_equal(s_canceller_calls, 1);
    assert_int_equal(cf_future_state(f), CF_FUTURE_PENDING);
    cf_future_set_canceller(f, s_removing_canceller, NULL);
    assert_true(cf_future_cancel(f));
    assert_int_equal(s_canceller_calls, 2);
    assert_true(cf_future_cancel(f));    //  not asked again
    assert_int_equal(s_canceller_calls, 2);
    cf_future_release(&f);
}

//  A canceller that blocks until told to return, so a completion can race it.
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool entered;    //  the canceller runs
    bool proceed;    //  it may return
    bool inside;     //  it has not returned yet
    int hook_calls;
    bool hook_saw_canceller;    //  the hook ran while the canceller was inside
    pthread_t hook_thread;
    cf_future_t *f;
    bool cancelled;    //  what cf_future_cancel returned
} s_race_t;

static bool s_blocking_canceller(void *executor, cf_future_t *f)
{
    s_race_t *race = executor;
    (void)f;
    pthread_mutex_lock(&race->lock);
    race->entered = race->inside = true;
    pthread_cond_broadcast(&race->cond);
    while (!race->proceed)
        pthread_cond_wait(&race->cond, &race->lock);
    race->inside = false;
    pthread_mutex_unlock(&race->lock);
    return false;
}

static void s_race_hook(void *arg, cf_future_t *f, cf_future_state_t state)
{
    s_race_t *race = arg;
    (void)f;
    (void)state;
    pthread_mutex_lock(&race->lock);
    race->hook_calls++;
    race->hook_saw_canceller = race->inside;
    race->hook_thread = pthread_self();
    pthread_mutex_unlock(&race->lock);
}

static void *s_cancel_thread(void *arg)
{
    s_race_t *race = arg;
    race->cancelled = cf_future_cancel(race->f);
    return NULL;
}

//  The executor's hook releases what its canceller uses: while a canceller
//  runs, a completion leaves the hook to the canceller's thread.
static void test_hook_waits_for_a_running_canceller(void **state)
{
    (void)state;
    s_race_t race = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
    race.f = s_new();
    cf_future_set_canceller(race.f, s_blocking_canceller, &race);
    assert_true(cf_future_set_complete_hook(race.f, s_race_hook, &race));
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_cancel_thread, &race), 0);
    pthread_mutex_lock(&race.lock);
    while (!race.entered)
        pthread_cond_wait(&race.cond, &race.lock);
    pthread_mutex_unlock(&race.lock);

    assert_true(cf_future_set_result(race.f, s_42, sizeof s_42));
    assert_true(cf_future_done(race.f));
    pthread_mutex_lock(&race.lock);
    assert_int_equal(race.hook_calls, 0);
    race.proceed = true;
    pthread_cond_broadcast(&race.cond);
    pthread_mutex_unlock(&race.lock);
    assert_int_equal(pthread_join(thread, NULL), 0);

    assert_false(race.cancelled);
    assert_int_equal(race.hook_calls, 1);
    assert_false(race.hook_saw_canceller);
    assert_true(pthread_equal(race.hook_thread, thread));
    //  Done: the canceller is not asked again, the hook does not run again.
    race.entered = false;
    assert_false(cf_future_cancel(race.f));
    assert_false(race.entered);
    assert_int_equal(race.hook_calls, 1);
    cf_future_release(&race.f);
}

static void test_malformed_result_becomes_protocol_error(void **state)
{
    (void)state;
    const uint8_t *bad[] = { s_never_used, s_truncated };
    size_t len[] = { sizeof s_never_used, sizeof s_truncated };
    for (size_t i = 0; i < 2; i++) {
        cf_future_t *f = s_new();
        assert_true(cf_future_set_result(f, bad[i], len[i]));
        assert_int_equal(cf_future_state(f), CF_FUTURE_FINISHED);
        const cf_task_error_t *error = cf_future_error(f);
        assert_non_null(error);
        assert_string_equal(error->type, "ProtocolError");
        assert_int_equal(cf_future_result(f, 0, NULL), CF_ETASK);
        const void *raw;
        size_t raw_len;
        assert_int_equal(cf_future_raw(f, 0, &raw, &raw_len), CF_ETASK);
        int64_t value;
        assert_int_equal(cf_future_int(f, 0, &value), CF_ETASK);
        cf_future_release(&f);
    }
    cf_future_t *empty = s_new();
    assert_true(cf_future_set_result(empty, NULL, 0));
    assert_int_equal(cf_future_result(empty, 0, NULL), CF_ETASK);
    assert_string_equal(cf_future_error(empty)->type, "ProtocolError");
    cf_future_release(&empty);
}

static void test_scalar_getters_check_type_and_trailing_bytes(void **state)
{
    (void)state;
    static const uint8_t too_big[] = { 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    static const uint8_t trailing[] = { 0x2a, 0x2a };
    static const uint8_t true_[] = { 0xc3 };
    int64_t i;
    bool b;
    double d;

    cf_future_t *f = s_new();
    cf_future_set_result(f, too_big, sizeof too_big);
    assert_int_equal(cf_future_int(f, 0, &i), CF_ETYPE);    //  uint64 max
    cf_future_release(&f);

    f = s_new();
    cf_future_set_result(f, trailing, sizeof trailing);
    assert_int_equal(cf_future_int(f, 0, &i), CF_ETASK);    //  two values
    assert_string_equal(cf_future_error(f)->type, "ProtocolError");
    cf_future_release(&f);

    f = s_new();
    cf_future_set_result(f, true_, sizeof true_);
    assert_int_equal(cf_future_bool(f, 0, &b), CF_OK);
    assert_true(b);
    assert_int_equal(cf_future_int(f, 0, &i), CF_ETYPE);
    assert_int_equal(cf_future_double(f, 0, &d), CF_ETYPE);
    cf_future_release(&f);

    f = s_new();
    cf_future_set_result(f, s_42, sizeof s_42);
    assert_int_equal(cf_future_double(f, 0, &d), CF_OK);
    assert_true(d == 42.0);
    assert_int_equal(cf_future_bool(f, 0, &b), CF_ETYPE);
    cf_future_release(&f);

    f = s_new();
    assert_int_equal(cf_future_int(f, 0, &i), CF_ETIMEDOUT);
    cf_future_set_cancelled(f);
    assert_int_equal(cf_future_int(f, 0, &i), CF_ECANCELLED);
    assert_int_equal(cf_future_bool(f, 0, &b), CF_ECANCELLED);
    cf_future_release(&f);
}

static void test_extra_area_lives_with_the_future(void **state)
{
    (void)state;
    void *extra = NULL;
    cf_future_t *f = cf_future_new_with("fn", 2, 100, &extra);
    assert_non_null(f);
    assert_non_null(extra);
    assert_int_equal((uintptr_t)extra % 16, 0);
    memset(extra, 0xab, 100);    //  ASan: all 100 bytes are ours
    assert_string_equal(cf_future_function(f), "fn");
    cf_future_release(&f);
}

static void test_tag_round_trips(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    int anchor;
    assert_null(cf_future_tag(f));
    cf_future_set_tag(f, &anchor);
    assert_ptr_equal(cf_future_tag(f), &anchor);
    cf_future_release(&f);
}

static void test_references_keep_the_future(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    cf_future_t *other = cf_future_ref(f);
    assert_ptr_equal(other, f);
    cf_future_release(&f);
    assert_true(cf_future_set_result(other, s_42, 1));    //  still alive (ASan)
    cf_future_release(&other);
}

// ---------------------------------------------------------------------------
//  Callbacks and the completion hook

typedef struct {
    char log[64];    //  one letter per event
    size_t len;
    cf_future_state_t hook_state;
} s_record_t;

static void s_note(s_record_t *record, char c)
{
    assert_true(record->len + 1 < sizeof record->log);
    record->log[record->len++] = c;
    record->log[record->len] = '\0';
}

static s_record_t s_record;

static int s_callback_a(cf_future_t *f, void *arg)
{
    //  Not under the future's lock: reading the future works.
    assert_true(cf_future_done(f));
    assert_int_equal(cf_future_result(f, 0, NULL), CF_OK);
    s_note(arg, 'a');
    return 0;
}

static int s_callback_failing(cf_future_t *f, void *arg)
{
    (void)f;
    s_note(arg, 'x');
    return -1;
}

static int s_callback_b(cf_future_t *f, void *arg)
{
    (void)f;
    s_note(arg, 'b');
    return 0;
}

static int s_callback_adds(cf_future_t *f, void *arg)
{
    //  Adding from a callback runs the new one at once.
    assert_int_equal(cf_future_add_done_callback(f, s_callback_b, arg), CF_OK);
    s_note(arg, 'c');
    return 0;
}

static void s_hook(void *arg, cf_future_t *f, cf_future_state_t state)
{
    (void)f;
    s_record_t *record = arg;
    record->hook_state = state;
    s_note(record, 'h');
}

static void test_callbacks_run_in_order_then_the_hook(void **state)
{
    (void)state;
    memset(&s_record, 0, sizeof s_record);
    cf_future_t *f = s_new();
    assert_true(cf_future_set_complete_hook(f, s_hook, &s_record));
    assert_int_equal(cf_future_add_done_callback(f, s_callback_a, &s_record), CF_OK);
    assert_int_equal(cf_future_add_done_callback(f, s_callback_failing, &s_record), CF_OK);
    assert_int_equal(cf_future_add_done_callback(f, s_callback_b, &s_record), CF_OK);
    assert_int_equal(cf_future_add_done_callback(f, NULL, NULL), CF_EINVAL);
    assert_string_equal(s_record.log, "");
    assert_true(cf_future_set_result(f, s_42, 1));
    //  The failing callback did not stop the next one.
    assert_string_equal(s_record.log, "axbh");
    assert_int_equal(s_record.hook_state, CF_FUTURE_FINISHED);

    //  After completion: at once, in this thread; the hook does not run again.
    assert_int_equal(cf_future_add_done_callback(f, s_callback_b, &s_record), CF_OK);
    assert_string_equal(s_record.log, "axbhb");
    assert_int_equal(cf_future_add_done_callback(f, s_callback_adds, &s_record), CF_OK);
    assert_string_equal(s_record.log, "axbhbbc");
    assert_false(cf_future_set_complete_hook(f, s_hook, &s_record));
    cf_future_release(&f);
}

static void test_cancel_runs_callbacks_and_hook(void **state)
{
    (void)state;
    memset(&s_record, 0, sizeof s_record);
    cf_future_t *f = s_new();
    cf_future_set_complete_hook(f, s_hook, &s_record);
    assert_int_equal(cf_future_add_done_callback(f, s_callback_b, &s_record), CF_OK);
    assert_int_equal(cf_future_add_done_callback(f, s_callback_adds, &s_record), CF_OK);
    assert_true(cf_future_cancel(f));
    assert_string_equal(s_record.log, "bbch");
    assert_int_equal(s_record.hook_state, CF_FUTURE_CANCELLED);
    cf_future_release(&f);
}

static void test_hook_removed_before_completion_never_runs(void **state)
{
    (void)state;
    memset(&s_record, 0, sizeof s_record);
    cf_future_t *f = s_new();
    assert_true(cf_future_set_complete_hook(f, s_hook, &s_record));
    assert_true(cf_future_set_complete_hook(f, NULL, NULL));
    assert_true(cf_future_set_error(f, "E", "m", "", 0));
    assert_string_equal(s_record.log, "");
    cf_future_release(&f);
}

static void test_unresolved_future_with_callbacks_is_freed(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    assert_int_equal(cf_future_add_done_callback(f, s_callback_b, &s_record), CF_OK);
    cf_future_release(&f);    //  LeakSanitizer checks the callback went too
}

// ---------------------------------------------------------------------------
//  Threads

typedef struct {
    cf_future_t *f;
    cf_future_t *gate;    //  start only after this is done (or NULL)
    bool started;         //  set_running won
} s_resolver_t;

//  Resolves r->f like a worker: start it, then set its result. (No cmocka
//  asserts off the main thread: they longjmp.)
static void *s_resolve_main(void *arg)
{
    s_resolver_t *r = arg;
    if (r->gate)
        cf_future_wait(r->gate, -1);
    r->started = cf_future_set_running(r->f);
    if (r->started)
        cf_future_set_result(r->f, s_42, 1);
    return NULL;
}

static void test_result_from_another_thread_wakes_the_waiter(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    s_resolver_t r = { .f = f };
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_resolve_main, &r), 0);
    int64_t value = 0;
    assert_int_equal(cf_future_int(f, -1, &value), CF_OK);
    assert_int_equal(value, 42);
    pthread_join(thread, NULL);
    cf_future_release(&f);
}

static void test_racing_cancel_and_start_have_one_winner(void **state)
{
    (void)state;
    for (int i = 0; i < 200; i++) {
        cf_future_t *f = s_new();
        cf_future_t *go = s_new();
        s_resolver_t r = { .f = f, .gate = go };
        pthread_t thread;
        assert_int_equal(pthread_create(&thread, NULL, s_resolve_main, &r), 0);
        cf_future_set_result(go, s_42, 1);
        bool cancelled = cf_future_cancel(f);
        pthread_join(thread, NULL);
        assert_true(r.started != cancelled);
        assert_int_equal(cf_future_state(f), cancelled ? CF_FUTURE_CANCELLED : CF_FUTURE_FINISHED);
        cf_future_release(&f);
        cf_future_release(&go);
    }
}

// ---------------------------------------------------------------------------
//  Waiters

static void test_waiter_reports_done_futures_at_once(void **state)
{
    (void)state;
    cf_future_waiter_t *waiter = cf_future_waiter_new();
    assert_non_null(waiter);
    cf_future_t *f = s_new();
    cf_future_set_result(f, s_42, 1);
    bool done = false;
    assert_int_equal(cf_future_waiter_add(waiter, f, &done), CF_OK);
    assert_true(done);
    //  Nothing was registered, so nothing is ready.
    assert_null(cf_future_waiter_next(waiter, cf_clock_now_ms()));
    cf_future_waiter_remove(waiter, f);
    cf_future_waiter_destroy(&waiter);
    assert_null(waiter);
    cf_future_waiter_destroy(&waiter);
    cf_future_release(&f);
}

static void test_waiter_yields_in_completion_order(void **state)
{
    (void)state;
    cf_future_waiter_t *waiter = cf_future_waiter_new();
    cf_future_t *f[3] = { s_new(), s_new(), s_new() };
    for (int i = 0; i < 3; i++) {
        bool done = true;
        assert_int_equal(cf_future_waiter_add(waiter, f[i], &done), CF_OK);
        assert_false(done);
    }
    assert_null(cf_future_waiter_next(waiter, cf_clock_now_ms() + 5));
    cf_future_set_result(f[2], s_42, 1);
    cf_future_cancel(f[0]);
    assert_ptr_equal(cf_future_waiter_next(waiter, -1), f[2]);
    assert_ptr_equal(cf_future_waiter_next(waiter, -1), f[0]);
    assert_null(cf_future_waiter_next(waiter, cf_clock_now_ms()));

    //  A removed registration is never reported.
    cf_future_waiter_remove(waiter, f[1]);
    cf_future_set_result(f[1], s_42, 1);
    assert_null(cf_future_waiter_next(waiter, cf_clock_now_ms()));
    for (int i = 0; i < 3; i++) {
        cf_future_waiter_remove(waiter, f[i]);
        cf_future_release(&f[i]);
    }
    cf_future_waiter_destroy(&waiter);
}

static void test_waiter_wakes_on_completion_in_another_thread(void **state)
{
    (void)state;
    cf_future_waiter_t *waiter = cf_future_waiter_new();
    cf_future_t *f = s_new();
    bool done;
    assert_int_equal(cf_future_waiter_add(waiter, f, &done), CF_OK);
    s_resolver_t r = { .f = f };
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_resolve_main, &r), 0);
    assert_ptr_equal(cf_future_waiter_next(waiter, -1), f);
    pthread_join(thread, NULL);
    cf_future_waiter_remove(waiter, f);
    cf_future_waiter_destroy(&waiter);
    cf_future_release(&f);
}

static void test_completed_registrations_are_freed_with_the_waiter(void **state)
{
    (void)state;
    cf_future_waiter_t *waiter = cf_future_waiter_new();
    cf_future_t *f = s_new();
    bool done;
    assert_int_equal(cf_future_waiter_add(waiter, f, &done), CF_OK);
    cf_future_set_result(f, s_42, 1);
    cf_future_waiter_remove(waiter, f);
    cf_future_waiter_destroy(&waiter);    //  LeakSanitizer: the ready node went too
    cf_future_release(&f);
}

static void test_reserved_registrations_mix_with_allocated_ones(void **state)
{
    (void)state;
    cf_future_waiter_t *waiter = cf_future_waiter_new();
    assert_int_equal(cf_future_waiter_reserve(waiter, 2), CF_OK);
    cf_future_t *f[3] = { s_new(), s_new(), s_new() };
    for (int i = 0; i < 3; i++) {
        bool done;
        assert_int_equal(cf_future_waiter_add(waiter, f[i], &done), CF_OK);
        assert_false(done);
    }
    cf_future_set_result(f[1], s_42, 1);
    cf_future_set_result(f[2], s_42, 1);
    assert_ptr_equal(cf_future_waiter_next(waiter, -1), f[1]);
    assert_ptr_equal(cf_future_waiter_next(waiter, -1), f[2]);
    for (int i = 0; i < 3; i++) {
        cf_future_waiter_remove(waiter, f[i]);    //  f[0]: a reserved node, not freed alone
        cf_future_release(&f[i]);
    }
    cf_future_waiter_destroy(&waiter);
}

// ---------------------------------------------------------------------------
//  Progress reports

typedef struct {
    unsigned calls;
    uint32_t seqs[16];
    bool partial_new[16];
    cf_future_t *replace_with_null;    //  set: the callback unsets itself on this future
} s_reports_t;

static void s_record_report(cf_future_t *f, const cf_task_report_t *report, void *arg)
{
    s_reports_t *r = arg;
    if (r->calls < 16) {
        r->seqs[r->calls] = report->seq;
        r->partial_new[r->calls] = report->partial_new;
    }
    r->calls++;
    if (r->replace_with_null == f)
        assert_int_equal(cf_future_on_progress(f, NULL, NULL), CF_OK);
}

static void test_reports_keep_order_and_end_with_the_future(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    uint64_t done = 7, total = 7;
    assert_int_equal(cf_future_progress(f, &done, &total), 0);
    assert_int_equal(done, 0);
    assert_null(cf_future_report(f));
    s_reports_t r = { 0 };
    assert_int_equal(cf_future_on_progress(f, s_record_report, &r), CF_OK);
    assert_int_equal(r.calls, 0);    //  nothing yet
    //  seq 0 means none; older and equal ones are dropped.
    assert_false(cf_future_put_progress(f, 0, 1, 10, NULL, 0));
    assert_true(cf_future_put_progress(f, 2, 2, 10, s_hello, sizeof s_hello));
    assert_false(cf_future_put_progress(f, 1, 1, 10, NULL, 0));
    assert_false(cf_future_put_progress(f, 2, 3, 10, NULL, 0));
    //  A report without a partial value keeps the last one.
    assert_true(cf_future_put_progress(f, 5, 4, 10, NULL, 0));
    //  A malformed partial is dropped, the report taken.
    assert_true(cf_future_put_progress(f, 6, 5, 10, s_never_used, sizeof s_never_used));
    assert_int_equal(r.calls, 3);
    assert_int_equal(r.seqs[0], 2);
    assert_true(r.partial_new[0]);
    assert_int_equal(r.seqs[1], 5);
    assert_false(r.partial_new[1]);
    assert_int_equal(r.seqs[2], 6);
    assert_int_equal(cf_future_progress(f, &done, &total), 6);
    assert_int_equal(done, 5);
    assert_int_equal(total, 10);
    const cf_task_report_t *report = cf_future_report(f);
    assert_non_null(report);
    assert_string_equal(cf_value_str(report->partial, NULL), "hello");
    //  The reference outlives newer reports and the future itself.
    assert_true(cf_future_put_progress(f, 7, 6, 10, s_42, sizeof s_42));
    assert_true(cf_future_set_result(f, s_42, sizeof s_42));
    assert_false(cf_future_put_progress(f, 8, 7, 10, NULL, 0));    //  done: dropped
    assert_int_equal(r.calls, 4);
    assert_int_equal(cf_future_progress(f, &done, NULL), 7);
    assert_int_equal(done, 6);
    cf_future_release(&f);
    assert_int_equal(report->seq, 6);
    assert_string_equal(cf_value_str(report->partial, NULL), "hello");
    cf_task_report_release(&report);
    assert_null(report);
    cf_task_report_release(&report);
}

static void test_a_late_callback_gets_the_latest_and_may_unset_itself(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    assert_true(cf_future_put_progress(f, 1, 1, 0, NULL, 0));
    assert_true(cf_future_put_progress(f, 3, 2, 0, NULL, 0));
    s_reports_t r = { .replace_with_null = f };
    assert_int_equal(cf_future_on_progress(f, s_record_report, &r), CF_OK);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.seqs[0], 3);
    //  It unset itself: nothing more.
    assert_true(cf_future_put_progress(f, 4, 3, 0, NULL, 0));
    assert_int_equal(r.calls, 1);
    assert_true(cf_future_set_cancelled(f));
    cf_future_release(&f);
}

typedef struct {
    cf_future_t *f;
    uint32_t from;    //  puts seqs from, from + 2, ... (two threads interleave)
    int count;
} s_putter_t;

static void *s_putter(void *arg)
{
    s_putter_t *p = arg;
    for (int i = 0; i < p->count; i++)
        (void)cf_future_put_progress(p->f, p->from + 2 * (uint32_t)i, (uint64_t)i, 0, NULL, 0);
    return NULL;
}

typedef struct {
    pthread_mutex_t lock;
    uint32_t last;
    bool backwards;
    int inside;    //  calls running now
    bool overlapped;
} s_order_t;

static void s_check_order(cf_future_t *f, const cf_task_report_t *report, void *arg)
{
    (void)f;
    s_order_t *o = arg;
    pthread_mutex_lock(&o->lock);
    if (o->inside++ > 0)
        o->overlapped = true;
    if (report->seq <= o->last)
        o->backwards = true;
    o->last = report->seq;
    pthread_mutex_unlock(&o->lock);
    pthread_mutex_lock(&o->lock);
    o->inside--;
    pthread_mutex_unlock(&o->lock);
}

static void test_two_delivering_threads_never_reorder_nor_overlap_calls(void **state)
{
    (void)state;
    cf_future_t *f = s_new();
    s_order_t o = { .lock = PTHREAD_MUTEX_INITIALIZER };
    assert_int_equal(cf_future_on_progress(f, s_check_order, &o), CF_OK);
    s_putter_t a = { f, 1, 2000 }, b = { f, 2, 2000 };
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, s_putter, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, s_putter, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_false(o.backwards);
    assert_false(o.overlapped);
    assert_true(o.last >= 3999);    //  the latest of all was passed on
    assert_int_equal(cf_future_on_progress(f, NULL, NULL), CF_OK);
    assert_true(cf_future_set_cancelled(f));
    cf_future_release(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_future_is_pending_and_named),
        cmocka_unit_test(test_spinning_waits_keep_timeouts_and_results),
        cmocka_unit_test(test_pending_futures_are_counted_however_they_end),
        cmocka_unit_test(test_result_is_decoded_and_later_transitions_lose),
        cmocka_unit_test(test_take_result_frees_what_it_does_not_take),
        cmocka_unit_test(test_a_bin_result_is_read_in_place),
        cmocka_unit_test(test_a_held_result_is_read_in_place_and_released_once),
        cmocka_unit_test(test_error_carries_type_message_function_host_pid),
        cmocka_unit_test(test_timeout_of_wait_is_not_a_task_timeout),
        cmocka_unit_test(test_cancel_works_only_before_start),
        cmocka_unit_test(test_cancel_asks_the_canceller),
        cmocka_unit_test(test_hook_waits_for_a_running_canceller),
        cmocka_unit_test(test_malformed_result_becomes_protocol_error),
        cmocka_unit_test(test_scalar_getters_check_type_and_trailing_bytes),
        cmocka_unit_test(test_extra_area_lives_with_the_future),
        cmocka_unit_test(test_tag_round_trips),
        cmocka_unit_test(test_references_keep_the_future),
        cmocka_unit_test(test_callbacks_run_in_order_then_the_hook),
        cmocka_unit_test(test_cancel_runs_callbacks_and_hook),
        cmocka_unit_test(test_hook_removed_before_completion_never_runs),
        cmocka_unit_test(test_unresolved_future_with_callbacks_is_freed),
        cmocka_unit_test(test_result_from_another_thread_wakes_the_waiter),
        cmocka_unit_test(test_racing_cancel_and_start_have_one_winner),
        cmocka_unit_test(test_waiter_reports_done_futures_at_once),
        cmocka_unit_test(test_waiter_yields_in_completion_order),
        cmocka_unit_test(test_waiter_wakes_on_completion_in_another_thread),
        cmocka_unit_test(test_completed_registrations_are_freed_with_the_waiter),
        cmocka_unit_test(test_reserved_registrations_mix_with_allocated_ones),
        cmocka_unit_test(test_reports_keep_order_and_end_with_the_future),
        cmocka_unit_test(test_a_late_callback_gets_the_latest_and_may_unset_itself),
        cmocka_unit_test(test_two_delivering_threads_never_reorder_nor_overlap_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
