//  cf_actor: started ready, a failed start reported, the pipe's sends and
//  calls, $TERM, calls to an actor that ended, and acting for a sleeping
//  actor.

#include "cf_actor.h"

#include "cf_error.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

//  An actor that counts what it receives: "ADD" adds its int argument,
//  "GET" answers the sum, "END" makes it return on its own, $TERM too.
typedef struct {
    bool fail_start;       //  report CF_EAUTH instead of serving
    bool serve;            //  let other threads act for it
    int sum;               //  under the actor (or whoever acts for it)
    atomic_int wakeups;    //  sleeps that ended with the pipe signalled
    atomic_bool saw_term;
    //  What the actor saw wrong: cmocka's asserts belong to the test's own
    //  thread, so the actor only records and the test checks.
    atomic_int mistakes;
} s_counter_t;

static void s_counter(cf_actor_t *actor, void *args)
{
    s_counter_t *c = args;
    if (c->fail_start) {
        cf_actor_ready(actor, CF_EAUTH, "counter: port 1 is taken");
        return;
    }
    if (c->serve)
        cf_actor_serve(actor, c);
    cf_actor_ready(actor, CF_OK, NULL);
    for (;;) {
        bool woken = false;
        if (cf_actor_sleep(actor, NULL, 0, -1, &woken) < 0)
            atomic_fetch_add(&c->mistakes, 1);
        if (woken)
            atomic_fetch_add(&c->wakeups, 1);
        cf_actor_msg_t *msg;
        while ((msg = cf_actor_recv(actor))) {
            if (cf_actor_msg_is(msg, "$TERM") || cf_actor_msg_is(msg, "END")) {
                atomic_store(&c->saw_term, cf_actor_msg_is(msg, "$TERM"));
                cf_actor_reply(actor, &msg, NULL, 0);
                cf_actor_serve(actor, NULL);
                return;
            }
            if (cf_actor_msg_is(msg, "ADD")) {
                size_t len;
                const int *value = cf_actor_msg_arg(msg, &len);
                if (len == sizeof *value)
                    c->sum += *value;
                else
                    atomic_fetch_add(&c->mistakes, 1);
            }
            else if (cf_actor_msg_is(msg, "GET") && cf_actor_msg_arg(msg, NULL))
                atomic_fetch_add(&c->mistakes, 1);
            cf_actor_reply(actor, &msg, &c->sum, sizeof c->sum);
        }
    }
}

//  Stops the counter actor; what it saw wrong fails the test here.
static void s_counter_stop(cf_actor_t **actor, s_counter_t *c)
{
    cf_actor_destroy(actor);
    assert_null(*actor);
    assert_int_equal(atomic_load(&c->mistakes), 0);
}

//  Starts the counter actor on c; one that cannot start fails the test.
static cf_actor_t *s_counter_start(s_counter_t *c)
{
    cf_actor_t *actor = cf_actor_new("counter", s_counter, c);
    assert_non_null(actor);
    return actor;
}

static void test_new_returns_once_the_actor_serves_and_destroy_sends_term(void **state)
{
    (void)state;
    s_counter_t c = { 0 };
    cf_actor_t *actor = s_counter_start(&c);
    assert_null(cf_actor_current());
    s_counter_stop(&actor, &c);
    assert_null(actor);
    assert_true(atomic_load(&c.saw_term));
    cf_actor_destroy(&actor);    //  safe twice (the first was s_counter_stop)
}

static void test_a_failed_start_is_the_error_of_new(void **state)
{
    (void)state;
    s_counter_t c = { .fail_start = true };
    assert_null(cf_actor_new("counter", s_counter, &c));
    assert_int_equal(cf_last_err(), CF_EAUTH);
    assert_string_equal(cf_last_error(), "counter: port 1 is taken");
}

static void test_sends_arrive_in_order_before_a_call_is_answered(void **state)
{
    (void)state;
    s_counter_t c = { 0 };
    cf_actor_t *actor = s_counter_start(&c);
    for (int i = 1; i <= 100; i++)
        assert_int_equal(cf_actor_send(actor, "ADD", &i, sizeof i), CF_OK);
    int sum = -1;
    assert_int_equal(cf_actor_call(actor, "GET", NULL, 0, &sum, sizeof sum), CF_OK);
    assert_int_equal(sum, 5050);
    int seven = 7;
    assert_int_equal(cf_actor_call(actor, "ADD", &seven, sizeof seven, &sum, sizeof sum), CF_OK);
    assert_int_equal(sum, 5057);
    s_counter_stop(&actor, &c);
}

static void test_an_actor_that_ended_refuses_sends_and_calls(void **state)
{
    (void)state;
    s_counter_t c = { 0 };
    cf_actor_t *actor = s_counter_start(&c);
    int sum = -1;
    //  END makes it return; the call answering END comes first.
    assert_int_equal(cf_actor_call(actor, "END", NULL, 0, &sum, sizeof sum), CF_OK);
    int rc;
    //  The thread may still be between its reply and its end: wait for it.
    while ((rc = cf_actor_send(actor, "ADD", &sum, sizeof sum)) == CF_OK)
        usleep(1000);
    assert_int_equal(rc, CF_ESHUTDOWN);
    assert_int_equal(cf_actor_call(actor, "GET", NULL, 0, &sum, sizeof sum), CF_ESHUTDOWN);
    assert_false(atomic_load(&c.saw_term));
    s_counter_stop(&actor, &c);
}

//  Many threads calling at once: every call gets its own answer.
typedef struct {
    cf_actor_t *actor;
    int calls;
    int failures;
} s_caller_t;

static void *s_caller_main(void *arg)
{
    s_caller_t *caller = arg;
    for (int i = 0; i < caller->calls; i++) {
        int one = 1, sum = 0;
        if (cf_actor_call(caller->actor, "ADD", &one, sizeof one, &sum, sizeof sum) != CF_OK
            || sum < 1)
            caller->failures++;
    }
    return NULL;
}

static void test_concurrent_calls_are_each_answered(void **state)
{
    (void)state;
    s_counter_t c = { 0 };
    cf_actor_t *actor = s_counter_start(&c);
    pthread_t threads[4];
    s_caller_t callers[4];
    for (int i = 0; i < 4; i++) {
        callers[i] = (s_caller_t){ .actor = actor, .calls = 500 };
        assert_int_equal(pthread_create(&threads[i], NULL, s_caller_main, &callers[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(callers[i].failures, 0);
    }
    int sum = 0;
    assert_int_equal(cf_actor_call(actor, "GET", NULL, 0, &sum, sizeof sum), CF_OK);
    assert_int_equal(sum, 2000);
    s_counter_stop(&actor, &c);
}

static void test_another_thread_acts_for_a_sleeping_actor(void **state)
{
    (void)state;
    s_counter_t c = { .serve = true };
    cf_actor_t *actor = s_counter_start(&c);
    //  The actor sleeps soon after it reported ready; until then enter
    //  fails because the actor holds io.
    s_counter_t *acting;
    while (!(acting = cf_actor_enter(actor)))
        usleep(1000);
    assert_ptr_equal(acting, &c);
    assert_ptr_equal(cf_actor_current(), actor);
    //  Acting, this thread is an actor: it must not wait for one.
    int sum;
    assert_int_equal(cf_actor_call(actor, "GET", NULL, 0, &sum, sizeof sum), CF_EINVAL);
    acting->sum = 40;
    int before = atomic_load(&c.wakeups);
    cf_actor_leave(actor, false);
    assert_null(cf_actor_current());
    assert_int_equal(atomic_load(&c.wakeups), before);
    int two = 2;
    assert_int_equal(cf_actor_call(actor, "ADD", &two, sizeof two, &sum, sizeof sum), CF_OK);
    assert_int_equal(sum, 42);
    //  cf_actor_wake makes it look at its pipe.
    while (!cf_actor_enter(actor))
        usleep(1000);
    before = atomic_load(&c.wakeups);
    cf_actor_leave(actor, true);
    while (atomic_load(&c.wakeups) == before)
        usleep(1000);
    s_counter_stop(&actor, &c);
}

static void test_an_actor_that_does_not_serve_is_never_entered(void **state)
{
    (void)state;
    s_counter_t c = { 0 };
    cf_actor_t *actor = s_counter_start(&c);
    int sum;
    //  A call round trip: the actor has been asleep in between.
    for (int i = 0; i < 20; i++) {
        assert_int_equal(cf_actor_call(actor, "GET", NULL, 0, &sum, sizeof sum), CF_OK);
        assert_null(cf_actor_enter(actor));
    }
    s_counter_stop(&actor, &c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_returns_once_the_actor_serves_and_destroy_sends_term),
        cmocka_unit_test(test_a_failed_start_is_the_error_of_new),
        cmocka_unit_test(test_sends_arrive_in_order_before_a_call_is_answered),
        cmocka_unit_test(test_an_actor_that_ended_refuses_sends_and_calls),
        cmocka_unit_test(test_concurrent_calls_are_each_answered),
        cmocka_unit_test(test_another_thread_acts_for_a_sleeping_actor),
        cmocka_unit_test(test_an_actor_that_does_not_serve_is_never_entered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
