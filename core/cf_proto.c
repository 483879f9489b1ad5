//  cf_proto: the wire protocol "cf/1" (docs/protocol.md), the only code that
//  touches frames.
//
//  Decoding trusts nothing: the version frame is checked first, the command
//  must be one of ours, the body is read with cf_mp's bounded cursor, every
//  count is held to CF_PROTO_MAX_BATCH and to what the bytes present could
//  hold before the one allocation of the message, every field is
//  type-checked and range-checked (every str well-formed UTF-8, names
//  without NUL), and nothing may follow the body's value. Any failure
//  leaves through the one `malformed` exit, except a SUBMIT task that is
//  wrong but has a readable id: it is marked refused, for the broker to
//  answer alone, and the batch goes on. Strings and byte
//  fields are not copied: the body frame moves into the message and the
//  fields point into it.
//
//  Encoding is the hot path of a broker moving hundreds of thousands of
//  tasks a second, so an encoder is reusable and never allocates per item:
//  a batch body starts with an array32 header whose count is patched at
//  send (msgpack allows non-minimal lengths), items are packed straight into
//  one growing buffer, and the body leaves zero-copy when large.

#include "cf_proto.h"
#include "cf_error.h"
#include "cf_mp.h"
#include "cf_utf8.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const char *s_names[CF_MSG_TYPE_COUNT_] = {
    [CF_MSG_SUBMIT] = "SUBMIT",
    [CF_MSG_CANCEL] = "CANCEL",
    [CF_MSG_STARTED] = "STARTED",
    [CF_MSG_RESULT] = "RESULT",
    [CF_MSG_TASK] = "TASK",
    [CF_MSG_READY] = "READY",
    [CF_MSG_CREDIT] = "CREDIT",
    [CF_MSG_HEARTBEAT] = "HEARTBEAT",
    [CF_MSG_DISCONNECT] = "DISCONNECT",
    [CF_MSG_STATS] = "STATS",
    [CF_MSG_ERROR] = "ERROR",
    [CF_MSG_FUNCTIONS] = "FUNCTIONS",
    [CF_MSG_PROGRESS] = "PROGRESS",
    [CF_MSG_STOP] = "STOP",
    [CF_MSG_WANT] = "WANT",
    [CF_MSG_REFUND] = "REFUND",
};

const char *cf_proto_command_name(cf_msg_type_t type)
{
    if ((int)type <= 0 || type >= CF_MSG_TYPE_COUNT_)
        return NULL;
    return s_names[type];
}

size_t cf_proto_str_copy(cf_proto_str_t src, char *dst, size_t size)
{
    assert(dst && size > 0);
    size_t len = src.len < size - 1 ? src.len : size - 1;
    if (len)
        memcpy(dst, src.ptr, len);
    dst[len] = '\0';
    return len;
}

char *cf_proto_str_dup(cf_proto_str_t src)
{
    char *copy = malloc(src.len + 1);
    if (copy)
        cf_proto_str_copy(src, copy, src.len + 1);
    return copy;
}

bool cf_proto_str_eq(cf_proto_str_t s, const char *text)
{
    assert(text);
    size_t len = strlen(text);
    return s.len == len && (len == 0 || memcmp(s.ptr, text, len) == 0);
}

// ---------------------------------------------------------------------------
//  Decoding

//  Is this a batch message, and how few bytes can one of its items take?
//  (An item that cannot fit in what is left is malformed before we allocate
//  room for it.)
static size_t s_min_item_bytes(cf_msg_type_t type)
{
    switch (type) {
    case CF_MSG_SUBMIT:
        return 2;    //  91 id: a task with no more than an id is answered alone
    case CF_MSG_TASK:
        return 7;    //  94 id a1 'f' c4 00 timeout
    case CF_MSG_RESULT:
        return 3;    //  92 id 02
    case CF_MSG_CANCEL:
    case CF_MSG_STARTED:
        return 1;    //  a positive fixint
    case CF_MSG_PROGRESS:
        return 6;    //  95 id seq done total c0
    case CF_MSG_STOP:
        return 3;    //  92 id grace
    default:
        return 0;
    }
}

//  True when the next value is an array (fixarray, array16, array32).
static bool s_next_is_array(const cf_mp_reader_t *r)
{
    if (r->pos >= r->size)
        return false;
    uint8_t b = r->data[r->pos];
    return (b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd;
}

static cf_err_t s_read_u32(cf_mp_reader_t *r, uint32_t *out)
{
    uint64_t v;
    if (cf_mp_read_uint(r, &v) != CF_OK || v > UINT32_MAX)
        return CF_EPROTO;
    *out = (uint32_t)v;
    return CF_OK;
}

static cf_err_t s_read_i32(cf_mp_reader_t *r, int32_t *out)
{
    int64_t v;
    if (cf_mp_read_int(r, &v) != CF_OK || v < INT32_MIN || v > INT32_MAX)
        return CF_EPROTO;
    *out = (int32_t)v;
    return CF_OK;
}

//  A str that names something (function, error type, host, stat name):
//  within its lengths, well-formed UTF-8 (peers in other languages decode
//  it strictly) and free of NUL, which every C reader would cut the name at,
//  calling or showing something else than was sent.
static cf_err_t s_read_text(cf_mp_reader_t *r, size_t min_len, size_t max_len, cf_proto_str_t *s)
{
    if (cf_mp_read_str(r, max_len, &s->ptr, &s->len) != CF_OK || s->len < min_len
        || !cf_utf8_name_ok(s->ptr, s->len))
        return CF_EPROTO;
    return CF_OK;
}

//  A str of prose (error message, DISCONNECT reason, ERROR text): UTF-8 as
//  well, but a NUL in it is only cut at by C readers, never misread.
static cf_err_t s_read_prose(cf_mp_reader_t *r, cf_proto_str_t *s)
{
    if (cf_mp_read_str(r, CF_PROTO_MAX_TEXT, &s->ptr, &s->len) != CF_OK
        || !cf_utf8_valid(s->ptr, s->len))
        return CF_EPROTO;
    return CF_OK;
}

static cf_err_t s_read_bytes(cf_mp_reader_t *r, const uint8_t **ptr, size_t *len)
{
    const void *p;
    if (cf_mp_read_bin(r, CF_PROTO_MAX_FRAME, &p, len) != CF_OK)
        return CF_EPROTO;
    *ptr = p;
    return CF_OK;
}

//  [id, function, args, timeout_ms] or [..., flags] (TASK): the broker
//  sends only what it took from a SUBMIT, so anything wrong here is wrong
//  with the message.
static cf_err_t s_read_task(cf_mp_reader_t *r, cf_proto_task_t *task)
{
    uint32_t fields;
    if (cf_mp_read_array(r, 8, &fields) != CF_OK || (fields != 4u && fields != 5u))
        return CF_EPROTO;
    memset(task, 0, sizeof *task);
    if (cf_mp_read_uint(r, &task->id) != CF_OK
        || s_read_text(r, 1, CF_PROTO_MAX_NAME, &task->function) != CF_OK
        || s_read_bytes(r, &task->args, &task->args_len) != CF_OK
        || s_read_u32(r, &task->timeout_ms) != CF_OK
        || (fields == 5u && s_read_u32(r, &task->flags) != CF_OK))
        return CF_EPROTO;
    return CF_OK;
}

//  A SUBMIT task's function name; NULL when good, else what is wrong (the
//  refusal's message, so it says it plainly).
static const char *s_read_function(cf_mp_reader_t *r, cf_proto_str_t *s)
{
    const char *why = NULL;
    if (cf_mp_read_str(r, CF_PROTO_MAX_FRAME, &s->ptr, &s->len) != CF_OK)
        why = "the function name is not a msgpack str";
    else if (s->len == 0 || s->len > CF_PROTO_MAX_NAME)
        why = "the function name is not 1..255 bytes long";
    else if (!cf_utf8_name_ok(s->ptr, s->len))
        why = cf_utf8_valid(s->ptr, s->len) ? "the function name contains a NUL byte"
                                            : "the function name is not valid UTF-8";
    if (why)
        *s = (cf_proto_str_t){ NULL, 0 };
    return why;
}

//  Field k (1..7, after the id) of a SUBMIT task; NULL when good, else what
//  is wrong.
static const char *s_read_submit_field(cf_mp_reader_t *r, uint32_t k, cf_proto_task_t *task)
{
    switch (k) {
    case 1:
        return s_read_function(r, &task->function);
    case 2:
        return s_read_bytes(r, &task->args, &task->args_len) == CF_OK ? NULL
                                                                      : "args is not a msgpack bin";
    case 3:
        return s_read_i32(r, &task->retries) == CF_OK ? NULL : "retries is not an int32";
    case 4:
        return s_read_u32(r, &task->timeout_ms) == CF_OK ? NULL : "timeout_ms is not a uint32";
    case 5:
        return s_read_u32(r, &task->flags) == CF_OK ? NULL : "flags is not a uint32";
    case 6:
        return s_read_i32(r, &task->priority) == CF_OK ? NULL : "priority is not an int32";
    default:
        return s_read_u32(r, &task->wait_ms) == CF_OK ? NULL : "wait_ms is not a uint32";
    }
}

//  [id, function, args, retries, timeout_ms, flags] or the same with
//  [..., priority, wait_ms] (SUBMIT). A task whose
//  id can be read is taken whatever else is wrong with it: task->refused
//  then says what, and the rest of the task is skipped, so one bad task
//  does not sink its batch (the broker answers it alone). CF_EPROTO only
//  when the task has no readable id or is not well-formed msgpack: then
//  the batch cannot be read on.
static cf_err_t s_read_submit_task(cf_mp_reader_t *r, cf_proto_task_t *task)
{
    uint32_t fields;
    memset(task, 0, sizeof *task);
    if (cf_mp_read_array(r, UINT32_MAX, &fields) != CF_OK || fields == 0
        || cf_mp_read_uint(r, &task->id) != CF_OK)
        return CF_EPROTO;
    //  The way of every good task, the fields in a row; only a bad one is
    //  read again field by field, to say what is wrong and skip the rest.
    size_t after_id = r->pos;
    bool routed = fields == 8;
    if ((fields == 6 || routed) && s_read_function(r, &task->function) == NULL
        && s_read_bytes(r, &task->args, &task->args_len) == CF_OK
        && s_read_i32(r, &task->retries) == CF_OK && s_read_u32(r, &task->timeout_ms) == CF_OK
        && s_read_u32(r, &task->flags) == CF_OK
        && (!routed
            || (s_read_i32(r, &task->priority) == CF_OK && s_read_u32(r, &task->wait_ms) == CF_OK)))
        return CF_OK;
    r->pos = after_id;
    *task = (cf_proto_task_t){ .id = task->id };
    if (fields != 6 && fields != 8)
        task->refused = "a task is an array of 6 or 8 fields";
    for (uint32_t k = 1; k < fields; k++) {
        size_t mark = r->pos;
        if (!task->refused && (task->refused = s_read_submit_field(r, k, task)) == NULL)
            continue;
        //  A failed read may have moved the cursor: skip the field whole.
        r->pos = mark;
        if (cf_mp_skip(r, NULL, NULL) != CF_OK)
            return CF_EPROTO;
    }
    return CF_OK;
}

//  An array of function names (READY's 6th field, FUNCTIONS' body): at
//  most CF_PROTO_MAX_FUNCTIONS, each a name a task could carry.
static cf_err_t s_read_names(cf_mp_reader_t *r, cf_proto_names_t *names)
{
    uint32_t count;
    if (cf_mp_read_array(r, CF_PROTO_MAX_FUNCTIONS, &count) != CF_OK)
        return CF_EPROTO;
    size_t start = r->pos;
    for (uint32_t i = 0; i < count; i++) {
        cf_proto_str_t name;
        if (s_read_text(r, 1, CF_PROTO_MAX_NAME, &name) != CF_OK)
            return CF_EPROTO;
    }
    *names = (cf_proto_names_t){ r->data + start, r->pos - start, count, true };
    return CF_OK;
}

bool cf_proto_names_next(const cf_proto_names_t *names, size_t *pos, cf_proto_str_t *name)
{
    assert(names && pos && name);
    if (*pos >= names->len)
        return false;
    cf_mp_reader_t r;
    cf_mp_reader_init(&r, names->data, names->len);
    r.pos = *pos;
    //  Checked when decoded: cannot fail.
    if (cf_mp_read_str(&r, CF_PROTO_MAX_NAME, &name->ptr, &name->len) != CF_OK)
        return false;
    *pos = r.pos;
    return true;
}

//  [id, seq, done, total, partial bin | nil] (PROGRESS).
static cf_err_t s_read_progress(cf_mp_reader_t *r, cf_proto_progress_t *p)
{
    uint32_t fields;
    memset(p, 0, sizeof *p);
    if (cf_mp_read_array(r, 5, &fields) != CF_OK || fields != 5
        || cf_mp_read_uint(r, &p->id) != CF_OK || s_read_u32(r, &p->seq) != CF_OK
        || cf_mp_read_uint(r, &p->done) != CF_OK || cf_mp_read_uint(r, &p->total) != CF_OK)
        return CF_EPROTO;
    if (cf_mp_read_nil(r) == CF_OK)
        return CF_OK;
    const void *partial;
    if (cf_mp_read_bin(r, CF_PROTO_MAX_PARTIAL, &partial, &p->partial_len) != CF_OK
        || p->partial_len == 0)
        return CF_EPROTO;
    p->partial = partial;
    return CF_OK;
}

//  [id, grace_ms] (STOP).
static cf_err_t s_read_stop(cf_mp_reader_t *r, cf_proto_stop_t *stop)
{
    uint32_t fields;
    if (cf_mp_read_array(r, 2, &fields) != CF_OK || fields != 2
        || cf_mp_read_uint(r, &stop->id) != CF_OK || s_read_u32(r, &stop->grace_ms) != CF_OK)
        return CF_EPROTO;
    return CF_OK;
}

//  [id, 0, value] | [id, 1, [type, message, function, host, pid]] |
//  [id, 2] | [id, 3].
static cf_err_t s_read_result(cf_mp_reader_t *r, cf_proto_result_t *result)
{
    uint32_t fields, error_fields;
    uint64_t status;
    memset(result, 0, sizeof *result);
    if (cf_mp_read_array(r, 3, &fields) != CF_OK || fields < 2
        || cf_mp_read_uint(r, &result->id) != CF_OK || cf_mp_read_uint(r, &status) != CF_OK)
        return CF_EPROTO;
    switch (status) {
    case CF_STATUS_OK:
        if (fields != 3 || s_read_bytes(r, &result->value, &result->value_len) != CF_OK)
            return CF_EPROTO;
        break;
    case CF_STATUS_ERROR: {
        cf_proto_error_t *e = &result->error;
        if (fields != 3 || cf_mp_read_array(r, 5, &error_fields) != CF_OK || error_fields != 5
            || s_read_text(r, 1, CF_PROTO_MAX_TEXT, &e->type) != CF_OK
            || s_read_prose(r, &e->message) != CF_OK
            || s_read_text(r, 0, CF_PROTO_MAX_NAME, &e->function) != CF_OK
            || s_read_text(r, 0, CF_PROTO_MAX_TEXT, &e->host) != CF_OK
            || s_read_i32(r, &e->pid) != CF_OK)
            return CF_EPROTO;
        break;
    }
    case CF_STATUS_CANCELLED:
    case CF_STATUS_BUSY:
        if (fields != 2)
            return CF_EPROTO;
        break;
    default:
        return CF_EPROTO;
    }
    result->status = (cf_status_t)status;
    return CF_OK;
}

static cf_msg_type_t s_command(const zmq_msg_t *frame)
{
    size_t len = zmq_msg_size((zmq_msg_t *)frame);
    const char *text = zmq_msg_data((zmq_msg_t *)frame);
    for (int t = 1; t < CF_MSG_TYPE_COUNT_; t++) {
        if (strlen(s_names[t]) == len && memcmp(s_names[t], text, len) == 0)
            return (cf_msg_type_t)t;
    }
    return 0;
}

cf_err_t cf_proto_decode(zmq_msg_t *frames, size_t count, cf_proto_msg_t **msg_p)
{
    assert(msg_p);
    *msg_p = NULL;
    cf_proto_msg_t *msg = NULL;
    cf_msg_type_t type = 0;
    if (!frames || count != 3)
        goto malformed;
    //  The version first: a peer of another version gets nothing else read.
    if (zmq_msg_size(&frames[0]) != strlen(CF_PROTO_VERSION)
        || memcmp(zmq_msg_data(&frames[0]), CF_PROTO_VERSION, strlen(CF_PROTO_VERSION)) != 0)
        goto malformed;
    type = s_command(&frames[1]);
    if (type == 0)
        goto malformed;
    size_t size = zmq_msg_size(&frames[2]);
    if (size == 0 || size > CF_PROTO_MAX_FRAME)
        goto malformed;

    //  The outer header, read before the move to size the one allocation.
    cf_mp_reader_t r;
    cf_mp_reader_init(&r, zmq_msg_data(&frames[2]), size);
    uint32_t items = 0;
    size_t item_size = 0;
    bool stats_reply = false;
    uint32_t stats_flags = 0;
    size_t min_item = s_min_item_bytes(type);
    if (min_item > 0) {
        if (cf_mp_read_array(&r, CF_PROTO_MAX_BATCH, &items) != CF_OK
            || (uint64_t)items * min_item > cf_mp_reader_left(&r))
            goto malformed;
        item_size = type == CF_MSG_RESULT                          ? sizeof(cf_proto_result_t)
                    : type == CF_MSG_SUBMIT || type == CF_MSG_TASK ? sizeof(cf_proto_task_t)
                    : type == CF_MSG_PROGRESS                      ? sizeof(cf_proto_progress_t)
                    : type == CF_MSG_STOP                          ? sizeof(cf_proto_stop_t)
                                                                   : sizeof(uint64_t);
    }
    else if (type == CF_MSG_STATS) {
        //  A request is [], a reply {name: value, ...}: told apart by type.
        if (cf_mp_read_map(&r, CF_PROTO_MAX_STATS, &items) == CF_OK) {
            stats_reply = true;
            item_size = sizeof(cf_proto_stat_t);
        }
        else {
            //  A request: [] or [flags].
            uint32_t fields;
            r.pos = 0;
            if (cf_mp_read_array(&r, 1, &fields) != CF_OK
                || (fields == 1 && s_read_u32(&r, &stats_flags) != CF_OK))
                goto malformed;
            items = 0;
        }
    }
    size_t header_pos = r.pos;

    //  One allocation: the message and its items, which follow it.
    size_t head = (sizeof(cf_proto_msg_t) + 15) & ~(size_t)15;
    msg = malloc(head + (size_t)items * item_size);
    if (!msg)
        return CF_ENOMEM;
    memset(msg, 0, sizeof *msg);
    msg->type = type;
    msg->count = items;
    void *item_area = (uint8_t *)msg + head;
    zmq_msg_init(&msg->body_);
    msg->has_body_ = true;
    //  Small bodies live inside zmq_msg_t itself: pointers are taken only
    //  after the move, from the message's own copy.
    zmq_msg_move(&msg->body_, &frames[2]);
    cf_mp_reader_init(&r, zmq_msg_data(&msg->body_), size);
    r.pos = header_pos;

    switch (type) {
    case CF_MSG_SUBMIT:
        msg->tasks = item_area;
        for (uint32_t i = 0; i < items; i++) {
            if (s_read_submit_task(&r, &msg->tasks[i]) != CF_OK) {
                cf_error_set(CF_EPROTO,
                             "malformed SUBMIT: task %" PRIu32 " of %" PRIu32
                             " has no readable id or is not msgpack; no task of it was taken",
                             i + 1, items);
                goto said;
            }
        }
        break;
    case CF_MSG_TASK:
        msg->tasks = item_area;
        for (uint32_t i = 0; i < items; i++) {
            if (s_read_task(&r, &msg->tasks[i]) != CF_OK)
                goto malformed;
        }
        break;
    case CF_MSG_RESULT:
        msg->results = item_area;
        for (uint32_t i = 0; i < items; i++) {
            if (s_read_result(&r, &msg->results[i]) != CF_OK)
                goto malformed;
        }
        break;
    case CF_MSG_PROGRESS:
        msg->progress = item_area;
        for (uint32_t i = 0; i < items; i++) {
            if (s_read_progress(&r, &msg->progress[i]) != CF_OK)
                goto malformed;
        }
        break;
    case CF_MSG_STOP:
        msg->stops = item_area;
        for (uint32_t i = 0; i < items; i++) {
            if (s_read_stop(&r, &msg->stops[i]) != CF_OK)
                goto malformed;
        }
        break;
    case CF_MSG_CANCEL:
    case CF_MSG_STARTED:
        msg->ids = item_area;
        for (uint32_t i = 0; i < items; i++) {
            if (cf_mp_read_uint(&r, &msg->ids[i]) != CF_OK)
                goto malformed;
        }
        break;
    case CF_MSG_STATS:
        if (stats_reply) {
            msg->stats = item_area;
            for (uint32_t i = 0; i < items; i++) {
                cf_proto_stat_t *stat = &msg->stats[i];
                if (s_read_text(&r, 1, CF_PROTO_MAX_NAME, &stat->name) != CF_OK)
                    goto malformed;
                stat->list = NULL;
                stat->list_len = 0;
                if (s_next_is_array(&r)) {
                    if (cf_mp_skip(&r, &stat->list, &stat->list_len) != CF_OK)
                        goto malformed;
                    stat->value = 0;
                }
                else if (cf_mp_read_uint(&r, &stat->value) != CF_OK)
                    goto malformed;
            }
        }
        else
            msg->stats_flags = stats_flags;
        break;
    case CF_MSG_READY: {
        uint32_t fields;
        //  threads, features and functions came later as optional fields;
        //  functions nil is no list (every function).
        if (cf_mp_read_array(&r, 6, &fields) != CF_OK || fields < 3
            || s_read_u32(&r, &msg->credit) != CF_OK
            || s_read_text(&r, 0, CF_PROTO_MAX_TEXT, &msg->host) != CF_OK
            || s_read_i32(&r, &msg->pid) != CF_OK
            || (fields >= 4 && s_read_u32(&r, &msg->threads) != CF_OK)
            || (fields >= 5 && s_read_u32(&r, &msg->features) != CF_OK)
            || (fields == 6 && cf_mp_read_nil(&r) != CF_OK
                && s_read_names(&r, &msg->functions) != CF_OK))
            goto malformed;
        break;
    }
    case CF_MSG_FUNCTIONS: {
        uint32_t fields;
        if (cf_mp_read_array(&r, 1, &fields) != CF_OK || fields != 1
            || s_read_names(&r, &msg->functions) != CF_OK)
            goto malformed;
        break;
    }
    case CF_MSG_CREDIT:
    case CF_MSG_WANT:
    case CF_MSG_REFUND: {
        uint32_t fields;
        if (cf_mp_read_array(&r, 1, &fields) != CF_OK || fields != 1
            || s_read_u32(&r, &msg->credit) != CF_OK)
            goto malformed;
        break;
    }
    case CF_MSG_HEARTBEAT: {
        uint32_t fields;
        if (cf_mp_read_array(&r, 2, &fields) != CF_OK || fields != 2
            || cf_mp_read_uint(&r, &msg->boot) != CF_OK || s_read_u32(&r, &msg->ivl_ms) != CF_OK)
            goto malformed;
        break;
    }
    case CF_MSG_DISCONNECT: {
        uint32_t fields;
        if (cf_mp_read_array(&r, 1, &fields) != CF_OK || fields != 1
            || s_read_prose(&r, &msg->text) != CF_OK)
            goto malformed;
        break;
    }
    case CF_MSG_ERROR: {
        uint32_t fields;
        if (cf_mp_read_array(&r, 2, &fields) != CF_OK || fields != 2
            || cf_mp_read_uint(&r, &msg->ref) != CF_OK || s_read_prose(&r, &msg->text) != CF_OK)
            goto malformed;
        break;
    }
    default:
        goto malformed;
    }
    if (cf_mp_reader_left(&r) != 0)
        goto malformed;    //  one value, nothing after it
    *msg_p = msg;
    return CF_OK;

malformed:
    //  The text of the ERROR the broker answers with (cf_proto.h).
    cf_error_set(CF_EPROTO, "%s",
                 type == CF_MSG_SUBMIT ? "malformed SUBMIT: no task of it was taken"
                                       : CF_PROTO_MALFORMED);
said:
    cf_proto_msg_destroy(&msg);
    return CF_EPROTO;
}

void cf_proto_msg_destroy(cf_proto_msg_t **msg_p)
{
    if (!msg_p || !*msg_p)
        return;
    cf_proto_msg_t *msg = *msg_p;
    if (msg->has_body_)
        zmq_msg_close(&msg->body_);
    free(msg);
    *msg_p = NULL;
}

cf_err_t cf_proto_msg_hold(cf_proto_msg_t *msg, zmq_msg_t *hold, const uint8_t **ptr)
{
    assert(msg && hold && ptr);
    zmq_msg_init(hold);
    if (!msg->has_body_)
        return CF_EINVAL;
    const uint8_t *base = zmq_msg_data(&msg->body_);
    assert(*ptr >= base && *ptr <= base + zmq_msg_size(&msg->body_));
    //  The offset, not the pointer: a small body's copy is elsewhere.
    size_t offset = (size_t)(*ptr - base);
    if (zmq_msg_copy(hold, &msg->body_) != 0)
        return CF_ENOMEM;
    *ptr = (const uint8_t *)zmq_msg_data(hold) + offset;
    return CF_OK;
}

size_t cf_proto_msg_body_size(const cf_proto_msg_t *msg)
{
    return msg && msg->has_body_ ? zmq_msg_size(&msg->body_) : 0;
}

const char *cf_proto_msg_user_id(const cf_proto_msg_t *msg)
{
    return msg && msg->has_body_ ? zmq_msg_gets(&msg->body_, "User-Id") : NULL;
}

cf_err_t cf_proto_recv(void *socket, bool is_router, zmq_msg_t *routing_id, cf_proto_msg_t **msg)
{
    assert(socket && msg);
    assert(!is_router || routing_id);
    *msg = NULL;
    if (is_router)
        zmq_msg_init(routing_id);
    zmq_msg_t frames[CF_PROTO_MAX_FRAMES];
    size_t count = 0;
    bool too_many = false;
    cf_err_t rc = CF_OK;
    while (true) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        //  The parts of a message arrive together: once the first is here,
        //  none of the others can be EAGAIN.
        if (zmq_msg_recv(&part, socket, ZMQ_DONTWAIT) < 0) {
            int err = errno;
            zmq_msg_close(&part);
            if (count == 0 && !too_many && (err == EAGAIN || err == EINTR))
                rc = CF_ETIMEDOUT;
            else
                rc = CF_ESYS;
            errno = err;
            break;
        }
        bool more = zmq_msg_more(&part);
        if (count < CF_PROTO_MAX_FRAMES) {
            zmq_msg_init(&frames[count]);
            zmq_msg_move(&frames[count++], &part);
        }
        else
            too_many = true;    //  drained and dropped, never kept
        zmq_msg_close(&part);
        if (!more)
            break;
    }
    size_t first = 0;
    if (is_router && count > 0) {
        zmq_msg_move(routing_id, &frames[0]);
        first = 1;
    }
    if (rc == CF_OK) {
        if (too_many)
            rc = cf_error_set(CF_EPROTO, "malformed message: more than %d frames",
                              CF_PROTO_MAX_FRAMES);
        else
            rc = cf_proto_decode(frames + first, count - first, msg);
    }
    for (size_t i = 0; i < count; i++)
        zmq_msg_close(&frames[i]);
    return rc;
}

// ---------------------------------------------------------------------------
//  Encoding

//  Bodies up to this size are copied into the frame (zmq allocates one block
//  for a copy, and a zero-copy frame costs zmq an allocation of its own plus
//  ours for the next body); larger ones are handed over without a copy.
#define S_COPY_MAX (16 * 1024)
//  Under ThreadSanitizer every body is copied: over inproc:// a handed-over
//  buffer, written by the encoder on one thread, is read on another behind
//  libzmq's lock-free pipe, which TSan cannot see; a copy is written in
//  cf_proto_enc_send, the frame tests/tsan.supp names.
#if defined(__SANITIZE_THREAD__)
#define S_ALWAYS_COPY true
#else
#define S_ALWAYS_COPY false
#endif
//  The capacity a fresh body buffer starts with after a zero-copy send:
//  the last body's, bounded so one huge message does not pin memory.
#define S_RESERVE_MAX (4u * 1024 * 1024)

struct cf_proto_enc {
    cf_mp_writer_t w;      //  the body being built
    cf_msg_type_t type;    //  of the message being built
    size_t count;          //  items since begin
    bool failed;           //  out of memory since begin: send fails
    size_t reserve;        //  capacity to start the next buffer with
    bool whole;            //  the body is complete as written (a STATS request with flags)
};

static bool s_is_batch(cf_msg_type_t type)
{
    return type == CF_MSG_SUBMIT || type == CF_MSG_TASK || type == CF_MSG_RESULT
           || type == CF_MSG_CANCEL || type == CF_MSG_STARTED || type == CF_MSG_PROGRESS
           || type == CF_MSG_STOP;
}

cf_proto_enc_t *cf_proto_enc_new(void)
{
    cf_proto_enc_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    cf_mp_writer_init(&self->w);
    return self;
}

void cf_proto_enc_destroy(cf_proto_enc_t **enc)
{
    if (!enc || !*enc)
        return;
    cf_mp_writer_fini(&(*enc)->w);
    free(*enc);
    *enc = NULL;
}

//  Empties the body, giving a buffer taken by a zero-copy send its
//  capacity back at once rather than through repeated doubling.
static void s_reset(cf_proto_enc_t *self, cf_msg_type_t type)
{
    cf_mp_writer_reset(&self->w);
    if (!self->w.buf.data && self->reserve > 0) {
        self->w.buf.data = malloc(self->reserve);
        self->w.buf.alloc = self->w.buf.data ? self->reserve : 0;
    }
    self->type = type;
    self->count = 0;
    self->failed = false;
    self->whole = false;
}

void cf_proto_enc_begin(cf_proto_enc_t *enc, cf_msg_type_t type)
{
    assert(enc && cf_proto_command_name(type));
    s_reset(enc, type);
    //  A count patched at send: array32 (map32 for a STATS reply) always,
    //  whatever the final count. Legal msgpack, decoded by every reader.
    static const uint8_t array32[5] = { 0xdd, 0, 0, 0, 0 };
    static const uint8_t map32[5] = { 0xdf, 0, 0, 0, 0 };
    if (s_is_batch(type))
        enc->failed = msgpack_sbuffer_write(&enc->w.buf, (const char *)array32, 5) != 0;
    else if (type == CF_MSG_STATS)
        enc->failed = msgpack_sbuffer_write(&enc->w.buf, (const char *)map32, 5) != 0;
}

//  The length of text cut to at most max bytes without splitting a UTF-8
//  sequence (peers in other languages decode str as UTF-8 and would reject
//  half a character).
static size_t s_clip(const char *text, size_t max)
{
    size_t len = strlen(text);
    if (len <= max)
        return len;
    len = max;
    while (len > 0 && ((uint8_t)text[len] & 0xc0) == 0x80)
        len--;
    return len;
}

//  A name that goes on the wire as it is: well-formed UTF-8 without NUL.
//  (Replacing bytes of a function name would call another function.)
static bool s_name_ok(const char *name, size_t len)
{
    return cf_utf8_name_ok(name, len);
}

//  Ends one item: rolls back to mark when packing failed or the body grew
//  past the frame limit.
static cf_err_t s_item_done(cf_proto_enc_t *enc, size_t mark, int pack_failed)
{
    if (pack_failed) {
        enc->w.buf.size = mark;
        return CF_ENOMEM;
    }
    if (enc->w.buf.size > CF_PROTO_MAX_FRAME) {
        enc->w.buf.size = mark;
        return CF_ETOOBIG;
    }
    enc->count++;
    return CF_OK;
}

static cf_err_t s_item_check(cf_proto_enc_t *enc, cf_msg_type_t a, cf_msg_type_t b, size_t limit)
{
    if (enc->type != a && enc->type != b)
        return CF_EINVAL;
    if (enc->failed)
        return CF_ENOMEM;
    if (enc->count >= limit)
        return CF_ETOOBIG;
    return CF_OK;
}

cf_err_t cf_proto_enc_task(cf_proto_enc_t *enc, uint64_t id, const char *function,
                           size_t function_len, const void *args, size_t args_len, int32_t retries,
                           uint32_t timeout_ms, uint32_t flags)
{
    return cf_proto_enc_submit(enc, id, function, function_len, args, args_len, retries, timeout_ms,
                               flags, 0, 0);
}

cf_err_t cf_proto_enc_submit(cf_proto_enc_t *enc, uint64_t id, const char *function,
                             size_t function_len, const void *args, size_t args_len,
                             int32_t retries, uint32_t timeout_ms, uint32_t flags, int32_t priority,
                             uint32_t wait_ms)
{
    assert(enc);
    cf_err_t rc = s_item_check(enc, CF_MSG_SUBMIT, CF_MSG_TASK, CF_PROTO_MAX_BATCH);
    if (rc != CF_OK)
        return rc;
    if (!function || function_len == 0 || function_len > CF_PROTO_MAX_NAME
        || !s_name_ok(function, function_len) || (!args && args_len > 0))
        return CF_EINVAL;
    if (args_len > CF_PROTO_MAX_FRAME)
        return CF_ETOOBIG;
    msgpack_packer *pk = &enc->w.pk;
    size_t mark = enc->w.buf.size;
    bool submit = enc->type == CF_MSG_SUBMIT;
    bool routed = submit && (priority != 0 || wait_ms != 0);
    bool flagged = !submit && flags != 0;
    int failed = msgpack_pack_array(pk, routed    ? 8
                                        : submit  ? 6
                                        : flagged ? 5
                                                  : 4)
                 | msgpack_pack_uint64(pk, id)
                 | msgpack_pack_str_with_body(pk, function, function_len)
                 | msgpack_pack_bin_with_body(pk, args, args_len);
    if (submit)
        failed |= msgpack_pack_int32(pk, retries) | msgpack_pack_uint32(pk, timeout_ms)
                  | msgpack_pack_uint32(pk, flags);
    if (routed)
        failed |= msgpack_pack_int32(pk, priority) | msgpack_pack_uint32(pk, wait_ms);
    else if (!submit)
        failed |= msgpack_pack_uint32(pk, timeout_ms);
    if (flagged)
        failed |= msgpack_pack_uint32(pk, flags);
    return s_item_done(enc, mark, failed);
}

cf_err_t cf_proto_enc_result_ok(cf_proto_enc_t *enc, uint64_t id, const void *value,
                                size_t value_len)
{
    assert(enc);
    cf_err_t rc = s_item_check(enc, CF_MSG_RESULT, CF_MSG_RESULT, CF_PROTO_MAX_BATCH);
    if (rc != CF_OK)
        return rc;
    if (!value || value_len == 0)
        return CF_EINVAL;    //  a result is one value: at least one byte
    if (value_len > CF_PROTO_MAX_FRAME)
        return CF_ETOOBIG;
    msgpack_packer *pk = &enc->w.pk;
    size_t mark = enc->w.buf.size;
    int failed = msgpack_pack_array(pk, 3) | msgpack_pack_uint64(pk, id)
                 | msgpack_pack_uint8(pk, CF_STATUS_OK)
                 | msgpack_pack_bin_with_body(pk, value, value_len);
    return s_item_done(enc, mark, failed);
}

//  Packs text as a str of at most max bytes, well-formed UTF-8 whatever it
//  held: a task's error can carry any bytes (its function name, its own
//  text), and one bad str would make a strict reader (msgpack-python)
//  refuse the whole RESULT. Ill-formed bytes become U+FFFD (cf_utf8.h).
static int s_pack_text(msgpack_packer *pk, const char *text, size_t max)
{
    if (!text)
        text = "";
    size_t len = s_clip(text, max);
    if (cf_utf8_valid(text, len))
        return msgpack_pack_str_with_body(pk, text, len);
    char clean[CF_PROTO_MAX_TEXT + 1];
    assert(max < sizeof clean);
    len = cf_utf8_sanitize(clean, max + 1, text, strlen(text));
    return msgpack_pack_str_with_body(pk, clean, len);
}

cf_err_t cf_proto_enc_result_error(cf_proto_enc_t *enc, uint64_t id, const char *type,
                                   const char *message, const char *function, const char *host,
                                   int32_t pid)
{
    assert(enc);
    cf_err_t rc = s_item_check(enc, CF_MSG_RESULT, CF_MSG_RESULT, CF_PROTO_MAX_BATCH);
    if (rc != CF_OK)
        return rc;
    if (!type || !*type)
        return CF_EINVAL;
    msgpack_packer *pk = &enc->w.pk;
    size_t mark = enc->w.buf.size;
    int failed = msgpack_pack_array(pk, 3) | msgpack_pack_uint64(pk, id)
                 | msgpack_pack_uint8(pk, CF_STATUS_ERROR) | msgpack_pack_array(pk, 5)
                 | s_pack_text(pk, type, CF_PROTO_MAX_TEXT)
                 | s_pack_text(pk, message, CF_PROTO_MAX_TEXT)
                 | s_pack_text(pk, function, CF_PROTO_MAX_NAME)
                 | s_pack_text(pk, host, CF_PROTO_MAX_TEXT) | msgpack_pack_int32(pk, pid);
    return s_item_done(enc, mark, failed);
}

cf_err_t cf_proto_enc_result_status(cf_proto_enc_t *enc, uint64_t id, cf_status_t status)
{
    assert(enc);
    cf_err_t rc = s_item_check(enc, CF_MSG_RESULT, CF_MSG_RESULT, CF_PROTO_MAX_BATCH);
    if (rc != CF_OK)
        return rc;
    if (status != CF_STATUS_CANCELLED && status != CF_STATUS_BUSY)
        return CF_EINVAL;
    msgpack_packer *pk = &enc->w.pk;
    size_t mark = enc->w.buf.size;
    int failed = msgpack_pack_array(pk, 2) | msgpack_pack_uint64(pk, id)
                 | msgpack_pack_uint8(pk, (uint8_t)status);
    return s_item_done(enc, mark, failed);
}

cf_err_t cf_proto_enc_id(cf_proto_enc_t *enc, uint64_t id)
{
    assert(enc);
    cf_err_t rc = s_item_check(enc, CF_MSG_CANCEL, CF_MSG_STARTED, CF_PROTO_MAX_BATCH);
    if (rc != CF_OK)
        return rc;
    size_t mark = enc->w.buf.size;
    return s_item_done(enc, mark, msgpack_pack_uint64(&enc->w.pk, id));
}

cf_err_t cf_proto_enc_progress(cf_proto_enc_t *enc, uint64_t id, uint32_t seq, uint64_t done,
                               uint64_t total, const void *partial, size_t partial_len)
{
    assert(enc);
    cf_err_t rc = s_item_check(enc, CF_MSG_PROGRESS, CF_MSG_PROGRESS, CF_PROTO_MAX_BATCH);
    if (rc != CF_OK)
        return rc;
    if (partial && partial_len == 0)
        return CF_EINVAL;
    if (partial_len > CF_PROTO_MAX_PARTIAL)
        return CF_ETOOBIG;
    msgpack_packer *pk = &enc->w.pk;
    size_t mark = enc->w.buf.size;
    int failed = msgpack_pack_array(pk, 5) | msgpack_pack_uint64(pk, id)
                 | msgpack_pack_uint32(pk, seq) | msgpack_pack_uint64(pk, done)
                 | msgpack_pack_uint64(pk, total)
                 | (partial ? msgpack_pack_bin_with_body(pk, partial, partial_len)
                            : msgpack_pack_nil(pk));
    return s_item_done(enc, mark, failed);
}

cf_err_t cf_proto_enc_stop(cf_proto_enc_t *enc, uint64_t id, uint32_t grace_ms)
{
    assert(enc);
    cf_err_t rc = s_item_check(enc, CF_MSG_STOP, CF_MSG_STOP, CF_PROTO_MAX_BATCH);
    if (rc != CF_OK)
        return rc;
    msgpack_packer *pk = &enc->w.pk;
    size_t mark = enc->w.buf.size;
    int failed = msgpack_pack_array(pk, 2) | msgpack_pack_uint64(pk, id)
                 | msgpack_pack_uint32(pk, grace_ms);
    return s_item_done(enc, mark, failed);
}

cf_err_t cf_proto_enc_stat_list(cf_proto_enc_t *enc, const char *name, const void *list,
                                size_t list_len)
{
    assert(enc);
    cf_err_t rc = s_item_check(enc, CF_MSG_STATS, CF_MSG_STATS, CF_PROTO_MAX_STATS);
    if (rc != CF_OK)
        return rc;
    if (!name || !*name || strlen(name) > CF_PROTO_MAX_NAME || !s_name_ok(name, strlen(name))
        || !list || list_len == 0)
        return CF_EINVAL;
    msgpack_packer *pk = &enc->w.pk;
    size_t mark = enc->w.buf.size;
    int failed = msgpack_pack_str_with_body(pk, name, strlen(name))
                 | msgpack_sbuffer_write(&enc->w.buf, list, list_len);
    return s_item_done(enc, mark, failed);
}

void cf_proto_enc_stats_request(cf_proto_enc_t *enc, uint32_t flags)
{
    assert(enc);
    s_reset(enc, CF_MSG_STATS);
    msgpack_packer *pk = &enc->w.pk;
    enc->failed = (msgpack_pack_array(pk, flags ? 1 : 0)
                   | (flags ? msgpack_pack_uint32(pk, flags) : 0))
                  != 0;
    enc->whole = true;
}

cf_err_t cf_proto_enc_stat(cf_proto_enc_t *enc, const char *name, uint64_t value)
{
    assert(enc);
    cf_err_t rc = s_item_check(enc, CF_MSG_STATS, CF_MSG_STATS, CF_PROTO_MAX_STATS);
    if (rc != CF_OK)
        return rc;
    if (!name || !*name || strlen(name) > CF_PROTO_MAX_NAME || !s_name_ok(name, strlen(name)))
        return CF_EINVAL;
    msgpack_packer *pk = &enc->w.pk;
    size_t mark = enc->w.buf.size;
    int failed = msgpack_pack_str_with_body(pk, name, strlen(name))
                 | msgpack_pack_uint64(pk, value);
    return s_item_done(enc, mark, failed);
}

//  Packs a function list; false when it is not one a peer would take (the
//  body is then emptied, so the send says CF_EINVAL).
static bool s_pack_names(cf_proto_enc_t *enc, const char *const *names, size_t count)
{
    if (count > CF_PROTO_MAX_FUNCTIONS || (!names && count > 0))
        return false;
    for (size_t i = 0; i < count; i++) {
        size_t len = names[i] ? strlen(names[i]) : 0;
        if (len == 0 || len > CF_PROTO_MAX_NAME || !s_name_ok(names[i], len))
            return false;
    }
    msgpack_packer *pk = &enc->w.pk;
    int failed = msgpack_pack_array(pk, count);
    for (size_t i = 0; i < count; i++)
        failed |= msgpack_pack_str_with_body(pk, names[i], strlen(names[i]));
    enc->failed |= failed != 0;
    return true;
}

void cf_proto_enc_ready(cf_proto_enc_t *enc, uint32_t credit, uint32_t threads, const char *host,
                        int32_t pid, uint32_t features, const char *const *functions, size_t count)
{
    assert(enc);
    s_reset(enc, CF_MSG_READY);
    msgpack_packer *pk = &enc->w.pk;
    size_t fields = functions ? 6 : features ? 5 : 4;
    enc->failed = (msgpack_pack_array(pk, fields) | msgpack_pack_uint32(pk, credit)
                   | s_pack_text(pk, host, CF_PROTO_MAX_TEXT) | msgpack_pack_int32(pk, pid)
                   | msgpack_pack_uint32(pk, threads)
                   | (fields >= 5 ? msgpack_pack_uint32(pk, features) : 0))
                  != 0;
    if (functions && !s_pack_names(enc, functions, count))
        cf_mp_writer_reset(&enc->w);
}

void cf_proto_enc_functions(cf_proto_enc_t *enc, const char *const *functions, size_t count)
{
    assert(enc);
    s_reset(enc, CF_MSG_FUNCTIONS);
    enc->failed = msgpack_pack_array(&enc->w.pk, 1) != 0;
    if (!s_pack_names(enc, functions, count))
        cf_mp_writer_reset(&enc->w);
}

//  The one-slot-count bodies: CREDIT, WANT, REFUND ([n uint32]).
static void s_enc_slots(cf_proto_enc_t *enc, cf_msg_type_t type, uint32_t n)
{
    assert(enc);
    s_reset(enc, type);
    msgpack_packer *pk = &enc->w.pk;
    enc->failed = (msgpack_pack_array(pk, 1) | msgpack_pack_uint32(pk, n)) != 0;
}

void cf_proto_enc_credit(cf_proto_enc_t *enc, uint32_t credit)
{
    s_enc_slots(enc, CF_MSG_CREDIT, credit);
}

void cf_proto_enc_want(cf_proto_enc_t *enc, uint32_t n)
{
    s_enc_slots(enc, CF_MSG_WANT, n);
}

void cf_proto_enc_refund(cf_proto_enc_t *enc, uint32_t k)
{
    s_enc_slots(enc, CF_MSG_REFUND, k);
}

void cf_proto_enc_heartbeat(cf_proto_enc_t *enc, uint64_t boot, uint32_t ivl_ms)
{
    assert(enc);
    s_reset(enc, CF_MSG_HEARTBEAT);
    msgpack_packer *pk = &enc->w.pk;
    enc->failed = (msgpack_pack_array(pk, 2) | msgpack_pack_uint64(pk, boot)
                   | msgpack_pack_uint32(pk, ivl_ms))
                  != 0;
}

void cf_proto_enc_text(cf_proto_enc_t *enc, const char *text, uint64_t ref)
{
    assert(enc);
    //  DISCONNECT if begun as one; anything else is an ERROR.
    cf_msg_type_t type = enc->type == CF_MSG_DISCONNECT ? CF_MSG_DISCONNECT : CF_MSG_ERROR;
    s_reset(enc, type);
    msgpack_packer *pk = &enc->w.pk;
    if (type == CF_MSG_DISCONNECT)
        enc->failed = (msgpack_pack_array(pk, 1) | s_pack_text(pk, text, CF_PROTO_MAX_TEXT)) != 0;
    else
        enc->failed = (msgpack_pack_array(pk, 2) | msgpack_pack_uint64(pk, ref)
                       | s_pack_text(pk, text, CF_PROTO_MAX_TEXT))
                      != 0;
}

size_t cf_proto_enc_count(const cf_proto_enc_t *enc)
{
    assert(enc);
    return enc->count;
}

size_t cf_proto_enc_size(const cf_proto_enc_t *enc)
{
    assert(enc);
    return enc->w.buf.size;
}

static void s_free_body(void *data, void *hint)
{
    (void)hint;
    free(data);
}

static cf_err_t s_send_errno(void)
{
    if (errno == EAGAIN)
        return CF_EBUSY;
    if (errno == EHOSTUNREACH)
        return CF_ENOTFOUND;
    return CF_ESYS;
}

//  Puts the count into the reserved header, or turns an empty STATS into
//  the request body [].
static void s_finish_body(cf_proto_enc_t *enc)
{
    uint8_t *body = (uint8_t *)enc->w.buf.data;
    if (enc->whole)
        return;
    if (enc->type == CF_MSG_STATS && enc->count == 0) {
        body[0] = 0x90;
        enc->w.buf.size = 1;
        return;
    }
    if (s_is_batch(enc->type) || enc->type == CF_MSG_STATS) {
        uint32_t n = (uint32_t)enc->count;
        body[1] = (uint8_t)(n >> 24);
        body[2] = (uint8_t)(n >> 16);
        body[3] = (uint8_t)(n >> 8);
        body[4] = (uint8_t)n;
    }
}

cf_err_t cf_proto_enc_send(cf_proto_enc_t *enc, void *socket, const void *routing_id,
                           size_t routing_id_len)
{
    assert(enc && socket);
    cf_err_t rc = CF_OK;
    zmq_msg_t body;
    bool body_ready = false;
    if (enc->failed) {
        rc = CF_ENOMEM;
        goto done;
    }
    if (enc->w.buf.size == 0 || !cf_proto_command_name(enc->type)) {
        rc = CF_EINVAL;    //  nothing was begun or filled in
        goto done;
    }
    s_finish_body(enc);
    size_t size = enc->w.buf.size;
    if (size <= S_COPY_MAX || S_ALWAYS_COPY) {
        if (zmq_msg_init_size(&body, size) != 0) {
            rc = CF_ENOMEM;
            goto done;
        }
        memcpy(zmq_msg_data(&body), enc->w.buf.data, size);
    }
    else {
        size_t alloc = enc->w.buf.alloc;
        size_t taken;
        uint8_t *data = cf_mp_writer_take(&enc->w, &taken);
        if (zmq_msg_init_data(&body, data, taken, s_free_body, NULL) != 0) {
            free(data);
            rc = CF_ENOMEM;
            goto done;
        }
        enc->reserve = alloc < S_RESERVE_MAX ? alloc : S_RESERVE_MAX;
    }
    body_ready = true;

    const int more = ZMQ_SNDMORE | ZMQ_DONTWAIT;
    const char *command = cf_proto_command_name(enc->type);
    //  Only the first frame can meet the high-water mark or an unknown
    //  router peer: the rest of a message follows it unconditionally.
    if (routing_id && zmq_send(socket, routing_id, routing_id_len, more) < 0) {
        rc = s_send_errno();
        goto done;
    }
    if (zmq_send_const(socket, CF_PROTO_VERSION, strlen(CF_PROTO_VERSION), more) < 0
        || zmq_send_const(socket, command, strlen(command), more) < 0) {
        rc = s_send_errno();
        goto done;
    }
    if (zmq_msg_send(&body, socket, ZMQ_DONTWAIT) < 0) {
        rc = s_send_errno();
        goto done;
    }
    body_ready = false;    //  zmq owns it now

done:;
    int err = errno;    //  kept for the caller (ETERM)
    if (body_ready)
        zmq_msg_close(&body);
    if (s_is_batch(enc->type) || enc->type == CF_MSG_STATS)
        cf_proto_enc_begin(enc, enc->type);
    else
        s_reset(enc, enc->type);
    errno = err;
    return rc;
}

//  The bodies built around a payload (cf_proto_result_ok_head,
//  cf_proto_task_body) are packed by msgpack-c straight into the caller's
//  buffer, which the caller sized with the _MAX bounds.
typedef struct {
    uint8_t *at;
    size_t n;
} s_sink_t;

static int s_sink_write(void *data, const char *buf, size_t len)
{
    s_sink_t *sink = data;
    if (len)
        memcpy(sink->at + sink->n, buf, len);
    sink->n += len;
    return 0;
}

size_t cf_proto_result_ok_head(uint8_t *head, uint64_t id, size_t value_len)
{
    assert(head && value_len <= CF_PROTO_MAX_FRAME);
    s_sink_t sink = { head, 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sink, s_sink_write);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, id);
    msgpack_pack_uint8(&pk, CF_STATUS_OK);
    msgpack_pack_bin(&pk, value_len);
    return sink.n;
}

size_t cf_proto_task_body(uint8_t *body, uint64_t id, const char *function, size_t function_len,
                          const void *args, size_t args_len, uint32_t timeout_ms)
{
    assert(body && function && function_len <= CF_PROTO_MAX_NAME && args_len <= CF_PROTO_MAX_FRAME);
    s_sink_t sink = { body, 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sink, s_sink_write);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint64(&pk, id);
    msgpack_pack_str_with_body(&pk, function, function_len);
    msgpack_pack_bin_with_body(&pk, args, args_len);
    msgpack_pack_uint32(&pk, timeout_ms);
    return sink.n;
}

//  What cf_proto_send_body gives ZeroMQ to free a body: the caller's
//  function, called only once the body went (a failed send leaves the body
//  with its caller, so zmq_msg_close must not free it).
typedef struct {
    cf_proto_free_fn *free_fn;
    void *hint;
    bool sent;
} s_handed_t;

static void s_free_handed(void *body, void *hint)
{
    s_handed_t *handed = hint;
    if (handed->sent)
        handed->free_fn(body, handed->hint);
    free(handed);
}

cf_err_t cf_proto_send_body(void *socket, const void *routing_id, size_t routing_id_len,
                            cf_msg_type_t type, void *body, size_t size, cf_proto_free_fn *free_fn,
                            void *hint)
{
    assert(socket && body && free_fn);
    const char *command = cf_proto_command_name(type);
    if (!command || size == 0 || size > CF_PROTO_MAX_FRAME)
        return CF_EINVAL;
    s_handed_t *handed = malloc(sizeof *handed);
    if (!handed)
        return CF_ENOMEM;
    *handed = (s_handed_t){ free_fn, hint, false };
    zmq_msg_t msg;
    if (S_ALWAYS_COPY) {
        //  As in cf_proto_enc_send: ThreadSanitizer cannot see libzmq's
        //  hand-over, so the body is copied and freed here once sent.
        if (zmq_msg_init_size(&msg, size) != 0) {
            free(handed);
            return CF_ENOMEM;
        }
        memcpy(zmq_msg_data(&msg), body, size);
    }
    else if (zmq_msg_init_data(&msg, body, size, s_free_handed, handed) != 0) {
        free(handed);
        return CF_ENOMEM;
    }
    const int more = ZMQ_SNDMORE | ZMQ_DONTWAIT;
    cf_err_t rc = CF_OK;
    if ((routing_id && zmq_send(socket, routing_id, routing_id_len, more) < 0)
        || zmq_send_const(socket, CF_PROTO_VERSION, strlen(CF_PROTO_VERSION), more) < 0
        || zmq_send_const(socket, command, strlen(command), more) < 0)
        rc = s_send_errno();
    else {
        //  Set before the send: once sent, ZeroMQ may free it at any time.
        handed->sent = true;
        if (zmq_msg_send(&msg, socket, ZMQ_DONTWAIT) >= 0) {
            if (S_ALWAYS_COPY)
                s_free_handed(body, handed);
            return CF_OK;
        }
        handed->sent = false;
        rc = s_send_errno();
    }
    int err = errno;
    zmq_msg_close(&msg);
    if (S_ALWAYS_COPY)
        free(handed);
    errno = err;
    return rc;
}

// ---------------------------------------------------------------------------
//  Sockets

//  Why these values:
//  - LINGER 100 ms: with the default (forever) zmq_ctx_term hangs on unsent
//    messages to a peer that is gone; with 0 a DISCONNECT sent just before
//    closing would never leave. 100 ms lets it out on a live connection and
//    bounds shutdown. Nothing else depends on linger: pending tasks survive
//    by ids and resends, not by queued frames.
//  - MAXMSGSIZE: each frame at most a body plus slack, so a peer cannot make
//    zmq buffer a 4 GiB frame before we ever see it. (It bounds frames, not
//    messages: cf_proto_recv bounds the frame count.)
//  - ROUTER_MANDATORY: a ROUTER otherwise drops messages to unknown peers
//    and full peers silently; with it the send fails and the caller decides.
//  - HANDSHAKE_IVL 5 s: a connection that never completes its ZMTP (or
//    CURVE) handshake is dropped instead of holding a slot forever.
//  - SNDHWM/RCVHWM 1000 messages (zmq's default, set explicitly so it is a
//    decision): flow control is the application's (credit toward workers,
//    BUSY and windows toward clients); the HWM is the memory bound per peer
//    for a peer that stops reading. Our messages are batches, so 1000 of
//    them are far more than any credit or window keeps in flight, and a
//    peer that does reach it gets EAGAIN (CF_EBUSY), never a silent drop.
#define S_LINGER_MS        100
#define S_HANDSHAKE_IVL_MS 5000
#define S_HWM              1000
#define S_FRAME_SLACK      4096

int cf_proto_events(void *socket)
{
    int events = 0;
    size_t len = sizeof events;
    if (zmq_getsockopt(socket, ZMQ_EVENTS, &events, &len) != 0)
        return 0;
    return events;
}

cf_err_t cf_proto_socket_setup(void *socket, bool is_router)
{
    assert(socket);
    int linger = S_LINGER_MS;
    int handshake = S_HANDSHAKE_IVL_MS;
    int hwm = S_HWM;
    int64_t max_size = (int64_t)CF_PROTO_MAX_FRAME + S_FRAME_SLACK;
    int one = 1;
    if (zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger) != 0
        || zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size) != 0
        || zmq_setsockopt(socket, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake) != 0
        || zmq_setsockopt(socket, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0
        || zmq_setsockopt(socket, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0)
        return CF_ESYS;
    if (is_router && zmq_setsockopt(socket, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0)
        return CF_ESYS;
    return CF_OK;
}
