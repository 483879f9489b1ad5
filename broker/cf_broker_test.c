//  cf_broker: a real broker actor on tcp://127.0.0.1:*, with the
//  test playing clients and workers on raw DEALER sockets through the
//  codec. Every wait polls the sockets with a generous limit; nothing is
//  asserted on timing.

#include "cf_broker.h"
#include "cf_clock.h"
#include "cf_proto.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include <cmocka.h>

//  How long any expected event may take before the test fails.
#define WAIT_MS  5000
//  Slices of waiting; peers in the keep-alive list heartbeat every slice.
#define SLICE_MS 10

//  One msgpack array with one int: [7].
static const uint8_t s_args[] = { 0x91, 0x07 };
//  One msgpack value: 14.
static const uint8_t s_value14[] = { 0x0e };

typedef struct {
    void *ctx;
    cf_broker_t *broker;
    void *peers[8];    //  the test's sockets, closed at teardown
    bool silent[8];    //  true: it stopped heartbeating
    size_t peer_count;
} s_fixture_t;

static s_fixture_t *s_fx;    //  the running test's fixture (one at a time)

//  Over tcp on loopback rather than inproc: inproc hands message buffers
//  between threads through libzmq's lock-free pipes, which ThreadSanitizer
//  cannot see (libzmq is not instrumented), so every inproc message would
//  look like a race in our decoder.
static cf_broker_t *s_start(s_fixture_t *fx, int ivl_ms, size_t max_queued, size_t per_client)
{
    cf_broker_config_t config = {
        .client_endpoint = "tcp://127.0.0.1:*",
        .worker_endpoint = "tcp://127.0.0.1:*",
        .zmq_context = fx->ctx,
        .heartbeat_ivl_ms = ivl_ms,
        .heartbeat_liveness = 3,
        .max_queued = max_queued,
        .max_queued_per_client = per_client,
    };
    fx->broker = cf_broker_new(&config);
    assert_non_null(fx->broker);
    assert_true(strncmp(cf_broker_client_endpoint(fx->broker), "tcp://127.0.0.1:", 16) == 0);
    return fx->broker;
}

static int s_setup(void **state)
{
    s_fixture_t *fx = calloc(1, sizeof *fx);
    fx->ctx = zmq_ctx_new();
    *state = s_fx = fx;
    return fx->ctx ? 0 : -1;
}

//  The fixture with a broker running as most tests want it: heartbeat
//  1000 ms, liveness 3, no queue limits.
static int s_setup_broker(void **state)
{
    int rc = s_setup(state);
    if (rc == 0)
        s_start(s_fx, 1000, 0, 0);
    return rc;
}

static int s_teardown(void **state)
{
    s_fixture_t *fx = *state;
    cf_broker_destroy(&fx->broker);
    for (size_t i = 0; i < fx->peer_count; i++) {
        int linger = 0;
        zmq_setsockopt(fx->peers[i], ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(fx->peers[i]);
    }
    zmq_ctx_term(fx->ctx);
    free(fx);
    s_fx = NULL;
    return 0;
}

//  A DEALER with a fixed identity, connected to endpoint. Closed at teardown.
static void *s_peer(s_fixture_t *fx, const char *identity, const char *endpoint)
{
    void *sock = zmq_socket(fx->ctx, ZMQ_DEALER);
    assert_non_null(sock);
    assert_int_equal(cf_proto_socket_setup(sock, false), CF_OK);
    assert_int_equal(zmq_setsockopt(sock, ZMQ_ROUTING_ID, identity, strlen(identity)), 0);
    assert_int_equal(zmq_connect(sock, endpoint), 0);
    assert_true(fx->peer_count < 8);
    fx->silent[fx->peer_count] = false;
    fx->peers[fx->peer_count++] = sock;
    return sock;
}

static void *s_client(s_fixture_t *fx, const char *identity)
{
    return s_peer(fx, identity, cf_broker_client_endpoint(fx->broker));
}

//  A worker socket that has not announced itself.
static void *s_worker_peer(s_fixture_t *fx, const char *identity)
{
    return s_peer(fx, identity, cf_broker_worker_endpoint(fx->broker));
}

//  The socket stops heartbeating while the test waits: it goes silent.
static void s_silence(s_fixture_t *fx, void *sock)
{
    for (size_t i = 0; i < fx->peer_count; i++)
        if (fx->peers[i] == sock)
            fx->silent[i] = true;
}

static cf_proto_enc_t *s_enc(void)
{
    static cf_proto_enc_t *enc = NULL;
    if (!enc)
        enc = cf_proto_enc_new();
    assert_non_null(enc);
    return enc;
}

static void s_send_heartbeat(void *sock)
{
    cf_proto_enc_heartbeat(s_enc(), 0, 0);
    assert_int_equal(cf_proto_enc_send(s_enc(), sock, NULL, 0), CF_OK);
}

//  Keeps the test's peers alive; a refused send (no broker any more) is
//  fine here.
static void s_heartbeat_all(void)
{
    for (size_t i = 0; s_fx && i < s_fx->peer_count; i++) {
        if (!s_fx->silent[i]) {
            cf_proto_enc_heartbeat(s_enc(), 0, 0);
            (void)cf_proto_enc_send(s_enc(), s_fx->peers[i], NULL, 0);
        }
    }
}

//  Sends one SUBMIT with count tasks numbered first.. for function fn.
static void s_submit(void *sock, uint64_t first, size_t count, const char *fn, int32_t retries,
                     uint32_t timeout_ms, uint32_t flags)
{
    cf_proto_enc_t *enc = s_enc();
    cf_proto_enc_begin(enc, CF_MSG_SUBMIT);
    for (size_t i = 0; i < count; i++)
        assert_int_equal(cf_proto_enc_task(enc, first + i, fn, strlen(fn), s_args, sizeof s_args,
                                           retries, timeout_ms, flags),
                         CF_OK);
    assert_int_equal(cf_proto_enc_send(enc, sock, NULL, 0), CF_OK);
}

static void s_send_ids(void *sock, cf_msg_type_t type, const uint64_t *ids, size_t count)
{
    cf_proto_enc_t *enc = s_enc();
    cf_proto_enc_begin(enc, type);
    for (size_t i = 0; i < count; i++)
        assert_int_equal(cf_proto_enc_id(enc, ids[i]), CF_OK);
    assert_int_equal(cf_proto_enc_send(enc, sock, NULL, 0), CF_OK);
}

static void s_ready(void *sock, uint32_t credit, int32_t pid)
{
    cf_proto_enc_ready(s_enc(), credit, credit, "testhost", pid, 0, NULL, 0);
    assert_int_equal(cf_proto_enc_send(s_enc(), sock, NULL, 0), CF_OK);
}

static void s_result_ok(void *sock, uint64_t id)
{
    cf_proto_enc_t *enc = s_enc();
    cf_proto_enc_begin(enc, CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_ok(enc, id, s_value14, sizeof s_value14), CF_OK);
    assert_int_equal(cf_proto_enc_send(enc, sock, NULL, 0), CF_OK);
}

static void s_result_error(void *sock, uint64_t id, const char *type)
{
    cf_proto_enc_t *enc = s_enc();
    cf_proto_enc_begin(enc, CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_error(enc, id, type, "bad input", "f", "testhost", 42),
                     CF_OK);
    assert_int_equal(cf_proto_enc_send(enc, sock, NULL, 0), CF_OK);
}

static bool s_str_eq(cf_proto_str_t s, const char *text)
{
    return s.len == strlen(text) && memcmp(s.ptr, text, s.len) == 0;
}

static bool s_str_has(cf_proto_str_t s, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= s.len; i++)
        if (memcmp(s.ptr + i, needle, n) == 0)
            return true;
    return false;
}

//  The answers a peer gets while the broker does not know it yet (the
//  test's heartbeats reach the broker before a peer registers).
static bool s_unknown_peer_error(const cf_proto_msg_t *msg)
{
    return msg->type == CF_MSG_ERROR
           && (s_str_eq(msg->text, CF_PROTO_UNKNOWN_CLIENT)
               || s_str_eq(msg->text, CF_PROTO_UNKNOWN_WORKER));
}

//  The next message on sock that is not a HEARTBEAT, STARTED or an
//  unknown-peer ERROR (unless that is what is wanted), within WAIT_MS; the test's other
//  peers heartbeat meanwhile.
static cf_proto_msg_t *s_expect(void *sock, cf_msg_type_t type)
{
    int64_t deadline = cf_clock_now_ms() + WAIT_MS;
    while (cf_clock_now_ms() < deadline) {
        s_heartbeat_all();
        zmq_pollitem_t item = { sock, 0, ZMQ_POLLIN, 0 };
        int rc = zmq_poll(&item, 1, SLICE_MS);
        if (rc <= 0)
            continue;
        cf_proto_msg_t *msg = NULL;
        assert_int_equal(cf_proto_recv(sock, false, NULL, &msg), CF_OK);
        //  STARTED is advice: tests that care ask for it.
        if ((msg->type == CF_MSG_HEARTBEAT && type != CF_MSG_HEARTBEAT)
            || (msg->type == CF_MSG_STARTED && type != CF_MSG_STARTED)
            || (s_unknown_peer_error(msg) && type != CF_MSG_ERROR)) {
            cf_proto_msg_destroy(&msg);
            continue;
        }
        if (msg->type != type)
            fail_msg("expected %s, got %s", cf_proto_command_name(type),
                     cf_proto_command_name(msg->type));
        return msg;
    }
    fail_msg("no %s within %d ms", cf_proto_command_name(type), WAIT_MS);
    return NULL;
}

//  Collects count tasks from TASK messages on a worker socket; returns how
//  many messages carried them.
static size_t s_take_tasks(void *worker, uint64_t *ids, char (*fns)[16], size_t count)
{
    size_t got = 0, messages = 0;
    while (got < count) {
        cf_proto_msg_t *msg = s_expect(worker, CF_MSG_TASK);
        messages++;
        assert_true(got + msg->count <= count);
        for (size_t i = 0; i < msg->count; i++) {
            if (ids)
                ids[got] = msg->tasks[i].id;
            if (fns) {
                size_t len = msg->tasks[i].function.len < 15 ? msg->tasks[i].function.len : 15;
                memcpy(fns[got], msg->tasks[i].function.ptr, len);
                fns[got][len] = '\0';
            }
            assert_int_equal(msg->tasks[i].args_len, sizeof s_args);
            assert_memory_equal(msg->tasks[i].args, s_args, sizeof s_args);
            got++;
        }
        cf_proto_msg_destroy(&msg);
    }
    return messages;
}

//  The broker's counters now.
static cf_broker_stats_t s_stats(void)
{
    cf_broker_stats_t stats;
    assert_int_equal(cf_broker_stats(s_fx->broker, &stats), CF_OK);
    return stats;
}

//  Waits until the broker's counters satisfy check.
typedef bool(s_stats_check_fn)(const cf_broker_stats_t *stats, uint64_t arg);
static cf_broker_stats_t s_wait_stats(s_stats_check_fn *check, uint64_t arg)
{
    cf_broker_stats_t stats;
    int64_t deadline = cf_clock_now_ms() + WAIT_MS;
    for (;;) {
        stats = s_stats();
        if (check(&stats, arg))
            return stats;
        if (cf_clock_now_ms() > deadline)
            fail_msg("broker stats never reached the expected state: clients %llu workers %llu "
                     "queued %llu running %llu completed %llu dropped %llu deferred %llu",
                     (unsigned long long)stats.clients, (unsigned long long)stats.workers,
                     (unsigned long long)stats.queued, (unsigned long long)stats.running,
                     (unsigned long long)stats.completed, (unsigned long long)stats.dropped,
                     (unsigned long long)stats.deferred);
        s_heartbeat_all();
        zmq_poll(NULL, 0, SLICE_MS);
    }
}

static bool s_queued_is(const cf_broker_stats_t *s, uint64_t n)
{
    return s->queued == n;
}
static bool s_workers_is(const cf_broker_stats_t *s, uint64_t n)
{
    return s->workers == n;
}
static bool s_clients_is(const cf_broker_stats_t *s, uint64_t n)
{
    return s->clients == n;
}
static bool s_ignored_is(const cf_broker_stats_t *s, uint64_t n)
{
    return s->ignored == n;
}
static bool s_malformed_is(const cf_broker_stats_t *s, uint64_t n)
{
    return s->malformed == n;
}
static bool s_lost_is(const cf_broker_stats_t *s, uint64_t n)
{
    return s->lost_workers == n;
}
static bool s_submitted_is(const cf_broker_stats_t *s, uint64_t n)
{
    return s->submitted == n;
}

//  Returns the single id of a STARTED message (or asserts its count).
static void s_expect_started(void *client, const uint64_t *ids, size_t count)
{
    size_t got = 0;
    bool seen[16] = { false };
    assert_true(count <= 16);
    while (got < count) {
        cf_proto_msg_t *msg = s_expect(client, CF_MSG_STARTED);
        for (size_t i = 0; i < msg->count; i++) {
            bool found = false;
            for (size_t k = 0; k < count; k++) {
                if (ids[k] == msg->ids[i] && !seen[k]) {
                    seen[k] = found = true;
                    break;
                }
            }
            if (!found)
                fail_msg("unexpected STARTED for %llu", (unsigned long long)msg->ids[i]);
            got++;
        }
        cf_proto_msg_destroy(&msg);
    }
}

//  The next RESULT, which must hold exactly one item.
static cf_proto_msg_t *s_expect_result(void *client, uint64_t id, cf_status_t status)
{
    cf_proto_msg_t *msg = s_expect(client, CF_MSG_RESULT);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->results[0].id, id);
    assert_int_equal(msg->results[0].status, status);
    return msg;
}

//  The next RESULT holds exactly one item, id with status, and nothing more
//  is asked of it.
static void s_expect_status(void *client, uint64_t id, cf_status_t status)
{
    cf_proto_msg_t *msg = s_expect_result(client, id, status);
    cf_proto_msg_destroy(&msg);
}

// ---------------------------------------------------------------------------

//  A worker peer named name that announced credit (threads = credit), once
//  the broker counts workers of them.
static void *s_worker(s_fixture_t *fx, const char *name, uint32_t credit, int32_t pid,
                      uint64_t workers)
{
    void *worker = s_worker_peer(fx, name);
    s_ready(worker, credit, pid);
    s_wait_stats(s_workers_is, workers);
    return worker;
}

static void s_send_disconnect(void *sock, const char *reason)
{
    cf_proto_enc_begin(s_enc(), CF_MSG_DISCONNECT);
    cf_proto_enc_text(s_enc(), reason, 0);
    assert_int_equal(cf_proto_enc_send(s_enc(), sock, NULL, 0), CF_OK);
}

//  Another worker, name with pid, announcing one slot, takes the next
//  queued task (its broker id in *id, unless NULL).
static void *s_worker_takes_one(s_fixture_t *fx, const char *name, int32_t pid, uint64_t *id)
{
    void *worker = s_worker_peer(fx, name);
    s_ready(worker, 1, pid);
    s_take_tasks(worker, id, NULL, 1);
    return worker;
}

//  What a client submits in a scene: count tasks numbered from first, of
//  fn ("f" when NULL), with retries, timeout_ms and flags.
typedef struct {
    uint64_t first;
    size_t count;
    const char *fn;
    int32_t retries;
    uint32_t timeout_ms;
    uint32_t flags;
} s_tasks_t;

//  The usual cast on the running broker: worker "w1" (pid) that announced
//  credit, client "c1" that submitted tasks, and the first taken of them,
//  which the worker took (their broker ids in ids).
typedef struct {
    void *worker;
    void *client;
    uint64_t ids[4];
} s_scene_t;

static s_scene_t s_scene(uint32_t credit, int32_t pid, s_tasks_t tasks, size_t taken)
{
    s_scene_t sc = { .worker = s_worker(s_fx, "w1", credit, pid, 1),
                     .client = s_client(s_fx, "c1") };
    s_submit(sc.client, tasks.first, tasks.count, tasks.fn ? tasks.fn : "f", tasks.retries,
             tasks.timeout_ms, tasks.flags);
    assert_true(taken <= 4);
    if (taken)
        s_take_tasks(sc.worker, sc.ids, NULL, taken);
    return sc;
}

static void test_tasks_are_dispatched_within_worker_credit(void **state)
{
    (void)state;
    s_scene_t sc = s_scene(2, 101, (s_tasks_t){ 100, 3, "double", 3, 0, 0 }, 2);
    //  Two slots, two tasks; the third waits.
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.queued, 1);
    assert_int_equal(stats.running, 2);
    assert_int_equal(stats.submitted, 3);
    assert_int_equal(stats.clients, 1);
    assert_int_equal(stats.workers, 1);
    static const uint64_t first_two[] = { 100, 101 };
    s_expect_started(sc.client, first_two, 2);
    //  The broker's ids are its own.
    assert_true(sc.ids[0] != sc.ids[1]);

    //  A result returns a slot: the third task goes out. Within one turn
    //  of the broker STARTED goes before RESULT.
    s_result_ok(sc.worker, sc.ids[0]);
    s_take_tasks(sc.worker, sc.ids + 2, NULL, 1);
    static const uint64_t third[] = { 102 };
    s_expect_started(sc.client, third, 1);
    cf_proto_msg_t *msg = s_expect_result(sc.client, 100, CF_STATUS_OK);
    assert_int_equal(msg->results[0].value_len, sizeof s_value14);
    assert_memory_equal(msg->results[0].value, s_value14, sizeof s_value14);
    cf_proto_msg_destroy(&msg);

    s_result_ok(sc.worker, sc.ids[1]);
    s_expect_status(sc.client, 101, CF_STATUS_OK);
    s_result_ok(sc.worker, sc.ids[2]);
    s_expect_status(sc.client, 102, CF_STATUS_OK);
    stats = s_stats();
    assert_int_equal(stats.completed, 3);
    assert_int_equal(stats.running, 0);
    assert_int_equal(stats.queued, 0);
}

static void test_credit_message_adds_slots(void **state)
{
    (void)state;
    s_scene_t sc = s_scene(0, 101, (s_tasks_t){ .first = 1, .count = 2 }, 0);
    s_wait_stats(s_queued_is, 2);
    cf_proto_enc_credit(s_enc(), 2);
    assert_int_equal(cf_proto_enc_send(s_enc(), sc.worker, NULL, 0), CF_OK);
    s_take_tasks(sc.worker, NULL, NULL, 2);
}

//  Which of two workers has a message waiting (the other must have none).
static void *s_the_one_with_tasks(void *a, void *b)
{
    zmq_pollitem_t items[2] = { { a, 0, ZMQ_POLLIN, 0 }, { b, 0, ZMQ_POLLIN, 0 } };
    assert_true(zmq_poll(items, 2, WAIT_MS) > 0);
    return items[0].revents ? a : b;
}

//  A burst fills one worker's idle threads in one TASK message before the
//  next worker gets any (a message a task would cost the broker 3-4x the
//  CPU once workers outnumber the burst), and the next burst starts at the
//  other worker.
static void test_a_burst_fills_one_workers_idle_threads_in_one_message(void **state)
{
    s_fixture_t *fx = *state;
    void *w1 = s_worker_peer(fx, "w1");
    void *w2 = s_worker_peer(fx, "w2");
    s_ready(w1, 8, 1);
    s_ready(w2, 8, 2);
    s_wait_stats(s_workers_is, 2);
    void *client = s_client(fx, "c1");
    s_submit(client, 1, 4, "f", 0, 0, 0);
    void *first = s_the_one_with_tasks(w1, w2);
    assert_int_equal(s_take_tasks(first, NULL, NULL, 4), 1);
    static const uint64_t burst1[] = { 1, 2, 3, 4 };
    s_expect_started(client, burst1, 4);
    s_submit(client, 5, 4, "f", 0, 0, 0);
    void *second = first == w1 ? w2 : w1;
    assert_ptr_equal(s_the_one_with_tasks(w1, w2), second);
    assert_int_equal(s_take_tasks(second, NULL, NULL, 4), 1);
    static const uint64_t burst2[] = { 5, 6, 7, 8 };
    s_expect_started(client, burst2, 4);
    //  More than one worker's idle threads: the rest go to the other.
    s_submit(client, 9, 12, "f", 0, 0, 0);
    assert_int_equal(s_take_tasks(first, NULL, NULL, 4), 1);
    assert_int_equal(s_take_tasks(second, NULL, NULL, 4), 1);
    s_wait_stats(s_queued_is, 4);
}

//  A worker announcing more credit than threads (it prefetches) gets
//  tasks beyond its threads only while it turns tasks over: one whose only
//  thread sits on a task keeps nothing else, so a second worker joining
//  gets the waiting task, and a result makes the first one take the next.
static void test_prefetch_only_to_workers_turning_over(void **state)
{
    s_fixture_t *fx = *state;
    void *w1 = s_worker_peer(fx, "w1");
    cf_proto_enc_ready(s_enc(), 4, 1, "testhost", 1, 0, NULL, 0);
    assert_int_equal(cf_proto_enc_send(s_enc(), w1, NULL, 0), CF_OK);
    s_wait_stats(s_workers_is, 1);
    void *client = s_client(fx, "c1");
    s_submit(client, 1, 1, "long", 0, 0, 0);
    uint64_t first;
    s_take_tasks(w1, &first, NULL, 1);

    //  Credit 4 but one thread, busy, and no result since: both wait here.
    s_submit(client, 2, 2, "next", 0, 0, 0);
    cf_broker_stats_t stats = s_wait_stats(s_submitted_is, 3);
    assert_int_equal(stats.queued, 2);
    assert_int_equal(stats.running, 1);

    s_worker_takes_one(fx, "w2", 2, NULL);
    s_wait_stats(s_queued_is, 1);

    s_result_ok(w1, first);
    s_take_tasks(w1, NULL, NULL, 1);
    stats = s_wait_stats(s_queued_is, 0);
    assert_int_equal(stats.running, 2);
}

static void test_round_robin_between_clients(void **state)
{
    s_fixture_t *fx = *state;
    void *a = s_client(fx, "client-a");
    void *b = s_client(fx, "client-b");
    s_submit(a, 1000, 20, "fa", 0, 0, 0);
    s_wait_stats(s_queued_is, 20);
    s_submit(b, 2000, 2, "fb", 0, 0, 0);
    s_wait_stats(s_queued_is, 22);

    //  A worker with four slots: turns alternate, so b's two tasks are among
    //  the first four although a queued twenty before them.
    void *worker = s_worker_peer(fx, "w1");
    s_ready(worker, 4, 1);
    char fns[4][16];
    s_take_tasks(worker, NULL, fns, 4);
    int fa = 0, fb = 0;
    for (int i = 0; i < 4; i++) {
        fa += strcmp(fns[i], "fa") == 0;
        fb += strcmp(fns[i], "fb") == 0;
    }
    assert_int_equal(fa, 2);
    assert_int_equal(fb, 2);
    assert_string_equal(fns[0], "fa");    //  a came first
    assert_string_equal(fns[1], "fb");
}

//  A client's only task goes out marked LONE to a worker that reads the
//  flag (READY feature LONE), so the worker runs it before what it queues
//  for busy clients; a client's tasks among others go unmarked, and a
//  worker without the feature gets no flags at all.
static void test_a_clients_only_task_is_marked_lone(void **state)
{
    s_fixture_t *fx = *state;
    //  A worker that never said LONE, a client with one task: no flag.
    void *first = s_client(fx, "client-first");
    s_submit(first, 3000, 1, "fb", 0, 0, 0);
    s_wait_stats(s_queued_is, 1);
    void *plain = s_worker_peer(fx, "w-plain");
    s_ready(plain, 1, 2);
    cf_proto_msg_t *msg = s_expect(plain, CF_MSG_TASK);
    assert_int_equal(msg->count, 1);
    assert_true(s_str_eq(msg->tasks[0].function, "fb"));
    assert_int_equal(msg->tasks[0].flags, 0);
    cf_proto_msg_destroy(&msg);

    void *busy = s_client(fx, "client-busy");
    void *lone = s_client(fx, "client-lone");
    s_submit(busy, 1000, 3, "fa", 0, 0, 0);
    s_wait_stats(s_queued_is, 3);
    s_submit(lone, 2000, 1, "fb", 0, 0, 0);
    s_wait_stats(s_queued_is, 4);
    void *worker = s_worker_peer(fx, "w-lone");
    cf_proto_enc_ready(s_enc(), 4, 4, "testhost", 1, CF_PROTO_FEATURE_LONE, NULL, 0);
    assert_int_equal(cf_proto_enc_send(s_enc(), worker, NULL, 0), CF_OK);
    size_t got = 0, marked = 0;
    while (got < 4) {
        msg = s_expect(worker, CF_MSG_TASK);
        for (size_t i = 0; i < msg->count; i++, got++) {
            bool is_lone = s_str_eq(msg->tasks[i].function, "fb");
            assert_int_equal(msg->tasks[i].flags, is_lone ? CF_TASK_LONE : 0);
            marked += is_lone;
        }
        cf_proto_msg_destroy(&msg);
    }
    assert_int_equal(got, 4);
    assert_int_equal(marked, 1);
}

static void test_tasks_over_the_limits_are_answered_busy(void **state)
{
    s_fixture_t *fx = *state;
    s_start(fx, 1000, 3, 2);
    void *a = s_client(fx, "client-a");
    void *b = s_client(fx, "client-b");
    s_submit(a, 1, 3, "f", 0, 0, 0);
    //  Per-client limit 2: the third is refused at once.
    s_expect_status(a, 3, CF_STATUS_BUSY);
    //  Total limit 3: b gets one in, the next is refused.
    s_submit(b, 10, 2, "f", 0, 0, 0);
    s_expect_status(b, 11, CF_STATUS_BUSY);
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.busy, 2);
    assert_int_equal(stats.queued, 3);
    assert_int_equal(stats.submitted, 3);
}

static void test_cancel_removes_queued_and_reports_started(void **state)
{
    (void)state;
    s_scene_t sc = s_scene(1, 1, (s_tasks_t){ .first = 1, .count = 2 }, 1);
    static const uint64_t one[] = { 1 };
    s_expect_started(sc.client, one, 1);

    static const uint64_t cancel[] = { 1, 2, 999 };
    s_send_ids(sc.client, CF_MSG_CANCEL, cancel, 3);
    //  The queued one is cancelled; the started one is reported started
    //  again; the unknown one is ignored. Both replies come in one turn,
    //  STARTED first.
    s_expect_started(sc.client, one, 1);
    s_expect_status(sc.client, 2, CF_STATUS_CANCELLED);
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.cancelled, 1);
    assert_int_equal(stats.queued, 0);
    //  The started one still completes.
    s_result_ok(sc.worker, sc.ids[0]);
    s_expect_status(sc.client, 1, CF_STATUS_OK);
}

//  The tasks of a lost worker are suspects: each runs alone on a worker
//  that holds nothing, and one waiting for such a worker holds no other task
//  back. A supervisor that knows what the dead process ran makes only that
//  task a suspect; the others go back free.
static void test_a_lost_workers_tasks_run_alone_and_hold_nothing_back(void **state)
{
    s_fixture_t *fx = *state;
    //  w1 (4 slots) takes tasks 1..4; w2 (2 slots) takes 5 and keeps it.
    s_scene_t sc = s_scene(4, 1, (s_tasks_t){ 1, 4, "f", 3, 0, 0 }, 4);
    void *w2 = s_worker(fx, "w2", 2, 2, 2);
    s_submit(sc.client, 5, 1, "f", 3, 0, 0);
    s_take_tasks(w2, NULL, NULL, 1);

    //  w1 dies running task 2 (its broker id is sc.ids[1]).
    assert_int_equal(cf_broker_worker_died(fx->broker, "w1", 2, &sc.ids[1], 1), CF_OK);
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.retried, 1);     //  task 2 alone
    assert_in_range(stats.queued, 3, 4);    //  w2's free slot may have taken one

    //  w2 holds a task, so the suspect waits; an ordinary task (1, 3 and 4
    //  never began) fills w2's free slot at once: the suspect holds nothing
    //  back.
    s_take_tasks(w2, NULL, NULL, 1);

    //  An empty worker takes the suspect, and nothing else with it.
    void *w3 = s_worker(fx, "w3", 4, 3, 2);
    cf_proto_msg_t *msg = s_expect(w3, CF_MSG_TASK);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->tasks[0].id, sc.ids[1]);
    cf_proto_msg_destroy(&msg);
    //  w3 answers it, and only then takes the other two.
    s_result_ok(w3, sc.ids[1]);
    s_expect_status(sc.client, 2, CF_STATUS_OK);
    s_take_tasks(w3, NULL, NULL, 2);
}

static void test_reported_worker_loss_retries_then_fails_with_worker_lost(void **state)
{
    s_fixture_t *fx = *state;
    assert_int_equal(cf_broker_worker_lost(fx->broker, "nobody", 6), CF_ENOTFOUND);
    //  One retry.
    s_scene_t sc = s_scene(1, 1, (s_tasks_t){ 7, 1, "crashy", 1, 0, 0 }, 1);
    static const uint64_t seven[] = { 7 };
    s_expect_started(sc.client, seven, 1);

    //  The supervisor saw w1 die: the task goes back and a new worker gets it.
    assert_int_equal(cf_broker_worker_lost(fx->broker, "w1", 2), CF_OK);
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.lost_workers, 1);
    assert_int_equal(stats.retried, 1);
    assert_int_equal(stats.queued, 1);
    uint64_t second[1];
    s_worker_takes_one(fx, "w2", 2, second);
    s_expect_started(sc.client, seven, 1);

    //  Lost again: the one retry is used up.
    assert_int_equal(cf_broker_worker_lost(fx->broker, "w2", 2), CF_OK);
    cf_proto_msg_t *msg = s_expect_result(sc.client, 7, CF_STATUS_ERROR);
    const cf_proto_error_t *error = &msg->results[0].error;
    assert_true(s_str_eq(error->type, "WorkerLost"));
    assert_true(s_str_eq(error->function, "crashy"));
    assert_true(s_str_has(error->message, "task 7"));
    assert_true(s_str_has(error->message, "crashy"));
    assert_true(s_str_has(error->message, "w2"));
    assert_true(s_str_eq(error->host, "testhost"));
    assert_int_equal(error->pid, 2);
    cf_proto_msg_destroy(&msg);
    stats = s_stats();
    assert_int_equal(stats.failed, 1);
    assert_int_equal(stats.lost_workers, 2);

    //  w1's late result for the task is ignored, and w1 is told to announce.
    s_result_ok(sc.worker, sc.ids[0]);
    cf_proto_msg_t *hb = s_expect(sc.worker, CF_MSG_HEARTBEAT);
    assert_true(hb->boot != 0);
    assert_int_equal(hb->ivl_ms, 1000);
    cf_proto_msg_destroy(&hb);
    msg = s_expect(sc.worker, CF_MSG_ERROR);
    assert_true(s_str_eq(msg->text, CF_PROTO_UNKNOWN_WORKER));
    cf_proto_msg_destroy(&msg);
    s_wait_stats(s_ignored_is, 1);
}

static void test_silent_worker_is_lost_by_heartbeat(void **state)
{
    s_fixture_t *fx = *state;
    s_start(fx, 50, 0, 0);
    void *worker = s_worker_peer(fx, "silent");
    s_ready(worker, 1, 1);
    void *client = s_client(fx, "c1");
    s_submit(client, 5, 1, "hang", -1, 0, 0);    //  no retries
    s_take_tasks(worker, NULL, NULL, 1);
    //  The worker stops talking (a frozen process); the client keeps up its
    //  heartbeats while it waits.
    s_silence(fx, worker);
    cf_proto_msg_t *msg = s_expect_result(client, 5, CF_STATUS_ERROR);
    assert_true(s_str_eq(msg->results[0].error.type, "WorkerLost"));
    assert_true(s_str_has(msg->results[0].error.message, "silent"));
    cf_proto_msg_destroy(&msg);
    cf_broker_stats_t stats = s_wait_stats(s_lost_is, 1);
    assert_int_equal(stats.workers, 0);
    assert_int_equal(stats.clients, 1);    //  the heartbeating client stays
    //  The broker heartbeats known peers: the client has seen them.
    msg = s_expect(client, CF_MSG_HEARTBEAT);
    assert_int_equal(msg->ivl_ms, 50);
    cf_proto_msg_destroy(&msg);
}

static void test_silent_client_is_lost_and_its_tasks_dropped(void **state)
{
    s_fixture_t *fx = *state;
    s_start(fx, 50, 0, 0);
    void *client = s_client(fx, "c1");
    s_submit(client, 1, 5, "f", 0, 0, 0);
    s_wait_stats(s_queued_is, 5);
    s_silence(fx, client);
    cf_broker_stats_t stats = s_wait_stats(s_clients_is, 0);
    assert_int_equal(stats.queued, 0);
    assert_int_equal(stats.dropped, 5);
    //  Back from the dead, it learns that it must resubmit.
    s_send_heartbeat(client);
    cf_proto_msg_t *msg = s_expect(client, CF_MSG_ERROR);
    assert_true(s_str_eq(msg->text, CF_PROTO_UNKNOWN_CLIENT));
    cf_proto_msg_destroy(&msg);
}

static void test_client_disconnect_drops_its_tasks_and_results(void **state)
{
    s_fixture_t *fx = *state;
    s_scene_t sc = s_scene(1, 1, (s_tasks_t){ .first = 1, .count = 3 }, 1);
    s_send_disconnect(sc.client, "bye");
    cf_broker_stats_t stats = s_wait_stats(s_clients_is, 0);
    assert_int_equal(stats.queued, 0);
    assert_int_equal(stats.running, 0);
    assert_int_equal(stats.dropped, 2);
    //  The running task's result comes back to nobody: dropped, and its slot
    //  returns (the worker gets the next client's task).
    s_result_ok(sc.worker, sc.ids[0]);
    void *other = s_client(fx, "c2");
    s_submit(other, 1, 1, "g", 0, 0, 0);
    s_take_tasks(sc.worker, NULL, NULL, 1);
    stats = s_stats();
    assert_int_equal(stats.dropped, 3);
}

static void test_result_for_unknown_id_is_ignored(void **state)
{
    s_fixture_t *fx = *state;
    void *worker = s_worker(fx, "w1", 1, 1, 1);
    s_result_ok(worker, 123456789);
    s_wait_stats(s_ignored_is, 1);
    //  Nothing reached any client: a new client's first RESULT is its own.
    void *client = s_client(fx, "c1");
    s_submit(client, 9, 1, "f", 0, 0, 0);
    uint64_t ids[1];
    s_take_tasks(worker, ids, NULL, 1);
    s_result_ok(worker, ids[0]);
    s_expect_status(client, 9, CF_STATUS_OK);
}

static void test_running_task_times_out_and_late_result_is_ignored(void **state)
{
    (void)state;
    s_scene_t sc = s_scene(1, 1, (s_tasks_t){ 3, 1, "slow", 3, 50, 0 }, 1);
    cf_proto_msg_t *msg = s_expect_result(sc.client, 3, CF_STATUS_ERROR);
    assert_true(s_str_eq(msg->results[0].error.type, "TimeoutError"));
    assert_true(s_str_has(msg->results[0].error.message, "slow"));
    cf_proto_msg_destroy(&msg);
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.timed_out, 1);
    assert_int_equal(stats.failed, 1);
    assert_int_equal(stats.running, 0);
    //  The slot is still taken: a new task waits until the late result.
    s_submit(sc.client, 4, 1, "next", 0, 0, 0);
    s_wait_stats(s_queued_is, 1);
    s_result_ok(sc.worker, sc.ids[0]);
    s_take_tasks(sc.worker, sc.ids, NULL, 1);
    s_wait_stats(s_ignored_is, 1);
    s_result_ok(sc.worker, sc.ids[0]);
    s_expect_status(sc.client, 4, CF_STATUS_OK);
}

static void test_error_is_retried_only_with_retry_on_error(void **state)
{
    (void)state;
    //  Without the flag an error goes straight back.
    s_scene_t sc = s_scene(1, 1, (s_tasks_t){ 1, 1, "f", 3, 0, 0 }, 1);
    s_result_error(sc.worker, sc.ids[0], "ValueError");
    cf_proto_msg_t *msg = s_expect_result(sc.client, 1, CF_STATUS_ERROR);
    const cf_proto_error_t *error = &msg->results[0].error;
    assert_true(s_str_eq(error->type, "ValueError"));
    assert_true(s_str_eq(error->message, "bad input"));
    assert_true(s_str_eq(error->host, "testhost"));
    assert_int_equal(error->pid, 42);
    cf_proto_msg_destroy(&msg);

    //  With it, one retry: the task runs twice, then the error passes.
    s_submit(sc.client, 2, 1, "f", 1, 0, CF_TASK_RETRY_ON_ERROR);
    s_take_tasks(sc.worker, sc.ids, NULL, 1);
    s_result_error(sc.worker, sc.ids[0], "ValueError");
    uint64_t again[1];
    s_take_tasks(sc.worker, again, NULL, 1);
    assert_int_equal(again[0], sc.ids[0]);
    s_result_error(sc.worker, again[0], "ValueError");
    s_expect_status(sc.client, 2, CF_STATUS_ERROR);
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.retried, 1);
    assert_int_equal(stats.failed, 2);
}

static void test_resubmitted_task_is_not_duplicated(void **state)
{
    s_fixture_t *fx = *state;
    void *client = s_client(fx, "c1");
    s_submit(client, 1, 2, "f", 0, 0, 0);
    s_submit(client, 1, 2, "f", 0, 0, 0);
    s_wait_stats(s_queued_is, 2);
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.submitted, 2);
}

static void test_worker_handing_a_task_back_requeues_it(void **state)
{
    (void)state;
    s_scene_t sc = s_scene(1, 1, (s_tasks_t){ 1, 1, "f", -1, 0, 0 }, 1);
    cf_proto_enc_begin(s_enc(), CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_status(s_enc(), sc.ids[0], CF_STATUS_BUSY), CF_OK);
    assert_int_equal(cf_proto_enc_send(s_enc(), sc.worker, NULL, 0), CF_OK);
    //  Back in the queue without using a retry (it has none), and the slot
    //  returned with the result, so the same worker gets it again.
    s_take_tasks(sc.worker, sc.ids, NULL, 1);
    s_result_ok(sc.worker, sc.ids[0]);
    s_expect_status(sc.client, 1, CF_STATUS_OK);
}

static void test_worker_disconnect_requeues_without_using_retries(void **state)
{
    s_fixture_t *fx = *state;
    s_scene_t sc = s_scene(1, 1, (s_tasks_t){ 1, 1, "f", -1, 0, 0 }, 1);
    s_send_disconnect(sc.worker, "stopping");
    cf_broker_stats_t stats = s_wait_stats(s_workers_is, 0);
    assert_int_equal(stats.queued, 1);
    assert_int_equal(stats.lost_workers, 0);
    s_worker_takes_one(fx, "w2", 2, NULL);
}

static void test_restarted_worker_loses_what_its_predecessor_held(void **state)
{
    (void)state;
    s_scene_t sc = s_scene(1, 100, (s_tasks_t){ 1, 1, "f", 2, 0, 0 }, 1);
    //  Same identity, another pid: the old process and its task are gone.
    s_ready(sc.worker, 1, 200);
    s_take_tasks(sc.worker, NULL, NULL, 1);
    cf_broker_stats_t stats = s_wait_stats(s_lost_is, 1);
    assert_int_equal(stats.retried, 1);
    assert_int_equal(stats.workers, 1);
}

static void s_send_raw(void *sock, const char *const *frames, size_t count)
{
    for (size_t i = 0; i < count; i++)
        assert_true(zmq_send(sock, frames[i], strlen(frames[i]), i + 1 < count ? ZMQ_SNDMORE : 0)
                    >= 0);
}

static void s_expect_error(void *sock, const char *contains)
{
    cf_proto_msg_t *msg = s_expect(sock, CF_MSG_ERROR);
    while (s_unknown_peer_error(msg) && !s_str_has(msg->text, contains)) {
        cf_proto_msg_destroy(&msg);
        msg = s_expect(sock, CF_MSG_ERROR);
    }
    if (!s_str_has(msg->text, contains))
        fail_msg("ERROR '%.*s' does not say '%s'", (int)msg->text.len, msg->text.ptr, contains);
    assert_int_equal(msg->ref, 0);
    cf_proto_msg_destroy(&msg);
}

//  Raw frames from a client are refused as malformed: answered with an
//  ERROR and counted (the count was *expected before).
static void s_expect_malformed(void *client, const char *const *frames, size_t count,
                               uint64_t *expected)
{
    s_send_raw(client, frames, count);
    s_expect_error(client, "malformed");
    s_wait_stats(s_malformed_is, ++*expected);
}

static void test_malformed_messages_are_counted_and_answered(void **state)
{
    s_fixture_t *fx = *state;
    void *client = s_client(fx, "c1");
    void *worker = s_worker_peer(fx, "w1");
    uint64_t expected = 0;
    //  Unknown peers that heartbeat would get ERRORs of their own.
    s_silence(fx, client);
    s_silence(fx, worker);

    static const char *const garbage[] = { "cf/1", "SUBMIT", "\xc1\xc1\xc1" };
    s_expect_malformed(client, garbage, 3, &expected);

    static const char *const version[] = { "cf/9", "HEARTBEAT", "\x92\x00\x00" };
    s_expect_malformed(client, version, 3, &expected);

    static const char *const lone[] = { "hello" };
    s_expect_malformed(client, lone, 1, &expected);

    static const char *const unknown[] = { "cf/1", "FROBNICATE", "\xc0" };
    s_expect_malformed(client, unknown, 3, &expected);

    //  Too many frames: read to the end and refused as one message.
    static const char *const many[] = { "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k" };
    s_expect_malformed(client, many, 11, &expected);

    //  Valid messages on the wrong side.
    s_ready(client, 1, 1);
    s_expect_error(client, "unexpected READY from a client");
    s_submit(worker, 1, 1, "f", 0, 0, 0);
    s_expect_error(worker, "unexpected SUBMIT from a worker");
    cf_broker_stats_t stats = s_wait_stats(s_malformed_is, expected + 2);
    //  None of it registered anyone or queued anything.
    assert_int_equal(stats.clients, 0);
    assert_int_equal(stats.workers, 0);
    assert_int_equal(stats.queued, 0);

    //  And the broker still works.
    s_ready(worker, 1, 1);
    s_submit(client, 1, 1, "f", 0, 0, 0);
    s_take_tasks(worker, NULL, NULL, 1);
}

//  Sends one cf/1 message with a hand-made body (bytes the codec would not
//  write).
static void s_send_body(void *sock, const char *command, const void *body, size_t size)
{
    assert_true(zmq_send(sock, "cf/1", 4, ZMQ_SNDMORE) == 4);
    assert_true(zmq_send(sock, command, strlen(command), ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(sock, body, size, 0) == (int)size);
}

//  Collects the RESULT items for count ids (in any order and batching)
//  into *results; fails on any other id. The messages are kept in msgs
//  (count of them at most) for the caller to destroy.
static void s_collect_results(void *client, size_t count, cf_proto_msg_t **msgs,
                              const cf_proto_result_t **results)
{
    size_t got = 0, m = 0;
    while (got < count) {
        cf_proto_msg_t *msg = s_expect(client, CF_MSG_RESULT);
        assert_true(got + msg->count <= count);
        for (size_t i = 0; i < msg->count; i++)
            results[got++] = &msg->results[i];
        msgs[m++] = msg;
    }
}

static const cf_proto_result_t *s_result_of(const cf_proto_result_t **results, size_t count,
                                            uint64_t id)
{
    for (size_t i = 0; i < count; i++)
        if (results[i]->id == id)
            return results[i];
    fail_msg("no result for task %llu", (unsigned long long)id);
    return NULL;
}

//  One bad task no longer sinks its batch: each is refused alone with a
//  ProtocolError under its id, the good one runs.
static void test_submit_batch_refuses_bad_tasks_one_by_one(void **state)
{
    s_fixture_t *fx = *state;
    void *worker = s_worker(fx, "w1", 4, 4001, 1);
    void *client = s_client(fx, "c1");
    static const uint8_t batch[] = {
        0x94,                                                                         //  4 tasks
        0x96, 11, 0xa1, 'f', 0xc4, 0x02, 0x91, 0x07, 0x00, 0x00, 0x00,                //  good
        0x96, 12, 0xa2, 'f', 0xff, 0xc4, 0x02, 0x91, 0x07, 0x00, 0x00, 0x00,          //  not UTF-8
        0x96, 13, 0xa3, 'f', 0x00, 'g',  0xc4, 0x02, 0x91, 0x07, 0x00, 0x00, 0x00,    //  NUL
        0x96, 14, 0xa1, 'f', 0xc4, 0x02, 0x91, 0x07, 0xa1, '3',  0x00, 0x00,    //  retries a str
    };
    s_send_body(client, "SUBMIT", batch, sizeof batch);

    cf_proto_msg_t *msgs[3] = { NULL };
    const cf_proto_result_t *results[3];
    s_collect_results(client, 3, msgs, results);
    static const struct {
        uint64_t id;
        const char *says;
        const char *function;
    } refused[] = {
        { 12, "the function name is not valid UTF-8", "" },
        { 13, "the function name contains a NUL byte", "" },
        { 14, "retries is not an int32", "f" },
    };
    for (size_t i = 0; i < 3; i++) {
        const cf_proto_result_t *r = s_result_of(results, 3, refused[i].id);
        assert_int_equal(r->status, CF_STATUS_ERROR);
        assert_true(s_str_eq(r->error.type, "ProtocolError"));
        if (!s_str_has(r->error.message, refused[i].says))
            fail_msg("task %llu: '%.*s'", (unsigned long long)r->id, (int)r->error.message.len,
                     r->error.message.ptr);
        assert_true(s_str_eq(r->error.function, refused[i].function));
    }
    for (size_t i = 0; i < 3; i++)
        cf_proto_msg_destroy(&msgs[i]);

    //  The good task went to the worker, and its result comes back.
    uint64_t id;
    char fns[1][16];
    s_take_tasks(worker, &id, fns, 1);
    assert_string_equal(fns[0], "f");
    s_result_ok(worker, id);
    cf_proto_msg_t *msg = s_expect_result(client, 11, CF_STATUS_OK);
    cf_proto_msg_destroy(&msg);
    cf_broker_stats_t stats = s_wait_stats(s_malformed_is, 3);
    assert_int_equal(stats.submitted, 1);
    assert_int_equal(stats.failed, 3);
    assert_int_equal(stats.queued + stats.running, 0);

    //  A task without a readable id sinks its batch: the ERROR says which.
    static const uint8_t no_id[] = {
        0x92, 0x96, 21,  0xa1, 'f', 0xc4, 0x02, 0x91, 0x07, 0x00, 0x00, 0x00, 0x96,
        0xa2, '2',  '2', 0xa1, 'f', 0xc4, 0x02, 0x91, 0x07, 0x00, 0x00, 0x00,
    };
    s_send_body(client, "SUBMIT", no_id, sizeof no_id);
    s_expect_error(client, "malformed SUBMIT: task 2 of 2 has no readable id");
    stats = s_wait_stats(s_malformed_is, 4);
    assert_int_equal(stats.submitted, 1);
}

// ---------------------------------------------------------------------------
//  STOP (cf_future_stop)

//  A worker peer that takes STOP (READY feature STOP), threads = credit.
static void *s_stop_worker(s_fixture_t *fx, const char *name, uint32_t credit, int32_t pid,
                           uint64_t workers)
{
    void *worker = s_worker_peer(fx, name);
    cf_proto_enc_ready(s_enc(), credit, credit, "testhost", pid,
                       CF_PROTO_FEATURE_BEGUN | CF_PROTO_FEATURE_STOP, NULL, 0);
    assert_int_equal(cf_proto_enc_send(s_enc(), worker, NULL, 0), CF_OK);
    s_wait_stats(s_workers_is, workers);
    return worker;
}

static void s_send_stop(void *sock, const uint64_t *ids, size_t count, uint32_t grace_ms)
{
    cf_proto_enc_begin(s_enc(), CF_MSG_STOP);
    for (size_t i = 0; i < count; i++)
        assert_int_equal(cf_proto_enc_stop(s_enc(), ids[i], grace_ms), CF_OK);
    assert_int_equal(cf_proto_enc_send(s_enc(), sock, NULL, 0), CF_OK);
}

//  The worker gets STOP [[id, grace_ms]].
static void s_expect_stop(void *worker, uint64_t id, uint32_t grace_ms)
{
    cf_proto_msg_t *msg = s_expect(worker, CF_MSG_STOP);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->stops[0].id, id);
    assert_int_equal(msg->stops[0].grace_ms, grace_ms);
    cf_proto_msg_destroy(&msg);
}

//  The client gets RESULT id Interrupted whose message holds needle.
static void s_expect_interrupted(void *client, uint64_t id, const char *needle)
{
    cf_proto_msg_t *msg = s_expect_result(client, id, CF_STATUS_ERROR);
    const cf_proto_error_t *error = &msg->results[0].error;
    assert_true(s_str_eq(error->type, CF_INTERRUPTED));
    if (!s_str_has(error->message, needle))
        fail_msg("'%.*s' does not say '%s'", (int)error->message.len, error->message.ptr, needle);
    cf_proto_msg_destroy(&msg);
}

static void test_stop_cancels_queued_and_asks_workers_that_take_it(void **state)
{
    s_fixture_t *fx = *state;
    void *w1 = s_stop_worker(fx, "w1", 1, 1, 1);
    void *client = s_client(fx, "c1");
    //  Retries on error: a stopped task's error is final all the same.
    s_submit(client, 1, 2, "f", 3, 0, CF_TASK_RETRY_ON_ERROR);
    uint64_t id1;
    s_take_tasks(w1, &id1, NULL, 1);
    static const uint64_t stop[] = { 2, 1, 999 };
    s_send_stop(client, stop, 3, 250);
    //  Queued: cancelled at once. Running: the worker is asked. Unknown: nothing.
    s_expect_status(client, 2, CF_STATUS_CANCELLED);
    s_expect_stop(w1, id1, 250);
    //  The worker says it stopped.
    cf_proto_enc_begin(s_enc(), CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_error(s_enc(), id1, CF_INTERRUPTED, "asked to stop", "f",
                                               "testhost", 1),
                     CF_OK);
    assert_int_equal(cf_proto_enc_send(s_enc(), w1, NULL, 0), CF_OK);
    s_expect_interrupted(client, 1, "asked to stop");
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.retried, 0);
    assert_int_equal(stats.cancelled, 1);
    assert_int_equal(stats.failed, 1);

    //  A worker without feature STOP is not sent STOP: its task runs to its end.
    s_send_disconnect(w1, "leaving");
    s_wait_stats(s_workers_is, 0);
    void *w2 = s_worker(fx, "w2", 1, 2, 1);
    s_submit(client, 3, 1, "f", 0, 0, 0);
    uint64_t id3;
    s_take_tasks(w2, &id3, NULL, 1);
    static const uint64_t three[] = { 3 };
    s_send_stop(client, three, 1, 0);
    s_result_ok(w2, id3);
    //  (s_expect would fail on a STOP reaching w2 before the next TASK.)
    s_expect_status(client, 3, CF_STATUS_OK);
    s_submit(client, 4, 1, "f", 0, 0, 0);
    s_take_tasks(w2, NULL, NULL, 1);

    //  STOP from a worker is unexpected there.
    s_send_stop(w2, three, 1, 0);
    s_expect_error(w2, "unexpected STOP");
}

static void test_a_stopped_tasks_lost_worker_fails_it_interrupted_not_retried(void **state)
{
    s_fixture_t *fx = *state;
    void *w1 = s_stop_worker(fx, "w1", 1, 11, 1);
    void *w2 = s_stop_worker(fx, "w2", 1, 12, 2);
    void *w3 = s_stop_worker(fx, "w3", 1, 13, 3);
    void *client = s_client(fx, "c1");
    s_submit(client, 1, 3, "f", 5, 0, 0);
    uint64_t ids[3];
    s_take_tasks(w1, &ids[0], NULL, 1);
    s_take_tasks(w2, &ids[1], NULL, 1);
    s_take_tasks(w3, &ids[2], NULL, 1);
    static const uint64_t all[] = { 1, 2, 3 };
    s_send_stop(client, all, 3, 10);
    s_expect_stop(w1, ids[0], 10);
    s_expect_stop(w2, ids[1], 10);
    s_expect_stop(w3, ids[2], 10);

    //  w1's process died running it (its supervisor says so): killed.
    assert_int_equal(cf_broker_worker_died(fx->broker, "w1", 2, &ids[0], 1), CF_OK);
    s_expect_interrupted(client, 1, "killed");
    //  w2 is lost without a word of what it ran: Interrupted, not retried.
    assert_int_equal(cf_broker_worker_lost(fx->broker, "w2", 2), CF_OK);
    s_expect_interrupted(client, 2, "lost");
    //  w3 hands its task back with DISCONNECT: it never ran, so cancelled.
    s_send_disconnect(w3, "stopping");
    s_expect_status(client, 3, CF_STATUS_CANCELLED);
    cf_broker_stats_t stats = s_wait_stats(s_workers_is, 0);
    assert_int_equal(stats.retried, 0);
    assert_int_equal(stats.queued, 0);
    assert_int_equal(stats.failed, 2);
    assert_int_equal(stats.cancelled, 1);
}

// ---------------------------------------------------------------------------
//  PROGRESS: forwarded to clients that asked, latest wins, before RESULT

//  One msgpack value: "half".
static const uint8_t s_partial[] = { 0xa4, 'h', 'a', 'l', 'f' };

//  Sends one PROGRESS from sock: count items for task id, done 1..count of
//  total 100, the partial value with the second item only.
//  A client with tasks still queued has its results gathered into fuller
//  messages; the gather ends on its own, with no other event to wake the
//  broker: here the worker keeps the next task and nothing else happens.
static void test_a_backlogged_clients_results_are_gathered_and_still_go(void **state)
{
    (void)state;
    //  A worker that says when tasks begin (as cf-worker does): the broker
    //  owes the client no STARTED, which would go at once with the result.
    void *worker = s_stop_worker(s_fx, "w1", 1, 101, 1);
    void *client = s_client(s_fx, "c1");
    s_submit(client, 100, 4, "double", 3, 0, 0);
    uint64_t ids[4];
    s_take_tasks(worker, ids, NULL, 1);
    for (int i = 0; i < 3; i++) {
        s_result_ok(worker, ids[i]);
        s_take_tasks(worker, ids + i + 1, NULL, 1);
        cf_proto_msg_t *msg = s_expect_result(client, 100 + (uint64_t)i, CF_STATUS_OK);
        cf_proto_msg_destroy(&msg);
    }
    //  Nothing queued now: no gathering.
    s_result_ok(worker, ids[3]);
    s_expect_status(client, 103, CF_STATUS_OK);
    assert_int_equal(s_stats().completed, 4);
}

//  A large result goes to its client in a message of its own, built around
//  its value (copied once in the broker); the small ones around it still
//  go batched, and every value arrives whole.
static void test_a_large_result_goes_alone_and_whole_between_small_ones(void **state)
{
    (void)state;
    s_scene_t sc = s_scene(3, 101, (s_tasks_t){ 100, 3, "double", 3, 0, 0 }, 3);
    enum { BIG = 100 * 1024 };
    uint8_t *big = malloc(BIG + 5);
    assert_non_null(big);
    big[0] = 0xc6;    //  the value: a msgpack bin32 of BIG bytes
    big[1] = 0;
    big[2] = (uint8_t)(BIG >> 16);
    big[3] = (uint8_t)(BIG >> 8);
    big[4] = (uint8_t)BIG;
    for (size_t i = 0; i < BIG; i++)
        big[5 + i] = (uint8_t)(i * 31);
    cf_proto_enc_t *enc = s_enc();
    cf_proto_enc_begin(enc, CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_ok(enc, sc.ids[0], s_value14, sizeof s_value14), CF_OK);
    assert_int_equal(cf_proto_enc_result_ok(enc, sc.ids[1], big, BIG + 5), CF_OK);
    assert_int_equal(cf_proto_enc_result_ok(enc, sc.ids[2], s_value14, sizeof s_value14), CF_OK);
    assert_int_equal(cf_proto_enc_send(enc, sc.worker, NULL, 0), CF_OK);

    cf_proto_msg_t *msgs[3];
    const cf_proto_result_t *results[3];
    s_collect_results(sc.client, 3, msgs, results);
    const cf_proto_result_t *r = s_result_of(results, 3, 101);
    assert_int_equal(r->status, CF_STATUS_OK);
    assert_int_equal(r->value_len, BIG + 5);
    assert_memory_equal(r->value, big, BIG + 5);
    for (uint64_t id = 100; id <= 102; id += 2) {
        r = s_result_of(results, 3, id);
        assert_int_equal(r->value_len, sizeof s_value14);
        assert_memory_equal(r->value, s_value14, sizeof s_value14);
    }
    //  Sent in order, the large one alone: 100 | 101 | 102.
    assert_int_equal(results[0]->id, 100);
    assert_int_equal(results[1]->id, 101);
    assert_int_equal(results[2]->id, 102);
    assert_int_equal(msgs[1]->count, 1);
    assert_int_equal(msgs[1]->results[0].id, 101);
    for (size_t i = 0; i < 3; i++)
        cf_proto_msg_destroy(&msgs[i]);
    free(big);
    assert_int_equal(s_stats().completed, 3);
}

//  Large arguments travel in a TASK of their own, built when they came (the
//  broker copies them once), between the batches of small ones, in order;
//  a worker that leaves gives them back whole for the next one, while
//  ZeroMQ may still hold the first send.
static void test_large_arguments_go_alone_and_whole_and_survive_a_requeue(void **state)
{
    s_fixture_t *fx = *state;
    void *worker = s_worker(fx, "w1", 4, 1, 1);
    void *client = s_client(fx, "c1");
    enum { BIG = 100 * 1024 };
    uint8_t *big = malloc(BIG + 5);
    assert_non_null(big);
    big[0] = 0x91;    //  [bin32 of BIG bytes]
    big[1] = 0xc6;
    big[2] = 0;
    big[3] = (uint8_t)(BIG >> 16);
    big[4] = 0;
    for (size_t i = 0; i < BIG; i++)
        big[5 + i] = (uint8_t)(i * 13);
    cf_proto_enc_t *enc = s_enc();
    cf_proto_enc_begin(enc, CF_MSG_SUBMIT);
    for (uint64_t id = 1; id <= 4; id++) {
        bool large = id == 2 || id == 3;
        assert_int_equal(cf_proto_enc_task(enc, id, "f", 1, large ? big : s_args,
                                           large ? BIG + 5 : sizeof s_args, -1, 7000, 0),
                         CF_OK);
    }
    assert_int_equal(cf_proto_enc_send(enc, client, NULL, 0), CF_OK);

    for (int round = 0; round < 2; round++) {
        //  1 | 2 | 3 | 4: the large ones alone, the order kept.
        uint64_t seen[4];
        size_t got = 0;
        while (got < 4) {
            cf_proto_msg_t *msg = s_expect(worker, CF_MSG_TASK);
            assert_true(got + msg->count <= 4);
            for (size_t i = 0; i < msg->count; i++) {
                const cf_proto_task_t *t = &msg->tasks[i];
                bool large = t->args_len == BIG + 5;
                if (large) {
                    assert_int_equal(msg->count, 1);
                    assert_memory_equal(t->args, big, BIG + 5);
                }
                else {
                    assert_int_equal(t->args_len, sizeof s_args);
                    assert_memory_equal(t->args, s_args, sizeof s_args);
                }
                assert_true(cf_proto_str_eq(t->function, "f"));
                assert_int_equal(t->timeout_ms, 7000);
                seen[got++] = t->id;
            }
            cf_proto_msg_destroy(&msg);
        }
        if (round == 0) {
            //  It leaves at once: the tasks go back to the queue while the
            //  large bodies may still be ZeroMQ's.
            s_send_disconnect(worker, "stopping");
            s_wait_stats(s_workers_is, 0);
            worker = s_worker(fx, "w2", 4, 2, 1);
            continue;
        }
        for (size_t i = 0; i < 4; i++)
            s_result_ok(worker, seen[i]);
    }
    cf_proto_msg_t *msgs[4] = { NULL };
    const cf_proto_result_t *results[4];
    s_collect_results(client, 4, msgs, results);
    for (uint64_t id = 1; id <= 4; id++)
        assert_int_equal(s_result_of(results, 4, id)->status, CF_STATUS_OK);
    for (size_t i = 0; i < 4 && msgs[i]; i++)
        cf_proto_msg_destroy(&msgs[i]);
    free(big);
}

static void s_progress(void *sock, uint64_t id, uint32_t count)
{
    cf_proto_enc_t *enc = s_enc();
    cf_proto_enc_begin(enc, CF_MSG_PROGRESS);
    for (uint32_t i = 1; i <= count; i++)
        assert_int_equal(cf_proto_enc_progress(enc, id, i, i, 100, i == 2 ? s_partial : NULL,
                                               i == 2 ? sizeof s_partial : 0),
                         CF_OK);
    assert_int_equal(cf_proto_enc_send(enc, sock, NULL, 0), CF_OK);
}

static void test_progress_reaches_its_client_coalesced_and_before_the_result(void **state)
{
    s_fixture_t *fx = *state;
    void *worker = s_worker(fx, "w1", 1, 1, 1);
    void *client = s_client(fx, "c1");
    s_submit(client, 70, 1, "f", 0, 0, CF_TASK_PROGRESS);
    uint64_t id;
    s_take_tasks(worker, &id, NULL, 1);
    //  Five reports in one message: one item reaches the client, the
    //  latest, with the partial value of an earlier one carried on.
    s_progress(worker, id, 5);
    cf_proto_msg_t *msg = s_expect(client, CF_MSG_PROGRESS);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->progress[0].id, 70);
    assert_int_equal(msg->progress[0].seq, 1);
    assert_int_equal(msg->progress[0].done, 5);
    assert_int_equal(msg->progress[0].total, 100);
    assert_int_equal(msg->progress[0].partial_len, sizeof s_partial);
    assert_memory_equal(msg->progress[0].partial, s_partial, sizeof s_partial);
    cf_proto_msg_destroy(&msg);
    //  A later report, then the result in one turn: the report goes first,
    //  numbered on, without the partial value already sent.
    s_progress(worker, id, 1);
    s_result_ok(worker, id);
    msg = s_expect(client, CF_MSG_PROGRESS);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->progress[0].seq, 2);
    assert_int_equal(msg->progress[0].done, 1);
    assert_null(msg->progress[0].partial);
    cf_proto_msg_destroy(&msg);
    s_expect_status(client, 70, CF_STATUS_OK);
    //  A report after the result is stale.
    s_progress(worker, id, 1);
    s_wait_stats(s_ignored_is, 1);
}

static void test_progress_goes_only_to_clients_that_asked(void **state)
{
    s_fixture_t *fx = *state;
    void *worker = s_worker(fx, "w1", 1, 1, 1);
    void *client = s_client(fx, "c1");
    s_submit(client, 80, 1, "f", 0, 0, 0);    //  no PROGRESS flag: an older client
    uint64_t id;
    s_take_tasks(worker, &id, NULL, 1);
    s_progress(worker, id, 3);
    s_result_ok(worker, id);
    //  s_expect fails on a PROGRESS before the RESULT.
    s_expect_status(client, 80, CF_STATUS_OK);
    assert_int_equal(s_stats().ignored, 0);
}

static void test_progress_from_the_wrong_peer_is_refused(void **state)
{
    s_fixture_t *fx = *state;
    void *worker = s_worker(fx, "w1", 1, 1, 1);
    void *other = s_worker(fx, "w2", 1, 2, 2);
    void *client = s_client(fx, "c1");
    s_submit(client, 90, 1, "f", 0, 0, CF_TASK_PROGRESS);
    uint64_t id;
    zmq_pollitem_t items[2] = { { worker, 0, ZMQ_POLLIN, 0 }, { other, 0, ZMQ_POLLIN, 0 } };
    assert_true(zmq_poll(items, 2, WAIT_MS) > 0);
    void *holder = items[0].revents ? worker : other;
    void *idle = holder == worker ? other : worker;
    s_take_tasks(holder, &id, NULL, 1);
    //  From a client: unexpected. From a worker the task is not on, or for
    //  no task at all: ignored. Malformed: refused.
    s_progress(client, id, 1);
    s_expect_error(client, "unexpected PROGRESS from a client");
    s_progress(idle, id, 2);
    s_progress(holder, 123456789, 1);
    s_wait_stats(s_ignored_is, 3);
    static const uint8_t bad[] = { 0x91, 0x93, 0x01, 0x01, 0x01 };    //  [[1, 1, 1]]
    uint64_t malformed = s_stats().malformed;
    s_send_body(holder, "PROGRESS", bad, sizeof bad);
    s_expect_error(holder, "malformed");
    s_wait_stats(s_malformed_is, malformed + 1);
    //  Nothing else was lost: the task's own report and result still go.
    s_progress(holder, id, 1);
    cf_proto_msg_t *msg = s_expect(client, CF_MSG_PROGRESS);
    assert_int_equal(msg->progress[0].id, 90);
    cf_proto_msg_destroy(&msg);
    s_result_ok(holder, id);
    s_expect_status(client, 90, CF_STATUS_OK);
}

static void test_unknown_client_learns_the_boot_id(void **state)
{
    s_fixture_t *fx = *state;
    s_start(fx, 1000, 0, 0);
    void *client = s_client(fx, "c1");
    s_send_heartbeat(client);
    cf_proto_msg_t *hb = s_expect(client, CF_MSG_HEARTBEAT);
    uint64_t boot = hb->boot;
    assert_true(boot != 0);
    assert_int_equal(hb->ivl_ms, 1000);
    cf_proto_msg_destroy(&hb);
    s_expect_error(client, CF_PROTO_UNKNOWN_CLIENT);
    //  A second broker has another boot id.
    cf_broker_t *first = fx->broker;
    fx->broker = NULL;
    s_start(fx, 1000, 0, 0);
    void *other = s_client(fx, "c2");
    s_send_heartbeat(other);
    hb = s_expect(other, CF_MSG_HEARTBEAT);
    assert_true(hb->boot != boot);
    cf_proto_msg_destroy(&hb);
    cf_broker_destroy(&first);
}

static void test_stats_reply_lists_the_counters(void **state)
{
    s_fixture_t *fx = *state;
    void *client = s_client(fx, "c1");
    s_submit(client, 1, 3, "f", 0, 0, 0);
    s_wait_stats(s_queued_is, 3);
    cf_proto_enc_begin(s_enc(), CF_MSG_STATS);
    assert_int_equal(cf_proto_enc_send(s_enc(), client, NULL, 0), CF_OK);
    cf_proto_msg_t *msg = s_expect(client, CF_MSG_STATS);
    static const char *const names[] = { "clients",   "workers",      "queued", "running",
                                         "submitted", "completed",    "failed", "cancelled",
                                         "retried",   "lost_workers", "busy",   "malformed",
                                         "dropped" };
    for (size_t n = 0; n < sizeof names / sizeof names[0]; n++) {
        bool found = false;
        for (size_t i = 0; i < msg->count; i++) {
            if (s_str_eq(msg->stats[i].name, names[n])) {
                found = true;
                if (strcmp(names[n], "queued") == 0 || strcmp(names[n], "submitted") == 0)
                    assert_int_equal(msg->stats[i].value, 3);
                if (strcmp(names[n], "clients") == 0)
                    assert_int_equal(msg->stats[i].value, 1);
            }
        }
        if (!found)
            fail_msg("stats reply lacks %s", names[n]);
    }
    cf_proto_msg_destroy(&msg);
}

static void test_destroy_says_disconnect_to_peers(void **state)
{
    s_fixture_t *fx = *state;
    void *worker = s_worker_peer(fx, "w1");
    s_ready(worker, 1, 1);
    void *client = s_client(fx, "c1");
    s_submit(client, 1, 5, "f", 0, 0, 0);
    s_take_tasks(worker, NULL, NULL, 1);
    cf_broker_destroy(&fx->broker);
    cf_proto_msg_t *msg = s_expect(worker, CF_MSG_DISCONNECT);
    cf_proto_msg_destroy(&msg);
    msg = s_expect(client, CF_MSG_DISCONNECT);
    cf_proto_msg_destroy(&msg);
}

static void test_tcp_port_is_resolved_and_a_taken_port_is_reported(void **state)
{
    (void)state;
    cf_broker_config_t config = {
        .client_endpoint = "tcp://127.0.0.1:*",
        .worker_endpoint = "tcp://127.0.0.1:*",
    };
    cf_broker_t *broker = cf_broker_new(&config);
    assert_non_null(broker);
    const char *clients = cf_broker_client_endpoint(broker);
    assert_true(strncmp(clients, "tcp://127.0.0.1:", 16) == 0);
    assert_null(strchr(clients, '*'));
    assert_string_not_equal(clients, cf_broker_worker_endpoint(broker));

    //  A client over tcp gets its heartbeat answer.
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    assert_int_equal(cf_proto_socket_setup(sock, false), CF_OK);
    assert_int_equal(zmq_connect(sock, clients), 0);
    s_send_heartbeat(sock);
    cf_proto_msg_t *msg = s_expect(sock, CF_MSG_HEARTBEAT);
    cf_proto_msg_destroy(&msg);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(sock);
    zmq_ctx_term(ctx);

    cf_broker_config_t taken = {
        .client_endpoint = clients,
        .worker_endpoint = "tcp://127.0.0.1:*",
    };
    assert_null(cf_broker_new(&taken));
    char expected[300];
    snprintf(expected, sizeof expected, "cannot bind %s: Address already in use", clients);
    assert_string_equal(cf_last_error(), expected);
    cf_broker_destroy(&broker);
    cf_broker_destroy(&broker);    //  safe twice
}

static void test_config_errors_are_reported(void **state)
{
    (void)state;
    assert_null(cf_broker_new(NULL));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    cf_broker_config_t config = { .client_endpoint = "bogus://x", .worker_endpoint = "inproc://w" };
    assert_null(cf_broker_new(&config));
    assert_true(strncmp(cf_last_error(), "cannot bind bogus://x: ", 23) == 0);
}

//  Kernel buffers pinned small (64 KiB: no autotuning, which here may let
//  one loopback connection absorb 32 MiB) and one message per pipe: little
//  fits between broker and client, so refusals come soon.
#define S_SOCKET_BUFFER (64 * 1024)
static cf_err_t s_tiny_send_hwm(void *socket, bool is_clients, void *arg)
{
    (void)arg;
    int hwm = 1, buffer = S_SOCKET_BUFFER;
    if (is_clients
        && (zmq_setsockopt(socket, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0
            || zmq_setsockopt(socket, ZMQ_SNDBUF, &buffer, sizeof buffer) != 0))
        return CF_ESYS;
    return CF_OK;
}

enum { S_BIG_TASKS = 32, S_BIG_VALUE = 256 * 1024 };

//  A broker whose client side holds one message per peer, a worker with one
//  slot, and a client "slow" with room for one message that submitted
//  S_BIG_TASKS tasks. The worker answers all with S_BIG_VALUE bytes each,
//  one per broker turn: 8 MiB, far more than the pipes and pinned socket
//  buffers on the way hold, so the broker meets refused sends and keeps
//  results. Returns the client;
//  *worker and *value (to free) for the rest of the test.
static void *s_fill_outbox(s_fixture_t *fx, int ivl_ms, void **worker, uint8_t **value)
{
    cf_broker_config_t config = {
        .client_endpoint = "tcp://127.0.0.1:*",
        .worker_endpoint = "tcp://127.0.0.1:*",
        .zmq_context = fx->ctx,
        .heartbeat_ivl_ms = ivl_ms,
        .socket_setup = s_tiny_send_hwm,
    };
    fx->broker = cf_broker_new(&config);
    assert_non_null(fx->broker);
    *worker = s_worker(fx, "w1", 1, 1, 1);
    void *client = zmq_socket(fx->ctx, ZMQ_DEALER);
    assert_int_equal(cf_proto_socket_setup(client, false), CF_OK);
    int hwm = 1, buffer = S_SOCKET_BUFFER;
    assert_int_equal(zmq_setsockopt(client, ZMQ_RCVHWM, &hwm, sizeof hwm), 0);
    assert_int_equal(zmq_setsockopt(client, ZMQ_RCVBUF, &buffer, sizeof buffer), 0);
    assert_int_equal(zmq_setsockopt(client, ZMQ_ROUTING_ID, "slow", 4), 0);
    assert_int_equal(zmq_connect(client, cf_broker_client_endpoint(fx->broker)), 0);
    fx->silent[fx->peer_count] = false;
    fx->peers[fx->peer_count++] = client;
    s_submit(client, 0, S_BIG_TASKS, "big", 0, 0, 0);
    s_wait_stats(s_clients_is, 1);

    //  One msgpack bin32 of S_BIG_VALUE bytes.
    uint8_t *big = calloc(1, S_BIG_VALUE + 5);
    assert_non_null(big);
    big[0] = 0xc6;
    big[1] = (uint8_t)(S_BIG_VALUE >> 24);
    big[2] = (uint8_t)(S_BIG_VALUE >> 16);
    big[3] = (uint8_t)(S_BIG_VALUE >> 8);
    big[4] = (uint8_t)S_BIG_VALUE;
    *value = big;
    cf_proto_enc_t *enc = s_enc();
    size_t answered = 0;
    cf_broker_stats_t stats = { .clients = 1 };
    //  The next task comes only after the broker took the last result, so
    //  each result is its own turn and its own message to the client. With
    //  a short liveness the client may be lost before the last one: then
    //  no more tasks come.
    int64_t give_up = cf_clock_now_ms() + 4 * WAIT_MS;
    while (answered < S_BIG_TASKS && stats.clients > 0) {
        assert_true(cf_clock_now_ms() < give_up);
        s_heartbeat_all();
        zmq_pollitem_t item = { *worker, 0, ZMQ_POLLIN, 0 };
        assert_true(zmq_poll(&item, 1, SLICE_MS) >= 0);
        cf_proto_msg_t *msg;
        while (cf_proto_recv(*worker, false, NULL, &msg) == CF_OK) {
            for (size_t i = 0; msg->type == CF_MSG_TASK && i < msg->count; i++) {
                cf_proto_enc_begin(enc, CF_MSG_RESULT);
                assert_int_equal(
                    cf_proto_enc_result_ok(enc, msg->tasks[i].id, big, S_BIG_VALUE + 5), CF_OK);
                assert_int_equal(cf_proto_enc_send(enc, *worker, NULL, 0), CF_OK);
                answered++;
                s_heartbeat_all();
            }
            cf_proto_msg_destroy(&msg);
        }
        stats = s_stats();
    }
    int64_t deadline = cf_clock_now_ms() + WAIT_MS;
    while (stats.deferred == 0 && cf_clock_now_ms() < deadline) {
        s_heartbeat_all();
        zmq_poll(NULL, 0, SLICE_MS);
        stats = s_stats();
    }
    assert_true(stats.deferred > 0);
    return client;
}

//  A client that stops reading for a while: the ROUTER refuses sends to it
//  (high-water mark), its results wait in the broker's outbox, and once it
//  reads again every result arrives, in order, once.
static void test_results_wait_in_the_outbox_while_a_client_does_not_read(void **state)
{
    s_fixture_t *fx = *state;
    void *worker;
    uint8_t *value;
    //  A long heartbeat: "unreachable for the liveness period" must not
    //  come before the client reads, however slow this build runs.
    void *client = s_fill_outbox(fx, 10000, &worker, &value);
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.clients, 1);    //  kept, not lost

    //  Now the client reads, and the worker finishes the rest.
    cf_proto_enc_t *enc = s_enc();
    size_t received = 0;
    int64_t deadline = cf_clock_now_ms() + 4 * WAIT_MS;
    while (received < S_BIG_TASKS) {
        assert_true(cf_clock_now_ms() < deadline);
        s_heartbeat_all();
        zmq_pollitem_t items[] = { { client, 0, ZMQ_POLLIN, 0 }, { worker, 0, ZMQ_POLLIN, 0 } };
        assert_true(zmq_poll(items, 2, SLICE_MS) >= 0);
        cf_proto_msg_t *msg;
        while (cf_proto_recv(worker, false, NULL, &msg) == CF_OK) {
            if (msg->type == CF_MSG_TASK) {
                cf_proto_enc_begin(enc, CF_MSG_RESULT);
                for (size_t i = 0; i < msg->count; i++)
                    assert_int_equal(
                        cf_proto_enc_result_ok(enc, msg->tasks[i].id, value, S_BIG_VALUE + 5),
                        CF_OK);
                assert_int_equal(cf_proto_enc_send(enc, worker, NULL, 0), CF_OK);
            }
            cf_proto_msg_destroy(&msg);
        }
        while (cf_proto_recv(client, false, NULL, &msg) == CF_OK) {
            if (msg->type == CF_MSG_RESULT) {
                for (size_t i = 0; i < msg->count; i++) {
                    assert_int_equal(msg->results[i].id, received);
                    assert_int_equal(msg->results[i].status, CF_STATUS_OK);
                    assert_int_equal(msg->results[i].value_len, S_BIG_VALUE + 5);
                    received++;
                }
            }
            cf_proto_msg_destroy(&msg);
        }
    }
    stats = s_stats();
    assert_int_equal(stats.completed, S_BIG_TASKS);
    assert_int_equal(stats.dropped, 0);
    free(value);
}

//  A client that heartbeats but never reads is unreachable: after the
//  liveness period it is lost like a silent one, and what it was owed is
//  dropped (counted). Results must keep coming for that (a pipe's
//  high-water mark counts messages, so one send after a pause can take a
//  whole batch and leave nothing waiting), and they must be big: loopback
//  TCP buffers grow to tens of MiB on some kernels (6.x with tcp_rmem max
//  32 MiB took 8 MiB of results and 2,000 small ones without a refusal).
static void test_client_that_never_reads_is_lost(void **state)
{
    s_fixture_t *fx = *state;
    void *worker;
    uint8_t *value;
    //  Short enough to keep the test short, long enough that the test's
    //  own heartbeats keep up in a sanitizer build.
    void *client = s_fill_outbox(fx, 200, &worker, &value);
    s_submit(client, 1000, 2000, "more", 0, 0, 0);
    cf_proto_enc_t *enc = s_enc();
    cf_broker_stats_t stats = { .clients = 1 };
    int64_t deadline = cf_clock_now_ms() + WAIT_MS;
    while (stats.clients > 0) {
        if (cf_clock_now_ms() > deadline)
            fail_msg("a client that does not read was never lost (deferred %llu)",
                     (unsigned long long)stats.deferred);
        s_heartbeat_all();
        zmq_pollitem_t item = { worker, 0, ZMQ_POLLIN, 0 };
        assert_true(zmq_poll(&item, 1, SLICE_MS) >= 0);
        cf_proto_msg_t *msg;
        while (cf_proto_recv(worker, false, NULL, &msg) == CF_OK) {
            for (size_t i = 0; msg->type == CF_MSG_TASK && i < msg->count; i++) {
                cf_proto_enc_begin(enc, CF_MSG_RESULT);
                assert_int_equal(
                    cf_proto_enc_result_ok(enc, msg->tasks[i].id, value, S_BIG_VALUE + 5), CF_OK);
                assert_int_equal(cf_proto_enc_send(enc, worker, NULL, 0), CF_OK);
            }
            cf_proto_msg_destroy(&msg);
        }
        stats = s_stats();
    }
    assert_true(stats.dropped > 0);
    assert_int_equal(stats.workers, 1);
    free(value);
}

//  Many tasks through the whole machine: three clients keep up to 600
//  tasks each in flight against a per-client limit of 500 (so BUSY happens
//  and is resubmitted), cancel some at random, and two workers answer
//  every TASK at once. Every task must end exactly once: a value or
//  cancelled, never twice, never lost.
static void test_every_task_is_answered_exactly_once_under_load(void **state)
{
    s_fixture_t *fx = *state;
    enum { CLIENTS = 3, WORKERS = 2, TASKS = 3000, BATCH = 100, WINDOW = 600 };
    s_start(fx, 1000, 0, 500);
    void *workers[WORKERS], *clients[CLIENTS];
    for (int w = 0; w < WORKERS; w++) {
        char name[16];
        snprintf(name, sizeof name, "load-w%d", w);
        workers[w] = s_worker_peer(fx, name);
        s_ready(workers[w], 8, w + 1);
    }
    s_wait_stats(s_workers_is, WORKERS);
    //  status: 0 to (re)submit, 1 in flight, 2 done.
    static uint8_t status[CLIENTS][TASKS];
    memset(status, 0, sizeof status);
    size_t done[CLIENTS] = { 0 }, in_flight[CLIENTS] = { 0 }, scan[CLIENTS] = { 0 };
    size_t busy = 0, cancelled = 0, values = 0;
    for (int c = 0; c < CLIENTS; c++) {
        char name[16];
        snprintf(name, sizeof name, "load-c%d", c);
        clients[c] = s_client(fx, name);
    }
    unsigned seed = 7;
    int64_t deadline = cf_clock_now_ms() + 60000;
    int64_t next_heartbeat = 0;
    cf_proto_enc_t *enc = s_enc();
    size_t total_done = 0;
    while (total_done < (size_t)CLIENTS * TASKS) {
        assert_true(cf_clock_now_ms() < deadline);
        if (cf_clock_now_ms() >= next_heartbeat) {
            s_heartbeat_all();
            next_heartbeat = cf_clock_now_ms() + 200;
        }
        //  Submit: the lowest ids waiting for (re)submission, within the window.
        for (int c = 0; c < CLIENTS; c++) {
            cf_proto_enc_begin(enc, CF_MSG_SUBMIT);
            size_t added = 0;
            for (size_t i = scan[c]; i < TASKS && added < BATCH && in_flight[c] < WINDOW; i++) {
                if (status[c][i] != 0)
                    continue;
                assert_int_equal(
                    cf_proto_enc_task(enc, i, "echo", 4, s_args, sizeof s_args, 0, 0, 0), CF_OK);
                status[c][i] = 1;
                in_flight[c]++;
                added++;
            }
            while (scan[c] < TASKS && status[c][scan[c]] != 0)
                scan[c]++;
            if (added)
                assert_int_equal(cf_proto_enc_send(enc, clients[c], NULL, 0), CF_OK);
            //  Now and then cancel a few in flight.
            if (in_flight[c] && (seed = seed * 1103515245u + 12345u) % 8 == 0) {
                cf_proto_enc_begin(enc, CF_MSG_CANCEL);
                for (int k = 0; k < 5; k++) {
                    size_t i = (seed = seed * 1103515245u + 12345u) % TASKS;
                    if (status[c][i] == 1)
                        assert_int_equal(cf_proto_enc_id(enc, i), CF_OK);
                }
                if (cf_proto_enc_count(enc))
                    assert_int_equal(cf_proto_enc_send(enc, clients[c], NULL, 0), CF_OK);
            }
        }
        zmq_pollitem_t items[CLIENTS + WORKERS];
        for (int c = 0; c < CLIENTS; c++)
            items[c] = (zmq_pollitem_t){ clients[c], 0, ZMQ_POLLIN, 0 };
        for (int w = 0; w < WORKERS; w++)
            items[CLIENTS + w] = (zmq_pollitem_t){ workers[w], 0, ZMQ_POLLIN, 0 };
        assert_true(zmq_poll(items, CLIENTS + WORKERS, SLICE_MS) >= 0);
        //  Workers answer everything they got.
        for (int w = 0; w < WORKERS; w++) {
            cf_proto_msg_t *msg;
            while (cf_proto_recv(workers[w], false, NULL, &msg) == CF_OK) {
                if (msg->type == CF_MSG_TASK) {
                    cf_proto_enc_t *reply = cf_proto_enc_new();
                    cf_proto_enc_begin(reply, CF_MSG_RESULT);
                    for (size_t i = 0; i < msg->count; i++)
                        assert_int_equal(cf_proto_enc_result_ok(reply, msg->tasks[i].id, s_value14,
                                                                sizeof s_value14),
                                         CF_OK);
                    assert_int_equal(cf_proto_enc_send(reply, workers[w], NULL, 0), CF_OK);
                    cf_proto_enc_destroy(&reply);
                }
                cf_proto_msg_destroy(&msg);
            }
        }
        for (int c = 0; c < CLIENTS; c++) {
            cf_proto_msg_t *msg;
            while (cf_proto_recv(clients[c], false, NULL, &msg) == CF_OK) {
                if (msg->type == CF_MSG_RESULT) {
                    for (size_t i = 0; i < msg->count; i++) {
                        const cf_proto_result_t *r = &msg->results[i];
                        assert_true(r->id < TASKS);
                        if (status[c][r->id] != 1)
                            fail_msg("client %d: second answer for task %llu (status %d)", c,
                                     (unsigned long long)r->id, r->status);
                        in_flight[c]--;
                        if (r->status == CF_STATUS_BUSY) {
                            status[c][r->id] = 0;
                            if (r->id < scan[c])
                                scan[c] = r->id;
                            busy++;
                            continue;
                        }
                        assert_true(r->status == CF_STATUS_OK || r->status == CF_STATUS_CANCELLED);
                        cancelled += r->status == CF_STATUS_CANCELLED;
                        values += r->status == CF_STATUS_OK;
                        status[c][r->id] = 2;
                        done[c]++;
                        total_done++;
                    }
                }
                else
                    assert_true(msg->type == CF_MSG_STARTED || msg->type == CF_MSG_HEARTBEAT
                                || s_unknown_peer_error(msg));
                cf_proto_msg_destroy(&msg);
            }
        }
    }
    print_message("%zu values, %zu cancelled, %zu busy answers resubmitted\n", values, cancelled,
                  busy);
    assert_true(busy > 0);    //  the limit was reached and recovered from
    assert_true(cancelled > 0);
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.queued, 0);
    assert_int_equal(stats.running, 0);
    assert_int_equal(stats.completed, values);
    assert_int_equal(stats.cancelled, cancelled);
    assert_int_equal(stats.busy, busy);
    assert_int_equal(stats.submitted, values + cancelled);
    assert_int_equal(stats.dropped + stats.ignored + stats.failed + stats.malformed, 0);
}

// ---------------------------------------------------------------------------
//  Shared workers (READY feature SHARED): credit only by grant, WANT and
//  REFUND.

static void s_ready_shared(void *sock, uint32_t credit, uint32_t threads, int32_t pid)
{
    cf_proto_enc_ready(s_enc(), credit, threads, "testhost", pid,
                       CF_PROTO_FEATURE_BEGUN | CF_PROTO_FEATURE_SHARED, NULL, 0);
    assert_int_equal(cf_proto_enc_send(s_enc(), sock, NULL, 0), CF_OK);
}

static void s_grant(void *sock, uint32_t n)
{
    cf_proto_enc_credit(s_enc(), n);
    assert_int_equal(cf_proto_enc_send(s_enc(), sock, NULL, 0), CF_OK);
}

//  The next WANT or REFUND on a worker socket says n.
static void s_expect_slots(void *worker, cf_msg_type_t type, uint32_t n)
{
    cf_proto_msg_t *msg = s_expect(worker, type);
    assert_int_equal(msg->credit, n);
    cf_proto_msg_destroy(&msg);
}

//  What the broker sent a worker, by type, up to an ERROR answering a
//  probe (an empty SUBMIT, unexpected from a worker). Two probes in a row:
//  the first may be read in the same loop turn as what the test sent
//  before it, whose dispatch (TASK, WANT, REFUND) then follows the first
//  answer; the second is read in a later turn, so its answer comes after
//  everything the earlier turns sent. No clock involved.
static void s_settle(void *worker, unsigned counts[CF_MSG_TYPE_COUNT_])
{
    memset(counts, 0, sizeof(unsigned) * CF_MSG_TYPE_COUNT_);
    for (int probe = 0; probe < 2; probe++) {
        cf_proto_enc_begin(s_enc(), CF_MSG_SUBMIT);
        assert_int_equal(cf_proto_enc_send(s_enc(), worker, NULL, 0), CF_OK);
        for (;;) {
            cf_proto_msg_t *msg = NULL;
            int64_t deadline = cf_clock_now_ms() + WAIT_MS;
            while (!msg) {
                assert_true(cf_clock_now_ms() < deadline);
                s_heartbeat_all();
                zmq_pollitem_t item = { worker, 0, ZMQ_POLLIN, 0 };
                if (zmq_poll(&item, 1, SLICE_MS) > 0)
                    assert_int_equal(cf_proto_recv(worker, false, NULL, &msg), CF_OK);
            }
            bool answer = msg->type == CF_MSG_ERROR && s_str_has(msg->text, "unexpected SUBMIT");
            if (!answer && msg->type != CF_MSG_HEARTBEAT)
                counts[msg->type]++;
            cf_proto_msg_destroy(&msg);
            if (answer)
                break;
        }
    }
}

//  A SHARED worker's READY is acknowledged with WANT (0: nothing waits);
//  work arriving at credit 0 brings one WANT, not one per task; a grant
//  is used, and a RESULT returns no slot: the next task waits for the
//  next grant.
static void test_shared_worker_gets_tasks_by_grant_only(void **state)
{
    s_fixture_t *fx = *state;
    void *worker = s_worker_peer(fx, "ws");
    s_ready_shared(worker, 0, 2, 1);
    s_expect_slots(worker, CF_MSG_WANT, 0);
    void *client = s_client(fx, "c1");
    s_submit(client, 1, 3, "f", 0, 0, 0);
    s_expect_slots(worker, CF_MSG_WANT, 3);
    s_submit(client, 4, 1, "f", 0, 0, 0);
    unsigned counts[CF_MSG_TYPE_COUNT_];
    s_settle(worker, counts);
    assert_int_equal(counts[CF_MSG_WANT], 0);    //  asked already
    assert_int_equal(counts[CF_MSG_TASK], 0);

    s_grant(worker, 1);
    uint64_t id;
    s_take_tasks(worker, &id, NULL, 1);
    //  Its credit is used up and three wait: asked again.
    s_expect_slots(worker, CF_MSG_WANT, 3);
    s_result_ok(worker, id);
    s_expect_status(client, 1, CF_STATUS_OK);
    s_settle(worker, counts);
    assert_int_equal(counts[CF_MSG_TASK], 0);    //  the result returned no slot
    assert_int_equal(counts[CF_MSG_WANT], 0);

    s_grant(worker, 2);
    s_take_tasks(worker, NULL, NULL, 2);
    cf_broker_stats_t stats = s_stats();
    assert_int_equal(stats.queued, 1);
    assert_int_equal(stats.running, 2);
}

//  Credit nothing waiting can use goes back at once (REFUND), after the
//  tasks that did use some; with nothing queued a real worker's grant is
//  answered by one REFUND and nothing more.
static void test_shared_worker_unusable_credit_is_refunded_once(void **state)
{
    s_fixture_t *fx = *state;
    void *worker = s_worker_peer(fx, "ws");
    s_ready_shared(worker, 0, 2, 1);
    s_expect_slots(worker, CF_MSG_WANT, 0);
    s_wait_stats(s_workers_is, 1);
    s_grant(worker, 3);
    s_expect_slots(worker, CF_MSG_REFUND, 3);
    unsigned counts[CF_MSG_TYPE_COUNT_];
    s_settle(worker, counts);
    for (int t = 1; t < CF_MSG_TYPE_COUNT_; t++)
        if (counts[t])
            fail_msg("%u %s after the REFUND", counts[t], cf_proto_command_name((cf_msg_type_t)t));

    void *client = s_client(fx, "c1");
    s_submit(client, 1, 1, "f", 0, 0, 0);
    s_expect_slots(worker, CF_MSG_WANT, 1);
    s_grant(worker, 3);
    s_take_tasks(worker, NULL, NULL, 1);
    s_expect_slots(worker, CF_MSG_REFUND, 2);
    s_settle(worker, counts);
    assert_int_equal(counts[CF_MSG_WANT] + counts[CF_MSG_REFUND] + counts[CF_MSG_TASK], 0);
}

//  A suspect runs alone, so it cannot go to a SHARED worker that holds a
//  task: no WANT for it, and a grant is refunded once, not wanted again.
//  Once the worker holds nothing it is asked, and takes the suspect alone.
static void test_shared_worker_is_not_asked_for_a_suspect_it_cannot_take(void **state)
{
    s_fixture_t *fx = *state;
    void *shared = s_worker_peer(fx, "ws");
    s_ready_shared(shared, 0, 2, 1);
    s_expect_slots(shared, CF_MSG_WANT, 0);
    void *client = s_client(fx, "c1");
    s_submit(client, 1, 1, "f", 3, 0, 0);
    s_expect_slots(shared, CF_MSG_WANT, 1);
    s_grant(shared, 1);
    uint64_t held;
    s_take_tasks(shared, &held, NULL, 1);

    //  A classic worker takes task 2 and is lost: task 2 is a suspect.
    void *classic = s_worker(fx, "w1", 1, 2, 2);
    s_submit(client, 2, 1, "f", 3, 0, 0);
    uint64_t suspect;
    s_take_tasks(classic, &suspect, NULL, 1);
    assert_int_equal(cf_broker_worker_lost(fx->broker, "w1", 2), CF_OK);
    s_silence(fx, classic);

    unsigned counts[CF_MSG_TYPE_COUNT_];
    s_settle(shared, counts);
    assert_int_equal(counts[CF_MSG_WANT] + counts[CF_MSG_TASK], 0);
    s_grant(shared, 1);
    s_expect_slots(shared, CF_MSG_REFUND, 1);
    s_settle(shared, counts);
    assert_int_equal(counts[CF_MSG_WANT] + counts[CF_MSG_REFUND] + counts[CF_MSG_TASK], 0);

    s_result_ok(shared, held);
    s_expect_slots(shared, CF_MSG_WANT, 1);
    s_grant(shared, 2);
    cf_proto_msg_t *msg = s_expect(shared, CF_MSG_TASK);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->tasks[0].id, suspect);
    cf_proto_msg_destroy(&msg);
    s_expect_slots(shared, CF_MSG_REFUND, 1);    //  it holds a suspect: nothing else
}

//  A classic worker hears neither WANT nor REFUND, and a result still
//  returns its slot.
static void test_classic_worker_gets_no_want_or_refund(void **state)
{
    (void)state;
    s_scene_t sc = s_scene(1, 101, (s_tasks_t){ .first = 1, .count = 2 }, 1);
    unsigned counts[CF_MSG_TYPE_COUNT_];
    s_settle(sc.worker, counts);
    assert_int_equal(counts[CF_MSG_WANT] + counts[CF_MSG_REFUND] + counts[CF_MSG_TASK], 0);
    s_result_ok(sc.worker, sc.ids[0]);
    s_take_tasks(sc.worker, NULL, NULL, 1);
    s_settle(sc.worker, counts);
    assert_int_equal(counts[CF_MSG_WANT] + counts[CF_MSG_REFUND], 0);
    //  And a worker has no business sending them.
    cf_proto_enc_want(s_enc(), 1);
    assert_int_equal(cf_proto_enc_send(s_enc(), sc.worker, NULL, 0), CF_OK);
    cf_proto_msg_t *msg = s_expect(sc.worker, CF_MSG_ERROR);
    assert_true(s_str_eq(msg->text, "unexpected WANT from a worker"));
    cf_proto_msg_destroy(&msg);
}

int main(void)
{
    //  CF_TEST_LOG=1 shows the broker's log while debugging a test.
    if (getenv("CF_TEST_LOG"))
        cf_log_set_handler(cf_log_to_stderr, NULL, CF_LOG_DEBUG);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tasks_are_dispatched_within_worker_credit,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_credit_message_adds_slots, s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(
            test_large_arguments_go_alone_and_whole_and_survive_a_requeue, s_setup_broker,
            s_teardown),
        cmocka_unit_test_setup_teardown(test_a_large_result_goes_alone_and_whole_between_small_ones,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_a_backlogged_clients_results_are_gathered_and_still_go,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_a_burst_fills_one_workers_idle_threads_in_one_message,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_prefetch_only_to_workers_turning_over, s_setup_broker,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_round_robin_between_clients, s_setup_broker,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_a_clients_only_task_is_marked_lone, s_setup_broker,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_tasks_over_the_limits_are_answered_busy, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_removes_queued_and_reports_started,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_a_lost_workers_tasks_run_alone_and_hold_nothing_back,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(
            test_reported_worker_loss_retries_then_fails_with_worker_lost, s_setup_broker,
            s_teardown),
        cmocka_unit_test_setup_teardown(test_silent_worker_is_lost_by_heartbeat, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_silent_client_is_lost_and_its_tasks_dropped, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_client_disconnect_drops_its_tasks_and_results,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_result_for_unknown_id_is_ignored, s_setup_broker,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_running_task_times_out_and_late_result_is_ignored,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_error_is_retried_only_with_retry_on_error,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_resubmitted_task_is_not_duplicated, s_setup_broker,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_worker_handing_a_task_back_requeues_it, s_setup_broker,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_worker_disconnect_requeues_without_using_retries,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_restarted_worker_loses_what_its_predecessor_held,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_messages_are_counted_and_answered,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_submit_batch_refuses_bad_tasks_one_by_one,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_stop_cancels_queued_and_asks_workers_that_take_it,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(
            test_a_stopped_tasks_lost_worker_fails_it_interrupted_not_retried, s_setup_broker,
            s_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_client_learns_the_boot_id, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(
            test_progress_reaches_its_client_coalesced_and_before_the_result, s_setup_broker,
            s_teardown),
        cmocka_unit_test_setup_teardown(test_progress_goes_only_to_clients_that_asked,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_progress_from_the_wrong_peer_is_refused,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(test_stats_reply_lists_the_counters, s_setup_broker,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_says_disconnect_to_peers, s_setup_broker,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_every_task_is_answered_exactly_once_under_load,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(
            test_results_wait_in_the_outbox_while_a_client_does_not_read, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_client_that_never_reads_is_lost, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_shared_worker_gets_tasks_by_grant_only, s_setup_broker,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_shared_worker_unusable_credit_is_refunded_once,
                                        s_setup_broker, s_teardown),
        cmocka_unit_test_setup_teardown(
            test_shared_worker_is_not_asked_for_a_suspect_it_cannot_take, s_setup_broker,
            s_teardown),
        cmocka_unit_test_setup_teardown(test_classic_worker_gets_no_want_or_refund, s_setup_broker,
                                        s_teardown),
        cmocka_unit_test(test_tcp_port_is_resolved_and_a_taken_port_is_reported),
        cmocka_unit_test(test_config_errors_are_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
