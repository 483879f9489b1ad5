//  A client with several brokers (issue 11, the client's side): the
//  endpoint list (parsed, a bad endpoint refused naming it, duplicates
//  dropped with a warning, a connect timeout naming every broker), the
//  spread of tasks, and failover: a lost broker's tasks resubmitted at once
//  to another, what it says of them afterwards ignored, each future
//  resolved exactly once; a broker key per endpoint.
//
//  The brokers are fake: ROUTER sockets in this test, driven by hand
//  through s_pump, which answers every peer with heartbeats (unless told
//  to fall silent) and records the task ids each SUBMIT brought. Heartbeats
//  are 100 ms x 3, so a silent broker is lost after 300 ms.

#include "cf_client.h"
#include "cf_clock.h"
#include "cf_executor.h"
#include "cf_keys.h"
#include "cf_unitkit.h"
#include "cf_proto.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define S_IVL_MS  100
#define S_WAIT_MS 10000
//  Ports where nothing listens (tcpmux, and echo): refused at once.
#define S_NOBODY  "tcp://127.0.0.1:1"
#define S_NOBODY2 "tcp://127.0.0.1:7"
#define S_MAX_IDS 64

// ---------------------------------------------------------------------------
//  Fake brokers

typedef struct {
    void *ctx;
    void *router;
    char endpoint[128];
    cf_proto_enc_t *enc;
    uint64_t boot;
    char peer[256];    //  the client's routing id, once it spoke
    size_t peer_len;
    bool silent;                //  no heartbeats: the client finds it lost
    uint64_t ids[S_MAX_IDS];    //  task ids of the SUBMITs it got, in order
    size_t ids_len;
    size_t cancels;    //  CANCEL ids it got
} s_fake_t;

static void s_fake_start(s_fake_t *f, const char *secret_z85)
{
    memset(f, 0, sizeof *f);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    assert_non_null(f->router);
    assert_int_equal(cf_proto_socket_setup(f->router, true), CF_OK);
    if (secret_z85)
        assert_int_equal(cf_keys_apply_server(f->router, secret_z85), CF_OK);
    assert_int_equal(zmq_bind(f->router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof f->endpoint;
    assert_int_equal(zmq_getsockopt(f->router, ZMQ_LAST_ENDPOINT, f->endpoint, &len), 0);
    f->enc = cf_proto_enc_new();
    assert_non_null(f->enc);
    f->boot = (uint64_t)(uintptr_t)f ^ (uint64_t)cf_clock_now_ms();
}

//  Closes the socket: to the client, a broker killed (its connection drops).
static void s_fake_close(s_fake_t *f)
{
    if (f->router)
        zmq_close(f->router);
    f->router = NULL;
}

static void s_fake_stop(s_fake_t *f)
{
    s_fake_close(f);
    cf_proto_enc_destroy(&f->enc);
    if (f->ctx)
        assert_int_equal(zmq_ctx_term(f->ctx), 0);
    f->ctx = NULL;
}

static void s_fake_send(s_fake_t *f)
{
    assert_true(f->peer_len > 0);
    assert_int_equal(cf_proto_enc_send(f->enc, f->router, f->peer, f->peer_len), CF_OK);
}

static void s_fake_result(s_fake_t *f, uint64_t id, uint8_t value)
{
    cf_proto_enc_begin(f->enc, CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_ok(f->enc, id, &value, 1), CF_OK);    //  a fixint
    s_fake_send(f);
}

static void s_fake_started(s_fake_t *f, uint64_t id)
{
    cf_proto_enc_begin(f->enc, CF_MSG_STARTED);
    assert_int_equal(cf_proto_enc_id(f->enc, id), CF_OK);
    s_fake_send(f);
}

static void s_fake_heartbeat(s_fake_t *f)
{
    if (f->silent || !f->peer_len || !f->router)
        return;
    cf_proto_enc_heartbeat(f->enc, f->boot, S_IVL_MS);
    (void)cf_proto_enc_send(f->enc, f->router, f->peer, f->peer_len);
}

static void s_fake_read(s_fake_t *f)
{
    for (;;) {
        zmq_msg_t rid;
        zmq_msg_init(&rid);
        cf_proto_msg_t *msg = NULL;
        cf_err_t rc = cf_proto_recv(f->router, true, &rid, &msg);
        if (rc == CF_OK) {
            f->peer_len = zmq_msg_size(&rid);
            assert_true(f->peer_len < sizeof f->peer);
            memcpy(f->peer, zmq_msg_data(&rid), f->peer_len);
        }
        zmq_msg_close(&rid);
        if (rc != CF_OK)
            return;
        if (msg->type == CF_MSG_SUBMIT) {
            for (size_t i = 0; i < msg->count && f->ids_len < S_MAX_IDS; i++)
                f->ids[f->ids_len++] = msg->tasks[i].id;
            s_fake_heartbeat(f);    //  it knows the peer from now on
        }
        else if (msg->type == CF_MSG_CANCEL)
            f->cancels += msg->count;
        cf_proto_msg_destroy(&msg);
    }
}

//  Runs the fakes for ms: reads what the client sends, heartbeats every
//  half interval to each that is not silent.
static void s_pump(s_fake_t **fakes, size_t count, int ms)
{
    int64_t until = cf_clock_now_ms() + ms;
    int64_t next_beat = 0;
    do {
        int64_t now = cf_clock_now_ms();
        if (now >= next_beat) {
            for (size_t i = 0; i < count; i++)
                s_fake_heartbeat(fakes[i]);
            next_beat = now + S_IVL_MS / 2;
        }
        zmq_pollitem_t items[8];
        size_t n = 0;
        for (size_t i = 0; i < count; i++) {
            if (fakes[i]->router)
                items[n++] = (zmq_pollitem_t){ fakes[i]->router, 0, ZMQ_POLLIN, 0 };
        }
        zmq_poll(items, (int)n, 10);
        for (size_t i = 0; i < count; i++) {
            if (fakes[i]->router)
                s_fake_read(fakes[i]);
        }
    } while (cf_clock_now_ms() < until);
}

//  Pumps until cond holds (true) or S_WAIT_MS passed (false).
typedef bool(s_cond_fn)(void *arg);
static bool s_pump_until(s_fake_t **fakes, size_t count, s_cond_fn *cond, void *arg)
{
    int64_t until = cf_clock_now_ms() + S_WAIT_MS;
    while (!cond(arg)) {
        if (cf_clock_now_ms() > until)
            return false;
        s_pump(fakes, count, 5);
    }
    return true;
}

static bool s_has_ids(void *arg)
{
    s_fake_t *f = arg;
    return f->ids_len > 0;
}

static bool s_is_done(void *arg)
{
    return cf_future_done(arg);
}

// ---------------------------------------------------------------------------
//  Futures: a done callback counts each future's resolutions.

static atomic_int s_resolved[8];

static int s_count_done(cf_future_t *f, void *arg)
{
    (void)f;
    atomic_fetch_add(&s_resolved[(uintptr_t)arg], 1);
    return 0;
}

static cf_future_t *s_submit(cf_executor_t *ex, int n)
{
    cf_future_t *f = cf_submit(ex, "multi_echo", "i", n);
    assert_non_null(f);
    atomic_store(&s_resolved[n], 0);
    assert_int_equal(cf_future_add_done_callback(f, s_count_done, (void *)(uintptr_t)n), CF_OK);
    return f;
}

static void *s_cancel_main(void *arg)
{
    return cf_future_cancel(arg) ? arg : NULL;
}

static cf_executor_t *s_connect(const char *endpoints)
{
    cf_executor_t *ex = cf_executor_connect(
        endpoints, &(cf_options_t){ .heartbeat_ivl_ms = S_IVL_MS, .connect_timeout_ms = 2000 });
    if (!ex)
        fprintf(stderr, "connect: %s\n", cf_last_error());
    assert_non_null(ex);
    return ex;
}

static cf_client_counters_t s_counters(cf_executor_t *ex)
{
    cf_client_counters_t counters;
    assert_true(cf_executor_client_counters(ex, &counters));
    return counters;
}

// ---------------------------------------------------------------------------
//  The list

static void test_a_list_with_spaces_makes_one_link_per_broker(void **state)
{
    (void)state;
    s_fake_t a, b;
    s_fake_start(&a, NULL);
    s_fake_start(&b, NULL);
    char list[300];
    snprintf(list, sizeof list, " %s ,%s", a.endpoint, b.endpoint);
    cf_executor_t *ex = s_connect(list);
    assert_int_equal(s_counters(ex).brokers, 2);
    cf_executor_destroy(&ex);
    s_fake_stop(&a);
    s_fake_stop(&b);
}

static void test_a_bad_endpoint_is_refused_naming_it(void **state)
{
    (void)state;
    s_fake_t a;
    s_fake_start(&a, NULL);
    char list[300];
    snprintf(list, sizeof list, "%s, nonsense://here", a.endpoint);
    cf_executor_t *ex = cf_executor_connect(list, NULL);
    assert_null(ex);
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_non_null(strstr(cf_last_error(), "nonsense://here"));

    snprintf(list, sizeof list, "%s,,%s", a.endpoint, S_NOBODY);
    ex = cf_executor_connect(list, NULL);
    assert_null(ex);
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_non_null(strstr(cf_last_error(), "empty"));
    s_fake_stop(&a);
}

static void test_a_duplicate_endpoint_is_ignored_with_a_warning(void **state)
{
    (void)state;
    cf_unitkit_log_start();
    s_fake_t a;
    s_fake_start(&a, NULL);
    char list[300];
    snprintf(list, sizeof list, "%s, %s", a.endpoint, a.endpoint);
    cf_executor_t *ex = s_connect(list);
    assert_int_equal(s_counters(ex).brokers, 1);
    char needle[200];
    snprintf(needle, sizeof needle, "broker endpoint %s is listed twice", a.endpoint);
    assert_true(cf_unitkit_log_has(needle));
    cf_executor_destroy(&ex);
    s_fake_stop(&a);
    cf_unitkit_log_stop();
}

static void test_no_broker_answering_fails_within_the_timeout_naming_all(void **state)
{
    (void)state;
    int64_t start = cf_clock_now_ms();
    cf_executor_t *ex = cf_executor_connect(S_NOBODY ", " S_NOBODY2,
                                            &(cf_options_t){ .connect_timeout_ms = 300 });
    int64_t took = cf_clock_now_ms() - start;
    assert_null(ex);
    assert_int_equal(cf_last_err(), CF_ETIMEDOUT);
    assert_non_null(strstr(cf_last_error(), S_NOBODY ", " S_NOBODY2));
    assert_true(took >= 300 && took < 3000);
}

static void test_a_silent_broker_of_the_list_is_named_after_the_timeout(void **state)
{
    (void)state;
    cf_unitkit_log_start();
    s_fake_t a;
    s_fake_start(&a, NULL);
    char list[300];
    snprintf(list, sizeof list, "%s, %s", S_NOBODY, a.endpoint);
    int64_t start = cf_clock_now_ms();
    cf_executor_t *ex = cf_executor_connect(
        list, &(cf_options_t){ .heartbeat_ivl_ms = S_IVL_MS, .connect_timeout_ms = 500 });
    assert_non_null(ex);
    assert_true(cf_clock_now_ms() - start < 500);    //  at the first handshake
    //  Tasks go to the broker that answers, none to the silent one.
    s_fake_t *fakes[] = { &a };
    cf_future_t *f = s_submit(ex, 1);
    assert_true(s_pump_until(fakes, 1, s_has_ids, &a));
    s_fake_result(&a, a.ids[0], 11);
    assert_true(s_pump_until(fakes, 1, s_is_done, f));
    int64_t value = 0;
    assert_int_equal(cf_future_int(f, 0, &value), CF_OK);
    assert_int_equal(value, 11);
    s_pump(fakes, 1, 600);
    assert_true(cf_unitkit_log_has("1 of 2 brokers did not answer within 500 ms: " S_NOBODY));
    cf_future_release(&f);
    cf_executor_destroy(&ex);
    s_fake_stop(&a);
    cf_unitkit_log_stop();
}

// ---------------------------------------------------------------------------
//  Spread and failover: two fake brokers and a client of both

typedef struct {
    s_fake_t a, b;
    cf_executor_t *ex;
} s_two_t;

static int s_two_setup(void **state)
{
    cf_unitkit_log_start();
    s_two_t *two = calloc(1, sizeof *two);
    assert_non_null(two);
    s_fake_start(&two->a, NULL);
    s_fake_start(&two->b, NULL);
    char list[300];
    snprintf(list, sizeof list, "%s,%s", two->a.endpoint, two->b.endpoint);
    two->ex = s_connect(list);
    s_fake_t *fakes[] = { &two->a, &two->b };
    s_pump(fakes, 2, 50);    //  both connections up, not only the first
    *state = two;
    return 0;
}

static int s_two_teardown(void **state)
{
    s_two_t *two = *state;
    cf_executor_destroy(&two->ex);
    s_fake_stop(&two->a);
    s_fake_stop(&two->b);
    free(two);
    cf_unitkit_log_stop();
    return 0;
}

//  Tasks 0..count-1 into f, each going out alone (the actor sleeps
//  between them), so each goes to the broker holding fewer.
static void s_submit_one_by_one(s_two_t *two, cf_future_t **f, int count)
{
    s_fake_t *fakes[] = { &two->a, &two->b };
    for (int i = 0; i < count; i++) {
        f[i] = s_submit(two->ex, i);
        s_pump(fakes, 2, 20);
    }
}

static void test_a_burst_is_spread_over_the_brokers(void **state)
{
    s_two_t *two = *state;
    s_fake_t *fakes[] = { &two->a, &two->b };
    cf_executor_t *ex = two->ex;
    cf_future_t *f[6];
    s_submit_one_by_one(two, f, 6);
    assert_int_equal(two->a.ids_len, 3);
    assert_int_equal(two->b.ids_len, 3);
    for (size_t i = 0; i < 3; i++) {
        s_fake_result(&two->a, two->a.ids[i], 1);
        s_fake_result(&two->b, two->b.ids[i], 2);
    }
    for (int i = 0; i < 6; i++) {
        assert_true(s_pump_until(fakes, 2, s_is_done, f[i]));
        cf_future_release(&f[i]);
    }
    assert_int_equal(s_counters(ex).moved, 0);
}

//  The broker that held the task falls silent, is found lost, and the task
//  goes to the other; what the first says of it afterwards (STARTED, a
//  result) is ignored, and the future takes the second broker's result,
//  once.
static void test_a_silent_brokers_task_moves_and_its_late_result_is_ignored(void **state)
{
    s_two_t *two = *state;
    s_fake_t *fakes[] = { &two->a, &two->b };
    cf_executor_t *ex = two->ex;
    cf_future_t *f = s_submit(ex, 5);
    s_pump(fakes, 2, 50);
    s_fake_t *first = two->a.ids_len ? &two->a : &two->b,
             *second = first == &two->a ? &two->b : &two->a;
    assert_int_equal(first->ids_len, 1);
    assert_int_equal(second->ids_len, 0);
    uint64_t id = first->ids[0];

    first->silent = true;
    int64_t silent_at = cf_clock_now_ms();
    assert_true(s_pump_until(fakes, 2, s_has_ids, second));
    int64_t moved_after = cf_clock_now_ms() - silent_at;
    assert_true(second->ids[0] == id);
    //  Lost liveness (3) intervals after its last heartbeat, which went out
    //  at most an interval before the silence began.
    if (moved_after < 2 * S_IVL_MS || moved_after >= 3000)
        fail_msg("moved %" PRId64 " ms after the silence began", moved_after);
    cf_client_counters_t counters = s_counters(ex);
    assert_int_equal(counters.moved, 1);
    assert_int_equal(counters.failovers, 1);

    //  Late: the first broker speaks of it again, to the fresh connection
    //  the client opened when it found it silent (the old one is closed).
    char old_peer[sizeof first->peer];
    memcpy(old_peer, first->peer, sizeof old_peer);
    int64_t until = cf_clock_now_ms() + S_WAIT_MS;
    while (memcmp(old_peer, first->peer, sizeof old_peer) == 0 && cf_clock_now_ms() < until)
        s_pump(fakes, 2, 5);
    first->silent = false;
    s_fake_started(first, id);
    s_fake_result(first, id, 99);
    s_pump(fakes, 2, 100);
    assert_false(cf_future_done(f));
    assert_false(cf_future_running(f));
    assert_int_equal(s_counters(ex).late, 2);

    s_fake_result(second, id, 42);
    assert_true(s_pump_until(fakes, 2, s_is_done, f));
    int64_t value = 0;
    assert_int_equal(cf_future_int(f, 0, &value), CF_OK);
    assert_int_equal(value, 42);
    s_fake_result(second, id, 43);    //  a twin: stale, not a second resolution
    s_pump(fakes, 2, 50);
    assert_int_equal(atomic_load(&s_resolved[5]), 1);
    assert_true(cf_unitkit_log_has("its tasks go to the others"));
    cf_future_release(&f);
}

//  A broker whose connection drops (killed) hands its tasks over at once,
//  not after its silence; a new task then goes to the one left; a cancel
//  goes where the task now is.
static void test_a_dropped_connection_moves_the_tasks_at_once(void **state)
{
    s_two_t *two = *state;
    s_fake_t *fakes[] = { &two->a, &two->b };
    cf_executor_t *ex = two->ex;
    cf_future_t *f[4];
    s_submit_one_by_one(two, f, 4);
    assert_int_equal(two->a.ids_len, 2);
    assert_int_equal(two->b.ids_len, 2);
    s_fake_close(&two->a);
    int64_t closed_at = cf_clock_now_ms();
    int64_t until = closed_at + S_WAIT_MS;
    while (two->b.ids_len < 4 && cf_clock_now_ms() < until)
        s_pump(fakes, 2, 2);
    int64_t took = cf_clock_now_ms() - closed_at;
    assert_int_equal(two->b.ids_len, 4);
    assert_true((two->b.ids[2] == two->a.ids[0] && two->b.ids[3] == two->a.ids[1])
                || (two->b.ids[2] == two->a.ids[1] && two->b.ids[3] == two->a.ids[0]));
    assert_true(took < 3 * S_IVL_MS);    //  before any silence could tell
    cf_future_t *g = s_submit(ex, 4);
    s_pump(fakes, 2, 50);
    assert_int_equal(two->b.ids_len, 5);
    //  The canceller waits for the broker's answer: from another thread.
    pthread_t canceller;
    assert_int_equal(pthread_create(&canceller, NULL, s_cancel_main, g), 0);
    int64_t cancel_until = cf_clock_now_ms() + S_WAIT_MS;
    while (two->b.cancels == 0 && cf_clock_now_ms() < cancel_until)
        s_pump(fakes, 2, 5);
    assert_int_equal(two->b.cancels, 1);
    cf_proto_enc_begin(two->b.enc, CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_status(two->b.enc, two->b.ids[4], CF_STATUS_CANCELLED),
                     CF_OK);
    s_fake_send(&two->b);
    assert_true(s_pump_until(fakes, 2, s_is_done, g));
    void *result = NULL;
    assert_int_equal(pthread_join(canceller, &result), 0);
    assert_non_null(result);    //  cancel() said true
    assert_true(cf_future_cancelled(g));
    for (size_t i = 0; i < 4; i++)
        s_fake_result(&two->b, two->b.ids[i], 7);
    for (int i = 0; i < 4; i++) {
        assert_true(s_pump_until(fakes, 2, s_is_done, f[i]));
        assert_int_equal(atomic_load(&s_resolved[i]), 1);
        cf_future_release(&f[i]);
    }
    cf_future_release(&g);
    assert_int_equal(s_counters(ex).moved, 2);
}

// ---------------------------------------------------------------------------
//  Keys

static void test_each_broker_has_its_own_key(void **state)
{
    (void)state;
    if (!zmq_has("curve"))
        skip();
    cf_keypair_t ka, kb, client;
    assert_int_equal(cf_keys_generate(&ka), CF_OK);
    assert_int_equal(cf_keys_generate(&kb), CF_OK);
    assert_int_equal(cf_keys_generate(&client), CF_OK);
    s_fake_t a, b;
    s_fake_start(&a, ka.secret_z85);
    s_fake_start(&b, kb.secret_z85);
    char list[300], keys[200];
    snprintf(list, sizeof list, "%s,%s", a.endpoint, b.endpoint);
    snprintf(keys, sizeof keys, "%s, %s", ka.public_z85, kb.public_z85);
    cf_client_config_t config = {
        .endpoint = list,
        .heartbeat_ivl_ms = S_IVL_MS,
        .connect_timeout_ms = 2000,
        .curve_server_key = keys,
        .curve_public_key = client.public_z85,
        .curve_secret_key = client.secret_z85,
    };
    void *backend = cf_client_new(&config);
    assert_non_null(backend);
    cf_client_ops.destroy(&backend);

    //  Two keys for three endpoints: which goes where cannot be guessed.
    snprintf(list, sizeof list, "%s,%s,%s", a.endpoint, b.endpoint, S_NOBODY);
    backend = cf_client_new(&config);
    assert_null(backend);
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_non_null(strstr(cf_last_error(), "2 broker keys for 3 broker endpoints"));

    //  One key for all: the broker with another key never accepts us, the
    //  other does.
    snprintf(list, sizeof list, "%s,%s", a.endpoint, b.endpoint);
    config.curve_server_key = ka.public_z85;
    backend = cf_client_new(&config);
    assert_non_null(backend);
    cf_client_ops.destroy(&backend);
    cf_keys_wipe(&ka);
    cf_keys_wipe(&kb);
    cf_keys_wipe(&client);
    s_fake_stop(&a);
    s_fake_stop(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_list_with_spaces_makes_one_link_per_broker),
        cmocka_unit_test(test_a_bad_endpoint_is_refused_naming_it),
        cmocka_unit_test(test_a_duplicate_endpoint_is_ignored_with_a_warning),
        cmocka_unit_test(test_no_broker_answering_fails_within_the_timeout_naming_all),
        cmocka_unit_test(test_a_silent_broker_of_the_list_is_named_after_the_timeout),
        cmocka_unit_test_setup_teardown(test_a_burst_is_spread_over_the_brokers, s_two_setup,
                                        s_two_teardown),
        cmocka_unit_test_setup_teardown(
            test_a_silent_brokers_task_moves_and_its_late_result_is_ignored, s_two_setup,
            s_two_teardown),
        cmocka_unit_test_setup_teardown(test_a_dropped_connection_moves_the_tasks_at_once,
                                        s_two_setup, s_two_teardown),
        cmocka_unit_test(test_each_broker_has_its_own_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
