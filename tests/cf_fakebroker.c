//  cf_fakebroker (see cf_fakebroker.h).

#include "cf_fakebroker.h"

#include "cf_mp.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include <cmocka.h>

void cf_fakebroker_start(cf_fakebroker_t *b)
{
    memset(b, 0, sizeof *b);
    b->ctx = zmq_ctx_new();
    assert_non_null(b->ctx);
    b->router = zmq_socket(b->ctx, ZMQ_ROUTER);
    assert_non_null(b->router);
    assert_int_equal(cf_proto_socket_setup(b->router, true), CF_OK);
    assert_int_equal(zmq_bind(b->router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof b->endpoint;
    assert_int_equal(zmq_getsockopt(b->router, ZMQ_LAST_ENDPOINT, b->endpoint, &len), 0);
    b->enc = cf_proto_enc_new();
    assert_non_null(b->enc);
}

void cf_fakebroker_stop(cf_fakebroker_t *b)
{
    cf_proto_enc_destroy(&b->enc);
    zmq_close(b->router);
    assert_int_equal(zmq_ctx_term(b->ctx), 0);
}

int cf_fakebroker_setup(void **state)
{
    cf_fakebroker_t *b = malloc(sizeof *b);
    assert_non_null(b);
    cf_fakebroker_start(b);
    *state = b;
    return 0;
}

int cf_fakebroker_teardown(void **state)
{
    cf_fakebroker_t *b = *state;
    cf_fakebroker_stop(b);
    free(b);
    *state = NULL;
    return 0;
}

cf_proto_msg_t *cf_fakebroker_recv(cf_fakebroker_t *b, int timeout_ms)
{
    while (true) {
        zmq_pollitem_t item = { b->router, 0, ZMQ_POLLIN, 0 };
        int rc = zmq_poll(&item, 1, timeout_ms);
        if (rc == 0)
            return NULL;
        assert_true(rc > 0);
        zmq_msg_t rid;
        zmq_msg_init(&rid);
        cf_proto_msg_t *msg = NULL;
        cf_err_t err = cf_proto_recv(b->router, true, &rid, &msg);
        if (err == CF_OK) {
            b->peer_len = zmq_msg_size(&rid);
            assert_true(b->peer_len < sizeof b->peer);
            memcpy(b->peer, zmq_msg_data(&rid), b->peer_len);
            b->peer[b->peer_len] = '\0';
        }
        zmq_msg_close(&rid);
        if (err == CF_ETIMEDOUT)
            continue;
        assert_int_equal(err, CF_OK);
        return msg;
    }
}

cf_proto_msg_t *cf_fakebroker_expect(cf_fakebroker_t *b, cf_msg_type_t type)
{
    while (true) {
        cf_proto_msg_t *msg = cf_fakebroker_recv(b, CF_FAKEBROKER_WAIT_MS);
        if (!msg)
            fail_msg("no %s from any worker", cf_proto_command_name(type));
        if (msg->type == type)
            return msg;
        if (msg->type == CF_MSG_HEARTBEAT) {
            b->heartbeats++;
            cf_proto_msg_destroy(&msg);
            continue;
        }
        if (msg->type == CF_MSG_CREDIT) {
            b->credit += msg->credit;
            cf_proto_msg_destroy(&msg);
            continue;
        }
        if (msg->type == CF_MSG_STARTED) {
            b->started += msg->count;
            cf_proto_msg_destroy(&msg);
            continue;
        }
        if (msg->type == CF_MSG_READY) {
            b->readies++;
            cf_proto_msg_destroy(&msg);
            continue;
        }
        fail_msg("expected %s, got %s from %s", cf_proto_command_name(type),
                 cf_proto_command_name(msg->type), b->peer);
    }
}

void cf_fakebroker_await(cf_fakebroker_t *b, cf_msg_type_t type)
{
    cf_proto_msg_t *msg = cf_fakebroker_expect(b, type);
    cf_proto_msg_destroy(&msg);
}

void cf_fakebroker_send(cf_fakebroker_t *b)
{
    assert_int_equal(cf_proto_enc_send(b->enc, b->router, b->peer, b->peer_len), CF_OK);
}

void cf_fakebroker_send_to(cf_fakebroker_t *b, const char *identity)
{
    assert_int_equal(cf_proto_enc_send(b->enc, b->router, identity, strlen(identity)), CF_OK);
}

void cf_fakebroker_add_task(cf_fakebroker_t *b, uint64_t id, const char *fn, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cf_fakebroker_add_taskv(b, id, fn, fmt, &ap);
    va_end(ap);
}

static void s_add_task(cf_fakebroker_t *b, uint64_t id, const char *fn, uint32_t flags,
                       const char *fmt, va_list *ap)
{
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    assert_int_equal(cf_mp_write_format(&w, true, fmt, ap), CF_OK);
    assert_int_equal(
        cf_proto_enc_task(b->enc, id, fn, strlen(fn), w.buf.data, w.buf.size, 0, 0, flags), CF_OK);
    cf_mp_writer_fini(&w);
}

void cf_fakebroker_add_taskv(cf_fakebroker_t *b, uint64_t id, const char *fn, const char *fmt,
                             va_list *ap)
{
    s_add_task(b, id, fn, 0, fmt, ap);
}

void cf_fakebroker_add_flagged_task(cf_fakebroker_t *b, uint64_t id, const char *fn, uint32_t flags,
                                    const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_add_task(b, id, fn, flags, fmt, &ap);
    va_end(ap);
}

void cf_fakebroker_send_task(cf_fakebroker_t *b, uint64_t id, const char *fn, const char *fmt, ...)
{
    cf_proto_enc_begin(b->enc, CF_MSG_TASK);
    va_list ap;
    va_start(ap, fmt);
    cf_fakebroker_add_taskv(b, id, fn, fmt, &ap);
    va_end(ap);
    cf_fakebroker_send(b);
}
