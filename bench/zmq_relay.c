//  zmq_relay: the raw libzmq baseline of the cfutures benchmark, the limit
//  every remote ratio is taken against. Three kinds of process on tcp
//  loopback, as cf-broker and cf-worker: a client (DEALER), a relay (ROUTER
//  facing clients; ROUTER or DEALER facing workers; no bookkeeping beyond
//  what the variant needs) and W echo workers (DEALER), passing msgpack
//  messages shaped like a task and its result:
//
//      client -> relay -> worker:  [id, "double", [x]]
//      worker -> relay -> client:  [id, true, 2x]
//
//  The worker decodes every request and encodes every reply (msgpack-c, with
//  a zone reused across messages: no allocation per message), so the
//  serialization a real worker cannot avoid is in the figure; the relay only
//  moves frames, without copying them.
//
//  Variants of the relay (--variant, default all), each measured with 1 and
//  2 worker processes (--workers):
//
//      poll1   ROUTER/ROUTER, one message moved per zmq_poll round (the
//              relay this benchmark used before issue 14)
//      drain   ROUTER/ROUTER, every ready message moved per poll round, on
//              both sockets, until neither has one; tasks pushed to the
//              workers round-robin, without limit (a worker's socket queue
//              is its prefetch)
//      credit  drain, but each worker holds at most --prefetch tasks (256,
//              cf-worker's own cap beyond its threads); the rest wait in the
//              relay: the bookkeeping of a credit-based broker
//      proxy   zmq_proxy() between a ROUTER and a DEALER back end (libzmq
//              round-robins the workers)
//      batch   drain, with up to --batch tasks per message each way: the
//              client packs [[id, "double", [x]], ...], the worker answers
//              each message with one message of results (the cfutures client
//              packs up to 4,096 tasks per SUBMIT, its broker and worker
//              batch too)
//
//  The client is as fast as it can be too: it refills the window after every
//  receive and drains every reply that is ready before it sends.
//
//  Figures (one line each, `name value unit`, as cf_bench prints them):
//
//      relay.VARIANT.wN.throughput  msgs/s  tasks/s, --window in flight
//      relay.VARIANT.wN.latency.p50 us      one task at a time
//      relay.VARIANT.wN.latency.p99 us
//      relay.VARIANT.wN.latency_spin.p50/p99  us  the same, the client
//              polling for its reply instead of sleeping in zmq_recv (as
//              the cfutures waiter spins by default)
//      relay.best.throughput        tasks/s the fastest of every variant
//      relay.best1.throughput       tasks/s the fastest one-task-per-message
//      relay.best.latency.p50/p99   us      the lowest of every variant
//      relay.best.latency_spin.p50/p99 us   the same, the client spinning
//      relay.payload.SIZE.single    MiB/s  (1KiB, 64KiB, 1MiB) arguments of
//              SIZE bytes echoed back as results ([id, "echo", [bin]] ->
//              [id, true, bin]), drain relay, 1 worker, one task per
//              message; bytes of arguments per second (the results carry as
//              many back)
//      relay.payload.SIZE.batch     MiB/s  the same, batched like the cfutures
//              client (up to 1 MiB per message, and a quarter of the window
//              so that messages pipeline)
//      relay.payload.SIZE.throughput MiB/s the faster of the two
//      relay.load.p50/p99           us      one task at a time while another
//              client (a process of its own) keeps 1,000 in flight, drain
//              relay, 1 worker
//
//  Usage: zmq_relay [--quick] [--variant LIST] [--workers LIST]
//                   [--messages N] [--window W] [--rounds R] [--batch B]
//                   [--prefetch P] [--no-payload] [--no-load] [--no-spin]
//                   [--samples DIR]
//  --samples DIR writes each latency measurement's samples (µs, sorted, one
//  per line) to DIR/NAME.txt, for the latency CDF plots of bench/run.sh.
//
//  Design note: every process of a measurement is forked before the parent
//  makes its ZeroMQ context (a context must never cross fork): the relay
//  reports its bound endpoints on a pipe, then the workers and the loading
//  client are forked. A worker says READY so the relay learns its routing id
//  (not in the proxy variant, where libzmq picks the worker). Children die
//  with the parent (PR_SET_PDEATHSIG) and are stopped with SIGTERM and
//  reaped after each measurement, so variants never share a process.

#define _GNU_SOURCE

#include <msgpack.h>
#include <zmq.h>

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RELAY_ENDPOINT_MAX 256
//  High-water marks above any window we use, so a blocking send never waits
//  on a full pipe in steady state and a ROUTER never has cause to drop.
#define RELAY_HWM          100000
#define RELAY_WORKERS_MAX  8
//  Messages moved from one socket before the relay turns to the other.
#define RELAY_DRAIN_MAX    1024
//  The cfutures client's own cap on tasks per SUBMIT.
#define RELAY_BATCH_MAX    4096

typedef enum { V_POLL1, V_DRAIN, V_CREDIT, V_PROXY, V_BATCH, V_COUNT } variant_t;

static const char *const s_variant_names[V_COUNT] = { "poll1", "drain", "credit", "proxy",
                                                      "batch" };

typedef struct {
    long messages;        //  pipelined tasks
    long window;          //  tasks in flight at most
    long rounds;          //  one-at-a-time round trips
    long batch;           //  tasks per message at most (batch variant)
    long prefetch;        //  tasks a worker holds at most (credit variant)
    unsigned variants;    //  1 << variant_t
    unsigned workers;     //  1 << worker count
    bool spin;            //  the latency again with the client spinning
    bool payload;         //  the payload figures
    bool load;            //  the under-load figures
    bool quick;
    const char *samples_dir;
} relay_opts_t;

//  What one measurement runs.
typedef struct {
    variant_t variant;
    int workers;
    long prefetch;
} relay_setup_t;

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

// ---------------------------------------------------------------------------
//  The relay

typedef struct {
    uint8_t id[256];    //  routing id
    size_t id_len;
    long held;    //  tasks sent and not answered (credit variant)
} relay_worker_t;

//  A task waiting in the relay for credit: its client's routing id and body.
typedef struct {
    zmq_msg_t cid;
    zmq_msg_t body;
} relay_pending_t;

typedef struct {
    relay_setup_t setup;
    void *front;
    void *back;
    relay_worker_t workers[RELAY_WORKERS_MAX];
    int ready;                   //  workers that said READY
    int next;                    //  round-robin position
    relay_pending_t *pending;    //  ring of RELAY_HWM (credit variant)
    size_t pending_head;
    size_t pending_len;
} relay_t;

static void s_send_id(void *sock, const relay_worker_t *w)
{
    if (zmq_send(sock, w->id, w->id_len, ZMQ_SNDMORE) < 0)
        s_die("relay: send worker id");
}

//  A worker with credit for one more task, round-robin; NULL if none.
static relay_worker_t *s_pick_worker(relay_t *self)
{
    for (int i = 0; i < self->ready; i++) {
        relay_worker_t *w = &self->workers[(self->next + i) % self->ready];
        if (self->setup.variant != V_CREDIT || w->held < self->setup.prefetch) {
            self->next = (self->next + i + 1) % self->ready;
            return w;
        }
    }
    return NULL;
}

static void s_dispatch(relay_t *self, relay_worker_t *w, zmq_msg_t *cid, zmq_msg_t *body)
{
    s_send_id(self->back, w);
    if (zmq_msg_send(cid, self->back, ZMQ_SNDMORE) < 0 || zmq_msg_send(body, self->back, 0) < 0)
        s_die("relay: send task");
    w->held++;
}

//  Reads what is left of a message whose last frame read was msg: a peer
//  that is not ours (a test's cf-worker dialling a port the relay now has)
//  sends more frames. True when msg was the last frame (nothing dropped).
static bool s_drop_rest(void *sock, zmq_msg_t *msg, const char *from)
{
    if (!zmq_msg_more(msg))
        return true;
    zmq_msg_t part;
    zmq_msg_init(&part);
    do {
        if (zmq_msg_recv(&part, sock, 0) < 0)
            s_die("relay: recv");
    } while (zmq_msg_more(&part));
    zmq_msg_close(&part);
    fprintf(stderr, "zmq_relay: a message of too many frames from a %s dropped\n", from);
    return false;
}

//  Moves ready replies (and READYs) from the workers to the clients; one
//  message at most when once. Returns how many moved.
static int s_drain_back(relay_t *self, bool once)
{
    int moved = 0;
    while (moved < RELAY_DRAIN_MAX) {
        zmq_msg_t wid, second;
        zmq_msg_init(&wid);
        if (zmq_msg_recv(&wid, self->back, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&wid);
            if (errno == EAGAIN || errno == EINTR)
                break;
            s_die("relay: recv from worker");
        }
        zmq_msg_init(&second);
        if (zmq_msg_recv(&second, self->back, 0) < 0)
            s_die("relay: recv from worker");
        relay_worker_t *from = NULL;
        for (int i = 0; i < self->ready; i++) {
            relay_worker_t *w = &self->workers[i];
            if (w->id_len == zmq_msg_size(&wid) && !memcmp(w->id, zmq_msg_data(&wid), w->id_len))
                from = w;
        }
        if (!zmq_msg_more(&second)) {
            //  READY: remember this worker.
            bool ready = zmq_msg_size(&second) == 5 && !memcmp(zmq_msg_data(&second), "READY", 5);
            if (ready && !from && self->ready < RELAY_WORKERS_MAX && zmq_msg_size(&wid) <= 256) {
                relay_worker_t *w = &self->workers[self->ready++];
                w->id_len = zmq_msg_size(&wid);
                memcpy(w->id, zmq_msg_data(&wid), w->id_len);
                w->held = 0;
            }
            zmq_msg_close(&second);
        }
        else {
            //  [client id][reply]: second is the client id.
            zmq_msg_t body;
            zmq_msg_init(&body);
            if (zmq_msg_recv(&body, self->back, 0) < 0)
                s_die("relay: recv reply");
            bool whole = s_drop_rest(self->back, &body, "worker");
            if (!whole || !from) {
                if (whole)
                    fprintf(stderr,
                            "zmq_relay: a reply from a peer that never said READY dropped\n");
                zmq_msg_close(&second);
                zmq_msg_close(&body);
            }
            else if (zmq_msg_send(&second, self->front, ZMQ_SNDMORE) < 0
                     || zmq_msg_send(&body, self->front, 0) < 0) {
                if (errno != EHOSTUNREACH)
                    s_die("relay: send reply");
                fprintf(stderr, "zmq_relay: reply for an unknown client dropped\n");
                zmq_msg_close(&second);
                zmq_msg_close(&body);
            }
            if (from)
                from->held--;
        }
        zmq_msg_close(&wid);
        moved++;
        if (once)
            break;
    }
    //  Credit came back: tasks waiting in the relay go first.
    while (self->pending_len) {
        relay_worker_t *w = s_pick_worker(self);
        if (!w)
            break;
        relay_pending_t *p = &self->pending[self->pending_head];
        s_dispatch(self, w, &p->cid, &p->body);
        self->pending_head = (self->pending_head + 1) % RELAY_HWM;
        self->pending_len--;
    }
    return moved;
}

//  Moves ready tasks from the clients to the workers (or into the relay's
//  queue, credit variant); one at most when once. Returns how many moved.
static int s_drain_front(relay_t *self, bool once)
{
    int moved = 0;
    while (moved < RELAY_DRAIN_MAX) {
        zmq_msg_t cid, body;
        zmq_msg_init(&cid);
        if (zmq_msg_recv(&cid, self->front, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&cid);
            if (errno == EAGAIN || errno == EINTR)
                break;
            s_die("relay: recv from client");
        }
        zmq_msg_init(&body);
        if (zmq_msg_recv(&body, self->front, 0) < 0)
            s_die("relay: recv task");
        relay_worker_t *w = self->pending_len ? NULL : s_pick_worker(self);
        if (!s_drop_rest(self->front, &body, "client"))
            ;
        else if (w)
            s_dispatch(self, w, &cid, &body);
        else if (self->pending_len < RELAY_HWM) {
            relay_pending_t *p =
                &self->pending[(self->pending_head + self->pending_len) % RELAY_HWM];
            zmq_msg_init(&p->cid);
            zmq_msg_init(&p->body);
            zmq_msg_move(&p->cid, &cid);
            zmq_msg_move(&p->body, &body);
            self->pending_len++;
        }
        else {
            fprintf(stderr, "zmq_relay: relay queue full\n");
            exit(1);
        }
        zmq_msg_close(&cid);
        zmq_msg_close(&body);
        moved++;
        if (once)
            break;
    }
    return moved;
}

//  The relay: binds both sockets, reports the endpoints on fd, then moves
//  tasks to the workers and replies back to the client named in the reply's
//  first frame.
static int s_relay(int fd, const relay_setup_t *setup)
{
    relay_t self = { .setup = *setup };
    void *ctx = zmq_ctx_new();
    self.front = s_socket(ctx, ZMQ_ROUTER);
    self.back = s_socket(ctx, setup->variant == V_PROXY ? ZMQ_DEALER : ZMQ_ROUTER);
    if (zmq_bind(self.front, "tcp://127.0.0.1:*") < 0
        || zmq_bind(self.back, "tcp://127.0.0.1:*") < 0)
        s_die("zmq_bind");
    char endpoints[2 * RELAY_ENDPOINT_MAX + 2];
    char fe[RELAY_ENDPOINT_MAX], be[RELAY_ENDPOINT_MAX];
    s_bound(self.front, fe);
    s_bound(self.back, be);
    int len = snprintf(endpoints, sizeof endpoints, "%s %s\n", fe, be);
    if (write(fd, endpoints, (size_t)len) != len)
        s_die("write endpoints");
    close(fd);

    if (setup->variant == V_PROXY) {
        zmq_proxy(self.front, self.back, NULL);
        _exit(0);
    }
    if (setup->variant == V_CREDIT) {
        self.pending = calloc(RELAY_HWM, sizeof *self.pending);
        if (!self.pending)
            s_die("calloc");
    }
    bool once = setup->variant == V_POLL1;
    zmq_pollitem_t items[] = { { self.front, 0, ZMQ_POLLIN, 0 }, { self.back, 0, ZMQ_POLLIN, 0 } };
    while (true) {
        //  Clients are served only once every worker is known.
        bool serving = self.ready == setup->workers;
        int rc = zmq_poll(serving ? items : items + 1, serving ? 2 : 1, -1);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            break;
        if (once) {
            //  The old relay: one message from each ready socket per poll.
            if (items[1].revents & ZMQ_POLLIN)
                s_drain_back(&self, true);
            if (serving && (items[0].revents & ZMQ_POLLIN))
                s_drain_front(&self, true);
        }
        else {
            //  Drain both until neither has a message, then poll.
            int moved;
            do {
                moved = s_drain_back(&self, false);
                if (self.ready == setup->workers)
                    moved += s_drain_front(&self, false);
            } while (moved > 0);
        }
        items[0].revents = items[1].revents = 0;
    }
    zmq_close(self.front);
    zmq_close(self.back);
    zmq_ctx_term(ctx);
    return 0;
}

// ---------------------------------------------------------------------------
//  msgpack: requests and replies

//  One decoder per process: a zone reused for every message (no allocation
//  per message once it has grown).
static msgpack_zone s_zone;

static bool s_get_int(const msgpack_object *o, int64_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        *out = (int64_t)o->via.u64;
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *out = o->via.i64;
    else
        return false;
    return true;
}

//  A request [id, "double", [x]] or [id, "echo", [bin]].
typedef struct {
    uint64_t id;
    bool echo;
    int64_t x;
    const char *bin;    //  points into the message (echo)
    size_t bin_len;
} request_t;

static bool s_read_request(const msgpack_object *o, request_t *req)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3)
        return false;
    const msgpack_object *a = o->via.array.ptr;
    if (a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].type != MSGPACK_OBJECT_STR
        || a[2].type != MSGPACK_OBJECT_ARRAY || a[2].via.array.size != 1)
        return false;
    req->id = a[0].via.u64;
    const msgpack_object *arg = &a[2].via.array.ptr[0];
    if (a[1].via.str.size == 4 && !memcmp(a[1].via.str.ptr, "echo", 4)) {
        if (arg->type != MSGPACK_OBJECT_BIN)
            return false;
        req->echo = true;
        req->bin = arg->via.bin.ptr;
        req->bin_len = arg->via.bin.size;
        return true;
    }
    req->echo = false;
    return a[1].via.str.size == 6 && !memcmp(a[1].via.str.ptr, "double", 6)
           && s_get_int(arg, &req->x);
}

//  Unpacks one whole value of data (referencing data for bin and str).
static bool s_unpack(const void *data, size_t len, msgpack_object *out)
{
    size_t off = 0;
    msgpack_zone_clear(&s_zone);
    return msgpack_unpack(data, len, &off, &s_zone, out) == MSGPACK_UNPACK_SUCCESS && off == len;
}

static void s_pack_request(msgpack_packer *pk, uint64_t id, int64_t x)
{
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint64(pk, id);
    msgpack_pack_str_with_body(pk, "double", 6);
    msgpack_pack_array(pk, 1);
    msgpack_pack_int64(pk, x);
}

static void s_pack_reply(msgpack_packer *pk, const request_t *req)
{
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint64(pk, req->id);
    msgpack_pack_true(pk);
    if (req->echo)
        msgpack_pack_bin_with_body(pk, req->bin, req->bin_len);
    else
        msgpack_pack_int64(pk, 2 * req->x);
}

static void s_free_buffer(void *data, void *hint)
{
    (void)hint;
    free(data);
}

//  Sends the buffer's bytes as the last frame: copied when small, handed to
//  libzmq without a copy when large (as cf_proto_enc_send does).
static int s_send_buffer(void *sock, msgpack_sbuffer *buf)
{
    if (buf->size < 8192)
        return zmq_send(sock, buf->data, buf->size, 0) < 0 ? -1 : 0;
    zmq_msg_t msg;
    size_t size = buf->size;
    char *data = msgpack_sbuffer_release(buf);
    if (zmq_msg_init_data(&msg, data, size, s_free_buffer, NULL) < 0)
        s_die("zmq_msg_init_data");
    if (zmq_msg_send(&msg, sock, 0) < 0) {
        zmq_msg_close(&msg);
        return -1;
    }
    return 0;
}

// ---------------------------------------------------------------------------
//  The echo worker: [client id][request or batch] in, [client id][reply or
//  batch] out, one reply message per request message.

static int s_worker(const char *endpoint, bool ready)
{
    void *ctx = zmq_ctx_new();
    void *sock = s_socket(ctx, ZMQ_DEALER);
    if (zmq_connect(sock, endpoint) < 0)
        s_die("worker connect");
    if (ready && zmq_send(sock, "READY", 5, 0) < 0)
        s_die("worker READY");
    msgpack_zone_init(&s_zone, 65536);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    zmq_msg_t cid, body;
    zmq_msg_init(&cid);
    zmq_msg_init(&body);
    while (true) {
        if (zmq_msg_recv(&cid, sock, 0) < 0 || !zmq_msg_more(&cid)
            || zmq_msg_recv(&body, sock, 0) < 0)
            break;
        msgpack_object o;
        request_t req;
        msgpack_sbuffer_clear(&buf);
        bool ok = s_unpack(zmq_msg_data(&body), zmq_msg_size(&body), &o);
        if (ok && o.type == MSGPACK_OBJECT_ARRAY && o.via.array.size
            && o.via.array.ptr[0].type == MSGPACK_OBJECT_ARRAY) {
            //  A batch: [[id, "double", [x]], ...]
            msgpack_pack_array(&pk, o.via.array.size);
            for (uint32_t i = 0; ok && i < o.via.array.size; i++) {
                ok = s_read_request(&o.via.array.ptr[i], &req);
                if (ok)
                    s_pack_reply(&pk, &req);
            }
        }
        else if (ok && (ok = s_read_request(&o, &req)))
            s_pack_reply(&pk, &req);
        if (!ok) {
            fprintf(stderr, "zmq_relay: worker: malformed request\n");
            break;
        }
        if (zmq_msg_send(&cid, sock, ZMQ_SNDMORE) < 0 || s_send_buffer(sock, &buf) < 0)
            break;
        if (!buf.data)
            msgpack_sbuffer_init(&buf);    //  given away to libzmq
    }
    zmq_msg_close(&cid);
    zmq_msg_close(&body);
    msgpack_sbuffer_destroy(&buf);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return 0;
}

// ---------------------------------------------------------------------------
//  The client

typedef struct {
    void *sock;
    msgpack_sbuffer buf;
    msgpack_packer pk;
    bool batch;        //  tasks travel in arrays
    size_t payload;    //  bytes of bin per argument (0: double tasks)
    char *bytes;       //  the payload the application hands over
} client_t;

static void s_client_init(client_t *c, void *sock, bool batch, size_t payload)
{
    memset(c, 0, sizeof *c);
    c->sock = sock;
    c->batch = batch;
    c->payload = payload;
    msgpack_sbuffer_init(&c->buf);
    msgpack_packer_init(&c->pk, &c->buf, msgpack_sbuffer_write);
    if (payload) {
        c->bytes = malloc(payload);
        if (!c->bytes)
            s_die("malloc");
        for (size_t i = 0; i < payload; i++)
            c->bytes[i] = (char)(i * 7 + 1);
    }
}

static void s_client_fini(client_t *c)
{
    msgpack_sbuffer_destroy(&c->buf);
    free(c->bytes);
}

//  Packs task id: [id, "double", [id]] or [id, "echo", [bin]].
static void s_client_pack(client_t *c, uint64_t id)
{
    if (c->payload) {
        //  The one copy of the application's bytes on this side: encoding.
        msgpack_pack_array(&c->pk, 3);
        msgpack_pack_uint64(&c->pk, id);
        msgpack_pack_str_with_body(&c->pk, "echo", 4);
        msgpack_pack_array(&c->pk, 1);
        msgpack_pack_bin_with_body(&c->pk, c->bytes, c->payload);
    }
    else
        s_pack_request(&c->pk, id, (int64_t)id);
}

static void s_client_flush(client_t *c)
{
    if (s_send_buffer(c->sock, &c->buf) < 0)
        s_die("client send");
    if (!c->buf.data)
        msgpack_sbuffer_init(&c->buf);
}

//  Sends tasks first..first+n-1: one message, or n messages.
static void s_client_send(client_t *c, uint64_t first, long n)
{
    if (c->batch) {
        msgpack_sbuffer_clear(&c->buf);
        msgpack_pack_array(&c->pk, (size_t)n);
        for (long i = 0; i < n; i++)
            s_client_pack(c, first + (uint64_t)i);
        s_client_flush(c);
        return;
    }
    for (long i = 0; i < n; i++) {
        msgpack_sbuffer_clear(&c->buf);
        s_client_pack(c, first + (uint64_t)i);
        s_client_flush(c);
    }
}

static bool s_check_reply(const client_t *c, const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3)
        return false;
    const msgpack_object *a = o->via.array.ptr;
    if (a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].type != MSGPACK_OBJECT_BOOLEAN
        || !a[1].via.boolean)
        return false;
    if (c->payload)
        return a[2].type == MSGPACK_OBJECT_BIN && a[2].via.bin.size == c->payload
               && a[2].via.bin.ptr[0] == c->bytes[0]
               && a[2].via.bin.ptr[c->payload - 1] == c->bytes[c->payload - 1];
    int64_t y;
    return s_get_int(&a[2], &y) && y == 2 * (int64_t)a[0].via.u64;
}

//  Receives one message of replies (waiting when block); returns how many
//  tasks it answered, 0 when none was ready.
static long s_client_recv(client_t *c, bool block)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, c->sock, block ? 0 : ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        if (!block && errno == EAGAIN)
            return 0;
        s_die(errno == EAGAIN ? "client recv: no reply in 30 s" : "client recv");
    }
    msgpack_object o;
    long count = 0;
    bool ok = s_unpack(zmq_msg_data(&msg), zmq_msg_size(&msg), &o);
    if (ok && c->batch) {
        ok = o.type == MSGPACK_OBJECT_ARRAY;
        for (uint32_t i = 0; ok && i < o.via.array.size; i++)
            ok = s_check_reply(c, &o.via.array.ptr[i]);
        count = ok ? (long)o.via.array.size : 0;
    }
    else if (ok) {
        ok = s_check_reply(c, &o);
        count = 1;
    }
    if (!ok) {
        fprintf(stderr, "zmq_relay: wrong reply\n");
        exit(1);
    }
    zmq_msg_close(&msg);
    return count;
}

//  Pipelined: messages tasks, window in flight, batch per message at most.
//  Returns the elapsed seconds.
static double s_client_pipeline(client_t *c, long messages, long window, long batch)
{
    double start = s_now_s();
    long sent = 0, received = 0;
    while (received < messages) {
        //  Refill the window, in messages of batch tasks at most.
        while (sent < messages && sent - received < window) {
            long n = window - (sent - received);
            if (n > messages - sent)
                n = messages - sent;
            if (!c->batch)
                n = 1;
            else if (n > batch)
                n = batch;
            s_client_send(c, (uint64_t)sent + 1, n);
            sent += n;
        }
        received += s_client_recv(c, true);
        //  Everything already here before the next refill.
        long more;
        while (received < messages && (more = s_client_recv(c, false)) > 0)
            received += more;
    }
    return s_now_s() - start;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void s_emit(const char *name, double value, const char *unit)
{
    if (value >= 1e5)
        printf("%s %.0f %s\n", name, value, unit);
    else
        printf("%s %.4g %s\n", name, value, unit);
    fflush(stdout);
}

static void s_write_samples(const relay_opts_t *opts, const char *name, const double *sorted,
                            long count)
{
    if (!opts->samples_dir)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.txt", opts->samples_dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "zmq_relay: cannot write %s\n", path);
        return;
    }
    for (long i = 0; i < count; i++)
        fprintf(f, "%.2f\n", sorted[i]);
    fclose(f);
}

//  rounds one-at-a-time round trips; emits NAME.p50 and NAME.p99. With
//  spin, the client polls for its reply (yielding the CPU between polls, as
//  the cfutures waiter spins) instead of sleeping in zmq_recv.
static void s_client_latency(client_t *c, const relay_opts_t *opts, const char *name, bool spin,
                             double *p50, double *p99)
{
    long rounds = opts->rounds;
    double *samples = calloc((size_t)rounds, sizeof *samples);
    if (!samples)
        s_die("calloc");
    for (long i = 0; i < rounds; i++) {
        double t0 = s_now_s();
        s_client_send(c, (uint64_t)(i + 1), 1);
        if (spin) {
            while (s_client_recv(c, false) == 0)
                sched_yield();
        }
        else
            s_client_recv(c, true);
        samples[i] = (s_now_s() - t0) * 1e6;
    }
    qsort(samples, (size_t)rounds, sizeof *samples, s_cmp_double);
    long i99 = rounds * 99 / 100;
    *p50 = samples[rounds / 2];
    *p99 = samples[i99 < rounds ? i99 : rounds - 1];
    char figure[128];
    snprintf(figure, sizeof figure, "%s.p50", name);
    s_emit(figure, *p50, "us");
    snprintf(figure, sizeof figure, "%s.p99", name);
    s_emit(figure, *p99, "us");
    s_write_samples(opts, name, samples, rounds);
    free(samples);
}

static void s_warm_up(client_t *c)
{
    //  The first round trip also waits for the workers' READY.
    for (uint64_t id = 1; id <= 100; id++) {
        s_client_send(c, id, 1);
        s_client_recv(c, true);
    }
}

// ---------------------------------------------------------------------------
//  Processes

static pid_t s_fork_child(int (*fn)(const void *arg), const void *arg, int close_fd)
{
    fflush(stdout);
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

typedef struct {
    int fd;
    relay_setup_t setup;
} relay_arg_t;

static int s_relay_child(const void *arg)
{
    const relay_arg_t *ra = arg;
    return s_relay(ra->fd, &ra->setup);
}

static char s_back_endpoint[RELAY_ENDPOINT_MAX];
static char s_front_endpoint[RELAY_ENDPOINT_MAX];

static int s_worker_child(const void *arg)
{
    return s_worker(s_back_endpoint, *(const bool *)arg);
}

//  The loading client: keeps window tasks in flight until killed; writes
//  one byte on fd once the first window came back.
static int s_loader(int fd, long window)
{
    void *ctx = zmq_ctx_new();
    void *sock = s_socket(ctx, ZMQ_DEALER);
    if (zmq_connect(sock, s_front_endpoint) < 0)
        s_die("loader connect");
    msgpack_zone_init(&s_zone, 65536);
    client_t c;
    s_client_init(&c, sock, false, 0);
    s_warm_up(&c);
    s_client_send(&c, 1, window);
    long received = 0;
    uint64_t next = (uint64_t)window + 1;
    bool told = false;
    while (true) {
        long n = s_client_recv(&c, true);
        long more;
        while ((more = s_client_recv(&c, false)) > 0)
            n += more;
        received += n;
        s_client_send(&c, next, n);
        next += (uint64_t)n;
        if (!told && received >= window) {
            told = write(fd, "!", 1) == 1;
            close(fd);
        }
    }
    return 0;
}

typedef struct {
    int fd;
    long window;
} loader_arg_t;

static int s_loader_child(const void *arg)
{
    const loader_arg_t *la = arg;
    return s_loader(la->fd, la->window);
}

typedef struct {
    pid_t relay;
    pid_t workers[RELAY_WORKERS_MAX];
    int worker_count;
    pid_t loader;
} relay_procs_t;

//  Forks the relay and its workers (before this process has a context).
static void s_start(const relay_setup_t *setup, relay_procs_t *procs)
{
    memset(procs, 0, sizeof *procs);
    int fds[2];
    if (pipe(fds) < 0)
        s_die("pipe");
    relay_arg_t ra = { .fd = fds[1], .setup = *setup };
    procs->relay = s_fork_child(s_relay_child, &ra, fds[0]);
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
    if (sscanf(line, "%255s %255s", s_front_endpoint, s_back_endpoint) != 2) {
        fprintf(stderr, "zmq_relay: the relay did not report its endpoints\n");
        kill(procs->relay, SIGKILL);
        exit(1);
    }
    static bool ready;
    ready = setup->variant != V_PROXY;
    for (int i = 0; i < setup->workers; i++)
        procs->workers[procs->worker_count++] = s_fork_child(s_worker_child, &ready, -1);
}

static void s_stop_pid(pid_t *pid)
{
    if (*pid > 0) {
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
    }
    *pid = 0;
}

static void s_stop(relay_procs_t *procs)
{
    s_stop_pid(&procs->loader);
    for (int i = 0; i < procs->worker_count; i++)
        s_stop_pid(&procs->workers[i]);
    s_stop_pid(&procs->relay);
}

//  A fresh context and DEALER connected to the relay.
static void *s_connect(void **ctx)
{
    *ctx = zmq_ctx_new();
    void *sock = s_socket(*ctx, ZMQ_DEALER);
    //  A lost reply ends the run with a message, not a hang.
    int timeout_ms = 30000;
    if (zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms) < 0
        || zmq_connect(sock, s_front_endpoint) < 0)
        s_die("client connect");
    msgpack_zone_init(&s_zone, 65536);
    return sock;
}

static void s_disconnect(void *ctx, void *sock)
{
    zmq_close(sock);
    zmq_ctx_term(ctx);
    msgpack_zone_destroy(&s_zone);
}

typedef struct {
    double best, best1;           //  tasks/s: every variant, one task per message
    double p50, p99;              //  µs, lowest of every variant
    double spin_p50, spin_p99;    //  the same, the client spinning
} relay_best_t;

static void s_lowest(double *best, double value)
{
    if (*best == 0 || value < *best)
        *best = value;
}

//  One variant with one worker count: throughput, then latency.
static void s_measure(const relay_opts_t *opts, variant_t variant, int workers, relay_best_t *best)
{
    relay_setup_t setup = { .variant = variant, .workers = workers, .prefetch = opts->prefetch };
    relay_procs_t procs;
    s_start(&setup, &procs);
    void *ctx;
    void *sock = s_connect(&ctx);
    client_t c;
    s_client_init(&c, sock, variant == V_BATCH, 0);
    s_warm_up(&c);
    double elapsed = s_client_pipeline(&c, opts->messages, opts->window, opts->batch);
    char name[128];
    snprintf(name, sizeof name, "relay.%s.w%d", s_variant_names[variant], workers);
    char figure[160];
    double rate = (double)opts->messages / elapsed;
    snprintf(figure, sizeof figure, "%s.throughput", name);
    s_emit(figure, rate, "msgs/s");
    snprintf(figure, sizeof figure, "%s.latency", name);
    double p50, p99, spin_p50, spin_p99;
    s_client_latency(&c, opts, figure, false, &p50, &p99);
    spin_p50 = spin_p99 = 0;
    if (opts->spin) {
        snprintf(figure, sizeof figure, "%s.latency_spin", name);
        s_client_latency(&c, opts, figure, true, &spin_p50, &spin_p99);
    }
    s_client_fini(&c);
    s_disconnect(ctx, sock);
    s_stop(&procs);
    if (rate > best->best)
        best->best = rate;
    if (variant != V_BATCH && rate > best->best1)
        best->best1 = rate;
    s_lowest(&best->p50, p50);
    s_lowest(&best->p99, p99);
    if (opts->spin) {
        s_lowest(&best->spin_p50, spin_p50);
        s_lowest(&best->spin_p99, spin_p99);
    }
}

//  Arguments of size bytes echoed back: drain relay, 1 worker, a window of
//  about 16 MiB (at most 1,000 tasks); one task per message (single), or
//  batched as the cfutures client batches (up to 1 MiB per message, at least
//  one task, a quarter of the window at most). Emits both and the faster.
static void s_measure_payload(const relay_opts_t *opts, size_t size, const char *label)
{
    double best = 0;
    for (int batched = 0; batched <= 1; batched++) {
        long window = (long)((16u << 20) / size);
        window = window > 1000 ? 1000 : window < 4 ? 4 : window;
        long tasks = (long)((opts->quick ? 4u << 20 : 256u << 20) / size);
        tasks = tasks > 20000 ? 20000 : tasks < 2 * window ? 2 * window : tasks;
        //  A quarter of the window at most, so that messages pipeline.
        long batch = (long)((1u << 20) / size);
        batch = batch > window / 4 ? window / 4 : batch;
        batch = batch < 1 ? 1 : batch > RELAY_BATCH_MAX ? RELAY_BATCH_MAX : batch;
        relay_setup_t setup = { .variant = V_DRAIN, .workers = 1 };
        relay_procs_t procs;
        s_start(&setup, &procs);
        void *ctx;
        void *sock = s_connect(&ctx);
        client_t warm;
        s_client_init(&warm, sock, false, 0);
        s_warm_up(&warm);
        s_client_fini(&warm);
        client_t c;
        s_client_init(&c, sock, batched, size);
        double elapsed = s_client_pipeline(&c, tasks, window, batch);
        double rate = (double)tasks * (double)size / elapsed / (1024.0 * 1024.0);
        char figure[128];
        snprintf(figure, sizeof figure, "relay.payload.%s.%s", label, batched ? "batch" : "single");
        s_emit(figure, rate, "MiB/s");
        best = rate > best ? rate : best;
        s_client_fini(&c);
        s_disconnect(ctx, sock);
        s_stop(&procs);
    }
    char figure[128];
    snprintf(figure, sizeof figure, "relay.payload.%s.throughput", label);
    s_emit(figure, best, "MiB/s");
}

//  One task at a time while a loading client keeps 1,000 in flight.
static void s_measure_load(const relay_opts_t *opts)
{
    relay_setup_t setup = { .variant = V_DRAIN, .workers = 1 };
    relay_procs_t procs;
    s_start(&setup, &procs);
    int fds[2];
    if (pipe(fds) < 0)
        s_die("pipe");
    loader_arg_t la = { .fd = fds[1], .window = 1000 };
    procs.loader = s_fork_child(s_loader_child, &la, fds[0]);
    close(fds[1]);
    char byte;
    ssize_t n;
    while ((n = read(fds[0], &byte, 1)) < 0 && errno == EINTR)
        ;
    close(fds[0]);
    if (n != 1) {
        fprintf(stderr, "zmq_relay: the loading client did not start\n");
        s_stop(&procs);
        exit(1);
    }
    void *ctx;
    void *sock = s_connect(&ctx);
    client_t c;
    s_client_init(&c, sock, false, 0);
    s_warm_up(&c);
    double p50, p99;
    s_client_latency(&c, opts, "relay.load", false, &p50, &p99);
    s_client_fini(&c);
    s_disconnect(ctx, sock);
    s_stop(&procs);
}

// ---------------------------------------------------------------------------
//  main

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

static void s_usage(FILE *out)
{
    fprintf(out, "usage: zmq_relay [--quick] [--variant poll1,drain,credit,proxy,batch]\n"
                 "                 [--workers 1,2] [--messages N] [--window W] [--rounds R]\n"
                 "                 [--batch B] [--prefetch P] [--no-payload] [--no-load]\n"
                 "                 [--no-spin]\n"
                 "                 [--samples DIR]\n");
}

static unsigned s_parse_variants(const char *text)
{
    unsigned bits = 0;
    char copy[256];
    snprintf(copy, sizeof copy, "%s", text ? text : "");
    char *save = NULL;
    for (char *name = strtok_r(copy, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        int v = -1;
        for (int i = 0; i < V_COUNT; i++) {
            if (!strcmp(name, s_variant_names[i]))
                v = i;
        }
        if (v < 0) {
            fprintf(stderr, "zmq_relay: unknown variant '%s'\n", name);
            exit(2);
        }
        bits |= 1u << v;
    }
    return bits;
}

static unsigned s_parse_workers(const char *text)
{
    unsigned bits = 0;
    char copy[256];
    snprintf(copy, sizeof copy, "%s", text ? text : "");
    char *save = NULL;
    for (char *n = strtok_r(copy, ",", &save); n; n = strtok_r(NULL, ",", &save)) {
        long w = s_parse_long("--workers", n);
        if (w > RELAY_WORKERS_MAX) {
            fprintf(stderr, "zmq_relay: at most %d workers\n", RELAY_WORKERS_MAX);
            exit(2);
        }
        bits |= 1u << w;
    }
    return bits;
}

int main(int argc, char **argv)
{
    relay_opts_t opts = { .messages = 200000,
                          .window = 1000,
                          .rounds = 2000,
                          .batch = 256,
                          .prefetch = 256,
                          .variants = (1u << V_COUNT) - 1,
                          .workers = (1u << 1) | (1u << 2),
                          .spin = true,
                          .payload = true,
                          .load = true };
    long messages = 0, rounds = 0;
    bool workers_given = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(arg, "--quick"))
            opts.quick = true;
        else if (!strcmp(arg, "--messages"))
            messages = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--window"))
            opts.window = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--rounds"))
            rounds = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--batch"))
            opts.batch = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--prefetch"))
            opts.prefetch = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--variant"))
            opts.variants = s_parse_variants(next), i++;
        else if (!strcmp(arg, "--workers"))
            opts.workers = s_parse_workers(next), workers_given = true, i++;
        else if (!strcmp(arg, "--no-payload"))
            opts.payload = false;
        else if (!strcmp(arg, "--no-load"))
            opts.load = false;
        else if (!strcmp(arg, "--no-spin"))
            opts.spin = false;
        else if (!strcmp(arg, "--samples") && next)
            opts.samples_dir = next, i++;
        else if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            s_usage(stdout);
            return 0;
        }
        else {
            s_usage(stderr);
            return 2;
        }
    }
    if (opts.quick && !workers_given)
        opts.workers = 1u << 1;
    opts.messages = messages ? messages : opts.quick ? 5000 : 200000;
    opts.rounds = rounds ? rounds : opts.quick ? 200 : 2000;
    if (opts.window >= RELAY_HWM) {
        fprintf(stderr, "zmq_relay: --window must be below %d\n", RELAY_HWM);
        return 2;
    }
    if (opts.batch > RELAY_BATCH_MAX)
        opts.batch = RELAY_BATCH_MAX;
    if (opts.samples_dir)
        mkdir(opts.samples_dir, 0777);
    signal(SIGPIPE, SIG_IGN);

    printf("# zmq_relay: messages %ld, window %ld, rounds %ld, batch %ld, prefetch %ld\n",
           opts.messages, opts.window, opts.rounds, opts.batch, opts.prefetch);
    fflush(stdout);
    relay_best_t best = { 0 };
    for (int v = 0; v < V_COUNT; v++) {
        if (!(opts.variants & (1u << v)))
            continue;
        for (int w = 1; w <= RELAY_WORKERS_MAX; w++) {
            if (opts.workers & (1u << w))
                s_measure(&opts, (variant_t)v, w, &best);
        }
    }
    s_emit("relay.best.throughput", best.best, "msgs/s");
    if (best.best1 > 0)
        s_emit("relay.best1.throughput", best.best1, "msgs/s");
    s_emit("relay.best.latency.p50", best.p50, "us");
    s_emit("relay.best.latency.p99", best.p99, "us");
    if (opts.spin) {
        s_emit("relay.best.latency_spin.p50", best.spin_p50, "us");
        s_emit("relay.best.latency_spin.p99", best.spin_p99, "us");
    }
    if (opts.payload) {
        s_measure_payload(&opts, 1024, "1KiB");
        s_measure_payload(&opts, 64 * 1024, "64KiB");
        s_measure_payload(&opts, 1024 * 1024, "1MiB");
    }
    if (opts.load)
        s_measure_load(&opts);
    return 0;
}
