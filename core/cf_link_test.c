//  cf_link: the backoff, and what it is for: a client and a worker whose
//  connection to the broker ends for good (a ZMTP protocol error: a frame
//  over ZMQ_MAXMSGSIZE) dial again on a fresh socket and carry on; a
//  client whose broker is not there neither hangs in destroy nor waits in
//  silence (issue 9, sections 2 and 3). The broker is tests/cf_fakebroker,
//  driven by hand.

#include "cf_link.h"

#include "cf_clock.h"
#include "cf_fakebroker.h"
#include "cf_worker.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define S_WAIT_MS 20000
#define S_IVL_MS  100
//  A port where nothing listens (tcpmux): connections are refused at once.
#define S_NOBODY  "tcp://127.0.0.1:1"

static void link_echo(cf_call_t *call)
{
    cf_return_int(call, cf_arg_int(call, 0));
}
CF_TASK(link_echo);

// ---------------------------------------------------------------------------
//  Log lines the tests look for

static pthread_mutex_t s_log_lock = PTHREAD_MUTEX_INITIALIZER;
static char s_log[16384];

static void s_log_handler(cf_log_level_t level, const char *component, const char *message,
                          void *arg)
{
    (void)arg;
    if (getenv("CF_TEST_DEBUG"))
        fprintf(stderr, "%c %s: %s\n", "DIWE"[level], component, message);
    pthread_mutex_lock(&s_log_lock);
    size_t len = strlen(s_log);
    if (len + 512 < sizeof s_log)
        snprintf(s_log + len, sizeof s_log - len, "%c %s: %.400s\n", "DIWE"[level], component,
                 message);
    pthread_mutex_unlock(&s_log_lock);
}

static void s_log_start(void)
{
    pthread_mutex_lock(&s_log_lock);
    s_log[0] = '\0';
    pthread_mutex_unlock(&s_log_lock);
    cf_log_set_handler(s_log_handler, NULL, getenv("CF_TEST_DEBUG") ? CF_LOG_DEBUG : CF_LOG_INFO);
}

static bool s_log_has(const char *needle)
{
    pthread_mutex_lock(&s_log_lock);
    bool found = strstr(s_log, needle) != NULL;
    pthread_mutex_unlock(&s_log_lock);
    return found;
}

static bool s_log_await(const char *needle, int timeout_ms)
{
    int64_t until = cf_clock_now_ms() + timeout_ms;
    while (!s_log_has(needle)) {
        if (cf_clock_now_ms() > until)
            return false;
        struct timespec nap = { 0, 10 * 1000 * 1000 };
        nanosleep(&nap, NULL);
    }
    return true;
}

// ---------------------------------------------------------------------------
//  The fake broker's tools

//  A RESULT whose body is one byte over the peer's ZMQ_MAXMSGSIZE: libzmq
//  drops the connection with a protocol error and does not redial. peer is
//  a routing id of peer_len bytes (a client's is binary).
static void s_send_oversized(cf_fakebroker_t *b, const char *peer, size_t peer_len)
{
    size_t size = (size_t)CF_PROTO_MAX_FRAME + 4096 + 1;
    void *body = calloc(1, size);
    assert_non_null(body);
    assert_int_equal(zmq_send(b->router, peer, peer_len, ZMQ_SNDMORE), (int)peer_len);
    assert_int_equal(zmq_send(b->router, "cf/1", 4, ZMQ_SNDMORE), 4);
    assert_int_equal(zmq_send(b->router, "RESULT", 6, ZMQ_SNDMORE), 6);
    assert_int_equal(zmq_send(b->router, body, size, 0), (int)size);
    free(body);
}

//  A HEARTBEAT to identity, whether or not it is still connected.
static void s_heartbeat_to(cf_fakebroker_t *b, const char *identity, size_t len)
{
    cf_proto_enc_heartbeat(b->enc, 42, S_IVL_MS);
    (void)cf_proto_enc_send(b->enc, b->router, identity, len);
}

//  The next message of type, answering everything with heartbeats to
//  identity every interval meanwhile (so the peer never finds us silent
//  while its connection lives). NULL after timeout_ms.
static cf_proto_msg_t *s_next_of(cf_fakebroker_t *b, cf_msg_type_t type, const char *identity,
                                 int timeout_ms)
{
    int64_t until = cf_clock_now_ms() + timeout_ms;
    while (cf_clock_now_ms() < until) {
        s_heartbeat_to(b, identity, strlen(identity));
        cf_proto_msg_t *msg = cf_fakebroker_recv(b, S_IVL_MS / 2);
        if (msg && msg->type == type)
            return msg;
        cf_proto_msg_destroy(&msg);
    }
    return NULL;
}

// ---------------------------------------------------------------------------
//  Tests

static void test_the_backoff_doubles_to_its_bound_and_resets(void **state)
{
    (void)state;
    cf_link_backoff_t backoff;
    cf_link_backoff_init(&backoff, 100, 400);
    assert_true(cf_link_backoff_take(&backoff, 1000));    //  the first at once
    assert_false(cf_link_backoff_take(&backoff, 1099));
    assert_true(cf_link_backoff_take(&backoff, 1100));
    assert_false(cf_link_backoff_take(&backoff, 1299));
    assert_true(cf_link_backoff_take(&backoff, 1300));
    assert_true(cf_link_backoff_take(&backoff, 1700));
    assert_false(cf_link_backoff_take(&backoff, 2099));    //  400 at most
    assert_true(cf_link_backoff_take(&backoff, 2100));
    cf_link_backoff_reset(&backoff);
    assert_true(cf_link_backoff_take(&backoff, 2101));
}

static void test_a_client_dials_again_after_an_oversized_frame(void **state)
{
    cf_fakebroker_t *b = *state;
    s_log_start();
    cf_executor_t *ex = cf_executor_connect(b->endpoint,
                                            &(cf_options_t){ .heartbeat_ivl_ms = S_IVL_MS });
    assert_non_null(ex);
    cf_future_t *f = cf_submit(ex, "link_echo", "i", 7);
    assert_non_null(f);
    cf_proto_msg_t *msg = cf_fakebroker_expect(b, CF_MSG_SUBMIT);
    assert_int_equal(msg->count, 1);
    uint64_t id = msg->tasks[0].id;
    cf_proto_msg_destroy(&msg);
    char first[sizeof b->peer];
    size_t first_len = b->peer_len;
    memcpy(first, b->peer, first_len);

    s_send_oversized(b, first, first_len);
    //  A fresh connection (a new routing id) brings the task again.
    msg = cf_fakebroker_expect(b, CF_MSG_SUBMIT);
    assert_int_equal(msg->count, 1);
    assert_true(msg->tasks[0].id == id);
    assert_false(b->peer_len == first_len && memcmp(b->peer, first, first_len) == 0);
    cf_proto_msg_destroy(&msg);
    assert_true(s_log_has("opened a fresh connection"));

    cf_proto_enc_begin(b->enc, CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_ok(b->enc, id, "\x2a", 1), CF_OK);
    cf_fakebroker_send(b);
    int64_t value = 0;
    assert_int_equal(cf_future_int(f, S_WAIT_MS, &value), CF_OK);
    assert_int_equal(value, 42);
    cf_future_release(&f);
    cf_executor_destroy(&ex);
    cf_log_set_handler(NULL, NULL, CF_LOG_WARN);
}

static void test_a_worker_dials_again_after_an_oversized_frame(void **state)
{
    cf_fakebroker_t *b = *state;
    s_log_start();
    cf_worker_t *w = cf_worker_new(&(cf_worker_config_t){
        .endpoint = b->endpoint,
        .threads = 1,
        .identity = "link-worker",
        .heartbeat_ivl_ms = S_IVL_MS,
        .heartbeat_liveness = 3,
    });
    assert_non_null(w);
    cf_proto_msg_t *msg = cf_fakebroker_expect(b, CF_MSG_READY);
    cf_proto_msg_destroy(&msg);
    assert_string_equal(b->peer, "link-worker");
    //  While the broker speaks, the worker keeps its socket: no READY for
    //  twice its expiry.
    msg = s_next_of(b, CF_MSG_READY, "link-worker", 6 * S_IVL_MS);
    assert_null(msg);

    s_send_oversized(b, "link-worker", strlen("link-worker"));
    //  The old connection is gone for good: heartbeats to it go nowhere,
    //  the worker finds the broker silent and dials again, under a fresh
    //  identity, with READY. The fake broker answers the latest identity
    //  with a task (the worker may have dialled once more meanwhile).
    char latest[sizeof b->peer] = "link-worker";
    bool done = false;
    int64_t until = cf_clock_now_ms() + S_WAIT_MS;
    while (!done && cf_clock_now_ms() < until) {
        msg = s_next_of(b, CF_MSG_READY, latest, S_IVL_MS);
        if (msg && msg->type == CF_MSG_READY) {
            assert_int_equal(msg->credit, 1);
            assert_string_not_equal(b->peer, "link-worker");
            assert_int_equal(strncmp(b->peer, "link-worker.", 12), 0);
            snprintf(latest, sizeof latest, "%s", b->peer);
            cf_proto_msg_destroy(&msg);
            cf_fakebroker_send_task(b, 5, "link_echo", "i", 9);
            msg = s_next_of(b, CF_MSG_RESULT, latest, 5 * S_IVL_MS);
        }
        if (msg && msg->type == CF_MSG_RESULT) {
            assert_int_equal(msg->count, 1);
            assert_true(msg->results[0].id == 5);
            assert_int_equal(msg->results[0].status, CF_STATUS_OK);
            done = true;
        }
        cf_proto_msg_destroy(&msg);
    }
    assert_true(done);
    assert_true(s_log_has("opened a fresh connection"));
    cf_worker_destroy(&w);
    cf_log_set_handler(NULL, NULL, CF_LOG_WARN);
}

static void test_connect_fails_after_its_timeout_naming_the_endpoint(void **state)
{
    (void)state;
    int64_t start = cf_clock_now_ms();
    cf_executor_t *ex = cf_executor_connect(S_NOBODY, &(cf_options_t){ .connect_timeout_ms = 300 });
    int64_t took = cf_clock_now_ms() - start;
    assert_null(ex);
    assert_int_equal(cf_last_err(), CF_ETIMEDOUT);
    assert_non_null(strstr(cf_last_error(), S_NOBODY));
    assert_true(took >= 300 && took < 5000);
}

//  The reproduction: connect to nothing, submit, shutdown(false,
//  true), destroy. It hung in destroy.
static void test_shutdown_cancels_and_destroy_returns_without_a_broker(void **state)
{
    (void)state;
    cf_executor_t *ex = cf_executor_connect(
        S_NOBODY, &(cf_options_t){ .connect_timeout_ms = -1, .heartbeat_ivl_ms = S_IVL_MS });
    assert_non_null(ex);
    cf_future_t *f = cf_submit(ex, "link_echo", "i", 1);
    assert_non_null(f);
    assert_int_equal(cf_executor_shutdown(ex, false, true), CF_OK);
    assert_int_equal(cf_future_wait(f, S_WAIT_MS), CF_OK);
    assert_true(cf_future_cancelled(f));
    int64_t start = cf_clock_now_ms();
    cf_executor_destroy(&ex);
    assert_true(cf_clock_now_ms() - start < 5000);
    cf_future_release(&f);
}

static void test_destroy_gives_up_on_a_lost_broker_and_says_so(void **state)
{
    cf_fakebroker_t *b = *state;
    s_log_start();
    cf_executor_t *ex = cf_executor_connect(b->endpoint,
                                            &(cf_options_t){ .heartbeat_ivl_ms = S_IVL_MS });
    assert_non_null(ex);
    cf_future_t *f = cf_submit(ex, "link_echo", "i", 1);
    assert_non_null(f);
    cf_fakebroker_await(b, CF_MSG_SUBMIT);
    //  The broker answers once, then goes: the task was handed over and
    //  nobody will ever say whether it ran.
    s_heartbeat_to(b, b->peer, b->peer_len);
    cf_fakebroker_stop(b);
    cf_fakebroker_start(b);    //  another port: the teardown's to stop
    int64_t start = cf_clock_now_ms();
    cf_executor_destroy(&ex);
    int64_t took = cf_clock_now_ms() - start;
    assert_true(took < 10 * S_IVL_MS + 2000);
    assert_int_equal(cf_future_wait(f, 0), CF_OK);
    const cf_task_error_t *error = cf_future_error(f);
    assert_non_null(error);
    assert_string_equal(error->type, "BrokerLost");
    assert_true(s_log_has("1 tasks failed with BrokerLost"));
    cf_future_release(&f);
    cf_log_set_handler(NULL, NULL, CF_LOG_WARN);
}

static void test_pending_tasks_without_a_broker_bring_steady_warnings(void **state)
{
    (void)state;
    s_log_start();
    cf_executor_t *ex = cf_executor_connect(
        S_NOBODY, &(cf_options_t){ .connect_timeout_ms = -1, .heartbeat_ivl_ms = S_IVL_MS });
    assert_non_null(ex);
    cf_future_t *f = cf_submit(ex, "link_echo", "i", 1);
    assert_non_null(f);
    assert_true(s_log_await("1 tasks waiting: no broker answers at " S_NOBODY, 15000));
    cf_executor_destroy(&ex);
    assert_int_equal(cf_future_wait(f, 0), CF_OK);
    cf_future_release(&f);
    cf_log_set_handler(NULL, NULL, CF_LOG_WARN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_backoff_doubles_to_its_bound_and_resets),
        CF_FAKEBROKER_TEST(test_a_client_dials_again_after_an_oversized_frame),
        CF_FAKEBROKER_TEST(test_a_worker_dials_again_after_an_oversized_frame),
        cmocka_unit_test(test_connect_fails_after_its_timeout_naming_the_endpoint),
        cmocka_unit_test(test_shutdown_cancels_and_destroy_returns_without_a_broker),
        CF_FAKEBROKER_TEST(test_destroy_gives_up_on_a_lost_broker_and_says_so),
        cmocka_unit_test(test_pending_tasks_without_a_broker_bring_steady_warnings),
    };
    if (getenv("CF_TEST_FILTER"))
        cmocka_set_test_filter(getenv("CF_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
