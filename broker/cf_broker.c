//  The broker actor. See cf_broker.h for what peers can rely on.
//
//  Design note. One thread, a cf_actor, creates and owns the two ROUTER
//  sockets and every table below; other threads reach it only through its
//  pipe, so nothing is shared and nothing is locked. Each turn of the loop reads what the sockets have (up
//  to a budget, so one flood cannot starve the other side), runs due timers,
//  dispatches queued tasks to workers with credit, and flushes the clients'
//  outboxes: many events between two polls become one TASK per worker and
//  one STARTED and one RESULT per client.
//
//  A task lives in exactly one place: its client's queue (waiting) or its
//  worker's running list (sent). The same list node serves both, so moving
//  it costs nothing and a task is never copied after SUBMIT. Two maps find
//  it: the broker's own id (what workers answer with) and the client's id
//  (what CANCEL names, and what detects a resubmission).
//
//  Nothing is dropped silently. A TASK the ROUTER refuses (worker at its
//  high-water mark, or gone) puts its tasks back at the front of their
//  queues; STARTED and RESULT items wait in the client's outbox until a send
//  goes through, and a client that stays unreachable for the liveness period
//  is lost like a silent one. Every such event is counted.

#include "cf_broker.h"
#include "cf_auth.h"

#include "cf_actor.h"
#include "cf_clock.h"
#include "cf_error.h"
#include "cf_hash.h"
#include "cf_idmap.h"
#include "cf_log.h"
#include "cf_proto.h"
#include "cf_queue.h"
#include "cf_random.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define LOG "broker"

//  Messages read from one socket in one turn before the loop looks at the
//  other socket and the timers.
#define CF_BROKER_READ_BUDGET   256
//  How soon a refused send (peer at its high-water mark) is tried again;
//  for a client the wait doubles with each refusal up to the maximum, and
//  while refused only one item is offered at a time, so a client that does
//  not read costs a small probe now and then, not a re-encoded 64 MiB batch
//  every few milliseconds.
#define CF_BROKER_RETRY_MS      10
#define CF_BROKER_RETRY_MAX_MS  320
//  An unasked STARTED (a task handed to a worker) waits up to this long for
//  the task's RESULT, or any RESULT for its client, to go out with it: a
//  message of its own would cost the client a wake-up per task, which on a
//  one-at-a-time round trip was a fifth of the time (docs/benchmarks.md). A
//  task running longer still shows as running within about this long; a
//  STARTED that answers a CANCEL or a resubmission goes out at once.
#define CF_BROKER_STARTED_DELAY_MS CF_BROKER_RETRY_MS
//  Bodies are cut well below CF_PROTO_MAX_FRAME so the receiver never
//  refuses a batch we built.
#define CF_BROKER_MAX_BODY      (CF_PROTO_MAX_FRAME - 64u * 1024)
//  Per-item encoding overhead allowance when deciding where to cut.
#define CF_BROKER_ITEM_OVERHEAD 64
//  An outbox larger than this means the client does not read: it is lost.
#define CF_BROKER_MAX_OUTBOX    (256u * 1024 * 1024)
//  A worker cannot announce more slots than this (bounds planning loops).
#define CF_BROKER_MAX_CREDIT    (1u << 20)
//  Routing ids longer than ZeroMQ's 255 bytes do not exist.
#define CF_BROKER_MAX_IDENTITY  255
//  Linger on close: long enough for DISCONNECT to leave, short enough that a
//  stuck peer never holds shutdown.
#define CF_BROKER_LINGER_MS     200

typedef struct s_client s_client_t;
typedef struct s_worker s_worker_t;

typedef enum {
    S_QUEUED,           //  in its client's queue
    S_RUNNING,          //  on a worker, its client waits
    S_EXPIRED,          //  on a worker, already failed with TimeoutError
    S_ORPHANED          //  on a worker, its client is gone
} s_state_t;

//  One task: 88 bytes on LP64 (measured), with the function name and args
//  in the same allocation, plus a 16-byte slot in each of two maps (at 3/8
//  to 3/4 load, about 60 bytes together) and malloc's own 8 to 16: about
//  165 bytes of bookkeeping per task beyond its payload.
typedef struct {
    cf_queue_node_t node;       //  in client->queue or worker->running
    s_client_t *client;         //  who waits; NULL once expired or orphaned
    s_worker_t *worker;         //  where it runs; NULL while queued
    uint64_t id;                //  the broker's id (toward workers)
    uint64_t client_task_id;    //  the client's id (toward the client)
    int64_t deadline_ms;        //  when a running task times out
    uint32_t heap_index;        //  in the timeout heap, or S_NOT_IN_HEAP
    uint32_t timeout_ms;        //  run time limit, 0: none
    int32_t retries;            //  retries allowed after a lost worker (<0: none)
    uint32_t retries_used;
    uint32_t flags;             //  CF_TASK_*
    uint32_t args_len;
    uint32_t results_before;    //  its worker's results count when it was sent
    uint16_t function_len;
    uint8_t state;              //  s_state_t
    uint8_t data[];             //  function name, NUL, args
} s_task_t;

_Static_assert(sizeof(s_task_t) <= 96, "keep per-task bookkeeping small");

#define S_NOT_IN_HEAP UINT32_MAX

//  What clients and workers have in common: a routing id, a table slot,
//  liveness.
typedef struct s_peer {
    struct s_peer *hash_next;   //  peers whose identity hashes alike
    uint64_t hash;              //  of the identity
    int64_t last_seen_ms;       //  last message from it
    cf_queue_node_t all_node;   //  in self->clients or self->workers
    size_t id_len;
    uint8_t id[CF_BROKER_MAX_IDENTITY];
    char label[24];             //  identity as shown in logs
    uint64_t auth_generation;   //  allow-lists its key was last found on; 0: not checked
} s_peer_t;

//  A RESULT item waiting to be sent to its client.
typedef struct s_out {
    struct s_out *next;
    uint64_t id;                //  the client's task id
    uint32_t value_len;         //  OK: value bytes in data
    int32_t pid;                //  ERROR
    uint8_t status;             //  cf_status_t
    uint8_t data[];             //  OK: value; ERROR: type\0message\0function\0host\0
} s_out_t;

struct s_client {
    s_peer_t peer;              //  first: a client is a peer
    cf_queue_t queue;           //  waiting tasks, FIFO; served by self->rr
    cf_idmap_t *tasks;          //  client task id -> task (queued or on a worker)
    size_t running;             //  of its tasks on workers
    uint64_t *started;          //  STARTED ids not sent yet
    size_t started_count, started_cap;
    int64_t started_due_ms;     //  STARTED go out by then, or with a RESULT
    s_out_t *out_head, *out_tail;   //  RESULT items not sent yet
    size_t out_count;
    size_t out_bytes;           //  memory held by started + out items
    cf_queue_node_t flush_node; //  in self->flush while anything is unsent
    int64_t unreachable_since_ms;   //  first refused send not followed by a good one; 0: none
    int64_t retry_at_ms;        //  no flush before this after a refusal
    int retry_delay_ms;         //  the current wait between refused flushes
};

struct s_worker {
    s_peer_t peer;              //  first: a worker is a peer
    cf_queue_t running;         //  tasks sent to it, in dispatch order
    uint32_t credit;            //  tasks it can take now
    uint32_t plan;              //  tasks planned for it in this dispatch
    //  Tasks it runs at once (its READY credit plus what it held then);
    //  credit beyond this is prefetch, filled only after every worker's
    //  idle threads (see s_dispatch).
    uint32_t threads;
    uint32_t results;           //  results received (wraps; compared for equality)
    cf_queue_node_t avail_node; //  in self->available while credit > 0 and not blocked
    int64_t blocked_until_ms;   //  a TASK was refused at HWM: wait till then; 0: not blocked
    int32_t pid;
    char host[64];
};

typedef struct {
    void *clients_sock;
    void *workers_sock;
    cf_proto_enc_t *enc;
    int ivl_ms;
    int liveness;
    size_t max_queued;
    size_t max_queued_per_client;
    bool require_roles;         //  CURVE: check each message's User-Id role
    cf_auth_t *auth;            //  CURVE: the allow-lists, for revoked keys; borrowed
    cf_log_limit_t refused_log; //  audit lines of refused messages, per second
    uint64_t boot;              //  random, nonzero: tells peers this run from another
    uint64_t next_task_id;      //  starts at random: a restarted broker never
                                //  matches a result meant for its predecessor
    cf_idmap_t *client_table;   //  identity hash -> first s_peer_t of the chain
    cf_idmap_t *worker_table;
    cf_queue_t clients;         //  all clients (all_node)
    cf_queue_t workers;         //  all workers (all_node)
    cf_queue_rr_t rr;           //  clients with queued tasks, in turn order
    cf_queue_t available;       //  workers with credit (avail_node)
    cf_queue_t flush;           //  clients with unsent items (flush_node)
    cf_idmap_t *tasks;          //  broker id -> task, queued or on a worker
    s_task_t **heap;            //  running tasks with a timeout, by deadline
    size_t heap_size, heap_cap;
    size_t running;             //  tasks on workers whose client waits
    size_t blocked_workers;
    int64_t next_heartbeat_ms;
    bool terminated;
    cf_broker_stats_t stats;
    char client_endpoint[256];  //  bound, a "*" port resolved
    char worker_endpoint[256];
} s_self_t;

struct cf_broker {
    cf_actor_t *actor;          //  owns both sockets and every table
    void *ctx;
    bool own_ctx;
    char client_endpoint[256];  //  written by the actor before it is ready
    char worker_endpoint[256];
};

// ---------------------------------------------------------------------------
//  Small helpers

//  A printable identity as is, else hex (ZeroMQ's generated ids are binary).
static void s_make_label(const uint8_t *id, size_t len, char *label, size_t size)
{
    bool printable = len > 0;
    for (size_t i = 0; i < len && printable; i++)
        printable = id[i] > 0x20 && id[i] < 0x7f;
    if (printable) {
        size_t n = len < size - 1 ? len : size - 1;
        memcpy(label, id, n);
        label[n] = '\0';
        return;
    }
    size_t at = 0;
    for (size_t i = 0; i < len && at + 3 <= size; i++)
        at += (size_t)snprintf(label + at, size - at, "%02x", id[i]);
    label[at] = '\0';
    if (len == 0)
        snprintf(label, size, "(empty)");
}

static const char *s_task_function(const s_task_t *task)
{
    return (const char *)task->data;
}

static const uint8_t *s_task_args(const s_task_t *task)
{
    return task->data + task->function_len + 1;
}

static const char *s_command(cf_msg_type_t type)
{
    const char *name = cf_proto_command_name(type);
    return name ? name : "?";
}

// ---------------------------------------------------------------------------
//  The timeout heap: running tasks with a time limit, earliest first.

static void s_heap_swap(s_self_t *self, size_t a, size_t b)
{
    s_task_t *t = self->heap[a];
    self->heap[a] = self->heap[b];
    self->heap[b] = t;
    self->heap[a]->heap_index = (uint32_t)a;
    self->heap[b]->heap_index = (uint32_t)b;
}

static void s_heap_up(s_self_t *self, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (self->heap[parent]->deadline_ms <= self->heap[i]->deadline_ms)
            break;
        s_heap_swap(self, i, parent);
        i = parent;
    }
}

static void s_heap_down(s_self_t *self, size_t i)
{
    for (;;) {
        size_t left = 2 * i + 1, right = left + 1, least = i;
        if (left < self->heap_size && self->heap[left]->deadline_ms < self->heap[least]->deadline_ms)
            least = left;
        if (right < self->heap_size && self->heap[right]->deadline_ms < self->heap[least]->deadline_ms)
            least = right;
        if (least == i)
            break;
        s_heap_swap(self, i, least);
        i = least;
    }
}

static cf_err_t s_heap_push(s_self_t *self, s_task_t *task)
{
    if (self->heap_size == self->heap_cap) {
        size_t cap = self->heap_cap ? self->heap_cap * 2 : 64;
        s_task_t **heap = realloc(self->heap, cap * sizeof *heap);
        if (!heap)
            return CF_ENOMEM;
        self->heap = heap;
        self->heap_cap = cap;
    }
    task->heap_index = (uint32_t)self->heap_size;
    self->heap[self->heap_size++] = task;
    s_heap_up(self, task->heap_index);
    return CF_OK;
}

static void s_heap_remove(s_self_t *self, s_task_t *task)
{
    if (task->heap_index == S_NOT_IN_HEAP)
        return;
    size_t i = task->heap_index;
    assert(i < self->heap_size && self->heap[i] == task);
    self->heap_size--;
    if (i != self->heap_size) {
        self->heap[i] = self->heap[self->heap_size];
        self->heap[i]->heap_index = (uint32_t)i;
        s_heap_down(self, i);
        s_heap_up(self, i);
    }
    task->heap_index = S_NOT_IN_HEAP;
}

// ---------------------------------------------------------------------------
//  Peer tables: identity -> peer. The map is keyed by the identity's hash;
//  the rare peers whose hashes collide are chained.

static s_peer_t *s_peer_find(cf_idmap_t *table, const void *id, size_t len)
{
    uint64_t hash = cf_hash_bytes(id, len);
    for (s_peer_t *peer = cf_idmap_get(table, hash); peer; peer = peer->hash_next)
        if (peer->id_len == len && memcmp(peer->id, id, len) == 0)
            return peer;
    return NULL;
}

//  The new peer becomes the head of its hash chain.
static cf_err_t s_peer_insert(cf_idmap_t *table, s_peer_t *peer)
{
    s_peer_t *first = cf_idmap_get(table, peer->hash);
    cf_err_t rc = cf_idmap_put(table, peer->hash, peer);
    if (rc == CF_OK)
        peer->hash_next = first;
    return rc;
}

static void s_peer_unlink(cf_idmap_t *table, s_peer_t *peer)
{
    s_peer_t *first = cf_idmap_get(table, peer->hash);
    if (first == peer) {
        if (peer->hash_next) {
            //  Replacing an existing key never allocates.
            cf_err_t rc = cf_idmap_put(table, peer->hash, peer->hash_next);
            assert(rc == CF_OK);
            (void)rc;
        }
        else
            cf_idmap_remove(table, peer->hash);
        return;
    }
    for (s_peer_t *p = first; p; p = p->hash_next) {
        if (p->hash_next == peer) {
            p->hash_next = peer->hash_next;
            return;
        }
    }
}

static void s_peer_init(s_peer_t *peer, const void *id, size_t len, int64_t now)
{
    memcpy(peer->id, id, len);
    peer->id_len = len;
    peer->hash = cf_hash_bytes(id, len);
    peer->last_seen_ms = now;
    peer->hash_next = NULL;
    cf_queue_node_init(&peer->all_node);
    s_make_label(peer->id, len, peer->label, sizeof peer->label);
}

// ---------------------------------------------------------------------------
//  Sending the simple messages. Failures of these are not kept: a heartbeat
//  or an error reply that cannot go now is replaced by the next one.

static cf_err_t s_send_heartbeat(s_self_t *self, void *sock, const void *id, size_t len)
{
    cf_proto_enc_heartbeat(self->enc, self->boot, (uint32_t)self->ivl_ms);
    return cf_proto_enc_send(self->enc, sock, id, len);
}

static void s_send_error(s_self_t *self, void *sock, const void *id, size_t len, uint64_t ref,
                         const char *text)
{
    cf_proto_enc_begin(self->enc, CF_MSG_ERROR);
    cf_proto_enc_text(self->enc, text, ref);
    cf_err_t rc = cf_proto_enc_send(self->enc, sock, id, len);
    if (rc != CF_OK)
        cf_log_debug(LOG, "error reply not sent: %s", cf_strerror(rc));
}

static void s_malformed(s_self_t *self, void *sock, const void *id, size_t len, const char *text)
{
    self->stats.malformed++;
    char label[24];
    s_make_label(id, len, label, sizeof label);
    cf_log_debug(LOG, "refused a message from %s %s: %s", sock == self->clients_sock ? "client" : "worker",
                 id ? label : "(unknown)", text);
    if (id)
        s_send_error(self, sock, id, len, 0, text);
}

// ---------------------------------------------------------------------------
//  Client outboxes

static void s_client_mark_unsent(s_self_t *self, s_client_t *client)
{
    if (!cf_queue_linked(&client->flush_node))
        cf_queue_push_back(&self->flush, &client->flush_node);
}

//  asked: it answers the client (CANCEL, resubmission): send it at once.
static void s_client_started(s_self_t *self, s_client_t *client, uint64_t id, bool asked)
{
    if (client->started_count == client->started_cap) {
        size_t cap = client->started_cap ? client->started_cap * 2 : 64;
        uint64_t *started = realloc(client->started, cap * sizeof *started);
        if (!started) {
            //  STARTED is advice (the RESULT will still come), so under
            //  memory pressure it is the one thing we give up; counted.
            self->stats.dropped++;
            cf_log_warn(LOG, "out of memory: STARTED for task %" PRIu64 " not sent", id);
            return;
        }
        client->out_bytes += (cap - client->started_cap) * sizeof *started;
        client->started = started;
        client->started_cap = cap;
    }
    if (asked)
        client->started_due_ms = 0;
    else if (client->started_count == 0)
        client->started_due_ms = cf_clock_now_ms() + CF_BROKER_STARTED_DELAY_MS;
    client->started[client->started_count++] = id;
    s_client_mark_unsent(self, client);
}

static void s_client_out_append(s_self_t *self, s_client_t *client, s_out_t *out, size_t size)
{
    out->next = NULL;
    if (client->out_tail)
        client->out_tail->next = out;
    else
        client->out_head = out;
    client->out_tail = out;
    client->out_count++;
    client->out_bytes += size;
    s_client_mark_unsent(self, client);
}

//  Forward declaration: an outbox that outgrows its bound loses the client.
static void s_client_lost(s_self_t *self, s_client_t *client, const char *reason);

static s_out_t *s_out_new(size_t data_len, size_t *size)
{
    *size = sizeof(s_out_t) + data_len;
    return malloc(*size);
}

static void s_result_status(s_self_t *self, s_client_t *client, uint64_t id, cf_status_t status)
{
    size_t size;
    s_out_t *out = s_out_new(0, &size);
    if (!out) {
        self->stats.dropped++;
        cf_log_error(LOG, "out of memory: result of task %" PRIu64 " for client %s lost", id,
                     client->peer.label);
        return;
    }
    out->id = id;
    out->status = (uint8_t)status;
    out->value_len = 0;
    out->pid = 0;
    s_client_out_append(self, client, out, size);
}

static void s_result_ok(s_self_t *self, s_client_t *client, uint64_t id, const void *value,
                        size_t value_len)
{
    size_t size;
    s_out_t *out = s_out_new(value_len, &size);
    if (!out) {
        self->stats.dropped++;
        cf_log_error(LOG, "out of memory: result of task %" PRIu64 " for client %s lost", id,
                     client->peer.label);
        return;
    }
    out->id = id;
    out->status = CF_STATUS_OK;
    out->value_len = (uint32_t)value_len;
    out->pid = 0;
    if (value_len)
        memcpy(out->data, value, value_len);
    s_client_out_append(self, client, out, size);
}

//  Strings of an error: (ptr, len) pairs, not NUL-terminated on the wire.
typedef struct {
    const char *ptr;
    size_t len;
} s_text_t;

static void s_result_error(s_self_t *self, s_client_t *client, uint64_t id, s_text_t type,
                           s_text_t message, s_text_t function, s_text_t host, int32_t pid)
{
    //  The codec refuses an empty type; a worker that sent one still failed.
    if (!type.ptr || type.len == 0)
        type = (s_text_t){ "Error", 5 };
    s_text_t parts[4] = { type, message, function, host };
    size_t total = 0;
    for (int i = 0; i < 4; i++) {
        if (!parts[i].ptr)
            parts[i].len = 0;
        total += parts[i].len + 1;
    }
    size_t size;
    s_out_t *out = s_out_new(total, &size);
    if (!out) {
        self->stats.dropped++;
        cf_log_error(LOG, "out of memory: error of task %" PRIu64 " for client %s lost", id,
                     client->peer.label);
        return;
    }
    out->id = id;
    out->status = CF_STATUS_ERROR;
    out->value_len = 0;
    out->pid = pid;
    uint8_t *at = out->data;
    for (int i = 0; i < 4; i++) {
        if (parts[i].len)
            memcpy(at, parts[i].ptr, parts[i].len);
        //  An embedded NUL would cut the string short: harmless, and the
        //  wire format has no way to carry it into a C string anyway.
        at[parts[i].len] = '\0';
        at += parts[i].len + 1;
    }
    s_client_out_append(self, client, out, size);
}

static s_text_t s_text(const char *s)
{
    return (s_text_t){ s, s ? strlen(s) : 0 };
}

static s_text_t s_text_proto(cf_proto_str_t s)
{
    return (s_text_t){ s.ptr, s.ptr ? s.len : 0 };
}

//  A runtime error made by the broker (WorkerLost, TimeoutError).
static void s_result_runtime_error(s_self_t *self, s_task_t *task, const char *type,
                                   const char *message)
{
    s_worker_t *worker = task->worker;
    s_result_error(self, task->client, task->client_task_id, s_text(type), s_text(message),
                   (s_text_t){ s_task_function(task), task->function_len },
                   s_text(worker ? worker->host : ""), worker ? worker->pid : 0);
}

//  Encodes one outbox item; CF_ETOOBIG or CF_ENOMEM when it cannot be.
static cf_err_t s_encode_out(s_self_t *self, const s_out_t *out)
{
    switch (out->status) {
    case CF_STATUS_OK:
        return cf_proto_enc_result_ok(self->enc, out->id, out->data, out->value_len);
    case CF_STATUS_ERROR: {
        const char *type = (const char *)out->data;
        const char *message = type + strlen(type) + 1;
        const char *function = message + strlen(message) + 1;
        const char *host = function + strlen(function) + 1;
        return cf_proto_enc_result_error(self->enc, out->id, type, message, function, host,
                                         out->pid);
    }
    default:
        return cf_proto_enc_result_status(self->enc, out->id, (cf_status_t)out->status);
    }
}

static size_t s_out_size(const s_out_t *out)
{
    if (out->status == CF_STATUS_ERROR) {
        size_t n = 0;
        const char *p = (const char *)out->data;
        for (int i = 0; i < 4; i++) {
            size_t len = strlen(p);
            n += len + 1;
            p += len + 1;
        }
        return sizeof *out + n;
    }
    return sizeof *out + out->value_len;
}

//  A send to a client was refused: keep what we have and remember since when.
static void s_client_refused(s_self_t *self, s_client_t *client, cf_err_t rc)
{
    self->stats.deferred++;
    int64_t now = cf_clock_now_ms();
    client->retry_delay_ms = client->retry_delay_ms ? client->retry_delay_ms * 2 : CF_BROKER_RETRY_MS;
    if (client->retry_delay_ms > CF_BROKER_RETRY_MAX_MS)
        client->retry_delay_ms = CF_BROKER_RETRY_MAX_MS;
    client->retry_at_ms = now + client->retry_delay_ms;
    if (!client->unreachable_since_ms) {
        client->unreachable_since_ms = now;
        cf_log_debug(LOG, "client %s unreachable (%s), keeping %zu results", client->peer.label,
                     cf_strerror(rc), client->out_count);
    }
}

//  A send went through: it reads (slow is not lost), full batches again.
static void s_client_reached(s_client_t *client)
{
    client->unreachable_since_ms = 0;
    client->retry_delay_ms = 0;
    client->retry_at_ms = 0;
}

//  Sends what the client's outbox holds: STARTED first, then RESULTs, so a
//  client never sees a task's result before its start. Returns true when
//  everything went.
static bool s_client_flush(s_self_t *self, s_client_t *client)
{
    if (client->started_count && !client->out_head
        && client->started_due_ms > cf_clock_now_ms())
        return false;           //  not due: wait for a RESULT to go with
    while (client->started_count) {
        cf_proto_enc_begin(self->enc, CF_MSG_STARTED);
        size_t n = 0;
        while (n < client->started_count && n < CF_PROTO_MAX_BATCH) {
            if (cf_proto_enc_id(self->enc, client->started[n]) != CF_OK)
                break;
            n++;
        }
        if (n == 0) {
            //  Not even one id fits: only out of memory gets here. Retry later.
            s_client_refused(self, client, CF_ENOMEM);
            return false;
        }
        cf_err_t rc = cf_proto_enc_send(self->enc, self->clients_sock, client->peer.id,
                                        client->peer.id_len);
        if (rc != CF_OK) {
            s_client_refused(self, client, rc);
            return false;
        }
        memmove(client->started, client->started + n,
                (client->started_count - n) * sizeof *client->started);
        client->started_count -= n;
        //  A small STARTED getting through says little: only a RESULT
        //  going through (or an empty outbox) ends the backoff.
    }
    if (client->started_cap > 1024) {
        //  A burst is over: give its memory back.
        client->out_bytes -= client->started_cap * sizeof *client->started;
        free(client->started);
        client->started = NULL;
        client->started_cap = 0;
    }
    while (client->out_head) {
        cf_proto_enc_begin(self->enc, CF_MSG_RESULT);
        size_t n = 0, body = 0;
        s_out_t *out = client->out_head;
        //  After a refusal, one item probes whether it reads again.
        size_t max_items = client->unreachable_since_ms ? 1 : CF_PROTO_MAX_BATCH;
        while (out && n < max_items) {
            size_t item = s_out_size(out) + CF_BROKER_ITEM_OVERHEAD;
            if (n > 0 && body + item > CF_BROKER_MAX_BODY)
                break;
            //  A failed item leaves the body as it was (the codec rolls back).
            cf_err_t rc = item > CF_BROKER_MAX_BODY ? CF_ETOOBIG : s_encode_out(self, out);
            if (rc == CF_ETOOBIG && n > 0)
                break;          //  send what fits; this one leads the next body
            if (rc == CF_ETOOBIG || rc == CF_EINVAL) {
                //  Items are checked when they enter the outbox, so this is
                //  our mistake; still, the client gets an error in its place
                //  rather than nothing.
                char message[160];
                snprintf(message, sizeof message, "the result of task %" PRIu64
                         " could not be forwarded: %s", out->id, cf_strerror(rc));
                cf_log_error(LOG, "%s", message);
                rc = cf_proto_enc_result_error(self->enc, out->id, "ProtocolError", message, "",
                                               "", 0);
            }
            if (rc != CF_OK) {
                //  Out of memory: drop the body being built, try next turn.
                cf_proto_enc_begin(self->enc, CF_MSG_RESULT);
                s_client_refused(self, client, rc);
                return false;
            }
            body += item;
            n++;
            out = out->next;
        }
        cf_err_t rc = cf_proto_enc_send(self->enc, self->clients_sock, client->peer.id,
                                        client->peer.id_len);
        if (rc != CF_OK) {
            s_client_refused(self, client, rc);
            return false;
        }
        for (size_t i = 0; i < n; i++) {
            s_out_t *sent = client->out_head;
            client->out_head = sent->next;
            client->out_bytes -= s_out_size(sent);
            free(sent);
            client->out_count--;
        }
        if (!client->out_head)
            client->out_tail = NULL;
        s_client_reached(client);
    }
    s_client_reached(client);
    return true;
}

static void s_flush_all(s_self_t *self)
{
    cf_queue_node_t *node = cf_queue_front(&self->flush), *next;
    for (; node; node = next) {
        next = cf_queue_next(&self->flush, node);
        s_client_t *client = cf_queue_entry(node, s_client_t, flush_node);
        if (client->retry_at_ms && cf_clock_now_ms() < client->retry_at_ms)
            continue;
        if (s_client_flush(self, client))
            cf_queue_remove(&self->flush, node);
        else if (client->out_bytes > CF_BROKER_MAX_OUTBOX)
            s_client_lost(self, client, "not reading its results");
    }
}

// ---------------------------------------------------------------------------
//  Tasks

static void s_task_free(s_self_t *self, s_task_t *task)
{
    s_heap_remove(self, task);
    cf_idmap_remove(self->tasks, task->id);
    free(task);
}

//  A task leaves its client for good (answered): forget it there too.
static void s_task_finish(s_self_t *self, s_task_t *task)
{
    if (task->client)
        cf_idmap_remove(task->client->tasks, task->client_task_id);
    s_task_free(self, task);
}

//  Takes a task off its worker (it is in worker->running).
static void s_task_unassign(s_self_t *self, s_task_t *task)
{
    s_worker_t *worker = task->worker;
    assert(worker);
    cf_queue_remove(&worker->running, &task->node);
    s_heap_remove(self, task);
    if (task->state == S_RUNNING) {
        self->running--;
        task->client->running--;
    }
    task->worker = NULL;
}

//  Puts a task that was on a worker back at the front of its client's queue.
//  Call s_task_unassign first.
static void s_task_requeue_front(s_self_t *self, s_task_t *task)
{
    assert(task->client && !task->worker);
    task->state = S_QUEUED;
    cf_queue_rr_push_front(&self->rr, &task->client->queue, &task->node);
}

// ---------------------------------------------------------------------------
//  Workers

static void s_worker_set_available(s_self_t *self, s_worker_t *worker)
{
    bool want = worker->credit > 0 && !worker->blocked_until_ms;
    if (want && !cf_queue_linked(&worker->avail_node))
        cf_queue_push_back(&self->available, &worker->avail_node);
    else if (!want && cf_queue_linked(&worker->avail_node))
        cf_queue_remove(&self->available, &worker->avail_node);
}

static void s_worker_add_credit(s_self_t *self, s_worker_t *worker, uint64_t n)
{
    uint64_t credit = (uint64_t)worker->credit + n;
    worker->credit = credit > CF_BROKER_MAX_CREDIT ? CF_BROKER_MAX_CREDIT : (uint32_t)credit;
    s_worker_set_available(self, worker);
}

//  The worker is gone. lost: it vanished (heartbeats, ROUTER says gone,
//  reported dead), so what it held used one attempt; otherwise it said
//  DISCONNECT and what it held was never run.
static void s_worker_remove(s_self_t *self, s_worker_t *worker, const char *reason, bool lost)
{
    size_t requeued = 0, failed = 0;
    //  Back to front with push_front: each client's tasks keep their order.
    cf_queue_node_t *node = cf_queue_back(&worker->running), *prev;
    for (; node; node = prev) {
        prev = cf_queue_prev(&worker->running, node);
        s_task_t *task = cf_queue_entry(node, s_task_t, node);
        s_state_t state = task->state;
        if (state != S_RUNNING) {
            //  Nobody waits for it (timed out or its client is gone).
            s_task_unassign(self, task);
            s_task_free(self, task);
            continue;
        }
        bool retry = !lost || (task->retries > 0 && task->retries_used < (uint32_t)task->retries);
        if (retry) {
            if (lost) {
                task->retries_used++;
                self->stats.retried++;
            }
            s_task_unassign(self, task);
            s_task_requeue_front(self, task);
            requeued++;
            continue;
        }
        //  Fail it while task->worker still names the worker for the error.
        char message[512];
        snprintf(message, sizeof message,
                 "task %" PRIu64 " (%s) was lost with worker %s (host %s, pid %d) after %" PRIu32
                 " attempt%s",
                 task->client_task_id, s_task_function(task), worker->peer.label,
                 worker->host[0] ? worker->host : "?", (int)worker->pid, task->retries_used + 1,
                 task->retries_used ? "s" : "");
        s_result_runtime_error(self, task, "WorkerLost", message);
        self->stats.failed++;
        failed++;
        s_task_unassign(self, task);
        s_task_finish(self, task);
    }
    if (lost) {
        self->stats.lost_workers++;
        if (failed)
            cf_log_warn(LOG, "worker %s lost (%s), %zu tasks requeued, %zu failed (retries used up)",
                        worker->peer.label, reason, requeued, failed);
        else
            cf_log_warn(LOG, "worker %s lost (%s), %zu tasks requeued", worker->peer.label, reason,
                        requeued);
    }
    else
        cf_log_info(LOG, "worker %s left (%s), %zu tasks requeued", worker->peer.label, reason,
                    requeued);
    if (cf_queue_linked(&worker->avail_node))
        cf_queue_remove(&self->available, &worker->avail_node);
    if (worker->blocked_until_ms)
        self->blocked_workers--;
    cf_queue_remove(&self->workers, &worker->peer.all_node);
    s_peer_unlink(self->worker_table, &worker->peer);
    free(worker);
}

static s_worker_t *s_worker_new(s_self_t *self, const void *id, size_t len, int64_t now)
{
    s_worker_t *worker = calloc(1, sizeof *worker);
    if (!worker)
        return NULL;
    s_peer_init(&worker->peer, id, len, now);
    cf_queue_init(&worker->running);
    cf_queue_node_init(&worker->avail_node);
    if (s_peer_insert(self->worker_table, &worker->peer) != CF_OK) {
        free(worker);
        return NULL;
    }
    cf_queue_push_back(&self->workers, &worker->peer.all_node);
    return worker;
}

static size_t s_host_len(cf_proto_str_t host, size_t max)
{
    size_t len = host.ptr ? host.len : 0;
    return len > max ? max : len;
}

static bool s_same_host(const s_worker_t *worker, cf_proto_str_t host)
{
    size_t len = s_host_len(host, sizeof worker->host - 1);
    return strlen(worker->host) == len && (len == 0 || memcmp(worker->host, host.ptr, len) == 0);
}

static void s_worker_ready(s_self_t *self, s_worker_t *worker, const cf_proto_msg_t *msg)
{
    size_t host_len = s_host_len(msg->host, sizeof worker->host - 1);
    if (host_len)
        memcpy(worker->host, msg->host.ptr, host_len);
    worker->host[host_len] = '\0';
    worker->pid = msg->pid;
    //  READY states what the worker can take now; what it still runs comes
    //  back with its results, each returning a slot.
    worker->credit = 0;
    s_worker_add_credit(self, worker, msg->credit);
    //  threads decides what counts as an idle thread in s_plan. A worker
    //  that prefetches announces more credit than threads; taken as
    //  threads, that credit once sent a task to a "free thread" of a worker
    //  whose only thread ran a long task while another worker idled. A
    //  READY without threads (3 fields) says only its credit.
    uint64_t threads = msg->threads ? (uint64_t)msg->threads
                                    : (uint64_t)msg->credit + cf_queue_size(&worker->running);
    worker->threads = threads > CF_BROKER_MAX_CREDIT ? CF_BROKER_MAX_CREDIT : (uint32_t)threads;
}

static void s_worker_results(s_self_t *self, s_worker_t *worker, const cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        const cf_proto_result_t *result = &msg->results[i];
        //  Every result returns its slot, known id or not: the worker is the
        //  authority on its slots, and this keeps a re-announced worker's
        //  count right while its earlier tasks drain.
        s_worker_add_credit(self, worker, 1);
        //  A task handed back unrun says the worker is stalled, not
        //  turning over (see s_worker_turning_over).
        if (result->status == CF_STATUS_OK || result->status == CF_STATUS_ERROR)
            worker->results++;
        s_task_t *task = cf_idmap_get(self->tasks, result->id);
        if (!task || task->worker != worker) {
            self->stats.ignored++;
            cf_log_debug(LOG, "worker %s: result for unknown task %" PRIu64 " ignored",
                         worker->peer.label, result->id);
            continue;
        }
        if (task->state == S_EXPIRED || task->state == S_ORPHANED) {
            if (task->state == S_EXPIRED)
                self->stats.ignored++;
            else
                self->stats.dropped++;
            s_task_unassign(self, task);
            s_task_free(self, task);
            continue;
        }
        s_client_t *client = task->client;
        switch (result->status) {
        case CF_STATUS_OK:
            if (result->value_len == 0
                || result->value_len + sizeof(s_out_t) + CF_BROKER_ITEM_OVERHEAD
                       > CF_BROKER_MAX_BODY) {
                //  It could not go on to the client (the codec refuses an
                //  empty value; one at the frame limit leaves no room for
                //  our envelope): an error in its place, never nothing.
                char message[256];
                snprintf(message, sizeof message,
                         "the result of task %" PRIu64 " (%s) cannot be forwarded (%zu bytes)",
                         task->client_task_id, s_task_function(task), result->value_len);
                cf_log_warn(LOG, "%s", message);
                s_result_runtime_error(self, task, "ProtocolError", message);
                self->stats.failed++;
            }
            else {
                s_result_ok(self, client, task->client_task_id, result->value, result->value_len);
                self->stats.completed++;
            }
            s_task_unassign(self, task);
            s_task_finish(self, task);
            break;
        case CF_STATUS_ERROR:
            if ((task->flags & CF_TASK_RETRY_ON_ERROR) && task->retries > 0
                && task->retries_used < (uint32_t)task->retries) {
                task->retries_used++;
                self->stats.retried++;
                s_task_unassign(self, task);
                s_task_requeue_front(self, task);
                break;
            }
            s_result_error(self, client, task->client_task_id, s_text_proto(result->error.type),
                           s_text_proto(result->error.message),
                           s_text_proto(result->error.function), s_text_proto(result->error.host),
                           result->error.pid);
            self->stats.failed++;
            s_task_unassign(self, task);
            s_task_finish(self, task);
            break;
        default:
            //  CANCELLED or BUSY from a worker: handed back unrun (a worker
            //  stopping). Requeued without using a retry.
            s_task_unassign(self, task);
            s_task_requeue_front(self, task);
            break;
        }
    }
}

//  Sends the TASK batch at the back of worker->running (count tasks).
//  On refusal the tasks go back to the front of their queues. Returns the
//  send's result.
static cf_err_t s_worker_send_batch(s_self_t *self, s_worker_t *worker, size_t count)
{
    cf_err_t rc = cf_proto_enc_send(self->enc, self->workers_sock, worker->peer.id,
                                    worker->peer.id_len);
    int64_t now = cf_clock_now_ms();
    cf_queue_node_t *node = cf_queue_back(&worker->running), *prev;
    for (size_t i = 0; i < count; i++, node = prev) {
        prev = cf_queue_prev(&worker->running, node);
        s_task_t *task = cf_queue_entry(node, s_task_t, node);
        if (rc != CF_OK) {
            //  Never reached the worker: no attempt used.
            cf_queue_remove(&worker->running, node);
            task->worker = NULL;
            s_task_requeue_front(self, task);
            continue;
        }
        task->state = S_RUNNING;
        self->running++;
        task->client->running++;
        worker->credit--;
        s_client_started(self, task->client, task->client_task_id, false);
        if (task->timeout_ms) {
            task->deadline_ms = now + task->timeout_ms;
            if (s_heap_push(self, task) != CF_OK)
                cf_log_error(LOG, "out of memory: timeout of task %" PRIu64 " not watched",
                             task->client_task_id);
        }
    }
    if (rc != CF_OK)
        self->stats.deferred++;
    return rc;
}

//  Fails a task that can never be dispatched (it cannot be encoded).
static void s_task_undispatchable(s_self_t *self, s_task_t *task, cf_err_t rc)
{
    char message[256];
    snprintf(message, sizeof message, "task %" PRIu64 " (%s) cannot be sent to a worker: %s",
             task->client_task_id, s_task_function(task), cf_strerror(rc));
    cf_log_warn(LOG, "%s", message);
    s_result_runtime_error(self, task, "ProtocolError", message);
    self->stats.failed++;
    s_task_finish(self, task);
}

//  Sends worker->plan tasks from the round-robin ring, in as few TASK
//  messages as the size limits allow.
static void s_worker_dispatch(s_self_t *self, s_worker_t *worker)
{
    size_t planned = worker->plan, batch = 0, body = 0;
    worker->plan = 0;
    cf_err_t rc = CF_OK;
    cf_proto_enc_begin(self->enc, CF_MSG_TASK);
    for (size_t i = 0; i < planned; i++) {
        //  Look at the next task before taking it, so a full body is sent
        //  first and a refused send puts everything back in order.
        cf_queue_node_t *link = cf_queue_front(&self->rr.ring);
        if (!link)
            break;
        cf_queue_t *queue = cf_queue_entry(link, cf_queue_t, ring);
        s_task_t *task = cf_queue_entry(cf_queue_front(queue), s_task_t, node);
        size_t item = task->function_len + task->args_len + CF_BROKER_ITEM_OVERHEAD;
        if (batch > 0 && (body + item > CF_BROKER_MAX_BODY || batch >= CF_PROTO_MAX_BATCH)) {
            rc = s_worker_send_batch(self, worker, batch);
            batch = body = 0;
            if (rc != CF_OK)
                break;
            cf_proto_enc_begin(self->enc, CF_MSG_TASK);
        }
        cf_queue_node_t *node = cf_queue_rr_pop(&self->rr, NULL);
        assert(node == &task->node);
        (void)node;
        if (item > CF_BROKER_MAX_BODY) {
            s_task_undispatchable(self, task, CF_ETOOBIG);
            continue;
        }
        cf_err_t erc = cf_proto_enc_task(self->enc, task->id, s_task_function(task),
                                         task->function_len, s_task_args(task), task->args_len,
                                         task->retries, task->timeout_ms, task->flags);
        if (erc == CF_ENOMEM) {
            //  Leave it queued and try again on a later turn; what is
            //  encoded so far is discarded with the batch.
            cf_queue_rr_push_front(&self->rr, &task->client->queue, &task->node);
            cf_log_error(LOG, "out of memory encoding task %" PRIu64, task->client_task_id);
            rc = erc;
            break;
        }
        if (erc != CF_OK) {
            s_task_undispatchable(self, task, erc);
            continue;
        }
        task->worker = worker;
        task->results_before = worker->results;
        cf_queue_push_back(&worker->running, &task->node);
        batch++;
        body += item;
    }
    if (batch > 0) {
        if (rc == CF_OK)
            rc = s_worker_send_batch(self, worker, batch);
        else {
            //  Encoding failed part way: put the batch back unsent.
            cf_proto_enc_begin(self->enc, CF_MSG_TASK);
            for (size_t i = 0; i < batch; i++) {
                cf_queue_node_t *back = cf_queue_back(&worker->running);
                s_task_t *task = cf_queue_entry(back, s_task_t, node);
                cf_queue_remove(&worker->running, back);
                task->worker = NULL;
                s_task_requeue_front(self, task);
            }
        }
    }
    if (rc == CF_ENOTFOUND)
        s_worker_remove(self, worker, "gone", true);
    else if (rc != CF_OK) {
        //  At its high-water mark (or out of memory): leave it alone for a
        //  moment instead of spinning on it.
        if (!worker->blocked_until_ms)
            self->blocked_workers++;
        worker->blocked_until_ms = cf_clock_now_ms() + CF_BROKER_RETRY_MS;
        s_worker_set_available(self, worker);
        cf_log_debug(LOG, "worker %s refused a TASK (%s)", worker->peer.label, cf_strerror(rc));
    }
    else
        s_worker_set_available(self, worker);
}

//  True when the worker answered something since its oldest task in hand
//  was sent (or holds nothing): it is turning tasks over, so its prefetch
//  slots will be reached soon. A worker whose threads all sit on long tasks
//  gets nothing more to queue, so what waits stays here: another worker may
//  free up first, and a cancel of it still wins.
static bool s_worker_turning_over(const s_worker_t *worker)
{
    cf_queue_node_t *oldest = cf_queue_front(&worker->running);
    if (!oldest)
        return true;
    return cf_queue_entry(oldest, s_task_t, node)->results_before != worker->results;
}

//  Plans up to *left tasks one at a time over the available workers (so 4
//  tasks and 4 idle workers means one each, not 4 on the first). With
//  idle_only, a worker is planned only up to its idle threads.
static void s_plan(s_self_t *self, size_t *left, bool idle_only)
{
    bool progress = true;
    while (*left > 0 && progress) {
        progress = false;
        for (cf_queue_node_t *node = cf_queue_front(&self->available); node && *left > 0;
             node = cf_queue_next(&self->available, node)) {
            s_worker_t *worker = cf_queue_entry(node, s_worker_t, avail_node);
            if (worker->plan >= worker->credit)
                continue;
            if (idle_only && cf_queue_size(&worker->running) + worker->plan >= worker->threads)
                continue;
            if (!idle_only && !s_worker_turning_over(worker))
                continue;
            worker->plan++;
            (*left)--;
            progress = true;
        }
    }
}

//  Hands queued tasks to workers with credit, in two rounds: first to idle
//  threads anywhere, then to prefetch slots. A worker that prefetches (asks
//  for more than its threads while its tasks are short) must never take a
//  task another worker could start now: a long task behind a busy thread
//  would wait while a thread elsewhere idles.
static void s_dispatch(s_self_t *self)
{
    size_t queued = cf_queue_rr_size(&self->rr);
    if (queued == 0 || cf_queue_empty(&self->available))
        return;
    size_t left = queued;
    s_plan(self, &left, true);
    s_plan(self, &left, false);
    //  The next dispatch starts at another worker, so single tasks rotate.
    cf_queue_rotate(&self->available);
    cf_queue_node_t *node = cf_queue_front(&self->available), *next;
    for (; node; node = next) {
        next = cf_queue_next(&self->available, node);
        s_worker_t *worker = cf_queue_entry(node, s_worker_t, avail_node);
        if (worker->plan)
            s_worker_dispatch(self, worker);
    }
}

// ---------------------------------------------------------------------------
//  Clients

static s_client_t *s_client_new(s_self_t *self, const void *id, size_t len, int64_t now)
{
    s_client_t *client = calloc(1, sizeof *client);
    if (!client)
        return NULL;
    s_peer_init(&client->peer, id, len, now);
    cf_queue_init(&client->queue);
    cf_queue_node_init(&client->flush_node);
    client->tasks = cf_idmap_new(16);
    if (!client->tasks || s_peer_insert(self->client_table, &client->peer) != CF_OK) {
        cf_idmap_destroy(&client->tasks);
        free(client);
        return NULL;
    }
    cf_queue_push_back(&self->clients, &client->peer.all_node);
    return client;
}

static void s_client_lost(s_self_t *self, s_client_t *client, const char *reason)
{
    //  Queued tasks go; tasks on workers stay there (the slot is taken until
    //  the worker answers) but their results will be dropped.
    size_t cursor = 0, orphaned = 0;
    void *value;
    while (cf_idmap_next(client->tasks, &cursor, NULL, &value)) {
        s_task_t *task = value;
        if (task->state == S_RUNNING) {
            s_heap_remove(self, task);
            task->state = S_ORPHANED;
            task->client = NULL;
            self->running--;
            orphaned++;
        }
    }
    size_t queued = cf_queue_size(&client->queue);
    cf_queue_rr_detach(&self->rr, &client->queue);
    cf_queue_node_t *node;
    while ((node = cf_queue_pop_front(&client->queue)))
        s_task_free(self, cf_queue_entry(node, s_task_t, node));
    size_t unsent = client->out_count;
    self->stats.dropped += queued + unsent;
    while (client->out_head) {
        s_out_t *out = client->out_head;
        client->out_head = out->next;
        free(out);
    }
    free(client->started);
    cf_log_info(LOG, "client %s lost (%s): %zu queued tasks dropped, %zu running, %zu results unsent",
                client->peer.label, reason, queued, orphaned, unsent);
    if (cf_queue_linked(&client->flush_node))
        cf_queue_remove(&self->flush, &client->flush_node);
    cf_queue_remove(&self->clients, &client->peer.all_node);
    s_peer_unlink(self->client_table, &client->peer);
    cf_idmap_destroy(&client->tasks);
    free(client);
}

static void s_client_submit(s_self_t *self, s_client_t *client, const cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        const cf_proto_task_t *t = &msg->tasks[i];
        s_task_t *known = cf_idmap_get(client->tasks, t->id);
        if (known) {
            //  A resubmission (the client thought we were gone): the task is
            //  still here, so only say where it is.
            if (known->state == S_RUNNING)
                s_client_started(self, client, t->id, true);
            cf_log_debug(LOG, "client %s resubmitted task %" PRIu64, client->peer.label, t->id);
            continue;
        }
        if (cf_queue_rr_size(&self->rr) >= self->max_queued
            || cf_queue_size(&client->queue) >= self->max_queued_per_client) {
            s_result_status(self, client, t->id, CF_STATUS_BUSY);
            self->stats.busy++;
            continue;
        }
        size_t function_len = t->function.ptr ? t->function.len : 0;
        if (function_len > CF_PROTO_MAX_NAME || t->args_len > UINT32_MAX) {
            //  The codec holds these limits; this guards our narrower fields.
            s_result_status(self, client, t->id, CF_STATUS_BUSY);
            self->stats.busy++;
            continue;
        }
        s_task_t *task = malloc(sizeof *task + function_len + 1 + t->args_len);
        if (!task) {
            s_result_status(self, client, t->id, CF_STATUS_BUSY);
            self->stats.busy++;
            cf_log_warn(LOG, "out of memory: task %" PRIu64 " of client %s refused as busy", t->id,
                        client->peer.label);
            continue;
        }
        cf_queue_node_init(&task->node);
        task->client = client;
        task->worker = NULL;
        task->id = self->next_task_id++;
        while (task->id == 0 || cf_idmap_get(self->tasks, task->id))
            task->id = self->next_task_id++;
        task->client_task_id = t->id;
        task->deadline_ms = 0;
        task->heap_index = S_NOT_IN_HEAP;
        task->timeout_ms = t->timeout_ms;
        task->retries = t->retries;
        task->retries_used = 0;
        task->flags = t->flags;
        task->args_len = (uint32_t)t->args_len;
        task->function_len = (uint16_t)function_len;
        task->state = S_QUEUED;
        if (function_len)
            memcpy(task->data, t->function.ptr, function_len);
        task->data[function_len] = '\0';
        if (t->args_len)
            memcpy(task->data + function_len + 1, t->args, t->args_len);
        if (cf_idmap_put(self->tasks, task->id, task) != CF_OK) {
            free(task);
            s_result_status(self, client, t->id, CF_STATUS_BUSY);
            self->stats.busy++;
            continue;
        }
        if (cf_idmap_put(client->tasks, t->id, task) != CF_OK) {
            cf_idmap_remove(self->tasks, task->id);
            free(task);
            s_result_status(self, client, t->id, CF_STATUS_BUSY);
            self->stats.busy++;
            continue;
        }
        cf_queue_rr_push_back(&self->rr, &client->queue, &task->node);
        self->stats.submitted++;
    }
}

static void s_client_cancel(s_self_t *self, s_client_t *client, const cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        s_task_t *task = cf_idmap_get(client->tasks, msg->ids[i]);
        if (!task)
            continue;           //  done already, or never ours: nothing to say
        if (task->state == S_QUEUED) {
            cf_queue_rr_remove(&self->rr, &client->queue, &task->node);
            s_result_status(self, client, task->client_task_id, CF_STATUS_CANCELLED);
            self->stats.cancelled++;
            s_task_finish(self, task);
        }
        else
            s_client_started(self, client, task->client_task_id, true);
    }
}

// ---------------------------------------------------------------------------
//  Stats

static void s_stats_snapshot(s_self_t *self, cf_broker_stats_t *stats)
{
    *stats = self->stats;
    stats->clients = cf_queue_size(&self->clients);
    stats->workers = cf_queue_size(&self->workers);
    stats->queued = cf_queue_rr_size(&self->rr);
    stats->running = self->running;
}

static void s_send_stats(s_self_t *self, const void *id, size_t len)
{
    cf_broker_stats_t s;
    s_stats_snapshot(self, &s);
    const struct {
        const char *name;
        uint64_t value;
    } items[] = {
        { "clients", s.clients },     { "workers", s.workers },
        { "queued", s.queued },       { "running", s.running },
        { "submitted", s.submitted }, { "completed", s.completed },
        { "failed", s.failed },       { "cancelled", s.cancelled },
        { "retried", s.retried },     { "lost_workers", s.lost_workers },
        { "busy", s.busy },           { "malformed", s.malformed },
        { "dropped", s.dropped },     { "ignored", s.ignored },
        { "timed_out", s.timed_out }, { "deferred", s.deferred },
        { "refused", s.refused },
    };
    cf_proto_enc_begin(self->enc, CF_MSG_STATS);
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++) {
        if (cf_proto_enc_stat(self->enc, items[i].name, items[i].value) != CF_OK) {
            cf_log_error(LOG, "cannot encode stats");
            return;
        }
    }
    cf_err_t rc = cf_proto_enc_send(self->enc, self->clients_sock, id, len);
    if (rc != CF_OK)
        cf_log_debug(LOG, "stats reply not sent: %s", cf_strerror(rc));
}

// ---------------------------------------------------------------------------
//  Incoming messages

static void s_unknown_peer(s_self_t *self, void *sock, const void *id, size_t len,
                           const char *text)
{
    s_send_heartbeat(self, sock, id, len);
    if (text)
        s_send_error(self, sock, id, len, 0, text);
}

static void s_on_client_message(s_self_t *self, const void *id, size_t len, cf_proto_msg_t *msg)
{
    int64_t now = cf_clock_now_ms();
    s_client_t *client = (s_client_t *)s_peer_find(self->client_table, id, len);
    if (client)
        client->peer.last_seen_ms = now;
    cf_msg_type_t type = msg->type;
    switch (type) {
    case CF_MSG_SUBMIT:
        if (!client) {
            client = s_client_new(self, id, len, now);
            if (!client) {
                //  Nowhere to keep it: refuse the whole batch as busy.
                cf_log_error(LOG, "out of memory: new client refused");
                cf_proto_enc_begin(self->enc, CF_MSG_RESULT);
                for (size_t i = 0; i < msg->count; i++)
                    (void)cf_proto_enc_result_status(self->enc, msg->tasks[i].id, CF_STATUS_BUSY);
                self->stats.busy += msg->count;
                (void)cf_proto_enc_send(self->enc, self->clients_sock, id, len);
                return;
            }
            cf_log_info(LOG, "client %s joined", client->peer.label);
        }
        s_client_submit(self, client, msg);
        break;
    case CF_MSG_CANCEL:
        if (client)
            s_client_cancel(self, client, msg);
        else
            s_unknown_peer(self, self->clients_sock, id, len, CF_PROTO_UNKNOWN_CLIENT);
        break;
    case CF_MSG_HEARTBEAT:
        if (!client)
            s_unknown_peer(self, self->clients_sock, id, len, CF_PROTO_UNKNOWN_CLIENT);
        break;
    case CF_MSG_STATS:
        if (!client)
            s_unknown_peer(self, self->clients_sock, id, len, NULL);
        s_send_stats(self, id, len);
        break;
    case CF_MSG_DISCONNECT:
        if (client)
            s_client_lost(self, client, "disconnected");
        break;
    default: {
        char text[64];
        snprintf(text, sizeof text, "unexpected %s from a client", s_command(type));
        s_malformed(self, self->clients_sock, id, len, text);
        break;
    }
    }
}

static void s_on_worker_message(s_self_t *self, const void *id, size_t len, cf_proto_msg_t *msg)
{
    int64_t now = cf_clock_now_ms();
    s_worker_t *worker = (s_worker_t *)s_peer_find(self->worker_table, id, len);
    if (worker)
        worker->peer.last_seen_ms = now;
    cf_msg_type_t type = msg->type;
    switch (type) {
    case CF_MSG_READY:
        if (!worker) {
            worker = s_worker_new(self, id, len, now);
            if (!worker) {
                cf_log_error(LOG, "out of memory: new worker refused");
                return;
            }
            s_worker_ready(self, worker, msg);
            cf_log_info(LOG, "worker %s joined (host %s, pid %d, %" PRIu32 " slots)",
                        worker->peer.label, worker->host[0] ? worker->host : "?", (int)worker->pid,
                        worker->credit);
        }
        else if (msg->pid != worker->pid || !s_same_host(worker, msg->host)) {
            //  Same identity, another process: what the old one held is lost.
            s_worker_remove(self, worker, "restarted", true);
            worker = s_worker_new(self, id, len, now);
            if (!worker) {
                cf_log_error(LOG, "out of memory: new worker refused");
                return;
            }
            s_worker_ready(self, worker, msg);
            cf_log_info(LOG, "worker %s joined again (host %s, pid %d, %" PRIu32 " slots)",
                        worker->peer.label, worker->host[0] ? worker->host : "?", (int)worker->pid,
                        worker->credit);
        }
        else {
            //  The same process announcing again (it thought we were gone):
            //  its tasks are still its own.
            s_worker_ready(self, worker, msg);
            cf_log_debug(LOG, "worker %s announced again (%" PRIu32 " slots free)",
                         worker->peer.label, worker->credit);
        }
        break;
    case CF_MSG_CREDIT:
        if (worker)
            s_worker_add_credit(self, worker, msg->credit);
        else
            s_unknown_peer(self, self->workers_sock, id, len, CF_PROTO_UNKNOWN_WORKER);
        break;
    case CF_MSG_RESULT:
        if (worker)
            s_worker_results(self, worker, msg);
        else {
            self->stats.ignored += msg->count;
            s_unknown_peer(self, self->workers_sock, id, len, CF_PROTO_UNKNOWN_WORKER);
        }
        break;
    case CF_MSG_HEARTBEAT:
        if (!worker)
            s_unknown_peer(self, self->workers_sock, id, len, CF_PROTO_UNKNOWN_WORKER);
        break;
    case CF_MSG_DISCONNECT:
        if (worker)
            s_worker_remove(self, worker, "disconnected", false);
        break;
    default: {
        char text[64];
        snprintf(text, sizeof text, "unexpected %s from a worker", s_command(type));
        s_malformed(self, self->workers_sock, id, len, text);
        break;
    }
    }
}

//  With CURVE, libzmq tags every frame of an authenticated connection with
//  the User-Id cf_auth gave it ("client:<fp>"): a message whose role does
//  not fit the socket is refused before it can touch any state. The role
//  domains already refuse such keys at the handshake; this is the second
//  check docs/security.md promises, for a misconfigured domain or a key
//  added to the wrong list by a reload. The audit line names the key by
//  fingerprint only (the User-Id holds nothing more).
static bool s_may_log_refusal(s_self_t *self)
{
    return cf_log_limit_allow(&self->refused_log, LOG, "refused messages");
}

//  Whether the sender's key is still on the allow-lists. Until a reload
//  every connection passed its handshake against the lists as they are; after
//  one, each peer is looked up once per reload. A revoked key's peer is
//  dropped here; its later messages find no peer and are refused again.
static bool s_key_current(s_self_t *self, const void *id, size_t len, const char *user,
                          bool clients)
{
    uint64_t generation = cf_auth_generation(self->auth);
    if (generation == 0)
        return true;
    s_peer_t *peer = s_peer_find(clients ? self->client_table : self->worker_table, id, len);
    if (peer && peer->auth_generation == generation)
        return true;
    if (cf_auth_user_allowed(self->auth, user)) {
        if (peer)
            peer->auth_generation = generation;
        return true;
    }
    if (peer && clients)
        s_client_lost(self, (s_client_t *)peer, "its key was revoked");
    else if (peer)
        s_worker_remove(self, (s_worker_t *)peer, "its key was revoked", true);
    return false;
}

static bool s_role_allowed(s_self_t *self, void *sock, const void *id, size_t len,
                           cf_proto_msg_t *msg, bool clients)
{
    cf_role_t want = clients ? CF_ROLE_CLIENT : CF_ROLE_WORKER;
    const char *user = cf_proto_msg_user_id(msg);
    cf_role_t role = cf_auth_role_of_user(user);
    if (role == want && (!self->auth || s_key_current(self, id, len, user, clients)))
        return true;
    self->stats.refused++;
    char label[24];
    s_make_label(id, len, label, sizeof label);
    if (role == want) {
        if (s_may_log_refusal(self))
            cf_log_warn(LOG, "refused %s from %s (routing id %s): its key was removed from the "
                        "allow-list", s_command(msg->type), user, label);
        s_send_error(self, sock, id, len, 0, CF_PROTO_KEY_REVOKED);
        return false;
    }
    if (s_may_log_refusal(self))
        cf_log_warn(LOG, "refused %s from %s (routing id %s) on the %s endpoint: a %s key "
                    "may not use it", s_command(msg->type), user ? user : "an unauthenticated peer",
                    label, clients ? "client" : "worker", cf_auth_role_name(role));
    s_send_error(self, sock, id, len, 0, CF_PROTO_NOT_ALLOWED);
    return false;
}

//  Reads what the socket has, up to the budget.
static void s_read_socket(s_self_t *self, void *sock)
{
    bool clients = sock == self->clients_sock;
    for (int n = 0; n < CF_BROKER_READ_BUDGET && !self->terminated; n++) {
        zmq_msg_t rid;
        zmq_msg_init(&rid);
        cf_proto_msg_t *msg = NULL;
        cf_err_t rc = cf_proto_recv(sock, true, &rid, &msg);
        const void *id = zmq_msg_data(&rid);
        size_t len = zmq_msg_size(&rid);
        if (len > CF_BROKER_MAX_IDENTITY)
            len = 0;            //  cannot happen with ZeroMQ; never trust it
        if (rc == CF_OK) {
            if (len == 0)
                s_malformed(self, sock, NULL, 0, "message without a routing id");
            else if (self->require_roles && !s_role_allowed(self, sock, id, len, msg, clients))
                ;               //  refused, answered and logged
            else if (clients)
                s_on_client_message(self, id, len, msg);
            else
                s_on_worker_message(self, id, len, msg);
            cf_proto_msg_destroy(&msg);
            zmq_msg_close(&rid);
            continue;
        }
        cf_proto_msg_destroy(&msg);
        if (rc == CF_EPROTO) {
            //  Any message is liveness, even a bad one.
            s_peer_t *peer = len ? s_peer_find(clients ? self->client_table : self->worker_table,
                                               id, len)
                                 : NULL;
            if (peer)
                peer->last_seen_ms = cf_clock_now_ms();
            s_malformed(self, sock, len ? id : NULL, len, "malformed message");
            zmq_msg_close(&rid);
            continue;
        }
        zmq_msg_close(&rid);
        if (rc != CF_ETIMEDOUT)
            cf_log_debug(LOG, "receive failed: %s (%s)", cf_strerror(rc), zmq_strerror(errno));
        break;                  //  nothing more to read now (or an error: poll again)
    }
}

// ---------------------------------------------------------------------------
//  Timers

static void s_task_timed_out(s_self_t *self, s_task_t *task)
{
    char message[512];
    snprintf(message, sizeof message,
             "task %" PRIu64 " (%s) exceeded its timeout of %" PRIu32 " ms on worker %s",
             task->client_task_id, s_task_function(task), task->timeout_ms,
             task->worker->peer.label);
    s_result_runtime_error(self, task, "TimeoutError", message);
    self->stats.failed++;
    self->stats.timed_out++;
    //  It stays on the worker (the slot is busy until the worker answers)
    //  but nobody waits for it any more.
    cf_idmap_remove(task->client->tasks, task->client_task_id);
    task->client->running--;
    task->client = NULL;
    task->state = S_EXPIRED;
    self->running--;
}

static void s_run_timers(s_self_t *self)
{
    int64_t now = cf_clock_now_ms();
    while (self->heap_size && self->heap[0]->deadline_ms <= now) {
        s_task_t *task = self->heap[0];
        s_heap_remove(self, task);
        s_task_timed_out(self, task);
    }
    if (self->blocked_workers) {
        for (cf_queue_node_t *node = cf_queue_front(&self->workers); node;
             node = cf_queue_next(&self->workers, node)) {
            s_worker_t *worker = cf_queue_entry(node, s_worker_t, peer.all_node);
            if (worker->blocked_until_ms && worker->blocked_until_ms <= now) {
                worker->blocked_until_ms = 0;
                self->blocked_workers--;
                s_worker_set_available(self, worker);
            }
        }
    }
    if (now < self->next_heartbeat_ms)
        return;
    self->next_heartbeat_ms = now + self->ivl_ms;
    int64_t expiry = (int64_t)self->liveness * self->ivl_ms;
    cf_queue_node_t *node, *next;
    for (node = cf_queue_front(&self->workers); node; node = next) {
        next = cf_queue_next(&self->workers, node);
        s_worker_t *worker = cf_queue_entry(node, s_worker_t, peer.all_node);
        if (now - worker->peer.last_seen_ms > expiry) {
            char reason[64];
            snprintf(reason, sizeof reason, "silent for %" PRId64 " ms",
                     now - worker->peer.last_seen_ms);
            s_worker_remove(self, worker, reason, true);
            continue;
        }
        cf_err_t rc = s_send_heartbeat(self, self->workers_sock, worker->peer.id, worker->peer.id_len);
        if (rc == CF_ENOTFOUND)
            s_worker_remove(self, worker, "gone", true);
    }
    for (node = cf_queue_front(&self->clients); node; node = next) {
        next = cf_queue_next(&self->clients, node);
        s_client_t *client = cf_queue_entry(node, s_client_t, peer.all_node);
        if (now - client->peer.last_seen_ms > expiry) {
            s_client_lost(self, client, "silent");
            continue;
        }
        if (client->unreachable_since_ms && now - client->unreachable_since_ms > expiry) {
            s_client_lost(self, client, "unreachable");
            continue;
        }
        //  A heartbeat refused here changes nothing: liveness is judged on
        //  what the client sends, delivery on the outbox.
        (void)s_send_heartbeat(self, self->clients_sock, client->peer.id, client->peer.id_len);
    }
}

static int s_poll_timeout(s_self_t *self)
{
    int64_t deadline = self->next_heartbeat_ms;
    if (self->heap_size && self->heap[0]->deadline_ms < deadline)
        deadline = self->heap[0]->deadline_ms;
    int timeout = cf_clock_ms_until(deadline);
    if ((!cf_queue_empty(&self->flush) || self->blocked_workers) && timeout > CF_BROKER_RETRY_MS)
        timeout = CF_BROKER_RETRY_MS;
    return timeout;
}

// ---------------------------------------------------------------------------
//  The pipe from cf_broker_* calls

static void s_handle_pipe(s_self_t *self, cf_actor_t *actor)
{
    cf_actor_clear_wake(actor);
    cf_actor_msg_t *msg;
    while ((msg = cf_actor_recv(actor))) {
        size_t len = 0;
        const void *arg = cf_actor_msg_arg(msg, &len);
        if (cf_actor_msg_is(msg, "$TERM"))
            self->terminated = true;
        else if (cf_actor_msg_is(msg, "STATS")) {
            cf_broker_stats_t stats;
            s_stats_snapshot(self, &stats);
            cf_actor_reply(actor, &msg, &stats, sizeof stats);
        }
        else if (cf_actor_msg_is(msg, "LOST")) {
            s_worker_t *worker = (s_worker_t *)s_peer_find(self->worker_table, arg, len);
            int32_t rc = worker ? CF_OK : CF_ENOTFOUND;
            if (worker)
                s_worker_remove(self, worker, "reported gone", true);
            cf_actor_reply(actor, &msg, &rc, sizeof rc);
        }
        else {
            //  Only our own code writes the pipe.
            assert(!"unknown verb on the broker pipe");
            cf_log_error(LOG, "unknown verb on the broker pipe");
        }
        cf_actor_reply(actor, &msg, NULL, 0);       //  NULL once answered
    }
}

// ---------------------------------------------------------------------------
//  The state: built and freed by the actor, so its sockets never change
//  thread.

//  Frees the state, whole or half built. Peers are told goodbye first.
static void s_self_destroy(s_self_t *self)
{
    if (!self)
        return;
    //  Say goodbye so peers need not wait for heartbeats to notice.
    cf_queue_node_t *node;
    for (node = cf_queue_front(&self->workers); node; node = cf_queue_next(&self->workers, node)) {
        s_peer_t *peer = cf_queue_entry(node, s_peer_t, all_node);
        cf_proto_enc_begin(self->enc, CF_MSG_DISCONNECT);
        cf_proto_enc_text(self->enc, "broker stopping", 0);
        (void)cf_proto_enc_send(self->enc, self->workers_sock, peer->id, peer->id_len);
    }
    for (node = cf_queue_front(&self->clients); node; node = cf_queue_next(&self->clients, node)) {
        s_peer_t *peer = cf_queue_entry(node, s_peer_t, all_node);
        cf_proto_enc_begin(self->enc, CF_MSG_DISCONNECT);
        cf_proto_enc_text(self->enc, "broker stopping", 0);
        (void)cf_proto_enc_send(self->enc, self->clients_sock, peer->id, peer->id_len);
    }
    while ((node = cf_queue_front(&self->clients))) {
        s_client_t *client = cf_queue_entry(node, s_client_t, peer.all_node);
        s_client_lost(self, client, "broker stopping");
    }
    //  Every task left is on a worker and orphaned now.
    while ((node = cf_queue_front(&self->workers))) {
        s_worker_t *worker = cf_queue_entry(node, s_worker_t, peer.all_node);
        s_worker_remove(self, worker, "broker stopping", false);
    }
    assert(!self->tasks || cf_idmap_size(self->tasks) == 0);
    cf_idmap_destroy(&self->tasks);
    cf_idmap_destroy(&self->client_table);
    cf_idmap_destroy(&self->worker_table);
    free(self->heap);
    cf_proto_enc_destroy(&self->enc);
    int linger = CF_BROKER_LINGER_MS;
    void *socks[] = { self->clients_sock, self->workers_sock };
    for (size_t i = 0; i < 2; i++) {
        if (socks[i]) {
            zmq_setsockopt(socks[i], ZMQ_LINGER, &linger, sizeof linger);
            zmq_close(socks[i]);
        }
    }
    free(self);
}

static cf_err_t s_bind(void *sock, const char *endpoint, char *resolved, size_t size)
{
    if (!endpoint || !*endpoint)
        return cf_error_set(CF_EINVAL, "no endpoint to bind");
    if (zmq_bind(sock, endpoint) != 0)
        return cf_error_set(CF_ESYS, "cannot bind %s: %s", endpoint, zmq_strerror(errno));
    size_t len = size;
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, resolved, &len) != 0 || len == 0) {
        snprintf(resolved, size, "%s", endpoint);
        return CF_OK;
    }
    resolved[size - 1] = '\0';
    return CF_OK;
}

static void *s_router_new(void *ctx, const cf_broker_config_t *config, bool is_clients)
{
    void *sock = zmq_socket(ctx, ZMQ_ROUTER);
    if (!sock) {
        cf_error_set(CF_ESYS, "cannot create a socket: %s", zmq_strerror(errno));
        return NULL;
    }
    cf_err_t rc = cf_proto_socket_setup(sock, true);
    //  A peer that reconnects with the same identity (a client or worker
    //  with a fixed ZMQ_ROUTING_ID after a network blip) takes its old place
    //  instead of being refused while the old connection lingers.
    int handover = 1;
    if (rc == CF_OK && zmq_setsockopt(sock, ZMQ_ROUTER_HANDOVER, &handover, sizeof handover) != 0)
        rc = CF_ESYS;
    if (rc != CF_OK) {
        cf_error_set(rc, "cannot set up the %s socket: %s", is_clients ? "client" : "worker",
                     zmq_strerror(errno));
        zmq_close(sock);
        return NULL;
    }
    if (config->socket_setup) {
        rc = config->socket_setup(sock, is_clients, config->socket_setup_arg);
        if (rc != CF_OK) {
            if (cf_last_err() != rc)
                cf_error_set(rc, "cannot set up the %s socket: %s",
                             is_clients ? "client" : "worker", cf_strerror(rc));
            zmq_close(sock);
            return NULL;
        }
    }
    return sock;
}

//  The state for config with both sockets bound, or NULL with
//  cf_last_error().
static s_self_t *s_self_new(void *ctx, const cf_broker_config_t *config)
{
    s_self_t *self = calloc(1, sizeof *self);
    if (!self) {
        cf_error_set(CF_ENOMEM, "out of memory");
        return NULL;
    }
    cf_queue_init(&self->clients);
    cf_queue_init(&self->workers);
    cf_queue_rr_init(&self->rr);
    cf_queue_init(&self->available);
    cf_queue_init(&self->flush);
    self->ivl_ms = config->heartbeat_ivl_ms ? config->heartbeat_ivl_ms : CF_HEARTBEAT_IVL_MS;
    self->liveness = config->heartbeat_liveness ? config->heartbeat_liveness : CF_HEARTBEAT_LIVENESS;
    self->max_queued = config->max_queued ? config->max_queued : CF_BROKER_MAX_QUEUED;
    self->max_queued_per_client =
        config->max_queued_per_client ? config->max_queued_per_client : self->max_queued;
    self->require_roles = config->require_roles;
    self->auth = config->require_roles ? config->auth : NULL;
    self->refused_log.per_sec = CF_AUTH_LOG_PER_SEC;
    self->boot = cf_random_u64();
    self->next_task_id = cf_random_u64();
    self->enc = cf_proto_enc_new();
    self->tasks = cf_idmap_new(1024);
    self->client_table = cf_idmap_new(16);
    self->worker_table = cf_idmap_new(16);
    if (!self->enc || !self->tasks || !self->client_table || !self->worker_table) {
        cf_error_set(CF_ENOMEM, "out of memory");
        goto failed;
    }
    self->clients_sock = s_router_new(ctx, config, true);
    if (!self->clients_sock)
        goto failed;
    self->workers_sock = s_router_new(ctx, config, false);
    if (!self->workers_sock)
        goto failed;
    if (s_bind(self->clients_sock, config->client_endpoint, self->client_endpoint,
               sizeof self->client_endpoint) != CF_OK
        || s_bind(self->workers_sock, config->worker_endpoint, self->worker_endpoint,
                  sizeof self->worker_endpoint) != CF_OK)
        goto failed;
    return self;
failed:
    s_self_destroy(self);
    return NULL;
}

// ---------------------------------------------------------------------------
//  The actor

//  What cf_broker_new hands the actor; valid until the actor is ready.
typedef struct {
    const cf_broker_config_t *config;
    cf_broker_t *broker;
} s_start_t;

static void s_loop(s_self_t *self, cf_actor_t *actor)
{
    zmq_pollitem_t items[] = {
        { NULL, cf_actor_fd(actor), ZMQ_POLLIN, 0 },
        { self->clients_sock, 0, ZMQ_POLLIN, 0 },
        { self->workers_sock, 0, ZMQ_POLLIN, 0 },
    };
    self->next_heartbeat_ms = cf_clock_now_ms() + self->ivl_ms;
    while (!self->terminated) {
        int rc = zmq_poll(items, 3, s_poll_timeout(self));
        if (rc < 0 && errno == EINTR)
            continue;           //  a signal; revents are stale
        if (rc < 0) {
            if (errno != ETERM)
                cf_log_error(LOG, "poll failed: %s", zmq_strerror(errno));
            break;              //  context terminated
        }
        if (items[0].revents & ZMQ_POLLIN)
            s_handle_pipe(self, actor);
        if (self->terminated)
            break;
        if (items[1].revents & ZMQ_POLLIN)
            s_read_socket(self, self->clients_sock);
        if (items[2].revents & ZMQ_POLLIN)
            s_read_socket(self, self->workers_sock);
        s_run_timers(self);
        s_dispatch(self);
        s_flush_all(self);
    }
}

static void s_actor(cf_actor_t *actor, void *args)
{
    s_start_t *start = args;
    cf_broker_t *broker = start->broker;
    s_self_t *self = s_self_new(broker->ctx, start->config);
    if (!self) {
        cf_actor_ready(actor, cf_last_err(), cf_last_error());
        return;
    }
    //  Written before ready: cf_broker_new's caller reads them after.
    memcpy(broker->client_endpoint, self->client_endpoint, sizeof broker->client_endpoint);
    memcpy(broker->worker_endpoint, self->worker_endpoint, sizeof broker->worker_endpoint);
    cf_log_info(LOG, "serving clients at %s, workers at %s (heartbeat %d ms x %d)",
                self->client_endpoint, self->worker_endpoint, self->ivl_ms, self->liveness);
    cf_actor_ready(actor, CF_OK, NULL);
    s_loop(self, actor);
    s_self_destroy(self);
}

// ---------------------------------------------------------------------------
//  The handle

static bool s_config_valid(const cf_broker_config_t *config)
{
    if (!config || !config->client_endpoint || !config->worker_endpoint)
        cf_error_set(CF_EINVAL, "a broker needs a client and a worker endpoint");
    else if (config->heartbeat_ivl_ms < 0 || config->heartbeat_liveness < 0)
        cf_error_set(CF_EINVAL, "heartbeat interval and liveness must be >= 0, got %d and %d",
                     config->heartbeat_ivl_ms, config->heartbeat_liveness);
    else
        return true;
    return false;
}

cf_broker_t *cf_broker_new(const cf_broker_config_t *config)
{
    if (!s_config_valid(config))
        return NULL;
    cf_broker_t *broker = calloc(1, sizeof *broker);
    if (!broker) {
        cf_error_set(CF_ENOMEM, "out of memory");
        return NULL;
    }
    broker->ctx = config->zmq_context;
    if (!broker->ctx) {
        broker->ctx = zmq_ctx_new();
        if (!broker->ctx) {
            cf_error_set(CF_ESYS, "cannot create a ZeroMQ context: %s", zmq_strerror(errno));
            goto failed;
        }
        broker->own_ctx = true;
    }
    //  Returns once the actor has bound both endpoints and serves, or with
    //  the error that stopped it ("cannot bind tcp://...").
    broker->actor = cf_actor_new("cf-broker", s_actor, &(s_start_t){ config, broker });
    if (!broker->actor)
        goto failed;
    return broker;
failed:
    cf_broker_destroy(&broker);
    return NULL;
}

void cf_broker_destroy(cf_broker_t **broker_p)
{
    if (!broker_p || !*broker_p)
        return;
    cf_broker_t *broker = *broker_p;
    *broker_p = NULL;
    //  $TERM: the actor says DISCONNECT to its peers, frees its state and
    //  closes its sockets; then the join.
    cf_actor_destroy(&broker->actor);
    if (broker->own_ctx)
        zmq_ctx_term(broker->ctx);
    free(broker);
}

const char *cf_broker_client_endpoint(cf_broker_t *broker)
{
    assert(broker);
    return broker->client_endpoint;
}

const char *cf_broker_worker_endpoint(cf_broker_t *broker)
{
    assert(broker);
    return broker->worker_endpoint;
}

cf_err_t cf_broker_worker_lost(cf_broker_t *broker, const void *identity, size_t len)
{
    if (!broker || !identity || len == 0 || len > CF_BROKER_MAX_IDENTITY)
        return CF_EINVAL;
    //  An actor must not wait for another: from one, the report goes one way.
    if (cf_actor_current())
        return cf_actor_send(broker->actor, "LOST", identity, len);
    int32_t reply = CF_ESYS;
    cf_err_t rc = cf_actor_call(broker->actor, "LOST", identity, len, &reply, sizeof reply);
    return rc != CF_OK ? rc : (cf_err_t)reply;
}

cf_err_t cf_broker_stats(cf_broker_t *broker, cf_broker_stats_t *stats)
{
    if (!broker || !stats)
        return CF_EINVAL;
    return cf_actor_call(broker->actor, "STATS", NULL, 0, stats, sizeof *stats);
}
