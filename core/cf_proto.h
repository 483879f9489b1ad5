//  The wire protocol, "cf/1" (docs/protocol.md is its specification and
//  changes in the same commit as this module). The only code that touches
//  frames.
//
//  A message is three ZeroMQ frames after any routing id:
//      [ "cf/1" ] [ command, ASCII ] [ body, one msgpack value ]
//  Decoding checks the version frame first, holds every length and count to
//  a named limit before allocating, and has one exit for malformed input.
//
//  Ids: a client numbers its tasks (starting at random, so a restarted client
//  cannot match its predecessor's replies); the broker gives each task its own
//  id for the worker side and maps results back.

#ifndef CF_PROTO_H
#define CF_PROTO_H

#include "cfutures.h"

#include <zmq.h>

#define CF_PROTO_VERSION       "cf/1"
#define CF_PROTO_MAX_FRAME     (64u * 1024 * 1024)    //  body bytes
#define CF_PROTO_MAX_FRAMES    8                      //  frames in a message, routing id included
#define CF_PROTO_MAX_BATCH     65536                  //  tasks, results or ids in one body
#define CF_PROTO_MAX_NAME      255                    //  function name bytes
#define CF_PROTO_MAX_TEXT      4096                   //  error type/message/host bytes
#define CF_PROTO_MAX_STATS     64                     //  stats map pairs
#define CF_PROTO_MAX_FUNCTIONS 4096                   //  names in a worker's function list
#define CF_PROTO_MAX_PARTIAL   (64u * 1024)           //  bytes of a PROGRESS item's partial value

//  Heartbeat defaults every peer starts from: a peer sends something at
//  least every interval and counts another as lost after liveness silent
//  intervals (the broker's HEARTBEAT announces the interval it uses).
#define CF_HEARTBEAT_IVL_MS   1000
#define CF_HEARTBEAT_LIVENESS 3

//  ERROR texts (ref 0) the broker sends and peers act on: the sender is not
//  known (a client resubmits, a worker announces itself again), its key has
//  another role, or its key was taken off the allow-lists since it connected.
#define CF_PROTO_UNKNOWN_CLIENT "unknown client"
#define CF_PROTO_UNKNOWN_WORKER "unknown worker"
#define CF_PROTO_NOT_ALLOWED    "not allowed: this key's role may not use this endpoint"
#define CF_PROTO_KEY_REVOKED    "not allowed: this key was revoked"
//  ERROR text of a message that could not be read (cf_proto_decode's).
#define CF_PROTO_MALFORMED      "malformed message"

typedef enum {
    CF_MSG_SUBMIT = 1,    //  client -> broker: tasks
    CF_MSG_CANCEL,        //  client -> broker, broker -> worker: ids to cancel if not begun
    CF_MSG_STARTED,       //  worker -> broker -> client: ids whose function began
    CF_MSG_RESULT,        //  broker -> client, worker -> broker: outcomes
    CF_MSG_TASK,          //  broker -> worker: tasks to run
    CF_MSG_READY,         //  worker -> broker: hello with capacity
    CF_MSG_CREDIT,        //  worker -> broker: more capacity
    CF_MSG_HEARTBEAT,     //  both ways
    CF_MSG_DISCONNECT,    //  both ways: going away
    CF_MSG_STATS,         //  client -> broker request, broker -> client reply
    CF_MSG_ERROR,         //  broker -> peer: a message was refused
    CF_MSG_FUNCTIONS,     //  worker -> broker: the functions it serves now
    CF_MSG_PROGRESS,      //  worker -> broker -> client: how far running tasks are
    CF_MSG_STOP,          //  client -> broker -> worker: stop these tasks, even running
    CF_MSG_WANT,          //  broker -> SHARED worker: it could use this many slots
    CF_MSG_REFUND,        //  broker -> SHARED worker: credit it cannot use, given back
    CF_MSG_TYPE_COUNT_
} cf_msg_type_t;

//  The command frame's text ("SUBMIT", ...), or NULL.
const char *cf_proto_command_name(cf_msg_type_t type);

typedef enum {
    CF_STATUS_OK = 0,           //  value holds the msgpack result
    CF_STATUS_ERROR = 1,        //  error holds type, message, ...
    CF_STATUS_CANCELLED = 2,    //  removed before it started
    CF_STATUS_BUSY = 3          //  broker queue full: resend later
} cf_status_t;

//  The built-in task that runs a function over several inputs (map's
//  chunksize): [function, [args, ...]]. The broker routes it by function.
#define CF_PROTO_CHUNK_FUNCTION "cf.chunk"

//  Task flags.
//  Task flags. PROGRESS (SUBMIT): the client reads PROGRESS; a broker
//  forwards a task's PROGRESS only with it, so a client that predates the
//  command never gets one.
#define CF_TASK_RETRY_ON_ERROR 0x1u
#define CF_TASK_PROGRESS       0x2u
//  LONE (TASK): the task is the only one its client has at the broker. The
//  worker runs it before the tasks it queues for busier clients and sends
//  its result at once (docs/protocol.md, "TASK"). Only to workers that say
//  CF_PROTO_FEATURE_LONE; the only flag a TASK carries.
#define CF_TASK_LONE           0x4u

//  READY features. BEGUN: the worker sends STARTED when a task's function
//  begins and answers the broker's CANCEL (docs/protocol.md, "CANCEL,
//  STARTED").
#define CF_PROTO_FEATURE_BEGUN  0x1u
//  STOP: the worker takes STOP [[id, grace_ms]] (docs/protocol.md, "STOP"):
//  cancels a task it still queues, sets a running one's stop flag, and in
//  a worker process ends the process when the task overruns the grace.
//  The broker forwards STOP only to workers that say so. (0x2 is left for
//  the progress feature of issue 10, section 3.)
#define CF_PROTO_FEATURE_STOP   0x4u
//  SHARED: the worker shares its slots among several brokers and grants
//  them explicitly (docs/protocol.md, "Shared workers"): a RESULT returns
//  no slot, the broker says WANT when it has work for the worker and no
//  credit, and REFUND when it holds credit no queued task can use.
#define CF_PROTO_FEATURE_SHARED 0x8u
//  LONE: the worker takes TASK items of 5 fields, the fifth their flags
//  (CF_TASK_LONE), and serves lone tasks first.
#define CF_PROTO_FEATURE_LONE   0x10u

//  Strings and byte fields in decoded messages point into the message's body
//  and live as long as the message. Strings are NOT NUL-terminated: use the
//  _len fields.
typedef struct {
    const char *ptr;
    size_t len;
} cf_proto_str_t;

//  Copies src into dst (size bytes, > 0), cut to size - 1 bytes, and
//  NUL-terminates it. Returns the bytes copied.
size_t cf_proto_str_copy(cf_proto_str_t src, char *dst, size_t size);
//  A malloc'd NUL-terminated copy (yours to free), or NULL when out of memory.
char *cf_proto_str_dup(cf_proto_str_t src);
//  True when s holds exactly text.
bool cf_proto_str_eq(cf_proto_str_t s, const char *text);

typedef struct {
    uint64_t id;
    cf_proto_str_t function;
    const uint8_t *args;    //  one msgpack array
    size_t args_len;
    int32_t retries;        //  retries after a lost worker (<0: none)
    uint32_t timeout_ms;    //  0: none
    uint32_t flags;         //  CF_TASK_*
    int32_t priority;       //  SUBMIT: higher is dispatched first within its client
    uint32_t wait_ms;       //  SUBMIT: how long it may wait for a worker serving
                            //  its function; 0: the broker's default
    //  SUBMIT only: NULL when the task is good, else why it cannot be taken
    //  (static text for the ProtocolError that answers it). Only id is then
    //  sure to be set; fields before the bad one keep what they read.
    const char *refused;
} cf_proto_task_t;

typedef struct {
    cf_proto_str_t type, message, function, host;
    int32_t pid;
} cf_proto_error_t;

//  A PROGRESS item: the latest a running task reported. seq grows with
//  each report of the task, so a receiver keeps only a newer one.
typedef struct {
    uint64_t id;
    uint32_t seq;
    uint64_t done, total;      //  total 0: not known
    const uint8_t *partial;    //  one msgpack value, or NULL (none sent)
    size_t partial_len;
} cf_proto_progress_t;

//  A STOP item: stop the task, running or not; a running one that has not
//  ended grace_ms after being asked may be killed (processes only).
typedef struct {
    uint64_t id;
    uint32_t grace_ms;
} cf_proto_stop_t;

typedef struct {
    uint64_t id;
    cf_status_t status;
    const uint8_t *value;    //  CF_STATUS_OK: one msgpack value
    size_t value_len;
    cf_proto_error_t error;    //  CF_STATUS_ERROR
} cf_proto_result_t;

typedef struct {
    cf_proto_str_t name;
    uint64_t value;    //  0 for a list
    //  A list (worker_list, client_list): the array's msgpack bytes, for the
    //  caller to read; NULL for a counter.
    const uint8_t *list;
    size_t list_len;
} cf_proto_stat_t;

//  A list of function names as it came (READY's 6th field, FUNCTIONS):
//  every name already checked like a task's function name (1..255 bytes,
//  UTF-8, no NUL); read them with cf_proto_names_next.
typedef struct {
    const uint8_t *data;    //  the names' msgpack strs, one after another
    size_t len;
    uint32_t count;
    bool given;    //  READY: false when the worker sent no list (it serves every function)
} cf_proto_names_t;

//  The name at *pos (start at 0) of names, moving *pos past it; false
//  after the last one.
bool cf_proto_names_next(const cf_proto_names_t *names, size_t *pos, cf_proto_str_t *name);

//  STATS request flags: what detail the reply carries besides the counters.
#define CF_PROTO_STATS_WORKERS 0x1u    //  worker_list
#define CF_PROTO_STATS_CLIENTS 0x2u    //  client_list

typedef struct {
    cf_msg_type_t type;
    //  Which of these is set depends on type.
    cf_proto_task_t *tasks;           //  SUBMIT, TASK
    cf_proto_result_t *results;       //  RESULT
    uint64_t *ids;                    //  CANCEL, STARTED
    cf_proto_progress_t *progress;    //  PROGRESS
    cf_proto_stop_t *stops;           //  STOP
    size_t count;                     //  items in tasks / results / ids / stats
    uint32_t credit;                  //  READY, CREDIT, WANT, REFUND: slots
    uint32_t threads;                 //  READY: execution slots; 0 when not said (3 fields)
    uint32_t features;                //  READY: CF_PROTO_FEATURE_* bits; 0 when not said
    uint32_t stats_flags;             //  STATS request: CF_PROTO_STATS_* ([] is 0)
    uint64_t boot;                    //  HEARTBEAT from the broker: its instance id (0 from peers)
    uint32_t ivl_ms;                  //  HEARTBEAT from the broker: its heartbeat interval
    cf_proto_str_t host;              //  READY
    cf_proto_names_t functions;       //  READY (given or not), FUNCTIONS (always given)
    int32_t pid;                      //  READY
    cf_proto_stat_t *stats;           //  STATS reply
    cf_proto_str_t text;              //  ERROR, DISCONNECT: reason
    uint64_t ref;                     //  ERROR: id it concerns, 0 if none
    //  Private: the body frame the pointers above point into. The items
    //  arrays live in the same allocation as the message.
    zmq_msg_t body_;
    bool has_body_;
} cf_proto_msg_t;

//  Decodes the frames of one message (routing id already removed):
//  frames[0] version, frames[1] command, frames[2] body. CF_EPROTO for any
//  malformed input (then cf_last_error() on this thread says what, fit for
//  the ERROR answering it), CF_ENOMEM; *msg is NULL on error. Every str
//  read is well-formed UTF-8, and names (function, error type, host, stat
//  names) hold no NUL. A SUBMIT task that is wrong but has a readable id
//  does not make the message malformed: it comes with its refused text
//  set. The body frame may be moved into the message (frames[2] is then
//  left empty): the caller closes all frames in every case. A decoded
//  message must not be copied by value (small bodies live inside its
//  zmq_msg_t). STATS: count 0 and stats NULL
//  is a request (body []), anything else a reply (body a map).
cf_err_t cf_proto_decode(zmq_msg_t *frames, size_t count, cf_proto_msg_t **msg);
void cf_proto_msg_destroy(cf_proto_msg_t **msg);
//  The "User-Id" libzmq gave the connection msg came from (with CURVE and a
//  ZAP handler: "client:<fingerprint>" or "worker:<fingerprint>"), borrowed
//  for the life of msg; NULL when it has none (plaintext). Read from the
//  body frame: the routing id frame a ROUTER makes up carries no metadata.
const char *cf_proto_msg_user_id(const cf_proto_msg_t *msg);
//  Keeps the bytes at *ptr (an item's args or value, pointing into msg)
//  alive past msg: *hold (initialised here; the caller closes it with
//  zmq_msg_close, from any thread) gets a reference to msg's body, and
//  *ptr is moved to the same bytes in it. libzmq shares a large body (a
//  reference count) and copies a small one, so this is for large items;
//  the whole body stays in memory as long as hold. CF_ENOMEM or CF_EINVAL
//  (msg has no body).
cf_err_t cf_proto_msg_hold(cf_proto_msg_t *msg, zmq_msg_t *hold, const uint8_t **ptr);
//  The size of msg's body in bytes (0: none), what cf_proto_msg_hold keeps.
size_t cf_proto_msg_body_size(const cf_proto_msg_t *msg);

//  Receives one whole message from socket without blocking past what zmq
//  already has: when is_router, *routing_id is initialized on every return
//  (whatever it held is not released: pass it empty) and gets the first
//  frame; the caller closes it with zmq_msg_close in every case. A message with more than
//  CF_PROTO_MAX_FRAMES frames is read to its end and dropped (CF_EPROTO),
//  so an endless multipart stream never grows memory. Returns CF_OK,
//  CF_EPROTO (malformed: counted by the caller; *routing_id still set when
//  known), CF_ETIMEDOUT (EAGAIN or EINTR: nothing read) or CF_ESYS (errno
//  kept: ETERM when the context is terminating).
cf_err_t cf_proto_recv(void *socket, bool is_router, zmq_msg_t *routing_id, cf_proto_msg_t **msg);

// ---------------------------------------------------------------------------
//  Encoding: an encoder builds one message body incrementally, then sends.
//  Sending uses ZMQ_DONTWAIT: CF_EBUSY means the peer is at its high-water
//  mark (EAGAIN), CF_ENOTFOUND that a ROUTER peer is gone (EHOSTUNREACH);
//  the caller decides what happens to the content. A successful send never
//  means delivered.
//
//  An encoder is reusable and not thread-safe (one per actor). Batch bodies
//  start with an array32 header patched at send; items are packed into one
//  buffer that keeps its capacity, so encoding allocates nothing per item.
//  Item calls return CF_EINVAL for a bad argument or an item of another
//  message type, CF_ETOOBIG when the body would pass CF_PROTO_MAX_FRAME or
//  the count its limit (the item is not added: send what is there and
//  begin again), CF_ENOMEM. A failed item leaves the body as it was.
//  Every str written is well-formed UTF-8: in texts (error fields, host,
//  DISCONNECT and ERROR texts) each ill-formed byte sequence is replaced
//  with U+FFFD, and texts over their limit are cut at a character boundary,
//  never refused. Names that must arrive as they are (a task's function, a
//  stat name) are CF_EINVAL when not UTF-8 or holding NUL.

typedef struct cf_proto_enc cf_proto_enc_t;

cf_proto_enc_t *cf_proto_enc_new(void);
void cf_proto_enc_destroy(cf_proto_enc_t **enc);
//  Starts a message of type; previous content is discarded. A STATS begun
//  and sent without items is the request (body []).
void cf_proto_enc_begin(cf_proto_enc_t *enc, cf_msg_type_t type);
//  Items of SUBMIT / TASK (TASK ignores retries; its flags are written, as
//  a fifth field, only when not 0: a worker without CF_PROTO_FEATURE_LONE
//  refuses that field, so its broker passes 0).
cf_err_t cf_proto_enc_task(cf_proto_enc_t *enc, uint64_t id, const char *function,
                           size_t function_len, const void *args, size_t args_len, int32_t retries,
                           uint32_t timeout_ms, uint32_t flags);
//  A SUBMIT item with the routing fields: written as cf/1's 6 fields when
//  priority and wait_ms are both 0 (a broker older than routing takes it),
//  else as 8.
cf_err_t cf_proto_enc_submit(cf_proto_enc_t *enc, uint64_t id, const char *function,
                             size_t function_len, const void *args, size_t args_len,
                             int32_t retries, uint32_t timeout_ms, uint32_t flags, int32_t priority,
                             uint32_t wait_ms);
//  Items of RESULT.
cf_err_t cf_proto_enc_result_ok(cf_proto_enc_t *enc, uint64_t id, const void *value,
                                size_t value_len);
cf_err_t cf_proto_enc_result_error(cf_proto_enc_t *enc, uint64_t id, const char *type,
                                   const char *message, const char *function, const char *host,
                                   int32_t pid);
cf_err_t cf_proto_enc_result_status(cf_proto_enc_t *enc, uint64_t id, cf_status_t status);
//  Items of CANCEL / STARTED.
cf_err_t cf_proto_enc_id(cf_proto_enc_t *enc, uint64_t id);
//  Items of PROGRESS: partial NULL sends none (nil); else one msgpack value
//  of at most CF_PROTO_MAX_PARTIAL bytes (CF_ETOOBIG past it).
cf_err_t cf_proto_enc_progress(cf_proto_enc_t *enc, uint64_t id, uint32_t seq, uint64_t done,
                               uint64_t total, const void *partial, size_t partial_len);
//  Items of STOP.
cf_err_t cf_proto_enc_stop(cf_proto_enc_t *enc, uint64_t id, uint32_t grace_ms);
//  Items of STATS replies.
cf_err_t cf_proto_enc_stat(cf_proto_enc_t *enc, const char *name, uint64_t value);
//  A list item of a STATS reply: name, then list, the msgpack bytes of one
//  array (list_len of them), written as they are.
cf_err_t cf_proto_enc_stat_list(cf_proto_enc_t *enc, const char *name, const void *list,
                                size_t list_len);
//  A STATS request asking for the detail in flags (CF_PROTO_STATS_*); a
//  request with no flags is cf_proto_enc_begin(enc, CF_MSG_STATS) alone.
void cf_proto_enc_stats_request(cf_proto_enc_t *enc, uint32_t flags);
//  The single-body messages. Each sets its own type and replaces the body,
//  so begin is optional before them; cf_proto_enc_text makes a DISCONNECT
//  when begun as one, else an ERROR. Out of memory makes the send fail.
//  READY carries threads (execution slots) besides credit (what may be sent
//  now): a worker that prefetches announces more credit than threads.
//  features: CF_PROTO_FEATURE_* bits (0 writes the 4-field READY of cf/1).
//  functions: the count names the worker serves (6 fields), or NULL for
//  "every function" (no 6th field). A list over CF_PROTO_MAX_FUNCTIONS, or
//  a name that is not one a task could carry, makes the send fail
//  (CF_EINVAL): the worker checks its names first.
void cf_proto_enc_ready(cf_proto_enc_t *enc, uint32_t credit, uint32_t threads, const char *host,
                        int32_t pid, uint32_t features, const char *const *functions, size_t count);
//  FUNCTIONS [names]: the functions the worker serves from now on.
void cf_proto_enc_functions(cf_proto_enc_t *enc, const char *const *functions, size_t count);
void cf_proto_enc_credit(cf_proto_enc_t *enc, uint32_t credit);
//  WANT [n]: a hint of how many slots the broker could use; REFUND [k]:
//  the credit the broker gives back (broker -> SHARED worker only).
void cf_proto_enc_want(cf_proto_enc_t *enc, uint32_t n);
void cf_proto_enc_refund(cf_proto_enc_t *enc, uint32_t k);
//  The broker sends its boot id and interval; clients and workers send 0, 0.
void cf_proto_enc_heartbeat(cf_proto_enc_t *enc, uint64_t boot, uint32_t ivl_ms);
void cf_proto_enc_text(cf_proto_enc_t *enc, const char *text,
                       uint64_t ref);    //  ERROR, DISCONNECT
//  Items added since begin.
size_t cf_proto_enc_count(const cf_proto_enc_t *enc);
//  Bytes of the body so far (callers split batches before CF_PROTO_MAX_FRAME).
size_t cf_proto_enc_size(const cf_proto_enc_t *enc);
//  Sends the message (to routing_id on a ROUTER, NULL on a DEALER) and
//  resets the encoder whatever happens, ready for more items of the same
//  type. CF_OK, CF_EBUSY, CF_ENOTFOUND, CF_ESYS (errno kept), CF_ENOMEM,
//  CF_EINVAL (nothing to send: a single-body message never filled in).
cf_err_t cf_proto_enc_send(cf_proto_enc_t *enc, void *socket, const void *routing_id,
                           size_t routing_id_len);

//  A one-item RESULT body built by its holder around a value it already
//  keeps, so that the value leaves without another copy (the broker
//  forwarding a large result): cf_proto_result_ok_head writes the bytes
//  such a body holds before the value (at most CF_PROTO_RESULT_HEAD_MAX)
//  and returns how many.
#define CF_PROTO_RESULT_HEAD_MAX 24
size_t cf_proto_result_ok_head(uint8_t *head, uint64_t id, size_t value_len);
//  Sends a whole body of type, handing its memory to ZeroMQ: on CF_OK
//  free_fn(body, hint) runs once it went (from ZeroMQ's I/O thread, so the
//  caller must not touch body after); on an error body is still the
//  caller's. Errors as cf_proto_enc_send's.
//  The same for a one-item TASK (the broker keeping a task's large
//  arguments in the body it sends): writes the whole body into body, at
//  most CF_PROTO_TASK_BODY_MAX(function_len, args_len) bytes, and returns
//  its size.
#define CF_PROTO_TASK_BODY_MAX(function_len, args_len) (32 + (function_len) + (args_len))
size_t cf_proto_task_body(uint8_t *body, uint64_t id, const char *function, size_t function_len,
                          const void *args, size_t args_len, uint32_t timeout_ms);
typedef void cf_proto_free_fn(void *body, void *hint);
cf_err_t cf_proto_send_body(void *socket, const void *routing_id, size_t routing_id_len,
                            cf_msg_type_t type, void *body, size_t size, cf_proto_free_fn *free_fn,
                            void *hint);

//  Applies the socket options every cfutures socket gets: linger 100 ms,
//  maximum frame size CF_PROTO_MAX_FRAME + 4 KiB, ROUTER_MANDATORY on
//  routers, handshake interval 5 s, SNDHWM/RCVHWM 1000 (cf_proto.c says
//  why). CF_OK or CF_ESYS. Call before bind/connect.
cf_err_t cf_proto_socket_setup(void *socket, bool is_router);

//  What the socket has now (ZMQ_EVENTS: ZMQ_POLLIN, ZMQ_POLLOUT); 0 when it
//  cannot say. For loops that poll the socket's ZMQ_FD as a plain
//  descriptor: that descriptor only signals that this may have changed.
int cf_proto_events(void *socket);

#endif
