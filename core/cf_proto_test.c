//  cf_proto: every command both ways, the exact bytes of the documented
//  example, and hostile input: truncation at every byte, oversized counts,
//  wrong versions, commands and field types, trailing garbage, endless
//  multipart messages over real sockets, and thousands of mutated frames.

#include "cf_proto.h"
#include "cf_mp.h"
#include "cf_utf8.h"

#include <errno.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

// ---------------------------------------------------------------------------
//  Fixture: a PAIR of inproc sockets, the encoder sends on one and the test
//  receives on the other.

typedef struct {
    void *ctx;
    void *tx;
    void *rx;
    cf_proto_enc_t *enc;
} s_fix_t;

static int s_setup(void **state)
{
    static int n;
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "inproc://cf-proto-test-%d", n++);
    s_fix_t *fix = calloc(1, sizeof *fix);
    assert_non_null(fix);
    fix->ctx = zmq_ctx_new();
    fix->tx = zmq_socket(fix->ctx, ZMQ_PAIR);
    fix->rx = zmq_socket(fix->ctx, ZMQ_PAIR);
    assert_int_equal(cf_proto_socket_setup(fix->tx, false), CF_OK);
    assert_int_equal(cf_proto_socket_setup(fix->rx, false), CF_OK);
    assert_int_equal(zmq_bind(fix->rx, endpoint), 0);
    assert_int_equal(zmq_connect(fix->tx, endpoint), 0);
    fix->enc = cf_proto_enc_new();
    assert_non_null(fix->enc);
    *state = fix;
    return 0;
}

static int s_teardown(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_destroy(&fix->enc);
    zmq_close(fix->tx);
    zmq_close(fix->rx);
    zmq_ctx_term(fix->ctx);
    free(fix);
    return 0;
}

//  Waits until socket has a message (inproc delivers at once; the poll only
//  makes the test independent of that).
static void s_wait_readable(void *socket)
{
    zmq_pollitem_t item = { socket, 0, ZMQ_POLLIN, 0 };
    assert_int_equal(zmq_poll(&item, 1, 5000), 1);
}

//  Sends what the encoder holds and decodes it on the other side.
static cf_proto_msg_t *s_round_trip(s_fix_t *fix)
{
    assert_int_equal(cf_proto_enc_send(fix->enc, fix->tx, NULL, 0), CF_OK);
    s_wait_readable(fix->rx);
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(cf_proto_recv(fix->rx, false, NULL, &msg), CF_OK);
    assert_non_null(msg);
    return msg;
}

//  The raw frames of what the encoder holds: command and body, copied.
typedef struct {
    char command[16];
    uint8_t *body;
    size_t size;
} s_raw_t;

static s_raw_t s_capture(s_fix_t *fix)
{
    assert_int_equal(cf_proto_enc_send(fix->enc, fix->tx, NULL, 0), CF_OK);
    s_wait_readable(fix->rx);
    s_raw_t raw = { { 0 }, NULL, 0 };
    zmq_msg_t part;
    for (int k = 0; k < 3; k++) {
        zmq_msg_init(&part);
        assert_true(zmq_msg_recv(&part, fix->rx, 0) >= 0);
        if (k == 0)
            assert_memory_equal(zmq_msg_data(&part), "cf/1", 4);
        else if (k == 1) {
            assert_true(zmq_msg_size(&part) < sizeof raw.command);
            memcpy(raw.command, zmq_msg_data(&part), zmq_msg_size(&part));
        }
        else {
            raw.size = zmq_msg_size(&part);
            raw.body = malloc(raw.size ? raw.size : 1);
            assert_non_null(raw.body);
            memcpy(raw.body, zmq_msg_data(&part), raw.size);
        }
        assert_int_equal(zmq_msg_more(&part), k < 2);
        zmq_msg_close(&part);
    }
    return raw;
}

//  Decodes hand-made frames; *msg is set on success (caller destroys).
static cf_err_t s_decode3(const char *version, const char *command, const void *body, size_t size,
                          cf_proto_msg_t **msg)
{
    zmq_msg_t frames[3];
    zmq_msg_init_size(&frames[0], strlen(version));
    memcpy(zmq_msg_data(&frames[0]), version, strlen(version));
    zmq_msg_init_size(&frames[1], strlen(command));
    memcpy(zmq_msg_data(&frames[1]), command, strlen(command));
    zmq_msg_init_size(&frames[2], size);
    if (size)
        memcpy(zmq_msg_data(&frames[2]), body, size);
    cf_err_t rc = cf_proto_decode(frames, 3, msg);
    for (int k = 0; k < 3; k++)
        zmq_msg_close(&frames[k]);
    return rc;
}

static cf_err_t s_decode(const char *command, const void *body, size_t size)
{
    cf_proto_msg_t *msg = NULL;
    cf_err_t rc = s_decode3(CF_PROTO_VERSION, command, body, size, &msg);
    if (rc == CF_OK)
        assert_non_null(msg);
    else
        assert_null(msg);
    cf_proto_msg_destroy(&msg);
    return rc;
}

static bool s_str_is(cf_proto_str_t s, const char *text)
{
    return cf_proto_str_eq(s, text);
}

// ---------------------------------------------------------------------------
//  Round trips

static void test_submit_round_trips_every_field(void **state)
{
    s_fix_t *fix = *state;
    const uint8_t args[] = { 0x92, 0x01, 0xa1, 'x' };
    cf_proto_enc_begin(fix->enc, CF_MSG_SUBMIT);
    assert_int_equal(cf_proto_enc_task(fix->enc, UINT64_MAX, "square", 6, args, sizeof args, 3,
                                       1500, CF_TASK_RETRY_ON_ERROR),
                     CF_OK);
    assert_int_equal(cf_proto_enc_task(fix->enc, 0, "f", 1, "\x90", 1, -1, 0, 0), CF_OK);
    assert_int_equal(cf_proto_enc_count(fix->enc), 2);
    cf_proto_msg_t *msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_SUBMIT);
    assert_int_equal(msg->count, 2);
    cf_proto_task_t *t = &msg->tasks[0];
    assert_true(t->id == UINT64_MAX);
    assert_true(s_str_is(t->function, "square"));
    assert_int_equal(t->args_len, sizeof args);
    assert_memory_equal(t->args, args, sizeof args);
    assert_int_equal(t->retries, 3);
    assert_int_equal(t->timeout_ms, 1500);
    assert_int_equal(t->flags, CF_TASK_RETRY_ON_ERROR);
    t = &msg->tasks[1];
    assert_int_equal(t->id, 0);
    assert_true(s_str_is(t->function, "f"));
    assert_int_equal(t->retries, -1);
    assert_int_equal(t->timeout_ms, 0);
    assert_int_equal(t->flags, 0);
    cf_proto_msg_destroy(&msg);
    assert_null(msg);
    cf_proto_msg_destroy(&msg);    //  safe twice
}

static void test_task_round_trips_without_retries_and_flags(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_TASK);
    assert_int_equal(cf_proto_enc_task(fix->enc, 77, "slow", 4, "\x91\x05", 2, 9, 250, 0), CF_OK);
    s_raw_t raw = s_capture(fix);
    assert_string_equal(raw.command, "TASK");
    //  [77, "slow", b"\x91\x05", 250] inside the array32 batch header.
    const uint8_t expected[] = { 0xdd, 0,   0,   0,    1,    0x94, 77,   0xa4, 's',
                                 'l',  'o', 'w', 0xc4, 0x02, 0x91, 0x05, 0xcc, 250 };
    assert_int_equal(raw.size, sizeof expected);
    assert_memory_equal(raw.body, expected, sizeof expected);
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(s_decode3("cf/1", "TASK", raw.body, raw.size, &msg), CF_OK);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->tasks[0].id, 77);
    assert_int_equal(msg->tasks[0].timeout_ms, 250);
    assert_int_equal(msg->tasks[0].retries, 0);
    assert_int_equal(msg->tasks[0].flags, 0);
    cf_proto_msg_destroy(&msg);
    free(raw.body);
}

//  A TASK item's flags travel as a fifth field when there are any
//  (CF_TASK_LONE); 4 and 5 fields decode, 6 do not.
static void test_a_task_carries_its_flags_in_a_fifth_field(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_TASK);
    assert_int_equal(
        cf_proto_enc_task(fix->enc, 77, "slow", 4, "\x91\x05", 2, 0, 250, CF_TASK_LONE), CF_OK);
    s_raw_t raw = s_capture(fix);
    //  [77, "slow", b"\x91\x05", 250, 4]
    const uint8_t expected[] = { 0xdd, 0,   0,    0,    1,    0x95, 77,   0xa4, 's', 'l',
                                 'o',  'w', 0xc4, 0x02, 0x91, 0x05, 0xcc, 250,  0x04 };
    assert_int_equal(raw.size, sizeof expected);
    assert_memory_equal(raw.body, expected, sizeof expected);
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(s_decode3("cf/1", "TASK", raw.body, raw.size, &msg), CF_OK);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->tasks[0].id, 77);
    assert_int_equal(msg->tasks[0].timeout_ms, 250);
    assert_int_equal(msg->tasks[0].flags, CF_TASK_LONE);
    cf_proto_msg_destroy(&msg);
    free(raw.body);

    const uint8_t six[] = { 0xdd, 0,   0,    0,    1,    0x96, 77,   0xa4, 's',  'l',
                            'o',  'w', 0xc4, 0x02, 0x91, 0x05, 0xcc, 250,  0x04, 0x00 };
    assert_int_equal(s_decode3("cf/1", "TASK", six, sizeof six, &msg), CF_EPROTO);
    assert_null(msg);
}

static void test_result_round_trips_every_status(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_ok(fix->enc, 1, "\x2a", 1), CF_OK);
    assert_int_equal(
        cf_proto_enc_result_error(fix->enc, 2, "ValueError", "bad input", "parse", "host-1", 4242),
        CF_OK);
    assert_int_equal(cf_proto_enc_result_status(fix->enc, 3, CF_STATUS_CANCELLED), CF_OK);
    assert_int_equal(cf_proto_enc_result_status(fix->enc, 4, CF_STATUS_BUSY), CF_OK);
    assert_int_equal(cf_proto_enc_result_error(fix->enc, 5, "WorkerLost", NULL, NULL, NULL, -1),
                     CF_OK);
    cf_proto_msg_t *msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_RESULT);
    assert_int_equal(msg->count, 5);
    cf_proto_result_t *r = msg->results;
    assert_int_equal(r[0].id, 1);
    assert_int_equal(r[0].status, CF_STATUS_OK);
    assert_int_equal(r[0].value_len, 1);
    assert_int_equal(r[0].value[0], 0x2a);
    assert_int_equal(r[1].status, CF_STATUS_ERROR);
    assert_true(s_str_is(r[1].error.type, "ValueError"));
    assert_true(s_str_is(r[1].error.message, "bad input"));
    assert_true(s_str_is(r[1].error.function, "parse"));
    assert_true(s_str_is(r[1].error.host, "host-1"));
    assert_int_equal(r[1].error.pid, 4242);
    assert_int_equal(r[2].status, CF_STATUS_CANCELLED);
    assert_int_equal(r[2].id, 3);
    assert_int_equal(r[3].status, CF_STATUS_BUSY);
    assert_true(s_str_is(r[4].error.type, "WorkerLost"));
    assert_true(s_str_is(r[4].error.message, ""));
    assert_int_equal(r[4].error.pid, -1);
    cf_proto_msg_destroy(&msg);
}

static void test_cancel_and_started_round_trip_ids(void **state)
{
    s_fix_t *fix = *state;
    cf_msg_type_t types[] = { CF_MSG_CANCEL, CF_MSG_STARTED };
    for (int k = 0; k < 2; k++) {
        cf_proto_enc_begin(fix->enc, types[k]);
        assert_int_equal(cf_proto_enc_id(fix->enc, 5), CF_OK);
        assert_int_equal(cf_proto_enc_id(fix->enc, UINT64_MAX), CF_OK);
        cf_proto_msg_t *msg = s_round_trip(fix);
        assert_int_equal(msg->type, types[k]);
        assert_int_equal(msg->count, 2);
        assert_int_equal(msg->ids[0], 5);
        assert_true(msg->ids[1] == UINT64_MAX);
        cf_proto_msg_destroy(&msg);
    }
}

static void test_single_body_messages_round_trip(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_READY);
    cf_proto_enc_ready(fix->enc, 8, 2, "node-7", 31337, CF_PROTO_FEATURE_BEGUN, NULL, 0);
    cf_proto_msg_t *msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_READY);
    assert_int_equal(msg->credit, 8);
    assert_int_equal(msg->threads, 2);
    assert_int_equal(msg->features, CF_PROTO_FEATURE_BEGUN);
    assert_true(s_str_is(msg->host, "node-7"));
    assert_int_equal(msg->pid, 31337);
    cf_proto_msg_destroy(&msg);

    //  No begin needed before the single-body calls.
    cf_proto_enc_credit(fix->enc, UINT32_MAX);
    msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_CREDIT);
    assert_true(msg->credit == UINT32_MAX);
    cf_proto_msg_destroy(&msg);

    cf_proto_enc_want(fix->enc, 1u << 20);
    msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_WANT);
    assert_int_equal(msg->credit, 1u << 20);
    cf_proto_msg_destroy(&msg);

    cf_proto_enc_refund(fix->enc, 0);
    msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_REFUND);
    assert_int_equal(msg->credit, 0);
    cf_proto_msg_destroy(&msg);

    cf_proto_enc_heartbeat(fix->enc, 0x0123456789abcdefull, 1000);
    msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_HEARTBEAT);
    assert_true(msg->boot == 0x0123456789abcdefull);
    assert_int_equal(msg->ivl_ms, 1000);
    cf_proto_msg_destroy(&msg);

    cf_proto_enc_heartbeat(fix->enc, 0, 0);
    msg = s_round_trip(fix);
    assert_int_equal(msg->boot, 0);
    assert_int_equal(msg->ivl_ms, 0);
    cf_proto_msg_destroy(&msg);

    cf_proto_enc_begin(fix->enc, CF_MSG_DISCONNECT);
    cf_proto_enc_text(fix->enc, "client closed", 99);
    msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_DISCONNECT);
    assert_true(s_str_is(msg->text, "client closed"));
    assert_int_equal(msg->ref, 0);    //  DISCONNECT carries no ref
    cf_proto_msg_destroy(&msg);

    cf_proto_enc_begin(fix->enc, CF_MSG_ERROR);
    cf_proto_enc_text(fix->enc, "malformed message", 1234);
    msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_ERROR);
    assert_true(s_str_is(msg->text, "malformed message"));
    assert_int_equal(msg->ref, 1234);
    cf_proto_msg_destroy(&msg);
}

static void test_stats_request_is_an_empty_array_and_reply_a_map(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_STATS);
    s_raw_t raw = s_capture(fix);
    assert_string_equal(raw.command, "STATS");
    assert_int_equal(raw.size, 1);
    assert_int_equal(raw.body[0], 0x90);
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(s_decode3("cf/1", "STATS", raw.body, raw.size, &msg), CF_OK);
    assert_int_equal(msg->count, 0);
    assert_null(msg->stats);
    cf_proto_msg_destroy(&msg);
    free(raw.body);

    cf_proto_enc_begin(fix->enc, CF_MSG_STATS);
    assert_int_equal(cf_proto_enc_stat(fix->enc, "workers", 3), CF_OK);
    assert_int_equal(cf_proto_enc_stat(fix->enc, "queued", UINT64_MAX), CF_OK);
    msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_STATS);
    assert_int_equal(msg->count, 2);
    assert_true(s_str_is(msg->stats[0].name, "workers"));
    assert_int_equal(msg->stats[0].value, 3);
    assert_true(s_str_is(msg->stats[1].name, "queued"));
    assert_true(msg->stats[1].value == UINT64_MAX);
    cf_proto_msg_destroy(&msg);

    //  An empty map is a reply with nothing in it, not a request.
    const uint8_t empty_map[] = { 0x80 };
    assert_int_equal(s_decode3("cf/1", "STATS", empty_map, 1, &msg), CF_OK);
    assert_int_equal(msg->count, 0);
    cf_proto_msg_destroy(&msg);
}

static void test_submit_encoding_matches_the_documented_example(void **state)
{
    //  docs/protocol.md shows these bytes: keep them in step.
    s_fix_t *fix = *state;
    const uint8_t args[] = { 0x91, 0x15 };    //  [21]
    cf_proto_enc_begin(fix->enc, CF_MSG_SUBMIT);
    assert_int_equal(cf_proto_enc_task(fix->enc, 0x1f2e3d4c5b6a7988ull, "slow_double", 11, args,
                                       sizeof args, 3, 0, 0),
                     CF_OK);
    s_raw_t raw = s_capture(fix);
    const uint8_t expected[] = {
        0xdd, 0x00, 0x00, 0x00, 0x01, 0x96, 0xcf, 0x1f, 0x2e, 0x3d, 0x4c, 0x5b,
        0x6a, 0x79, 0x88, 0xab, 's',  'l',  'o',  'w',  '_',  'd',  'o',  'u',
        'b',  'l',  'e',  0xc4, 0x02, 0x91, 0x15, 0x03, 0x00, 0x00,
    };
    assert_int_equal(raw.size, sizeof expected);
    assert_memory_equal(raw.body, expected, sizeof expected);
    free(raw.body);
}

static void test_large_bodies_travel_zero_copy_and_the_encoder_is_reused(void **state)
{
    s_fix_t *fix = *state;
    size_t args_len = 100 * 1024;
    uint8_t *args = malloc(args_len);
    assert_non_null(args);
    memset(args, 0xc0, args_len);
    args[0] = 0xdd;    //  an array32 of nils: a valid argument list
    uint32_t n = (uint32_t)(args_len - 5);
    args[1] = (uint8_t)(n >> 24);
    args[2] = (uint8_t)(n >> 16);
    args[3] = (uint8_t)(n >> 8);
    args[4] = (uint8_t)n;
    for (int round = 0; round < 3; round++) {
        cf_proto_enc_begin(fix->enc, CF_MSG_SUBMIT);
        for (int k = 0; k < 3; k++)
            assert_int_equal(
                cf_proto_enc_task(fix->enc, (uint64_t)k, "big", 3, args, args_len, 0, 0, 0), CF_OK);
        assert_true(cf_proto_enc_size(fix->enc) > 3 * args_len);
        cf_proto_msg_t *msg = s_round_trip(fix);
        assert_int_equal(msg->count, 3);
        for (int k = 0; k < 3; k++) {
            assert_int_equal(msg->tasks[k].id, k);
            assert_int_equal(msg->tasks[k].args_len, args_len);
            assert_memory_equal(msg->tasks[k].args, args, args_len);
        }
        cf_proto_msg_destroy(&msg);
        //  After a send the encoder is empty and ready for the same type.
        assert_int_equal(cf_proto_enc_count(fix->enc), 0);
    }
    free(args);
}

//  A held item outlives its message: the large body is shared (the same
//  bytes), a small one copied (the same content elsewhere).
static void test_a_held_item_outlives_its_message(void **state)
{
    s_fix_t *fix = *state;
    size_t sizes[] = { 1, 200 * 1024 };
    for (size_t k = 0; k < 2; k++) {
        size_t len = sizes[k];
        uint8_t *value = malloc(len);
        assert_non_null(value);
        memset(value, 0xc0, len);
        value[0] = len > 1 ? 0xc6 : 0x2a;    //  a bin32 of nil bytes, or 42
        if (len > 1) {
            uint32_t n = (uint32_t)(len - 5);
            value[1] = (uint8_t)(n >> 24);
            value[2] = (uint8_t)(n >> 16);
            value[3] = (uint8_t)(n >> 8);
            value[4] = (uint8_t)n;
        }
        cf_proto_enc_begin(fix->enc, CF_MSG_RESULT);
        assert_int_equal(cf_proto_enc_result_ok(fix->enc, 9, value, len), CF_OK);
        cf_proto_msg_t *msg = s_round_trip(fix);
        size_t body = cf_proto_msg_body_size(msg);
        assert_true(body > len && body < len + 32);
        const uint8_t *in_msg = msg->results[0].value;
        const uint8_t *held = in_msg;
        zmq_msg_t hold;
        assert_int_equal(cf_proto_msg_hold(msg, &hold, &held), CF_OK);
        if (len > 1)
            assert_ptr_equal(held, in_msg);
        cf_proto_msg_destroy(&msg);
        assert_memory_equal(held, value, len);
        zmq_msg_close(&hold);
        free(value);
    }
}

static void test_send_resets_and_keeps_the_type(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_CANCEL);
    assert_int_equal(cf_proto_enc_id(fix->enc, 1), CF_OK);
    cf_proto_msg_t *msg = s_round_trip(fix);
    cf_proto_msg_destroy(&msg);
    assert_int_equal(cf_proto_enc_id(fix->enc, 2), CF_OK);
    msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_CANCEL);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->ids[0], 2);
    cf_proto_msg_destroy(&msg);
    //  An empty batch is legal: an array with no items.
    msg = s_round_trip(fix);
    assert_int_equal(msg->count, 0);
    cf_proto_msg_destroy(&msg);
}

// ---------------------------------------------------------------------------
//  The encoder refuses what cannot travel

static void test_encoder_refuses_bad_items_and_leaves_the_body_alone(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_SUBMIT);
    assert_int_equal(cf_proto_enc_task(fix->enc, 1, "ok", 2, "\x90", 1, 0, 0, 0), CF_OK);
    size_t size = cf_proto_enc_size(fix->enc);
    char long_name[CF_PROTO_MAX_NAME + 2];
    memset(long_name, 'n', sizeof long_name);
    assert_int_equal(cf_proto_enc_task(fix->enc, 2, "", 0, "\x90", 1, 0, 0, 0), CF_EINVAL);
    assert_int_equal(cf_proto_enc_task(fix->enc, 2, NULL, 3, "\x90", 1, 0, 0, 0), CF_EINVAL);
    assert_int_equal(
        cf_proto_enc_task(fix->enc, 2, long_name, CF_PROTO_MAX_NAME + 1, "\x90", 1, 0, 0, 0),
        CF_EINVAL);
    assert_int_equal(cf_proto_enc_task(fix->enc, 2, "f", 1, NULL, 4, 0, 0, 0), CF_EINVAL);
    assert_int_equal(cf_proto_enc_id(fix->enc, 2), CF_EINVAL);    //  not a SUBMIT item
    assert_int_equal(cf_proto_enc_result_ok(fix->enc, 2, "\xc0", 1), CF_EINVAL);
    assert_int_equal(cf_proto_enc_stat(fix->enc, "x", 1), CF_EINVAL);
    assert_int_equal(cf_proto_enc_size(fix->enc), size);
    assert_int_equal(cf_proto_enc_count(fix->enc), 1);
    assert_int_equal(
        cf_proto_enc_task(fix->enc, 2, long_name, CF_PROTO_MAX_NAME, "\x90", 1, 0, 0, 0), CF_OK);

    cf_proto_enc_begin(fix->enc, CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_ok(fix->enc, 1, NULL, 0), CF_EINVAL);
    assert_int_equal(cf_proto_enc_result_error(fix->enc, 1, "", "m", "f", "h", 0), CF_EINVAL);
    assert_int_equal(cf_proto_enc_result_error(fix->enc, 1, NULL, "m", "f", "h", 0), CF_EINVAL);
    assert_int_equal(cf_proto_enc_result_status(fix->enc, 1, CF_STATUS_OK), CF_EINVAL);
    assert_int_equal(cf_proto_enc_result_status(fix->enc, 1, CF_STATUS_ERROR), CF_EINVAL);
    assert_int_equal(cf_proto_enc_count(fix->enc), 0);

    cf_proto_enc_begin(fix->enc, CF_MSG_STATS);
    assert_int_equal(cf_proto_enc_stat(fix->enc, "", 1), CF_EINVAL);
    assert_int_equal(cf_proto_enc_stat(fix->enc, NULL, 1), CF_EINVAL);
    for (int k = 0; k < CF_PROTO_MAX_STATS; k++)
        assert_int_equal(cf_proto_enc_stat(fix->enc, "s", (uint64_t)k), CF_OK);
    assert_int_equal(cf_proto_enc_stat(fix->enc, "s", 1), CF_ETOOBIG);
}

static void test_encoder_stops_a_batch_at_the_count_limit(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_STARTED);
    for (uint32_t k = 0; k < CF_PROTO_MAX_BATCH; k++)
        assert_int_equal(cf_proto_enc_id(fix->enc, k), CF_OK);
    assert_int_equal(cf_proto_enc_id(fix->enc, 1), CF_ETOOBIG);
    cf_proto_msg_t *msg = s_round_trip(fix);
    assert_int_equal(msg->count, CF_PROTO_MAX_BATCH);
    assert_int_equal(msg->ids[CF_PROTO_MAX_BATCH - 1], CF_PROTO_MAX_BATCH - 1);
    cf_proto_msg_destroy(&msg);
}

static void test_encoder_stops_a_batch_at_the_frame_limit(void **state)
{
    s_fix_t *fix = *state;
    size_t args_len = CF_PROTO_MAX_FRAME / 2;
    uint8_t *args = calloc(1, args_len);
    assert_non_null(args);
    cf_proto_enc_begin(fix->enc, CF_MSG_SUBMIT);
    assert_int_equal(cf_proto_enc_task(fix->enc, 1, "f", 1, args, args_len, 0, 0, 0), CF_OK);
    size_t size = cf_proto_enc_size(fix->enc);
    assert_int_equal(cf_proto_enc_task(fix->enc, 2, "f", 1, args, args_len, 0, 0, 0), CF_ETOOBIG);
    assert_int_equal(cf_proto_enc_size(fix->enc), size);
    assert_int_equal(cf_proto_enc_task(fix->enc, 2, "f", 1, args, CF_PROTO_MAX_FRAME + 1, 0, 0, 0),
                     CF_ETOOBIG);
    assert_int_equal(cf_proto_enc_count(fix->enc), 1);
    free(args);
}

static void test_encoder_cuts_long_texts_at_a_utf8_boundary(void **state)
{
    s_fix_t *fix = *state;
    //  "é" is two bytes; 3000 of them are 6000 bytes, over CF_PROTO_MAX_TEXT.
    size_t len = 6000;
    char *message = malloc(len + 1);
    assert_non_null(message);
    for (size_t k = 0; k < len; k += 2) {
        message[k] = (char)0xc3;
        message[k + 1] = (char)0xa9;
    }
    message[len] = '\0';
    //  A 4097-byte text: the cut falls in the middle of a character.
    char *odd = malloc(CF_PROTO_MAX_TEXT + 2);
    assert_non_null(odd);
    odd[0] = 'x';
    memcpy(odd + 1, message, CF_PROTO_MAX_TEXT);
    odd[CF_PROTO_MAX_TEXT + 1] = '\0';
    cf_proto_enc_begin(fix->enc, CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_error(fix->enc, 1, "ValueError", message, "f", "h", 1),
                     CF_OK);
    assert_int_equal(cf_proto_enc_result_error(fix->enc, 2, "ValueError", odd, "f", "h", 1), CF_OK);
    cf_proto_msg_t *msg = s_round_trip(fix);
    cf_proto_str_t m = msg->results[0].error.message;
    assert_int_equal(m.len, CF_PROTO_MAX_TEXT);
    assert_memory_equal(m.ptr, message, m.len);
    m = msg->results[1].error.message;
    assert_int_equal(m.len, CF_PROTO_MAX_TEXT - 1);    //  'x' and 2047 whole characters
    assert_int_equal((uint8_t)m.ptr[m.len - 1], 0xa9);
    cf_proto_msg_destroy(&msg);

    cf_proto_enc_begin(fix->enc, CF_MSG_ERROR);
    cf_proto_enc_text(fix->enc, message, 7);
    msg = s_round_trip(fix);
    assert_int_equal(msg->text.len, CF_PROTO_MAX_TEXT);
    cf_proto_msg_destroy(&msg);
    free(odd);
    free(message);
}

static void test_send_refuses_a_message_never_filled_in(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_READY);
    assert_int_equal(cf_proto_enc_send(fix->enc, fix->tx, NULL, 0), CF_EINVAL);
    cf_proto_enc_begin(fix->enc, CF_MSG_HEARTBEAT);
    assert_int_equal(cf_proto_enc_send(fix->enc, fix->tx, NULL, 0), CF_EINVAL);
    //  Nothing reached the other side.
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(cf_proto_recv(fix->rx, false, NULL, &msg), CF_ETIMEDOUT);
    assert_null(msg);
}

// ---------------------------------------------------------------------------
//  Hostile input

static void test_decode_rejects_the_wrong_version_frame(void **state)
{
    (void)state;
    const uint8_t body[] = { 0x91, 0x01 };
    const char *versions[] = { "cf/2", "cf/", "cf/10", "", "CF/1", "cf/1 " };
    for (size_t k = 0; k < sizeof versions / sizeof versions[0]; k++) {
        cf_proto_msg_t *msg = NULL;
        assert_int_equal(s_decode3(versions[k], "CREDIT", body, sizeof body, &msg), CF_EPROTO);
        assert_null(msg);
    }
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(s_decode3("cf/1", "CREDIT", body, sizeof body, &msg), CF_OK);
    cf_proto_msg_destroy(&msg);
}

static void test_decode_rejects_unknown_commands(void **state)
{
    (void)state;
    const uint8_t body[] = { 0x91, 0x01 };
    const char *commands[] = { "credit", "CREDITS", "CREDI", "", "NOPE", "$TERM" };
    for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++)
        assert_int_equal(s_decode(commands[k], body, sizeof body), CF_EPROTO);
}

static void test_decode_rejects_the_wrong_number_of_frames(void **state)
{
    (void)state;
    zmq_msg_t frames[4];
    for (int k = 0; k < 4; k++)
        zmq_msg_init(&frames[k]);
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(cf_proto_decode(frames, 2, &msg), CF_EPROTO);
    assert_int_equal(cf_proto_decode(frames, 4, &msg), CF_EPROTO);
    assert_int_equal(cf_proto_decode(frames, 0, &msg), CF_EPROTO);
    assert_int_equal(cf_proto_decode(NULL, 3, &msg), CF_EPROTO);
    assert_null(msg);
    for (int k = 0; k < 4; k++)
        zmq_msg_close(&frames[k]);
}

static void test_decode_rejects_an_empty_or_oversized_body(void **state)
{
    (void)state;
    assert_int_equal(s_decode("CREDIT", NULL, 0), CF_EPROTO);
    //  The size is refused before a byte of it is read.
    zmq_msg_t frames[3];
    zmq_msg_init_size(&frames[0], 4);
    memcpy(zmq_msg_data(&frames[0]), "cf/1", 4);
    zmq_msg_init_size(&frames[1], 6);
    memcpy(zmq_msg_data(&frames[1]), "SUBMIT", 6);
    assert_int_equal(zmq_msg_init_size(&frames[2], CF_PROTO_MAX_FRAME + 1), 0);
    memset(zmq_msg_data(&frames[2]), 0x90, CF_PROTO_MAX_FRAME + 1);
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(cf_proto_decode(frames, 3, &msg), CF_EPROTO);
    assert_null(msg);
    for (int k = 0; k < 3; k++)
        zmq_msg_close(&frames[k]);
}

static void test_decode_rejects_oversized_counts(void **state)
{
    (void)state;
    //  A batch over CF_PROTO_MAX_BATCH with every id present.
    size_t n = CF_PROTO_MAX_BATCH + 1;
    uint8_t *body = malloc(5 + n);
    assert_non_null(body);
    body[0] = 0xdd;
    body[1] = (uint8_t)(n >> 24);
    body[2] = (uint8_t)(n >> 16);
    body[3] = (uint8_t)(n >> 8);
    body[4] = (uint8_t)n;
    memset(body + 5, 0x01, n);
    assert_int_equal(s_decode("CANCEL", body, 5 + n), CF_EPROTO);
    //  Exactly the limit is fine.
    n--;
    body[2] = (uint8_t)(n >> 16);
    body[3] = (uint8_t)(n >> 8);
    body[4] = (uint8_t)n;
    assert_int_equal(s_decode("CANCEL", body, 5 + n), CF_OK);
    free(body);

    //  4 billion tasks announced in 5 bytes: refused before any allocation.
    const uint8_t bomb[] = { 0xdd, 0xff, 0xff, 0xff, 0xff };
    assert_int_equal(s_decode("SUBMIT", bomb, sizeof bomb), CF_EPROTO);
    //  1000 tasks announced, bytes for a few: each task takes >= 2 bytes.
    uint8_t few[5 + 100];
    memset(few, 0x01, sizeof few);
    few[0] = 0xdc;
    few[1] = 0x03;
    few[2] = 0xe8;
    assert_int_equal(s_decode("SUBMIT", few, 3 + 100), CF_EPROTO);
    //  A stats map of CF_PROTO_MAX_STATS + 1 pairs.
    uint8_t stats[3 + 2 * (CF_PROTO_MAX_STATS + 1) * 2];
    size_t pos = 0;
    stats[pos++] = 0xde;
    stats[pos++] = 0;
    stats[pos++] = CF_PROTO_MAX_STATS + 1;
    for (int k = 0; k <= CF_PROTO_MAX_STATS; k++) {
        stats[pos++] = 0xa1;
        stats[pos++] = 's';
        stats[pos++] = 0x01;
    }
    assert_int_equal(s_decode("STATS", stats, pos), CF_EPROTO);
}

//  Each of these bodies is wrong in exactly one field.
typedef struct {
    const char *command;
    const char *why;
    uint8_t body[48];
    size_t size;
} s_bad_t;

#define BAD(cmd, why, ...) \
    { \
        cmd, why, { __VA_ARGS__ }, sizeof((uint8_t[]){ __VA_ARGS__ }) \
    }

static const s_bad_t s_bad[] = {
    //  SUBMIT: [[id, function, args, retries, timeout_ms, flags]]
    BAD("SUBMIT", "good", 0x91, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00, 0x00, 0x00),
    BAD("SUBMIT", "body not an array", 0x81, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00, 0x00,
        0x00),
    BAD("SUBMIT", "task not an array", 0x91, 0x86, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00, 0x00,
        0x00),
    BAD("SUBMIT", "refused: five fields", 0x91, 0x95, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00,
        0x00),
    BAD("SUBMIT", "refused: seven fields", 0x91, 0x97, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00,
        0x00, 0x00, 0x00),
    BAD("SUBMIT", "id a str", 0x91, 0x96, 0xa1, '1', 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00, 0x00, 0x00),
    BAD("SUBMIT", "id negative", 0x91, 0x96, 0xff, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00, 0x00, 0x00),
    BAD("SUBMIT", "refused: function a bin", 0x91, 0x96, 0x01, 0xc4, 0x01, 'f', 0xc4, 0x01, 0x90,
        0x00, 0x00, 0x00),
    BAD("SUBMIT", "refused: function empty", 0x91, 0x96, 0x01, 0xa0, 0xc4, 0x01, 0x90, 0x00, 0x00,
        0x00),
    BAD("SUBMIT", "refused: args a str", 0x91, 0x96, 0x01, 0xa1, 'f', 0xa1, 0x90, 0x00, 0x00, 0x00),
    BAD("SUBMIT", "refused: args nil", 0x91, 0x96, 0x01, 0xa1, 'f', 0xc0, 0x00, 0x00, 0x00),
    BAD("SUBMIT", "a refused task, then a byte after the body", 0x91, 0x96, 0x01, 0xa1, 'f', 0xc0,
        0x00, 0x00, 0x00, 0x00),
    BAD("SUBMIT", "refused: only an id", 0x91, 0x91, 0x01),
    BAD("SUBMIT", "refused: retries a float", 0x91, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0xca,
        0, 0, 0, 0, 0x00, 0x00),
    BAD("SUBMIT", "refused: retries over int32", 0x91, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90,
        0xce, 0x80, 0, 0, 0, 0x00, 0x00),
    BAD("SUBMIT", "refused: timeout negative", 0x91, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00,
        0xff, 0x00),
    BAD("SUBMIT", "refused: timeout over uint32", 0x91, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90,
        0x00, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0, 0x00),
    BAD("SUBMIT", "refused: flags a bool", 0x91, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00,
        0x00, 0xc3),
    BAD("SUBMIT", "args bin truncated", 0x91, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x09, 0x90, 0x00, 0x00,
        0x00),
    BAD("SUBMIT", "no fields", 0x91, 0x90),
    //  Strs are well-formed UTF-8, and names hold no NUL (prose may).
    BAD("SUBMIT", "refused: function not UTF-8", 0x91, 0x96, 0x01, 0xa1, 0xff, 0xc4, 0x01, 0x90,
        0x00, 0x00, 0x00),
    BAD("SUBMIT", "refused: function a surrogate", 0x91, 0x96, 0x01, 0xa3, 0xed, 0xa0, 0x80, 0xc4,
        0x01, 0x90, 0x00, 0x00, 0x00),
    BAD("SUBMIT", "refused: function with NUL", 0x91, 0x96, 0x01, 0xa3, 'f', 0x00, 'g', 0xc4, 0x01,
        0x90, 0x00, 0x00, 0x00),
    BAD("SUBMIT", "good: function UTF-8", 0x91, 0x96, 0x01, 0xa3, 0xe2, 0x82, 0xac, 0xc4, 0x01,
        0x90, 0x00, 0x00, 0x00),
    BAD("TASK", "function not UTF-8", 0x91, 0x94, 0x01, 0xa1, 0xc0, 0xc4, 0x01, 0x90, 0x00),
    BAD("TASK", "function with NUL", 0x91, 0x94, 0x01, 0xa2, 'f', 0x00, 0xc4, 0x01, 0x90, 0x00),
    BAD("RESULT", "error type with NUL", 0x91, 0x93, 0x01, 0x01, 0x95, 0xa2, 'E', 0x00, 0xa0, 0xa0,
        0xa0, 0x00),
    BAD("RESULT", "error message not UTF-8", 0x91, 0x93, 0x01, 0x01, 0x95, 0xa1, 'E', 0xa1, 0xff,
        0xa0, 0xa0, 0x00),
    BAD("RESULT", "good: error message with NUL", 0x91, 0x93, 0x01, 0x01, 0x95, 0xa1, 'E', 0xa1,
        0x00, 0xa0, 0xa0, 0x00),
    BAD("RESULT", "error function with NUL", 0x91, 0x93, 0x01, 0x01, 0x95, 0xa1, 'E', 0xa0, 0xa1,
        0x00, 0xa0, 0x00),
    BAD("RESULT", "error host not UTF-8", 0x91, 0x93, 0x01, 0x01, 0x95, 0xa1, 'E', 0xa0, 0xa0, 0xa1,
        0x80, 0x00),
    BAD("READY", "host not UTF-8", 0x93, 0x04, 0xa1, 0xfe, 0x01),
    BAD("READY", "host with NUL", 0x93, 0x04, 0xa2, 'h', 0x00, 0x01),
    BAD("DISCONNECT", "reason not UTF-8", 0x91, 0xa2, 'b', 0xc3),
    BAD("ERROR", "good: text with NUL", 0x92, 0x07, 0xa1, 0x00),
    BAD("ERROR", "text not UTF-8", 0x92, 0x07, 0xa1, 0xe0),
    BAD("STATS", "name with NUL", 0x81, 0xa2, 's', 0x00, 0x01),
    //  TASK: [[id, function, args, timeout_ms]]
    BAD("TASK", "good", 0x91, 0x94, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00),
    BAD("TASK", "six fields (a SUBMIT task)", 0x91, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00,
        0x00, 0x00),
    BAD("TASK", "timeout a str", 0x91, 0x94, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0xa0),
    //  RESULT
    BAD("RESULT", "good ok", 0x91, 0x93, 0x01, 0x00, 0xc4, 0x01, 0xc0),
    BAD("RESULT", "good error", 0x91, 0x93, 0x01, 0x01, 0x95, 0xa1, 'E', 0xa0, 0xa0, 0xa0, 0x00),
    BAD("RESULT", "good cancelled", 0x91, 0x92, 0x01, 0x02),
    BAD("RESULT", "good busy", 0x91, 0x92, 0x01, 0x03),
    BAD("RESULT", "status 4", 0x91, 0x92, 0x01, 0x04),
    BAD("RESULT", "status negative", 0x91, 0x92, 0x01, 0xff),
    BAD("RESULT", "one field", 0x91, 0x91, 0x01),
    BAD("RESULT", "ok without value", 0x91, 0x92, 0x01, 0x00),
    BAD("RESULT", "ok value not bin", 0x91, 0x93, 0x01, 0x00, 0xc0),
    BAD("RESULT", "cancelled with a value", 0x91, 0x93, 0x01, 0x02, 0xc4, 0x01, 0xc0),
    BAD("RESULT", "four fields", 0x91, 0x94, 0x01, 0x00, 0xc4, 0x01, 0xc0, 0xc0),
    BAD("RESULT", "error with four fields", 0x91, 0x93, 0x01, 0x01, 0x94, 0xa1, 'E', 0xa0, 0xa0,
        0xa0),
    BAD("RESULT", "error type empty", 0x91, 0x93, 0x01, 0x01, 0x95, 0xa0, 0xa0, 0xa0, 0xa0, 0x00),
    BAD("RESULT", "error message nil", 0x91, 0x93, 0x01, 0x01, 0x95, 0xa1, 'E', 0xc0, 0xa0, 0xa0,
        0x00),
    BAD("RESULT", "error pid over int32", 0x91, 0x93, 0x01, 0x01, 0x95, 0xa1, 'E', 0xa0, 0xa0, 0xa0,
        0xce, 0x80, 0, 0, 0),
    BAD("RESULT", "error not an array", 0x91, 0x93, 0x01, 0x01, 0xa1, 'E'),
    //  CANCEL, STARTED
    BAD("CANCEL", "good", 0x92, 0x01, 0x02),
    BAD("CANCEL", "an id negative", 0x92, 0x01, 0xff),
    BAD("STARTED", "an id a str", 0x92, 0x01, 0xa1, '2'),
    BAD("STARTED", "a map", 0x81, 0x01, 0x02),
    //  READY, CREDIT, HEARTBEAT, DISCONNECT, ERROR
    BAD("READY", "good", 0x93, 0x04, 0xa1, 'h', 0x01),
    BAD("READY", "good with threads", 0x94, 0x04, 0xa1, 'h', 0x01, 0x02),
    BAD("READY", "two fields", 0x92, 0x04, 0xa1, 'h'),
    BAD("READY", "good with features", 0x95, 0x04, 0xa1, 'h', 0x01, 0x02, 0x01),
    BAD("READY", "six fields", 0x96, 0x04, 0xa1, 'h', 0x01, 0x02, 0x01, 0x00),
    BAD("READY", "features negative", 0x95, 0x04, 0xa1, 'h', 0x01, 0x02, 0xff),
    BAD("READY", "threads negative", 0x94, 0x04, 0xa1, 'h', 0x01, 0xff),
    BAD("READY", "credit negative", 0x93, 0xff, 0xa1, 'h', 0x01),
    BAD("READY", "host a bin", 0x93, 0x04, 0xc4, 0x01, 'h', 0x01),
    BAD("CREDIT", "good", 0x91, 0x04),
    BAD("CREDIT", "not an array", 0x04),
    BAD("CREDIT", "credit over uint32", 0x91, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0),
    BAD("CREDIT", "empty", 0x90),
    BAD("WANT", "good", 0x91, 0x00),
    BAD("WANT", "good at uint32's end", 0x91, 0xce, 0xff, 0xff, 0xff, 0xff),
    BAD("WANT", "over uint32", 0x91, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0),
    BAD("WANT", "negative", 0x91, 0xff),
    BAD("WANT", "two fields", 0x92, 0x01, 0x01),
    BAD("WANT", "empty", 0x90),
    BAD("WANT", "nil", 0xc0),
    BAD("WANT", "trailing byte", 0x91, 0x01, 0x01),
    BAD("REFUND", "good", 0x91, 0x03),
    BAD("REFUND", "a str", 0x91, 0xa1, '3'),
    BAD("REFUND", "a float", 0x91, 0xca, 0, 0, 0, 0),
    BAD("REFUND", "not an array", 0x03),
    BAD("REFUND", "array32 of two", 0xdd, 0, 0, 0, 2, 0x01, 0x01),
    BAD("HEARTBEAT", "good", 0x92, 0x00, 0x00),
    BAD("HEARTBEAT", "boot negative", 0x92, 0xff, 0x00),
    BAD("HEARTBEAT", "one field", 0x91, 0x00),
    BAD("HEARTBEAT", "ivl a float", 0x92, 0x00, 0xca, 0, 0, 0, 0),
    BAD("DISCONNECT", "good", 0x91, 0xa2, 'b', 'y'),
    BAD("DISCONNECT", "reason an int", 0x91, 0x01),
    BAD("DISCONNECT", "no reason", 0x90),
    BAD("ERROR", "good", 0x92, 0x07, 0xa1, 'x'),
    BAD("ERROR", "ref a str", 0x92, 0xa1, '7', 0xa1, 'x'),
    BAD("ERROR", "text missing", 0x91, 0x07),
    //  STATS
    BAD("STATS", "good request", 0x90),
    BAD("STATS", "good request with flags", 0x91, 0x01),
    BAD("STATS", "request of two", 0x92, 0x01, 0x01),
    BAD("STATS", "request flags a str", 0x91, 0xa1, 'x'),
    BAD("STATS", "good list", 0x81, 0xa1, 'l', 0x91, 0x01),
    BAD("STATS", "list cut short", 0x81, 0xa1, 'l', 0x92, 0x01),
    BAD("STATS", "value a map", 0x81, 0xa1, 's', 0x80),
    BAD("STATS", "value negative", 0x81, 0xa1, 's', 0xff),
    BAD("STATS", "name an int", 0x81, 0x01, 0x01),
    BAD("STATS", "name empty", 0x81, 0xa0, 0x01),
    BAD("STATS", "not a container", 0xc0),
};

//  "good" decodes; "refused" decodes with its one SUBMIT task refused (its
//  id read); anything else is malformed.
static void test_decode_checks_the_type_of_every_field(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof s_bad / sizeof s_bad[0]; k++) {
        const s_bad_t *bad = &s_bad[k];
        bool refused = strncmp(bad->why, "refused", 7) == 0;
        cf_err_t expected = strncmp(bad->why, "good", 4) == 0 || refused ? CF_OK : CF_EPROTO;
        cf_proto_msg_t *msg = NULL;
        cf_err_t rc = s_decode3(CF_PROTO_VERSION, bad->command, bad->body, bad->size, &msg);
        if (rc != expected)
            fail_msg("%s \"%s\": got %s", bad->command, bad->why, cf_strerror(rc));
        if (msg && msg->type == CF_MSG_SUBMIT) {
            assert_int_equal(msg->count, 1);
            assert_int_equal(msg->tasks[0].id, 1);
            if ((msg->tasks[0].refused != NULL) != refused)
                fail_msg("%s \"%s\": refused is %s", bad->command, bad->why,
                         msg->tasks[0].refused ? msg->tasks[0].refused : "NULL");
        }
        cf_proto_msg_destroy(&msg);
    }
}

static void test_decode_rejects_trailing_garbage(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof s_bad / sizeof s_bad[0]; k++) {
        const s_bad_t *bad = &s_bad[k];
        if (strncmp(bad->why, "good", 4) != 0)
            continue;
        uint8_t body[sizeof bad->body + 1];
        memcpy(body, bad->body, bad->size);
        body[bad->size] = 0xc0;
        if (s_decode(bad->command, body, bad->size + 1) != CF_EPROTO)
            fail_msg("%s with a trailing byte was accepted", bad->command);
    }
}

static void test_decode_rejects_limits_plus_one(void **state)
{
    (void)state;
    //  A function name of CF_PROTO_MAX_NAME + 1 bytes, a host, a message and
    //  a text of CF_PROTO_MAX_TEXT + 1 bytes.
    static uint8_t body[CF_PROTO_MAX_TEXT + 64];
    for (int over = 0; over <= 1; over++) {
        size_t name = CF_PROTO_MAX_NAME + (size_t)over;
        size_t pos = 0;
        body[pos++] = 0x91;
        body[pos++] = 0x94;
        body[pos++] = 0x01;
        body[pos++] = 0xda;
        body[pos++] = (uint8_t)(name >> 8);
        body[pos++] = (uint8_t)name;
        memset(body + pos, 'n', name);
        pos += name;
        body[pos++] = 0xc4;
        body[pos++] = 0x01;
        body[pos++] = 0x90;
        body[pos++] = 0x00;
        assert_int_equal(s_decode("TASK", body, pos), over ? CF_EPROTO : CF_OK);

        size_t text = CF_PROTO_MAX_TEXT + (size_t)over;
        pos = 0;
        body[pos++] = 0x92;
        body[pos++] = 0x00;
        body[pos++] = 0xda;
        body[pos++] = (uint8_t)(text >> 8);
        body[pos++] = (uint8_t)text;
        memset(body + pos, 't', text);
        pos += text;
        assert_int_equal(s_decode("ERROR", body, pos), over ? CF_EPROTO : CF_OK);
        body[0] = 0x91;    //  the same text as a DISCONNECT reason
        memmove(body + 1, body + 2, pos - 2);
        assert_int_equal(s_decode("DISCONNECT", body, pos - 1), over ? CF_EPROTO : CF_OK);
    }
}

static cf_msg_type_t s_command_of(const char *name);

//  A valid body of every command, for truncation and mutation.
typedef struct {
    const char *command;
    uint8_t *body;
    size_t size;
} s_sample_t;

static size_t s_samples(s_fix_t *fix, s_sample_t *out)
{
    size_t n = 0;
    s_raw_t raw;
#define S_TAKE() \
    (raw = s_capture(fix), out[n].command = cf_proto_command_name(s_command_of(raw.command)), \
     out[n].body = raw.body, out[n].size = raw.size, n++)
    cf_proto_enc_t *enc = fix->enc;
    cf_proto_enc_begin(enc, CF_MSG_SUBMIT);
    cf_proto_enc_task(enc, 1, "alpha", 5, "\x92\x01\xa1x", 4, 3, 1000, 1);
    cf_proto_enc_task(enc, 300, "b", 1, "\x90", 1, -1, 0, 0);
    cf_proto_enc_submit(enc, 301, "c", 1, "\x90", 1, 0, 0, 0, -7, 250);
    S_TAKE();
    cf_proto_enc_begin(enc, CF_MSG_TASK);
    cf_proto_enc_task(enc, 70000, "gamma", 5, "\x91\xc0", 2, 0, 5, 0);
    S_TAKE();
    cf_proto_enc_begin(enc, CF_MSG_RESULT);
    cf_proto_enc_result_ok(enc, 1, "\x92\x01\x02", 3);
    cf_proto_enc_result_error(enc, 2, "TypeError", "wrong", "alpha", "h", 12);
    cf_proto_enc_result_status(enc, 3, CF_STATUS_CANCELLED);
    cf_proto_enc_result_status(enc, 4, CF_STATUS_BUSY);
    S_TAKE();
    cf_proto_enc_begin(enc, CF_MSG_CANCEL);
    cf_proto_enc_id(enc, 1);
    cf_proto_enc_id(enc, 1ull << 40);
    S_TAKE();
    cf_proto_enc_begin(enc, CF_MSG_STARTED);
    cf_proto_enc_id(enc, 9);
    S_TAKE();
    cf_proto_enc_ready(enc, 4, 4, "host", 77, 0, NULL, 0);
    S_TAKE();
    static const char *const names[] = { "alpha", "b" };
    cf_proto_enc_ready(enc, 4, 4, "host", 77, CF_PROTO_FEATURE_BEGUN, names, 2);
    S_TAKE();
    cf_proto_enc_functions(enc, names, 2);
    S_TAKE();
    cf_proto_enc_begin(enc, CF_MSG_PROGRESS);
    cf_proto_enc_progress(enc, 9, 2, 10, 20, "\x91\x01", 2);
    cf_proto_enc_progress(enc, 10, 1, 0, 0, NULL, 0);
    S_TAKE();
    cf_proto_enc_begin(enc, CF_MSG_STOP);
    cf_proto_enc_stop(enc, 9, 250);
    S_TAKE();
    cf_proto_enc_credit(enc, 2);
    S_TAKE();
    cf_proto_enc_want(enc, 7);
    S_TAKE();
    cf_proto_enc_refund(enc, 3);
    S_TAKE();
    cf_proto_enc_heartbeat(enc, 123456789, 1000);
    S_TAKE();
    cf_proto_enc_begin(enc, CF_MSG_DISCONNECT);
    cf_proto_enc_text(enc, "bye", 0);
    S_TAKE();
    cf_proto_enc_begin(enc, CF_MSG_ERROR);
    cf_proto_enc_text(enc, "refused", 5);
    S_TAKE();
    cf_proto_enc_begin(enc, CF_MSG_STATS);
    cf_proto_enc_stat(enc, "tasks", 10);
    S_TAKE();
    cf_proto_enc_begin(enc, CF_MSG_STATS);
    S_TAKE();
#undef S_TAKE
    return n;
}

static cf_msg_type_t s_command_of(const char *name)
{
    for (int t = 1; t < CF_MSG_TYPE_COUNT_; t++) {
        if (strcmp(cf_proto_command_name((cf_msg_type_t)t), name) == 0)
            return (cf_msg_type_t)t;
    }
    fail_msg("unknown command %s", name);
    return 0;
}

static void test_decode_rejects_every_truncation_of_every_command(void **state)
{
    s_fix_t *fix = *state;
    s_sample_t samples[24];
    size_t n = s_samples(fix, samples);
    assert_int_equal(n, 18);
    for (size_t k = 0; k < n; k++) {
        assert_int_equal(s_decode(samples[k].command, samples[k].body, samples[k].size), CF_OK);
        for (size_t cut = 0; cut < samples[k].size; cut++) {
            if (s_decode(samples[k].command, samples[k].body, cut) != CF_EPROTO)
                fail_msg("%s cut to %zu of %zu bytes was accepted", samples[k].command, cut,
                         samples[k].size);
        }
        free(samples[k].body);
    }
}

//  A decoded name is well-formed UTF-8 without NUL.
static void s_assert_name(cf_proto_str_t s)
{
    assert_true(cf_utf8_valid(s.ptr, s.len));
    assert_true(s.len == 0 || !memchr(s.ptr, '\0', s.len));
}

//  Checks that everything a decoded message points to lies inside its body.
static void s_assert_inside(const cf_proto_msg_t *msg, const void *lo, size_t size)
{
    const uint8_t *start = lo;
    const uint8_t *end = start + size;
#define INSIDE(p, n) \
    assert_true((n) == 0 || ((const uint8_t *)(p) >= start && (const uint8_t *)(p) + (n) <= end))
    for (size_t k = 0; k < msg->count; k++) {
        if (msg->tasks) {
            INSIDE(msg->tasks[k].function.ptr, msg->tasks[k].function.len);
            INSIDE(msg->tasks[k].args, msg->tasks[k].args_len);
            assert_true(msg->tasks[k].refused
                        || (msg->tasks[k].function.len >= 1
                            && msg->tasks[k].function.len <= CF_PROTO_MAX_NAME));
            s_assert_name(msg->tasks[k].function);
        }
        if (msg->results) {
            INSIDE(msg->results[k].value, msg->results[k].value_len);
            INSIDE(msg->results[k].error.message.ptr, msg->results[k].error.message.len);
            assert_true(msg->results[k].status <= CF_STATUS_BUSY);
            s_assert_name(msg->results[k].error.type);
            s_assert_name(msg->results[k].error.function);
            s_assert_name(msg->results[k].error.host);
            assert_true(cf_utf8_valid(msg->results[k].error.message.ptr,
                                      msg->results[k].error.message.len));
        }
        if (msg->stats) {
            INSIDE(msg->stats[k].name.ptr, msg->stats[k].name.len);
            s_assert_name(msg->stats[k].name);
        }
        if (msg->progress)
            INSIDE(msg->progress[k].partial, msg->progress[k].partial_len);
    }
    INSIDE(msg->functions.data, msg->functions.len);
    size_t pos = 0;
    cf_proto_str_t name;
    while (cf_proto_names_next(&msg->functions, &pos, &name)) {
        INSIDE(name.ptr, name.len);
        s_assert_name(name);
    }
    INSIDE(msg->text.ptr, msg->text.len);
    INSIDE(msg->host.ptr, msg->host.len);
    assert_true(cf_utf8_valid(msg->text.ptr, msg->text.len));
    s_assert_name(msg->host);
#undef INSIDE
}

static uint32_t s_rand(uint32_t *seed)
{
    *seed = *seed * 1664525u + 1013904223u;
    return *seed >> 8;
}

static void test_mutated_and_random_frames_never_crash_the_decoder(void **state)
{
    s_fix_t *fix = *state;
    s_sample_t samples[24];
    size_t n = s_samples(fix, samples);
    uint32_t seed = 2024;
    size_t accepted = 0, rejected = 0;
    uint8_t buf[512];
    for (int round = 0; round < 6000; round++) {
        const s_sample_t *sample = &samples[s_rand(&seed) % n];
        size_t size = sample->size;
        memcpy(buf, sample->body, size);
        int how = (int)(s_rand(&seed) % 4);
        if (how == 0) {    //  flip a few bytes
            int flips = 1 + (int)(s_rand(&seed) % 3);
            for (int f = 0; f < flips; f++)
                buf[s_rand(&seed) % size] = (uint8_t)s_rand(&seed);
        }
        else if (how == 1) {    //  insert a byte
            size_t at = s_rand(&seed) % (size + 1);
            memmove(buf + at + 1, buf + at, size - at);
            buf[at] = (uint8_t)s_rand(&seed);
            size++;
        }
        else if (how == 2) {    //  drop a byte
            size_t at = s_rand(&seed) % size;
            memmove(buf + at, buf + at + 1, size - at - 1);
            size--;
        }
        else {    //  pure noise
            size = 1 + s_rand(&seed) % 64;
            for (size_t k = 0; k < size; k++)
                buf[k] = (uint8_t)s_rand(&seed);
        }
        //  Sometimes under the command of another sample.
        const char *command = sample->command;
        if (s_rand(&seed) % 8 == 0)
            command = samples[s_rand(&seed) % n].command;
        cf_proto_msg_t *msg = NULL;
        cf_err_t rc = s_decode3("cf/1", command, buf, size, &msg);
        if (rc == CF_OK) {
            accepted++;
            s_assert_inside(msg, zmq_msg_data(&msg->body_), zmq_msg_size(&msg->body_));
            cf_proto_msg_destroy(&msg);
        }
        else {
            assert_int_equal(rc, CF_EPROTO);
            assert_null(msg);
            rejected++;
        }
    }
    //  Both outcomes happen: the mutations do reach valid-but-different
    //  messages (an id byte changed) and, mostly, malformed ones.
    assert_true(accepted > 0);
    assert_true(rejected > accepted);
    for (size_t k = 0; k < n; k++)
        free(samples[k].body);
}

// ---------------------------------------------------------------------------
//  Strict input, clean output: UTF-8 and NUL (docs/protocol.md, "Body
//  encoding rules")

//  Good task 1, then tasks 2..5 each wrong in one way, then good task 6.
static void test_submit_refuses_bad_tasks_one_by_one(void **state)
{
    (void)state;
    const uint8_t body[] = {
        0x96, 0x96, 0x01, 0xa1, 'f',  0xc4, 0x01, 0x90, 0x00, 0x00, 0x00,          //  good
        0x96, 0x02, 0xa2, 'f',  0xff, 0xc4, 0x01, 0x90, 0x00, 0x00, 0x00,          //  not UTF-8
        0x96, 0x03, 0xa3, 'f',  0x00, 'g',  0xc4, 0x01, 0x90, 0x00, 0x00, 0x00,    //  NUL
        0x96, 0x04, 0xa1, 'f',  0xc4, 0x01, 0x90, 0xa1, 'x',  0x00, 0x00,          //  retries a str
        0x92, 0x05, 0x93, 0x01, 0x02, 0x03,                                        //  two fields
        0x96, 0x06, 0xa1, 'g',  0xc4, 0x01, 0x90, 0x00, 0x00, 0x00,                //  good
    };
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(s_decode3("cf/1", "SUBMIT", body, sizeof body, &msg), CF_OK);
    assert_int_equal(msg->count, 6);
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(msg->tasks[i].id, i + 1);
    assert_null(msg->tasks[0].refused);
    assert_true(s_str_is(msg->tasks[0].function, "f"));
    assert_string_equal(msg->tasks[1].refused, "the function name is not valid UTF-8");
    assert_null(msg->tasks[1].function.ptr);
    assert_string_equal(msg->tasks[2].refused, "the function name contains a NUL byte");
    assert_string_equal(msg->tasks[3].refused, "retries is not an int32");
    assert_true(s_str_is(msg->tasks[3].function, "f"));    //  read before the bad field
    assert_string_equal(msg->tasks[4].refused, "a task is an array of 6 or 8 fields");
    assert_null(msg->tasks[5].refused);
    assert_true(s_str_is(msg->tasks[5].function, "g"));
    cf_proto_msg_destroy(&msg);
}

//  Routing (issue 10): SUBMIT's 8-field form, READY's function list and
//  FUNCTIONS.
static void test_routing_fields_round_trip(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_SUBMIT);
    assert_int_equal(cf_proto_enc_submit(fix->enc, 1, "f", 1, "\x90", 1, 2, 0, 0, 0, 0), CF_OK);
    assert_int_equal(cf_proto_enc_submit(fix->enc, 2, "f", 1, "\x90", 1, 2, 0, 0, -3, 0), CF_OK);
    assert_int_equal(cf_proto_enc_submit(fix->enc, 3, "f", 1, "\x90", 1, 2, 0, 0, 0, 900), CF_OK);
    cf_proto_msg_t *msg = s_round_trip(fix);
    assert_int_equal(msg->count, 3);
    assert_int_equal(msg->tasks[0].priority, 0);
    assert_int_equal(msg->tasks[1].priority, -3);
    assert_int_equal(msg->tasks[1].wait_ms, 0);
    assert_int_equal(msg->tasks[2].wait_ms, 900);
    assert_int_equal(msg->tasks[2].retries, 2);
    cf_proto_msg_destroy(&msg);
    //  Without routing fields the item is cf/1's 6 fields, byte for byte.
    cf_proto_enc_begin(fix->enc, CF_MSG_SUBMIT);
    cf_proto_enc_submit(fix->enc, 1, "f", 1, "\x90", 1, 0, 0, 0, 0, 0);
    s_raw_t raw = s_capture(fix);
    assert_int_equal(raw.body[5], 0x96);
    free(raw.body);

    static const char *const names[] = { "alpha", "b\xc3\xa9ta" };
    cf_proto_enc_ready(fix->enc, 4, 2, "h", 7, CF_PROTO_FEATURE_BEGUN, names, 2);
    msg = s_round_trip(fix);
    assert_true(msg->functions.given);
    assert_int_equal(msg->functions.count, 2);
    size_t pos = 0;
    cf_proto_str_t name;
    assert_true(cf_proto_names_next(&msg->functions, &pos, &name) && s_str_is(name, "alpha"));
    assert_true(cf_proto_names_next(&msg->functions, &pos, &name) && s_str_is(name, "b\xc3\xa9ta"));
    assert_false(cf_proto_names_next(&msg->functions, &pos, &name));
    cf_proto_msg_destroy(&msg);
    //  An empty list is a list: the worker serves nothing.
    cf_proto_enc_ready(fix->enc, 4, 2, "h", 7, 0, names, 0);
    msg = s_round_trip(fix);
    assert_true(msg->functions.given);
    assert_int_equal(msg->functions.count, 0);
    cf_proto_msg_destroy(&msg);
    cf_proto_enc_ready(fix->enc, 4, 2, "h", 7, 0, NULL, 0);
    msg = s_round_trip(fix);
    assert_false(msg->functions.given);
    cf_proto_msg_destroy(&msg);

    cf_proto_enc_functions(fix->enc, names, 1);
    msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_FUNCTIONS);
    assert_int_equal(msg->functions.count, 1);
    cf_proto_msg_destroy(&msg);
}

//  PROGRESS and STOP (issue 10): batches like CANCEL's, each item checked.
static void test_progress_and_stop_round_trip(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_PROGRESS);
    assert_int_equal(cf_proto_enc_progress(fix->enc, 9, 4, 30, 120, NULL, 0), CF_OK);
    assert_int_equal(cf_proto_enc_progress(fix->enc, 10, 1, 2, 0, "\xa2hi", 3), CF_OK);
    assert_int_equal(cf_proto_enc_progress(fix->enc, 11, 1, 2, 0, "\xc0", 0), CF_EINVAL);
    static uint8_t big[CF_PROTO_MAX_PARTIAL + 1];
    assert_int_equal(cf_proto_enc_progress(fix->enc, 11, 1, 2, 0, big, sizeof big), CF_ETOOBIG);
    cf_proto_msg_t *msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_PROGRESS);
    assert_int_equal(msg->count, 2);
    assert_int_equal(msg->progress[0].id, 9);
    assert_int_equal(msg->progress[0].seq, 4);
    assert_int_equal(msg->progress[0].done, 30);
    assert_int_equal(msg->progress[0].total, 120);
    assert_null(msg->progress[0].partial);
    assert_int_equal(msg->progress[1].partial_len, 3);
    assert_memory_equal(msg->progress[1].partial, "\xa2hi", 3);
    cf_proto_msg_destroy(&msg);

    cf_proto_enc_begin(fix->enc, CF_MSG_STOP);
    assert_int_equal(cf_proto_enc_stop(fix->enc, 5, 1500), CF_OK);
    assert_int_equal(cf_proto_enc_id(fix->enc, 5), CF_EINVAL);    //  not a STOP item
    msg = s_round_trip(fix);
    assert_int_equal(msg->type, CF_MSG_STOP);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->stops[0].id, 5);
    assert_int_equal(msg->stops[0].grace_ms, 1500);
    cf_proto_msg_destroy(&msg);

    //  A partial that is not a bin, or an empty one, or a missing field.
    const uint8_t str_partial[] = { 0x91, 0x95, 0x01, 0x01, 0x00, 0x00, 0xa1, 'x' };
    assert_int_equal(s_decode("PROGRESS", str_partial, sizeof str_partial), CF_EPROTO);
    const uint8_t empty_partial[] = { 0x91, 0x95, 0x01, 0x01, 0x00, 0x00, 0xc4, 0x00 };
    assert_int_equal(s_decode("PROGRESS", empty_partial, sizeof empty_partial), CF_EPROTO);
    const uint8_t short_stop[] = { 0x91, 0x91, 0x01 };
    assert_int_equal(s_decode("STOP", short_stop, sizeof short_stop), CF_EPROTO);
    const uint8_t negative_grace[] = { 0x91, 0x92, 0x01, 0xff };
    assert_int_equal(s_decode("STOP", negative_grace, sizeof negative_grace), CF_EPROTO);
}

static void test_routing_fields_are_held_to_their_limits(void **state)
{
    s_fix_t *fix = *state;
    //  A name a task could not carry is refused before anything is sent.
    static const char *const bad[] = { "ok", "" };
    cf_proto_enc_functions(fix->enc, bad, 2);
    assert_int_equal(cf_proto_enc_send(fix->enc, fix->tx, NULL, 0), CF_EINVAL);
    static const char *const nul_free[] = { "a\xff" };
    cf_proto_enc_ready(fix->enc, 1, 1, "h", 1, 0, nul_free, 1);
    assert_int_equal(cf_proto_enc_send(fix->enc, fix->tx, NULL, 0), CF_EINVAL);

    //  READY [1, "h", 1, 1, 0, nil] is every function; a str is no list.
    const uint8_t ready_nil[] = { 0x96, 0x01, 0xa1, 'h', 0x01, 0x01, 0x00, 0xc0 };
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(s_decode3("cf/1", "READY", ready_nil, sizeof ready_nil, &msg), CF_OK);
    assert_false(msg->functions.given);
    cf_proto_msg_destroy(&msg);
    const uint8_t ready_str[] = { 0x96, 0x01, 0xa1, 'h', 0x01, 0x01, 0x00, 0xa1, 'f' };
    assert_int_equal(s_decode("READY", ready_str, sizeof ready_str), CF_EPROTO);
    //  FUNCTIONS: one array of names; a NUL, an empty name, a number or nil
    //  is malformed.
    const uint8_t nul[] = { 0x91, 0x91, 0xa3, 'a', 0x00, 'b' };
    assert_int_equal(s_decode("FUNCTIONS", nul, sizeof nul), CF_EPROTO);
    const uint8_t empty[] = { 0x91, 0x91, 0xa0 };
    assert_int_equal(s_decode("FUNCTIONS", empty, sizeof empty), CF_EPROTO);
    const uint8_t number[] = { 0x91, 0x91, 0x05 };
    assert_int_equal(s_decode("FUNCTIONS", number, sizeof number), CF_EPROTO);
    const uint8_t nil[] = { 0x91, 0xc0 };
    assert_int_equal(s_decode("FUNCTIONS", nil, sizeof nil), CF_EPROTO);
    //  More names than CF_PROTO_MAX_FUNCTIONS: refused from the header.
    uint8_t many[16] = { 0x91, 0xdd };
    uint32_t count = CF_PROTO_MAX_FUNCTIONS + 1;
    many[2] = (uint8_t)(count >> 24);
    many[3] = (uint8_t)(count >> 16);
    many[4] = (uint8_t)(count >> 8);
    many[5] = (uint8_t)count;
    assert_int_equal(s_decode("FUNCTIONS", many, 6), CF_EPROTO);
    //  SUBMIT: priority must be an int32, wait_ms a uint32; 7 fields is
    //  neither form. Each is refused alone.
    const uint8_t body[] = {
        0x93,    //  3 tasks
        0x98, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00, 0x00, 0x00, 0xa1, 'x',
        0x00,                                                                     //  priority str
        0x98, 0x02, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00, 0x00, 0x00, 0x01, 0xff,    //  wait -1
        0x97, 0x03, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00, 0x00, 0x00, 0x01,          //  7 fields
    };
    assert_int_equal(s_decode3("cf/1", "SUBMIT", body, sizeof body, &msg), CF_OK);
    assert_string_equal(msg->tasks[0].refused, "priority is not an int32");
    assert_string_equal(msg->tasks[1].refused, "wait_ms is not a uint32");
    assert_string_equal(msg->tasks[2].refused, "a task is an array of 6 or 8 fields");
    cf_proto_msg_destroy(&msg);
}

//  What cannot be read on sinks the batch, and the error says which task.
static void test_submit_without_a_readable_id_is_malformed_and_says_which_task(void **state)
{
    (void)state;
    const uint8_t no_id[] = {
        0x92, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x01, 0x90, 0x00, 0x00, 0x00,
        0x96, 0xa1, '2',  0xa1, 'f', 0xc4, 0x01, 0x90, 0x00, 0x00, 0x00,    //  id a str
    };
    assert_int_equal(s_decode("SUBMIT", no_id, sizeof no_id), CF_EPROTO);
    assert_string_equal(cf_last_error(), "malformed SUBMIT: task 2 of 2 has no readable id or is "
                                         "not msgpack; no task of it was taken");
    const uint8_t not_array[] = { 0x81, 0x01, 0x02 };
    assert_int_equal(s_decode("SUBMIT", not_array, sizeof not_array), CF_EPROTO);
    assert_string_equal(cf_last_error(), "malformed SUBMIT: no task of it was taken");
    const uint8_t cut[] = { 0x91, 0x96, 0x01, 0xa1, 'f', 0xc4, 0x09, 0x90 };    //  bin cut short
    assert_int_equal(s_decode("SUBMIT", cut, sizeof cut), CF_EPROTO);
    assert_string_equal(cf_last_error(), "malformed SUBMIT: task 1 of 1 has no readable id or is "
                                         "not msgpack; no task of it was taken");
    assert_int_equal(s_decode("CREDIT", not_array, sizeof not_array), CF_EPROTO);
    assert_string_equal(cf_last_error(), "malformed message");
}

//  Names go out as they are or not at all: replacing a byte of a function
//  name would call another function.
static void test_encoder_refuses_names_that_are_not_utf8_or_hold_nul(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_SUBMIT);
    assert_int_equal(cf_proto_enc_task(fix->enc, 1, "f\xff", 2, "\x90", 1, 0, 0, 0), CF_EINVAL);
    assert_int_equal(cf_proto_enc_task(fix->enc, 1, "f\0g", 3, "\x90", 1, 0, 0, 0), CF_EINVAL);
    assert_int_equal(cf_proto_enc_task(fix->enc, 1, "\xed\xa0\x80", 3, "\x90", 1, 0, 0, 0),
                     CF_EINVAL);
    assert_int_equal(cf_proto_enc_task(fix->enc, 1, "caf\xc3\xa9", 5, "\x90", 1, 0, 0, 0), CF_OK);
    assert_int_equal(cf_proto_enc_count(fix->enc), 1);
    cf_proto_msg_t *msg = s_round_trip(fix);
    assert_true(s_str_is(msg->tasks[0].function, "caf\xc3\xa9"));
    cf_proto_msg_destroy(&msg);
    cf_proto_enc_begin(fix->enc, CF_MSG_STATS);
    assert_int_equal(cf_proto_enc_stat(fix->enc, "bad\xc0", 1), CF_EINVAL);
}

//  Texts are written as well-formed UTF-8 whatever they held: what a strict
//  reader (this decoder, msgpack-python) takes, with U+FFFD in place of
//  each ill-formed sequence, cut to the limit at a character boundary.
static void test_encoder_replaces_bytes_of_texts_that_are_not_utf8(void **state)
{
    s_fix_t *fix = *state;
    cf_proto_enc_begin(fix->enc, CF_MSG_RESULT);
    assert_int_equal(cf_proto_enc_result_error(fix->enc, 9, "Bad\xff", "no function named 'f\xfe'",
                                               "f\xc3", "h\xed\xa0\x80", 4),
                     CF_OK);
    char *long_bad = malloc(2 * CF_PROTO_MAX_TEXT);
    assert_non_null(long_bad);
    memset(long_bad, 0xff, 2 * CF_PROTO_MAX_TEXT - 1);
    long_bad[2 * CF_PROTO_MAX_TEXT - 1] = '\0';
    assert_int_equal(cf_proto_enc_result_error(fix->enc, 10, "E", long_bad, "", "", 0), CF_OK);
    cf_proto_msg_t *msg = s_round_trip(fix);
    const cf_proto_error_t *e = &msg->results[0].error;
    assert_true(s_str_is(e->type, "Bad\xef\xbf\xbd"));
    assert_true(s_str_is(e->message, "no function named 'f\xef\xbf\xbd'"));
    assert_true(s_str_is(e->function, "f\xef\xbf\xbd"));
    assert_true(s_str_is(e->host, "h\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"));
    e = &msg->results[1].error;
    assert_int_equal(e->message.len, CF_PROTO_MAX_TEXT / 3 * 3);    //  whole U+FFFDs only
    assert_true(cf_utf8_valid(e->message.ptr, e->message.len));
    cf_proto_msg_destroy(&msg);
    free(long_bad);

    cf_proto_enc_ready(fix->enc, 1, 1, "host\x80", 1, 0, NULL, 0);
    msg = s_round_trip(fix);
    assert_true(s_str_is(msg->host, "host\xef\xbf\xbd"));
    cf_proto_msg_destroy(&msg);
    cf_proto_enc_begin(fix->enc, CF_MSG_DISCONNECT);
    cf_proto_enc_text(fix->enc, "bye\xf5", 0);
    msg = s_round_trip(fix);
    assert_true(s_str_is(msg->text, "bye\xef\xbf\xbd"));
    cf_proto_msg_destroy(&msg);
}

// ---------------------------------------------------------------------------
//  Real sockets: routers, frame limits, send errors

typedef struct {
    void *ctx;
    void *router;
    void *dealer;
} s_pair_t;

static void s_pair_open(s_pair_t *p, const char *endpoint)
{
    p->ctx = zmq_ctx_new();
    p->router = zmq_socket(p->ctx, ZMQ_ROUTER);
    p->dealer = zmq_socket(p->ctx, ZMQ_DEALER);
    assert_int_equal(cf_proto_socket_setup(p->router, true), CF_OK);
    assert_int_equal(cf_proto_socket_setup(p->dealer, false), CF_OK);
    assert_int_equal(zmq_setsockopt(p->dealer, ZMQ_ROUTING_ID, "peer-1", 6), 0);
    assert_int_equal(zmq_bind(p->router, endpoint), 0);
    assert_int_equal(zmq_connect(p->dealer, endpoint), 0);
}

static void s_pair_close(s_pair_t *p)
{
    zmq_close(p->router);
    zmq_close(p->dealer);
    zmq_ctx_term(p->ctx);
}

static void test_router_receives_with_the_routing_id_and_replies_to_it(void **state)
{
    (void)state;
    s_pair_t p;
    s_pair_open(&p, "inproc://cf-proto-router");
    cf_proto_enc_t *enc = cf_proto_enc_new();
    cf_proto_enc_ready(enc, 2, 2, "h", 1, 0, NULL, 0);
    assert_int_equal(cf_proto_enc_send(enc, p.dealer, NULL, 0), CF_OK);
    s_wait_readable(p.router);
    zmq_msg_t rid;
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(cf_proto_recv(p.router, true, &rid, &msg), CF_OK);
    assert_int_equal(zmq_msg_size(&rid), 6);
    assert_memory_equal(zmq_msg_data(&rid), "peer-1", 6);
    assert_int_equal(msg->type, CF_MSG_READY);
    cf_proto_msg_destroy(&msg);

    cf_proto_enc_credit(enc, 5);
    assert_int_equal(cf_proto_enc_send(enc, p.router, zmq_msg_data(&rid), zmq_msg_size(&rid)),
                     CF_OK);
    zmq_msg_close(&rid);
    s_wait_readable(p.dealer);
    assert_int_equal(cf_proto_recv(p.dealer, false, NULL, &msg), CF_OK);
    assert_int_equal(msg->type, CF_MSG_CREDIT);
    assert_int_equal(msg->credit, 5);
    cf_proto_msg_destroy(&msg);

    //  Nothing more: CF_ETIMEDOUT, and the routing id is still closable.
    assert_int_equal(cf_proto_recv(p.router, true, &rid, &msg), CF_ETIMEDOUT);
    assert_null(msg);
    zmq_msg_close(&rid);
    cf_proto_enc_destroy(&enc);
    s_pair_close(&p);
}

static void test_router_send_to_an_unknown_peer_is_not_found(void **state)
{
    (void)state;
    s_pair_t p;
    s_pair_open(&p, "inproc://cf-proto-unknown");
    cf_proto_enc_t *enc = cf_proto_enc_new();
    cf_proto_enc_heartbeat(enc, 1, 1000);
    assert_int_equal(cf_proto_enc_send(enc, p.router, "nobody", 6), CF_ENOTFOUND);
    //  The encoder survives the failure.
    cf_proto_enc_heartbeat(enc, 1, 1000);
    assert_int_equal(cf_proto_enc_send(enc, p.dealer, NULL, 0), CF_OK);
    cf_proto_enc_destroy(&enc);
    s_pair_close(&p);
}

static atomic_int s_freed;

static void s_count_free(void *body, void *hint)
{
    assert_ptr_equal(hint, body);
    free(body);
    atomic_fetch_add(&s_freed, 1);
}

//  Sends a built one-item body of type from the router to the dealer and
//  returns the message the dealer reads.
static cf_proto_msg_t *s_send_built(s_pair_t *p, cf_msg_type_t type, uint8_t *body, size_t size)
{
    assert_int_equal(
        cf_proto_send_body(p->router, "peer-1", 6, type, body, size, s_count_free, body), CF_OK);
    s_wait_readable(p->dealer);
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(cf_proto_recv(p->dealer, false, NULL, &msg), CF_OK);
    assert_int_equal(msg->type, type);
    assert_int_equal(msg->count, 1);
    return msg;
}

//  A one-item RESULT built around a value reads as the encoder's would,
//  ids of every width; the body is ZeroMQ's after a send, and still the
//  caller's after a failed one.
static void test_a_built_result_body_round_trips_and_is_freed_once_sent(void **state)
{
    (void)state;
    s_pair_t p;
    s_pair_open(&p, "inproc://cf-proto-built");
    static const uint64_t ids[] = { 0, 127, 128, 65536, UINT64_MAX };
    static const size_t sizes[] = { 1, 255, 256, 65535, 65536, 300000 };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        for (size_t j = 0; j < sizeof sizes / sizeof sizes[0]; j++) {
            uint8_t head[CF_PROTO_RESULT_HEAD_MAX];
            size_t n = cf_proto_result_ok_head(head, ids[i], sizes[j]);
            assert_true(n <= CF_PROTO_RESULT_HEAD_MAX);
            uint8_t *body = malloc(n + sizes[j]);
            assert_non_null(body);
            memcpy(body, head, n);
            for (size_t k = 0; k < sizes[j]; k++)
                body[n + k] = (uint8_t)(k * 7 + i);
            int freed = atomic_load(&s_freed);
            assert_int_equal(cf_proto_send_body(p.router, "nobody", 6, CF_MSG_RESULT, body,
                                                n + sizes[j], s_count_free, body),
                             CF_ENOTFOUND);
            assert_int_equal(atomic_load(&s_freed), freed);
            cf_proto_msg_t *msg = s_send_built(&p, CF_MSG_RESULT, body, n + sizes[j]);
            assert_true(msg->results[0].id == ids[i]);
            assert_int_equal(msg->results[0].status, CF_STATUS_OK);
            assert_int_equal(msg->results[0].value_len, sizes[j]);
            for (size_t k = 0; k < sizes[j]; k++)
                assert_int_equal(((const uint8_t *)msg->results[0].value)[k], (uint8_t)(k * 7 + i));
            cf_proto_msg_destroy(&msg);
            for (int wait = 0; atomic_load(&s_freed) != freed + 1 && wait < 5000; wait++)
                usleep(1000);
            assert_int_equal(atomic_load(&s_freed), freed + 1);
        }
    s_pair_close(&p);
}

//  A one-item TASK body built around its arguments reads as the encoder's
//  would, for every width of id, name and arguments.
static void test_a_built_task_body_reads_as_an_encoded_one(void **state)
{
    (void)state;
    s_pair_t p;
    s_pair_open(&p, "inproc://cf-proto-built-task");
    static const uint64_t ids[] = { 1, 127, 128, UINT64_MAX };
    static const char *const names[] = { "f", "a_name_of_exactly_thirty_one_ch",
                                         "a_name_of_thirty_two_characters_" };
    static const size_t sizes[] = { 0, 255, 256, 65536 };
    static const uint32_t timeouts[] = { 0, 1, UINT32_MAX };
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 3; j++)
            for (size_t k = 0; k < 4; k++) {
                size_t fn_len = strlen(names[j]);
                uint8_t *args = malloc(sizes[k] + 1);
                assert_non_null(args);
                for (size_t b = 0; b < sizes[k]; b++)
                    args[b] = (uint8_t)(b ^ i);
                uint8_t *body = malloc(CF_PROTO_TASK_BODY_MAX(fn_len, sizes[k]));
                assert_non_null(body);
                uint32_t timeout = timeouts[(i + k) % 3];
                size_t n = cf_proto_task_body(body, ids[i], names[j], fn_len, args, sizes[k],
                                              timeout);
                assert_true(n <= CF_PROTO_TASK_BODY_MAX(fn_len, sizes[k]));
                cf_proto_msg_t *msg = s_send_built(&p, CF_MSG_TASK, body, n);
                const cf_proto_task_t *t = &msg->tasks[0];
                assert_true(t->id == ids[i]);
                assert_true(cf_proto_str_eq(t->function, names[j]));
                assert_int_equal(t->args_len, sizes[k]);
                if (sizes[k])
                    assert_memory_equal(t->args, args, sizes[k]);
                assert_int_equal(t->timeout_ms, timeout);
                cf_proto_msg_destroy(&msg);
                free(args);
            }
    s_pair_close(&p);
}

static void test_dealer_with_no_peer_is_busy(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    assert_int_equal(cf_proto_socket_setup(dealer, false), CF_OK);
    cf_proto_enc_t *enc = cf_proto_enc_new();
    cf_proto_enc_begin(enc, CF_MSG_SUBMIT);
    assert_int_equal(cf_proto_enc_task(enc, 1, "f", 1, "\x90", 1, 0, 0, 0), CF_OK);
    //  No connection, no pipe: EAGAIN, which the caller sees as CF_EBUSY.
    assert_int_equal(cf_proto_enc_send(enc, dealer, NULL, 0), CF_EBUSY);
    assert_int_equal(cf_proto_enc_count(enc), 0);
    cf_proto_enc_destroy(&enc);
    zmq_close(dealer);
    zmq_ctx_term(ctx);
}

//  Sends count frames of junk as one message.
static void s_send_frames(void *socket, int count)
{
    for (int k = 0; k < count; k++)
        assert_true(zmq_send(socket, "x", 1, k + 1 < count ? ZMQ_SNDMORE : 0) == 1);
}

static void test_recv_drains_and_rejects_a_message_with_too_many_frames(void **state)
{
    (void)state;
    s_pair_t p;
    s_pair_open(&p, "inproc://cf-proto-frames");
    //  The routing id counts: 7 + 1 fits, 8 + 1 does not; 1000 never could.
    int sizes[] = { CF_PROTO_MAX_FRAMES, 1000, CF_PROTO_MAX_FRAMES - 1 };
    cf_err_t expected[] = { CF_EPROTO, CF_EPROTO, CF_EPROTO };
    for (int k = 0; k < 3; k++) {
        s_send_frames(p.dealer, sizes[k]);
        s_wait_readable(p.router);
        zmq_msg_t rid;
        cf_proto_msg_t *msg = NULL;
        assert_int_equal(cf_proto_recv(p.router, true, &rid, &msg), expected[k]);
        assert_null(msg);
        assert_memory_equal(zmq_msg_data(&rid), "peer-1", 6);    //  known: answerable
        zmq_msg_close(&rid);
    }
    //  After all that, the stream is in step: a good message decodes.
    cf_proto_enc_t *enc = cf_proto_enc_new();
    cf_proto_enc_credit(enc, 1);
    assert_int_equal(cf_proto_enc_send(enc, p.dealer, NULL, 0), CF_OK);
    s_wait_readable(p.router);
    zmq_msg_t rid;
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(cf_proto_recv(p.router, true, &rid, &msg), CF_OK);
    assert_int_equal(msg->type, CF_MSG_CREDIT);
    cf_proto_msg_destroy(&msg);
    zmq_msg_close(&rid);
    cf_proto_enc_destroy(&enc);
    s_pair_close(&p);
}

static void test_recv_on_a_dealer_rejects_extra_frames(void **state)
{
    s_fix_t *fix = *state;
    s_send_frames(fix->tx, CF_PROTO_MAX_FRAMES + 1);
    s_wait_readable(fix->rx);
    cf_proto_msg_t *msg = NULL;
    assert_int_equal(cf_proto_recv(fix->rx, false, NULL, &msg), CF_EPROTO);
    s_send_frames(fix->tx, 1);
    s_wait_readable(fix->rx);
    assert_int_equal(cf_proto_recv(fix->rx, false, NULL, &msg), CF_EPROTO);
    assert_int_equal(cf_proto_recv(fix->rx, false, NULL, &msg), CF_ETIMEDOUT);
    assert_null(msg);
}

static void test_small_bodies_survive_the_move_into_the_message(void **state)
{
    s_fix_t *fix = *state;
    //  Bodies up to 33 bytes live inside zmq_msg_t: the pointers must be
    //  into the message's copy, not the frame it came from.
    cf_proto_enc_begin(fix->enc, CF_MSG_DISCONNECT);
    cf_proto_enc_text(fix->enc, "short", 0);
    cf_proto_msg_t *msg = s_round_trip(fix);
    s_assert_inside(msg, zmq_msg_data(&msg->body_), zmq_msg_size(&msg->body_));
    char text[16];
    assert_int_equal(cf_proto_str_copy(msg->text, text, sizeof text), 5);
    assert_string_equal(text, "short");
    cf_proto_msg_destroy(&msg);
}

static void test_socket_setup_applies_the_options(void **state)
{
    s_fix_t *fix = *state;
    int linger = -2;
    size_t size = sizeof linger;
    assert_int_equal(zmq_getsockopt(fix->tx, ZMQ_LINGER, &linger, &size), 0);
    assert_int_equal(linger, 100);
    int64_t max = 0;
    size = sizeof max;
    assert_int_equal(zmq_getsockopt(fix->tx, ZMQ_MAXMSGSIZE, &max, &size), 0);
    assert_true(max > (int64_t)CF_PROTO_MAX_FRAME);
    int hwm = 0;
    size = sizeof hwm;
    assert_int_equal(zmq_getsockopt(fix->tx, ZMQ_SNDHWM, &hwm, &size), 0);
    assert_int_equal(hwm, 1000);
    int ivl = 0;
    size = sizeof ivl;
    assert_int_equal(zmq_getsockopt(fix->tx, ZMQ_HANDSHAKE_IVL, &ivl, &size), 0);
    assert_int_equal(ivl, 5000);
}

// ---------------------------------------------------------------------------
//  Small helpers

static void test_command_names_cover_every_type_and_nothing_else(void **state)
{
    (void)state;
    assert_null(cf_proto_command_name(0));
    assert_null(cf_proto_command_name(CF_MSG_TYPE_COUNT_));
    assert_string_equal(cf_proto_command_name(CF_MSG_SUBMIT), "SUBMIT");
    assert_string_equal(cf_proto_command_name(CF_MSG_STATS), "STATS");
    for (int t = 1; t < CF_MSG_TYPE_COUNT_; t++)
        assert_non_null(cf_proto_command_name((cf_msg_type_t)t));
}

static void test_str_helpers_copy_cut_and_compare(void **state)
{
    (void)state;
    cf_proto_str_t s = { "abcdef", 6 };
    char small[4];
    assert_int_equal(cf_proto_str_copy(s, small, sizeof small), 3);
    assert_string_equal(small, "abc");
    char *dup = cf_proto_str_dup(s);
    assert_string_equal(dup, "abcdef");
    free(dup);
    cf_proto_str_t empty = { NULL, 0 };
    dup = cf_proto_str_dup(empty);
    assert_string_equal(dup, "");
    free(dup);
    assert_true(cf_proto_str_eq(s, "abcdef"));
    assert_false(cf_proto_str_eq(s, "abcde"));
    assert_false(cf_proto_str_eq(s, "abcdeg"));
    assert_true(cf_proto_str_eq(empty, ""));
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, s_setup, s_teardown)
    const struct CMUnitTest tests[] = {
        T(test_submit_round_trips_every_field),
        T(test_submit_refuses_bad_tasks_one_by_one),
        T(test_routing_fields_round_trip),
        T(test_progress_and_stop_round_trip),
        T(test_routing_fields_are_held_to_their_limits),
        T(test_submit_without_a_readable_id_is_malformed_and_says_which_task),
        T(test_encoder_refuses_names_that_are_not_utf8_or_hold_nul),
        T(test_encoder_replaces_bytes_of_texts_that_are_not_utf8),
        T(test_task_round_trips_without_retries_and_flags),
        T(test_a_task_carries_its_flags_in_a_fifth_field),
        T(test_result_round_trips_every_status),
        T(test_cancel_and_started_round_trip_ids),
        T(test_single_body_messages_round_trip),
        T(test_stats_request_is_an_empty_array_and_reply_a_map),
        T(test_submit_encoding_matches_the_documented_example),
        T(test_large_bodies_travel_zero_copy_and_the_encoder_is_reused),
        T(test_send_resets_and_keeps_the_type),
        T(test_a_held_item_outlives_its_message),
        T(test_encoder_refuses_bad_items_and_leaves_the_body_alone),
        T(test_encoder_stops_a_batch_at_the_count_limit),
        T(test_encoder_stops_a_batch_at_the_frame_limit),
        T(test_encoder_cuts_long_texts_at_a_utf8_boundary),
        T(test_send_refuses_a_message_never_filled_in),
        cmocka_unit_test(test_decode_rejects_the_wrong_version_frame),
        cmocka_unit_test(test_decode_rejects_unknown_commands),
        cmocka_unit_test(test_decode_rejects_the_wrong_number_of_frames),
        cmocka_unit_test(test_decode_rejects_an_empty_or_oversized_body),
        cmocka_unit_test(test_decode_rejects_oversized_counts),
        cmocka_unit_test(test_decode_checks_the_type_of_every_field),
        cmocka_unit_test(test_decode_rejects_trailing_garbage),
        cmocka_unit_test(test_decode_rejects_limits_plus_one),
        T(test_decode_rejects_every_truncation_of_every_command),
        T(test_mutated_and_random_frames_never_crash_the_decoder),
        cmocka_unit_test(test_router_receives_with_the_routing_id_and_replies_to_it),
        cmocka_unit_test(test_router_send_to_an_unknown_peer_is_not_found),
        cmocka_unit_test(test_dealer_with_no_peer_is_busy),
        cmocka_unit_test(test_a_built_result_body_round_trips_and_is_freed_once_sent),
        cmocka_unit_test(test_a_built_task_body_reads_as_an_encoded_one),
        cmocka_unit_test(test_recv_drains_and_rejects_a_message_with_too_many_frames),
        T(test_recv_on_a_dealer_rejects_extra_frames),
        T(test_small_bodies_survive_the_move_into_the_message),
        T(test_socket_setup_applies_the_options),
        cmocka_unit_test(test_command_names_cover_every_type_and_nothing_else),
        cmocka_unit_test(test_str_helpers_copy_cut_and_compare),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
