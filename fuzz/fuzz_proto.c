//  Fuzz target: cf_proto_decode, the decoder of every cf/1 message a broker,
//  client or worker receives (cf_proto_recv hands it the frames after the
//  routing id, at most CF_PROTO_MAX_FRAMES of them). An input is a list of
//  frames (cf_fuzz.h). Beyond "no crash, no leak, no undefined behaviour",
//  a message that decodes must re-encode with the codec's own encoder and
//  decode again to the same items: what the decoder accepts, the rest of
//  cfutures can send on. And every str it hands out is well-formed UTF-8,
//  names without NUL (a refused SUBMIT task has only its id to trust).

#include "cf_fuzz.h"
#include "cf_proto.h"
#include "cf_utf8.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static void *s_ctx, *s_out, *s_in;
static cf_proto_enc_t *s_enc;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    s_ctx = zmq_ctx_new();
    s_out = zmq_socket(s_ctx, ZMQ_PAIR);
    s_in = zmq_socket(s_ctx, ZMQ_PAIR);
    CF_FUZZ_CHECK(s_ctx && s_out && s_in);
    CF_FUZZ_CHECK(zmq_bind(s_in, "inproc://fuzz") == 0);
    CF_FUZZ_CHECK(zmq_connect(s_out, "inproc://fuzz") == 0);
    s_enc = cf_proto_enc_new();
    CF_FUZZ_CHECK(s_enc);
    return 0;
}

//  The names of a function list as C strings (one allocation: *names
//  points into it, and it is the caller's to free); NULL when out of
//  memory or names were not given.
static char **s_names_dup(const cf_proto_names_t *names)
{
    if (!names->given)
        return NULL;
    char **list = malloc((names->count + 1) * sizeof *list + names->len + names->count + 1);
    if (!list)
        return NULL;
    char *text = (char *)(list + names->count + 1);
    size_t pos = 0, i = 0;
    cf_proto_str_t name;
    while (cf_proto_names_next(names, &pos, &name)) {
        CF_FUZZ_CHECK(i < names->count);
        memcpy(text, name.ptr, name.len);
        text[name.len] = '\0';
        list[i++] = text;
        text += name.len + 1;
    }
    CF_FUZZ_CHECK(i == names->count);
    return list;
}

//  Encodes msg again; false when the encoder refuses an item (its own
//  limits may be stricter: then there is nothing to compare).
static bool s_encode(const cf_proto_msg_t *msg)
{
    cf_proto_enc_begin(s_enc, msg->type);
    if (msg->type == CF_MSG_STATS && msg->stats_flags)
        cf_proto_enc_stats_request(s_enc, msg->stats_flags);
    cf_err_t rc = CF_OK;
    for (size_t i = 0; i < msg->count && rc == CF_OK; i++) {
        switch (msg->type) {
        case CF_MSG_SUBMIT:
        case CF_MSG_TASK: {
            const cf_proto_task_t *t = &msg->tasks[i];
            if (t->refused) {
                rc = CF_EINVAL;    //  what was wrong with it cannot be sent again
                break;
            }
            rc = cf_proto_enc_submit(s_enc, t->id, t->function.ptr, t->function.len, t->args,
                                     t->args_len, t->retries, t->timeout_ms, t->flags, t->priority,
                                     t->wait_ms);
            break;
        }
        case CF_MSG_RESULT: {
            const cf_proto_result_t *r = &msg->results[i];
            if (r->status == CF_STATUS_OK)
                rc = cf_proto_enc_result_ok(s_enc, r->id, r->value, r->value_len);
            else if (r->status == CF_STATUS_ERROR) {
                char *type = cf_proto_str_dup(r->error.type);
                char *message = cf_proto_str_dup(r->error.message);
                char *function = cf_proto_str_dup(r->error.function);
                char *host = cf_proto_str_dup(r->error.host);
                rc = type && message && function && host ? cf_proto_enc_result_error(
                         s_enc, r->id, type, message, function, host, r->error.pid)
                                                         : CF_ENOMEM;
                free(type);
                free(message);
                free(function);
                free(host);
            }
            else
                rc = cf_proto_enc_result_status(s_enc, r->id, r->status);
            break;
        }
        case CF_MSG_CANCEL:
        case CF_MSG_STARTED:
            rc = cf_proto_enc_id(s_enc, msg->ids[i]);
            break;
        case CF_MSG_PROGRESS: {
            const cf_proto_progress_t *p = &msg->progress[i];
            rc = cf_proto_enc_progress(s_enc, p->id, p->seq, p->done, p->total, p->partial,
                                       p->partial_len);
            break;
        }
        case CF_MSG_STOP:
            rc = cf_proto_enc_stop(s_enc, msg->stops[i].id, msg->stops[i].grace_ms);
            break;
        case CF_MSG_STATS: {
            const cf_proto_stat_t *stat = &msg->stats[i];
            char *name = cf_proto_str_dup(stat->name);
            rc = !name        ? CF_ENOMEM
                 : stat->list ? cf_proto_enc_stat_list(s_enc, name, stat->list, stat->list_len)
                              : cf_proto_enc_stat(s_enc, name, stat->value);
            free(name);
            break;
        }
        default:
            break;
        }
    }
    if (rc != CF_OK)
        return false;
    char *text = NULL, *host = NULL;
    switch (msg->type) {
    case CF_MSG_READY: {
        host = cf_proto_str_dup(msg->host);
        if (!host)
            return false;
        char **names = s_names_dup(&msg->functions);
        if (msg->functions.given && !names) {
            free(host);
            return false;
        }
        cf_proto_enc_ready(s_enc, msg->credit, msg->threads, host, msg->pid, msg->features,
                           (const char *const *)names, msg->functions.count);
        free(host);
        free(names);
        break;
    }
    case CF_MSG_FUNCTIONS: {
        char **names = s_names_dup(&msg->functions);
        if (!names)
            return false;
        cf_proto_enc_functions(s_enc, (const char *const *)names, msg->functions.count);
        free(names);
        break;
    }
    case CF_MSG_CREDIT:
        cf_proto_enc_credit(s_enc, msg->credit);
        break;
    case CF_MSG_WANT:
        cf_proto_enc_want(s_enc, msg->credit);
        break;
    case CF_MSG_REFUND:
        cf_proto_enc_refund(s_enc, msg->credit);
        break;
    case CF_MSG_HEARTBEAT:
        cf_proto_enc_heartbeat(s_enc, msg->boot, msg->ivl_ms);
        break;
    case CF_MSG_ERROR:
    case CF_MSG_DISCONNECT:
        text = cf_proto_str_dup(msg->text);
        if (!text)
            return false;
        cf_proto_enc_text(s_enc, text, msg->ref);
        free(text);
        break;
    default:
        break;
    }
    return true;
}

static void s_check_name(cf_proto_str_t s)
{
    CF_FUZZ_CHECK(cf_utf8_valid(s.ptr, s.len));
    CF_FUZZ_CHECK(s.len == 0 || !memchr(s.ptr, '\0', s.len));
}

//  What the decoder promises of the strs it accepted.
static void s_check_strs(const cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        if (msg->tasks) {
            s_check_name(msg->tasks[i].function);
            CF_FUZZ_CHECK(msg->tasks[i].refused || msg->tasks[i].function.len > 0);
            CF_FUZZ_CHECK(!msg->tasks[i].refused || msg->type == CF_MSG_SUBMIT);
        }
        if (msg->results && msg->results[i].status == CF_STATUS_ERROR) {
            const cf_proto_error_t *e = &msg->results[i].error;
            s_check_name(e->type);
            s_check_name(e->function);
            s_check_name(e->host);
            CF_FUZZ_CHECK(cf_utf8_valid(e->message.ptr, e->message.len));
        }
        if (msg->stats)
            s_check_name(msg->stats[i].name);
    }
    s_check_name(msg->host);
    size_t pos = 0;
    cf_proto_str_t name;
    while (cf_proto_names_next(&msg->functions, &pos, &name)) {
        s_check_name(name);
        CF_FUZZ_CHECK(name.len > 0);
    }
    CF_FUZZ_CHECK(cf_utf8_valid(msg->text.ptr, msg->text.len));
}

static void s_same(const cf_proto_msg_t *a, const cf_proto_msg_t *b)
{
    CF_FUZZ_CHECK(a->type == b->type);
    CF_FUZZ_CHECK(a->count == b->count);
    for (size_t i = 0; i < a->count; i++) {
        switch (a->type) {
        case CF_MSG_SUBMIT:
        case CF_MSG_TASK:
            CF_FUZZ_CHECK(a->tasks[i].id == b->tasks[i].id);
            CF_FUZZ_CHECK(a->tasks[i].args_len == b->tasks[i].args_len);
            CF_FUZZ_CHECK(memcmp(a->tasks[i].args, b->tasks[i].args, a->tasks[i].args_len) == 0);
            CF_FUZZ_CHECK(a->tasks[i].priority == b->tasks[i].priority);
            CF_FUZZ_CHECK(a->tasks[i].wait_ms == b->tasks[i].wait_ms);
            break;
        case CF_MSG_RESULT:
            CF_FUZZ_CHECK(a->results[i].id == b->results[i].id);
            CF_FUZZ_CHECK(a->results[i].status == b->results[i].status);
            CF_FUZZ_CHECK(a->results[i].value_len == b->results[i].value_len);
            break;
        case CF_MSG_CANCEL:
        case CF_MSG_STARTED:
            CF_FUZZ_CHECK(a->ids[i] == b->ids[i]);
            break;
        case CF_MSG_PROGRESS: {
            const cf_proto_progress_t *pa = &a->progress[i], *pb = &b->progress[i];
            CF_FUZZ_CHECK(pa->id == pb->id && pa->seq == pb->seq && pa->done == pb->done
                          && pa->total == pb->total && pa->partial_len == pb->partial_len);
            CF_FUZZ_CHECK(!pa->partial == !pb->partial);
            CF_FUZZ_CHECK(!pa->partial || memcmp(pa->partial, pb->partial, pa->partial_len) == 0);
            break;
        }
        case CF_MSG_STOP:
            CF_FUZZ_CHECK(a->stops[i].id == b->stops[i].id);
            CF_FUZZ_CHECK(a->stops[i].grace_ms == b->stops[i].grace_ms);
            break;
        case CF_MSG_STATS:
            CF_FUZZ_CHECK(a->stats[i].value == b->stats[i].value);
            CF_FUZZ_CHECK(a->stats[i].list_len == b->stats[i].list_len);
            CF_FUZZ_CHECK(a->stats[i].list_len == 0
                          || memcmp(a->stats[i].list, b->stats[i].list, a->stats[i].list_len) == 0);
            break;
        default:
            break;
        }
    }
    CF_FUZZ_CHECK(a->credit == b->credit && a->boot == b->boot && a->ref == b->ref);
    CF_FUZZ_CHECK(a->stats_flags == b->stats_flags);
    CF_FUZZ_CHECK(a->functions.given == b->functions.given);
    CF_FUZZ_CHECK(a->functions.count == b->functions.count);
    size_t pos_a = 0, pos_b = 0;
    cf_proto_str_t name_a, name_b;
    while (cf_proto_names_next(&a->functions, &pos_a, &name_a)) {
        CF_FUZZ_CHECK(cf_proto_names_next(&b->functions, &pos_b, &name_b));
        CF_FUZZ_CHECK(name_a.len == name_b.len && memcmp(name_a.ptr, name_b.ptr, name_a.len) == 0);
    }
    CF_FUZZ_CHECK(!cf_proto_names_next(&b->functions, &pos_b, &name_b));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *ptr[CF_PROTO_MAX_FRAMES];
    size_t len[CF_PROTO_MAX_FRAMES], count;
    cf_fuzz_split(data, size, CF_PROTO_MAX_FRAMES, ptr, len, &count);
    zmq_msg_t frames[CF_PROTO_MAX_FRAMES];
    for (size_t i = 0; i < count; i++) {
        CF_FUZZ_CHECK(zmq_msg_init_size(&frames[i], len[i]) == 0);
        if (len[i])
            memcpy(zmq_msg_data(&frames[i]), ptr[i], len[i]);
    }
    cf_proto_msg_t *msg = NULL;
    cf_err_t rc = cf_proto_decode(frames, count, &msg);
    for (size_t i = 0; i < count; i++)
        zmq_msg_close(&frames[i]);
    CF_FUZZ_CHECK(rc == CF_OK || rc == CF_EPROTO || rc == CF_ENOMEM);
    CF_FUZZ_CHECK((rc == CF_OK) == (msg != NULL));
    if (!msg)
        return 0;
    s_check_strs(msg);

    if (s_encode(msg) && cf_proto_enc_send(s_enc, s_out, NULL, 0) == CF_OK) {
        cf_proto_msg_t *again = NULL;
        rc = cf_proto_recv(s_in, false, NULL, &again);
        CF_FUZZ_CHECK(rc == CF_OK);
        s_same(msg, again);
        cf_proto_msg_destroy(&again);
    }
    cf_proto_msg_destroy(&msg);
    return 0;
}
