//  zmq_relay: the raw libzmq baseline of the cfutures benchmark. It measures
//  what a broker design can do at best on this machine: a client (DEALER), a
//  relay (ROUTER facing clients, ROUTER facing workers, no bookkeeping at
//  all) and an echo worker (DEALER), three processes on tcp loopback like
//  cf-broker and cf-worker, passing small msgpack messages shaped like a
//  task and its result:
//
//      client -> relay -> worker:  [id, "double", [x]]
//      worker -> relay -> client:  [id, true, 2x]
//
//  The worker decodes each request and encodes a reply, so the serialization
//  a real worker cannot avoid is in the figure; the relay only moves frames.
//  Figures (one line each, as cf_bench prints them):
//
//      relay.throughput  msgs/s  pipelined with a window of messages in flight
//      relay.latency.p50 us      one message at a time
//      relay.latency.p99 us
//
//  Usage: zmq_relay [--quick] [--messages N] [--window W] [--rounds R]
//
//  Design note: the relay and the worker are forked before the parent makes
//  any ZeroMQ context (a context must never cross fork). The relay reports
//  its bound endpoints on a pipe; the worker says READY so the relay learns
//  its routing id. Children die with the parent (PR_SET_PDEATHSIG) and are
//  stopped with SIGTERM and reaped at the end.

#include <msgpack.h>
#include <zmq.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RELAY_ENDPOINT_MAX 256
//  High-water marks above any window we use, so a blocking send never waits
//  on a full pipe in steady state and a ROUTER never has cause to drop.
#define RELAY_HWM 100000

typedef struct {
    long messages;      //  pipelined messages
    long window;        //  in flight at most
    long rounds;        //  one-at-a-time round trips
} relay_opts_t;

static double s_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void s_die(const char *what)
{
    fprintf(stderr, "zmq_relay: %s: %s\n", what, zmq_strerror(errno));
    exit(1);
}

static void *s_socket(void *ctx, int type)
{
    void *sock = zmq_socket(ctx, type);
    if (!sock)
        s_die("zmq_socket");
    int linger = 0, hwm = RELAY_HWM;
    if (zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) < 0
        || zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm) < 0
        || zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm) < 0)
        s_die("zmq_setsockopt");
    if (type == ZMQ_ROUTER) {
        //  Never drop silently: an unroutable message is an error we see.
        int mandatory = 1;
        if (zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory) < 0)
            s_die("ZMQ_ROUTER_MANDATORY");
    }
    return sock;
}

static void s_bound(void *sock, char *out)
{
    size_t len = RELAY_ENDPOINT_MAX;
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, out, &len) < 0)
        s_die("ZMQ_LAST_ENDPOINT");
}

//  Moves one whole multipart message from src to dst, prefixing prefix
//  (a routing id) when given. Frames move without copying.
static int s_forward(void *src, void *dst, zmq_msg_t *prefix)
{
    if (prefix && zmq_msg_send(prefix, dst, ZMQ_SNDMORE) < 0)
        return -1;
    while (true) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, src, 0) < 0) {
            zmq_msg_close(&frame);
            return -1;
        }
        int more = zmq_msg_more(&frame);
        if (zmq_msg_send(&frame, dst, more ? ZMQ_SNDMORE : 0) < 0) {
            zmq_msg_close(&frame);
            return -1;
        }
        if (!more)
            return 0;
    }
}

//  The relay: binds both ROUTERs, reports the endpoints on fd, then moves
//  client messages to the (single, most recently ready) worker and replies
//  back to the client named in the reply's first frame.
static int s_relay(int fd)
{
    void *ctx = zmq_ctx_new();
    void *front = s_socket(ctx, ZMQ_ROUTER);
    void *back = s_socket(ctx, ZMQ_ROUTER);
    if (zmq_bind(front, "tcp://127.0.0.1:*") < 0 || zmq_bind(back, "tcp://127.0.0.1:*") < 0)
        s_die("zmq_bind");
    char endpoints[2 * RELAY_ENDPOINT_MAX + 2];
    char fe[RELAY_ENDPOINT_MAX], be[RELAY_ENDPOINT_MAX];
    s_bound(front, fe);
    s_bound(back, be);
    int len = snprintf(endpoints, sizeof endpoints, "%s %s\n", fe, be);
    if (write(fd, endpoints, (size_t)len) != len)
        s_die("write endpoints");
    close(fd);

    uint8_t worker_id[256];
    size_t worker_id_len = 0;
    zmq_pollitem_t items[] = {{front, 0, ZMQ_POLLIN, 0}, {back, 0, ZMQ_POLLIN, 0}};
    while (true) {
        //  Clients are served only once a worker is known.
        int count = worker_id_len ? 2 : 1;
        zmq_pollitem_t *polled = worker_id_len ? items : items + 1;
        if (zmq_poll(polled, count, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            //  [worker id][READY] or [worker id][client id][reply]
            zmq_msg_t wid, second;
            zmq_msg_init(&wid);
            zmq_msg_init(&second);
            if (zmq_msg_recv(&wid, back, 0) < 0 || zmq_msg_recv(&second, back, 0) < 0)
                break;
            if (!zmq_msg_more(&second)) {
                //  READY: remember this worker.
                worker_id_len = zmq_msg_size(&wid) < sizeof worker_id ? zmq_msg_size(&wid) : 0;
                memcpy(worker_id, zmq_msg_data(&wid), worker_id_len);
                zmq_msg_close(&second);
            }
            else if (s_forward(back, front, &second) < 0) {
                if (errno == EHOSTUNREACH)
                    fprintf(stderr, "zmq_relay: reply for an unknown client dropped\n");
                else
                    break;
            }
            zmq_msg_close(&wid);
        }
        if (worker_id_len && (items[0].revents & ZMQ_POLLIN)) {
            zmq_msg_t wid;
            zmq_msg_init_size(&wid, worker_id_len);
            memcpy(zmq_msg_data(&wid), worker_id, worker_id_len);
            if (s_forward(front, back, &wid) < 0)
                break;
        }
        items[0].revents = items[1].revents = 0;
    }
    zmq_close(front);
    zmq_close(back);
    zmq_ctx_term(ctx);
    return 0;
}

//  Decodes [id, "double", [x]] from data; false when it is not that.
static bool s_decode_request(const char *data, size_t len, uint64_t *id, int64_t *x)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    bool ok = msgpack_unpack_next(&up, data, len, &off) == MSGPACK_UNPACK_SUCCESS && off == len;
    const msgpack_object *o = &up.data;
    ok = ok && o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 3
         && o->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER
         && o->via.array.ptr[1].type == MSGPACK_OBJECT_STR
         && o->via.array.ptr[2].type == MSGPACK_OBJECT_ARRAY
         && o->via.array.ptr[2].via.array.size == 1;
    if (ok) {
        const msgpack_object *arg = &o->via.array.ptr[2].via.array.ptr[0];
        *id = o->via.array.ptr[0].via.u64;
        if (arg->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            *x = (int64_t)arg->via.u64;
        else if (arg->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            *x = arg->via.i64;
        else
            ok = false;
    }
    msgpack_unpacked_destroy(&up);
    return ok;
}

//  Decodes [id, true, y] from data; false when it is not that.
static bool s_decode_reply(const char *data, size_t len, uint64_t *id, int64_t *y)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    bool ok = msgpack_unpack_next(&up, data, len, &off) == MSGPACK_UNPACK_SUCCESS && off == len;
    const msgpack_object *o = &up.data;
    ok = ok && o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 3
         && o->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER
         && o->via.array.ptr[1].type == MSGPACK_OBJECT_BOOLEAN && o->via.array.ptr[1].via.boolean;
    if (ok) {
        const msgpack_object *v = &o->via.array.ptr[2];
        *id = o->via.array.ptr[0].via.u64;
        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            *y = (int64_t)v->via.u64;
        else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            *y = v->via.i64;
        else
            ok = false;
    }
    msgpack_unpacked_destroy(&up);
    return ok;
}

//  The echo worker: [client id][request] in, [client id][reply] out.
static int s_worker(const char *endpoint)
{
    void *ctx = zmq_ctx_new();
    void *sock = s_socket(ctx, ZMQ_DEALER);
    if (zmq_connect(sock, endpoint) < 0)
        s_die("worker connect");
    if (zmq_send(sock, "READY", 5, 0) < 0)
        s_die("worker READY");
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    while (true) {
        zmq_msg_t cid, body;
        zmq_msg_init(&cid);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&cid, sock, 0) < 0 || !zmq_msg_more(&cid)
            || zmq_msg_recv(&body, sock, 0) < 0)
            break;
        uint64_t id;
        int64_t x;
        if (!s_decode_request(zmq_msg_data(&body), zmq_msg_size(&body), &id, &x)) {
            fprintf(stderr, "zmq_relay: worker: malformed request\n");
            break;
        }
        msgpack_sbuffer_clear(&buf);
        msgpack_pack_array(&pk, 3);
        msgpack_pack_uint64(&pk, id);
        msgpack_pack_true(&pk);
        msgpack_pack_int64(&pk, 2 * x);
        if (zmq_msg_send(&cid, sock, ZMQ_SNDMORE) < 0 || zmq_send(sock, buf.data, buf.size, 0) < 0)
            break;
        zmq_msg_close(&body);
    }
    msgpack_sbuffer_destroy(&buf);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return 0;
}

//  The client side: one request, packed into buf.
static void s_pack_request(msgpack_packer *pk, msgpack_sbuffer *buf, uint64_t id, int64_t x)
{
    msgpack_sbuffer_clear(buf);
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint64(pk, id);
    msgpack_pack_str(pk, 6);
    msgpack_pack_str_body(pk, "double", 6);
    msgpack_pack_array(pk, 1);
    msgpack_pack_int64(pk, x);
}

static void s_send_request(void *sock, msgpack_packer *pk, msgpack_sbuffer *buf, uint64_t id)
{
    s_pack_request(pk, buf, id, (int64_t)id);
    if (zmq_send(sock, buf->data, buf->size, 0) < 0)
        s_die("client send");
}

//  Receives one reply and checks it is 2 * id of some id we sent.
static uint64_t s_recv_reply(void *sock)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, sock, 0) < 0)
        s_die("client recv");
    uint64_t id;
    int64_t y;
    if (!s_decode_reply(zmq_msg_data(&msg), zmq_msg_size(&msg), &id, &y) || y != 2 * (int64_t)id) {
        fprintf(stderr, "zmq_relay: wrong reply\n");
        exit(1);
    }
    zmq_msg_close(&msg);
    return id;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int s_client(const char *endpoint, const relay_opts_t *opts)
{
    void *ctx = zmq_ctx_new();
    void *sock = s_socket(ctx, ZMQ_DEALER);
    if (zmq_connect(sock, endpoint) < 0)
        s_die("client connect");
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);

    //  Warm up: the first round trip also waits for the worker's READY.
    for (uint64_t id = 1; id <= 100; id++) {
        s_send_request(sock, &pk, &buf, id);
        s_recv_reply(sock);
    }

    //  Pipelined: keep `window` in flight.
    double start = s_now_s();
    long sent = 0, received = 0;
    while (received < opts->messages) {
        while (sent < opts->messages && sent - received < opts->window)
            s_send_request(sock, &pk, &buf, (uint64_t)++sent);
        s_recv_reply(sock);
        received++;
    }
    double elapsed = s_now_s() - start;
    printf("relay.throughput %.0f msgs/s\n", (double)opts->messages / elapsed);
    fflush(stdout);

    //  One at a time.
    double *samples = calloc((size_t)opts->rounds, sizeof *samples);
    if (!samples)
        s_die("calloc");
    for (long i = 0; i < opts->rounds; i++) {
        double t0 = s_now_s();
        s_send_request(sock, &pk, &buf, (uint64_t)(i + 1));
        s_recv_reply(sock);
        samples[i] = (s_now_s() - t0) * 1e6;
    }
    qsort(samples, (size_t)opts->rounds, sizeof *samples, s_cmp_double);
    long p99 = opts->rounds * 99 / 100;
    printf("relay.latency.p50 %.1f us\n", samples[opts->rounds / 2]);
    printf("relay.latency.p99 %.1f us\n", samples[p99 < opts->rounds ? p99 : opts->rounds - 1]);
    fflush(stdout);
    free(samples);
    msgpack_sbuffer_destroy(&buf);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return 0;
}

static pid_t s_fork_child(int (*fn)(const void *arg), const void *arg, int close_fd)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("zmq_relay: fork");
        exit(1);
    }
    if (pid == 0) {
        //  Die with the parent, even if it is killed.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        if (close_fd >= 0)
            close(close_fd);
        _exit(fn(arg));
    }
    return pid;
}

static int s_relay_child(const void *arg)
{
    return s_relay(*(const int *)arg);
}

static int s_worker_child(const void *arg)
{
    return s_worker(arg);
}

static long s_parse_long(const char *flag, const char *text)
{
    char *end = NULL;
    errno = 0;
    long value = text ? strtol(text, &end, 10) : 0;
    if (!text || errno || *end || value <= 0) {
        fprintf(stderr, "zmq_relay: %s needs a positive number\n", flag);
        exit(2);
    }
    return value;
}

int main(int argc, char **argv)
{
    relay_opts_t opts = {.messages = 200000, .window = 1000, .rounds = 2000};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            opts.messages = 5000;
            opts.rounds = 200;
        }
        else if (strcmp(argv[i], "--messages") == 0)
            opts.messages = s_parse_long(argv[i], argv[i + 1]), i++;
        else if (strcmp(argv[i], "--window") == 0)
            opts.window = s_parse_long(argv[i], argv[i + 1]), i++;
        else if (strcmp(argv[i], "--rounds") == 0)
            opts.rounds = s_parse_long(argv[i], argv[i + 1]), i++;
        else {
            fprintf(stderr, "usage: zmq_relay [--quick] [--messages N] [--window W] [--rounds R]\n");
            return 2;
        }
    }
    if (opts.window >= RELAY_HWM) {
        fprintf(stderr, "zmq_relay: --window must be below %d\n", RELAY_HWM);
        return 2;
    }

    int fds[2];
    if (pipe(fds) < 0) {
        perror("zmq_relay: pipe");
        return 1;
    }
    pid_t relay = s_fork_child(s_relay_child, &fds[1], fds[0]);
    close(fds[1]);
    char line[2 * RELAY_ENDPOINT_MAX + 2] = "";
    size_t have = 0;
    while (have < sizeof line - 1 && !memchr(line, '\n', have)) {
        ssize_t n = read(fds[0], line + have, sizeof line - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        line[have] = '\0';
    }
    close(fds[0]);
    char front[RELAY_ENDPOINT_MAX], back[RELAY_ENDPOINT_MAX];
    if (sscanf(line, "%255s %255s", front, back) != 2) {
        fprintf(stderr, "zmq_relay: the relay did not report its endpoints\n");
        kill(relay, SIGKILL);
        waitpid(relay, NULL, 0);
        return 1;
    }
    pid_t worker = s_fork_child(s_worker_child, back, -1);
    printf("# relay %s -> %s, messages %ld, window %ld, rounds %ld\n", front, back, opts.messages,
           opts.window, opts.rounds);
    fflush(stdout);
    int rc = s_client(front, &opts);
    kill(worker, SIGTERM);
    kill(relay, SIGTERM);
    waitpid(worker, NULL, 0);
    waitpid(relay, NULL, 0);
    return rc;
}
