//  Writes the seed corpora of the fuzz targets from real frames: every cf/1
//  message type is built with the codec's own encoder (cf_proto_enc_*), sent
//  over an inproc pair and the frames as received are written in the proto
//  target's input format (cf_fuzz.h); the msgpack bodies and arguments of
//  those messages seed the mp target, task arguments and results the task
//  target. Run by the build (fuzz/CMakeLists.txt) so the seeds always match
//  the codec being fuzzed.
//
//  usage: cf_fuzz_seeds DIR     (writes DIR/proto, DIR/mp, DIR/task)

#include "cf_fuzz.h"
#include "cf_mp.h"
#include "cf_proto.h"
#include "cf_registry.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

static const char *s_dir;
static void *s_out, *s_in;
static int s_written;

static void s_write(const char *corpus, const char *name, const void *head, size_t head_len,
                    const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", s_dir, corpus);
    if (mkdir(path, 0755) < 0 && errno != EEXIST) {
        perror(path);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/%s/%s", s_dir, corpus, name);
    FILE *file = fopen(path, "wb");
    if (!file || fwrite(head, 1, head_len, file) != head_len
        || (len && fwrite(data, 1, len, file) != len) || fclose(file) != 0) {
        perror(path);
        exit(1);
    }
    s_written++;
}

//  Sends what enc holds, receives the raw frames and writes them as a
//  proto seed; the body goes to the mp corpus too.
static void s_capture(cf_proto_enc_t *enc, const char *name)
{
    if (cf_proto_enc_send(enc, s_out, NULL, 0) != CF_OK) {
        fprintf(stderr, "cf_fuzz_seeds: cannot send %s\n", name);
        exit(1);
    }
    uint8_t seed[1 << 16];
    size_t used = 1, frames = 0;
    uint8_t body[1 << 16];
    size_t body_len = 0;
    while (true) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, s_in, 0) < 0) {
            perror("zmq_msg_recv");
            exit(1);
        }
        size_t len = zmq_msg_size(&part);
        bool more = zmq_msg_more(&part);
        if (len > sizeof body || used + 2 + len > sizeof seed) {
            fprintf(stderr, "cf_fuzz_seeds: %s too big for a seed\n", name);
            exit(1);
        }
        if (more) {
            seed[used++] = (uint8_t)(len & 0xff);
            seed[used++] = (uint8_t)(len >> 8);
        }
        memcpy(seed + used, zmq_msg_data(&part), len);
        used += len;
        memcpy(body, zmq_msg_data(&part), len);
        body_len = len;
        frames++;
        zmq_msg_close(&part);
        if (!more)
            break;
    }
    seed[0] = (uint8_t)frames;
    s_write("proto", name, seed, used, NULL, 0);
    s_write("mp", name, body, body_len, NULL, 0);
}

static void s_format(cf_mp_writer_t *w, bool as_array, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (cf_mp_write_format(w, as_array, fmt, &ap) != CF_OK) {
        fprintf(stderr, "cf_fuzz_seeds: bad format %s\n", fmt);
        exit(1);
    }
    va_end(ap);
}

//  One msgpack value from a format, as a seed of the mp corpus and (after
//  selector) of the task corpus.
static void s_value(const char *name, int selector, const char *fmt, ...)
{
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    va_list ap;
    va_start(ap, fmt);
    if (cf_mp_write_format(&w, false, fmt, &ap) != CF_OK) {
        fprintf(stderr, "cf_fuzz_seeds: bad format for %s\n", name);
        exit(1);
    }
    va_end(ap);
    s_write("mp", name, w.buf.data, w.buf.size, NULL, 0);
    if (selector >= 0) {
        uint8_t head = (uint8_t)selector;
        s_write("task", name, &head, 1, w.buf.data, w.buf.size);
    }
    cf_mp_writer_fini(&w);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: cf_fuzz_seeds DIR\n");
        return 2;
    }
    s_dir = argv[1];
    mkdir(s_dir, 0755);
    void *ctx = zmq_ctx_new();
    s_out = zmq_socket(ctx, ZMQ_PAIR);
    s_in = zmq_socket(ctx, ZMQ_PAIR);
    if (zmq_bind(s_in, "inproc://seeds") != 0 || zmq_connect(s_out, "inproc://seeds") != 0) {
        perror("zmq");
        return 1;
    }
    cf_proto_enc_t *enc = cf_proto_enc_new();

    //  Arguments as clients send them.
    cf_mp_writer_t args;
    cf_mp_writer_init(&args);
    s_format(&args, true, "is", 42, "hello");
    cf_mp_writer_t chunk;
    cf_mp_writer_init(&chunk);
    s_format(&chunk, false, "[s[[ii][i][s]]]", "fuzz_args", 1, 2, 3, "x");

    cf_proto_enc_begin(enc, CF_MSG_SUBMIT);
    cf_proto_enc_task(enc, 0x1234567890ull, "square", 6, args.buf.data, args.buf.size, 3, 0, 0);
    cf_proto_enc_task(enc, 0x1234567891ull, "cf.chunk", 8, chunk.buf.data, chunk.buf.size, -1, 5000,
                      CF_TASK_RETRY_ON_ERROR);
    cf_proto_enc_submit(enc, 0x1234567892ull, "square", 6, args.buf.data, args.buf.size, 3, 0, 0,
                        -5, 300);
    s_capture(enc, "submit");
    cf_proto_enc_begin(enc, CF_MSG_TASK);
    cf_proto_enc_task(enc, 7, "sleep_ms", 8, args.buf.data, args.buf.size, 0, 100, 0);
    s_capture(enc, "task");

    cf_mp_writer_t value;
    cf_mp_writer_init(&value);
    s_format(&value, false, "{s[idb]}", "k", -5, 2.5, true);
    cf_proto_enc_begin(enc, CF_MSG_RESULT);
    cf_proto_enc_result_ok(enc, 9, value.buf.data, value.buf.size);
    cf_proto_enc_result_error(enc, 10, "ValueError", "bad input", "square", "host-1", 4242);
    cf_proto_enc_result_status(enc, 11, CF_STATUS_CANCELLED);
    cf_proto_enc_result_status(enc, 12, CF_STATUS_BUSY);
    s_capture(enc, "result");

    cf_proto_enc_begin(enc, CF_MSG_CANCEL);
    cf_proto_enc_id(enc, 1);
    cf_proto_enc_id(enc, UINT64_MAX);
    s_capture(enc, "cancel");
    cf_proto_enc_begin(enc, CF_MSG_STARTED);
    cf_proto_enc_id(enc, 77);
    s_capture(enc, "started");
    cf_proto_enc_begin(enc, CF_MSG_PROGRESS);
    cf_proto_enc_progress(enc, 77, 3, 40, 100, NULL, 0);
    cf_proto_enc_progress(enc, 78, 1, 5, 0, "\x92\x01\xa1x", 4);
    s_capture(enc, "progress");
    cf_proto_enc_begin(enc, CF_MSG_STOP);
    cf_proto_enc_stop(enc, 77, 2000);
    s_capture(enc, "stop");
    cf_proto_enc_begin(enc, CF_MSG_STATS);
    s_capture(enc, "stats_request");
    cf_proto_enc_begin(enc, CF_MSG_STATS);
    cf_proto_enc_stat(enc, "queued", 3);
    cf_proto_enc_stat(enc, "workers", 2);
    s_capture(enc, "stats_reply");
    cf_proto_enc_ready(enc, 8, 2, "host-1", 4242, CF_PROTO_FEATURE_BEGUN, NULL, 0);
    s_capture(enc, "ready");
    static const char *const functions[] = { "square", "slow_double", "fail_always" };
    cf_proto_enc_ready(enc, 8, 2, "host-2", 4243, CF_PROTO_FEATURE_BEGUN, functions, 3);
    s_capture(enc, "ready_functions");
    cf_proto_enc_functions(enc, functions, 2);
    s_capture(enc, "functions");
    cf_proto_enc_credit(enc, 16);
    s_capture(enc, "credit");
    cf_proto_enc_want(enc, 12);
    s_capture(enc, "want");
    cf_proto_enc_refund(enc, 3);
    s_capture(enc, "refund");
    cf_proto_enc_heartbeat(enc, 0xfeedfacecafebeefull, 1000);
    s_capture(enc, "heartbeat");
    cf_proto_enc_begin(enc, CF_MSG_DISCONNECT);
    cf_proto_enc_text(enc, "shutting down", 0);
    s_capture(enc, "disconnect");
    cf_proto_enc_text(enc, CF_PROTO_UNKNOWN_CLIENT, 0);
    s_capture(enc, "error");

    //  Task arguments and results (selector: cf_fuzz.h / fuzz_task.c).
    uint8_t head = 0;
    s_write("task", "chunk", &head, 1, chunk.buf.data, chunk.buf.size);
    head = 1;
    s_write("task", "args", &head, 1, args.buf.data, args.buf.size);
    head = 2;
    s_write("task", "result_map", &head, 1, value.buf.data, value.buf.size);
    s_value("int", 2, "L", (int64_t)-123456789);
    s_value("str", 2, "s", "a result");
    s_value("bytes", 1, "[y]", "\x00\x01\x02", (size_t)3);
    s_value("nested", 1, "[[[[i]]]{sn}]", 1, "nil");
    s_value("double", 2, "d", 3.25);

    cf_mp_writer_fini(&args);
    cf_mp_writer_fini(&chunk);
    cf_mp_writer_fini(&value);
    cf_proto_enc_destroy(&enc);
    zmq_close(s_out);
    zmq_close(s_in);
    zmq_ctx_term(ctx);
    printf("cf_fuzz_seeds: %d seeds in %s\n", s_written, s_dir);
    return 0;
}
