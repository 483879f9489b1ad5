//  Who may submit and who may work: the broker's CurveZMQ authentication.
//
//  cf_auth is an actor that answers ZAP requests (RFC 27) for every CURVE
//  server socket in one zmq context. It binds inproc://zeromq.zap.01 in that
//  context, so it must start before the broker binds its sockets, and only
//  one may run per context. For each handshake libzmq asks it about the
//  client's long-term public key; the key is looked up in three allow-lists
//  (client keys, worker keys and admin keys) and the answer is 200 with a
//  User-Id of "client:<fingerprint>", "worker:<fingerprint>" or
//  "admin:<fingerprint>", or 400 for a key on no list, or of a role the
//  socket's ZAP domain does not admit (see CF_AUTH_DOMAIN_CLIENTS), logged
//  with the fingerprint: the first 8 Z85 characters.
//  libzmq attaches the User-Id to every frame from that connection, so the
//  broker reads the sender's role per message (cf_auth_role_of_user) and drops
//  a client message on the worker socket and the reverse, and answers STATS
//  only to admin keys (CF_AUTH_STATS_NEEDS_ADMIN), which may send nothing
//  else that touches state (SUBMIT, CANCEL: CF_PROTO_NOT_ALLOWED).
//
//  cf_auth_apply_server makes a socket a CURVE server that fails closed:
//  with ZMQ_ZAP_ENFORCE_DOMAIN set, a context without a running handler
//  rejects every client instead of accepting anyone who knows the server
//  key (libzmq's default).
//
//  Allow-lists come from a directory (every regular "*.key" file in it: the
//  public key files cf-keygen writes; "*.key_secret" and other names are
//  ignored) or from a file with one Z85 key per line ('#' comments and blank
//  lines allowed). A key on two lists, a malformed key file or line, or a
//  list that others may write refuses the whole load, naming the file and
//  line, never the key. cf_auth_reload reads every list again and swaps them
//  in only when all load.
//
//  Design note: the actor (core/cf_actor) owns the ZAP socket and the
//  lists; other threads reach it through cf_auth_* calls (cf_actor_call on
//  its pipe). Lists are parsed in the calling thread (so errors land in that
//  thread's cf_last_error) and handed over whole. The calls that wait for
//  the actor (cf_auth_reload, cf_auth_stats) fail from an actor's own
//  thread, which must not wait for another.

#ifndef CF_AUTH_H
#define CF_AUTH_H

#include "cfutures.h"

#include "cf_allowlist.h"

#include <zmq.h>

//  Debian's zmq.h keeps this behind ZMQ_BUILD_DRAFT_API; libzmq 4.3 accepts
//  it all the same.
#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93
#endif

#define CF_AUTH_ZAP_ENDPOINT     "inproc://zeromq.zap.01"
//  ZAP domains cf_auth_apply_server can give a socket. On the two role
//  domains a handshake with a key of another role is refused outright, so
//  a worker key cannot even connect to the client endpoint (which admits
//  client and admin keys), nor a client or admin key to the worker
//  endpoint; the broker still checks the role of every message
//  (cf_auth_role_of). On any other domain every role is admitted and only
//  the per-message check separates them.
#define CF_AUTH_DOMAIN           "cfutures"
#define CF_AUTH_DOMAIN_CLIENTS   "cfutures-clients"    //  client and admin keys only
#define CF_AUTH_DOMAIN_WORKERS   "cfutures-workers"    //  worker keys only
#define CF_AUTH_HANDSHAKE_IVL_MS 5000                  //  close connections that never finish
#define CF_AUTH_LOG_PER_SEC      10                    //  denial log lines per second at most

//  The ERROR [0, text] a broker with roles answers to STATS from any key but
//  an admin key. Not CF_PROTO_NOT_ALLOWED, which tells a client its key is
//  refused outright (its tasks fail): a client key may still submit. An
//  admin key's SUBMIT or CANCEL gets CF_PROTO_NOT_ALLOWED.
#define CF_AUTH_STATS_NEEDS_ADMIN "not allowed: STATS needs an admin key"

typedef struct cf_auth cf_auth_t;

typedef struct {
    //  The context the broker's sockets live in. Required: ZAP handlers
    //  serve only sockets of their own context.
    void *zmq_context;
    //  The broker's secret key: a file (cf-keygen's NAME.key_secret, mode
    //  0600) or the Z85 text itself. Exactly one.
    const char *secret_key_file;
    const char *secret_key;
    //  Allow-lists: a directory of *.key files or a file of keys. A client or
    //  a worker list at least; NULL means nobody has that role (no admin
    //  list: no key may ask for STATS).
    const char *client_keys;
    const char *worker_keys;
    const char *admin_keys;
    //  ZMQ_HANDSHAKE_IVL cf_auth_apply_server sets (0: CF_AUTH_HANDSHAKE_IVL_MS).
    int handshake_ivl_ms;
} cf_auth_config_t;

//  Loads the key and the lists, binds the ZAP endpoint and starts the
//  actor; returns once it serves. NULL with cf_last_error(): a bad key or
//  list (see above), CF_EAUTH for a secret key file others may read, CF_ESYS
//  when a handler is already bound in the context.
cf_auth_t *cf_auth_new(const cf_auth_config_t *config);

//  Stops the actor and wipes the secret key. Close the server sockets
//  first: a handshake in progress without a handler is refused. Safe with
//  NULL and twice.
void cf_auth_destroy(cf_auth_t **auth);

//  Makes socket a CURVE server with the broker's key that fails closed:
//  ZMQ_CURVE_SERVER, ZMQ_CURVE_SECRETKEY, ZMQ_ZAP_DOMAIN (domain; NULL:
//  CF_AUTH_DOMAIN), ZMQ_ZAP_ENFORCE_DOMAIN = 1 and ZMQ_HANDSHAKE_IVL. Call
//  before bind, on a socket of the same context. The broker passes
//  CF_AUTH_DOMAIN_CLIENTS for its client socket and CF_AUTH_DOMAIN_WORKERS
//  for its worker socket. CF_OK, CF_EINVAL or CF_ESYS.
cf_err_t cf_auth_apply_server(void *socket, cf_auth_t *auth, const char *domain);

//  Reads every allow-list again from the configured paths and swaps them
//  in; on any error the old lists stay and the error is returned. The new
//  lists decide every later handshake; for peers already connected see
//  cf_auth_user_allowed. Thread-safe; a daemon calls it on SIGHUP.
cf_err_t cf_auth_reload(cf_auth_t *auth);

//  A User-Id: "client:", "worker:" or "admin:" and the key's fingerprint.
#define CF_AUTH_USER_ID_SIZE 32

//  Whether the key a connection authenticated with is still on its role's
//  allow-list: user_id is the connection's "User-Id" ("client:<fp>"). A
//  reload that removed the key makes it false, so a broker can cut off
//  connections made before (the handshake alone would let them stay).
//  Keys are told apart by fingerprint here. Thread-safe.
bool cf_auth_user_allowed(cf_auth_t *auth, const char *user_id);

//  How many reloads succeeded: a cf_auth_user_allowed answer stays true
//  until this changes. Thread-safe.
uint64_t cf_auth_generation(cf_auth_t *auth);

//  The role a received frame's connection authenticated as, from its
//  "User-Id" metadata. Pass a frame the peer sent (the version, command or
//  body frame): the routing id frame a ROUTER makes up carries no metadata
//  in libzmq 4.3 and always reads CF_ROLE_NONE. Thread-safe (reads the
//  frame only).
cf_role_t cf_auth_role_of(zmq_msg_t *frame);
//  The role a User-Id names ("client:<fp>" is CF_ROLE_CLIENT, "admin:<fp>"
//  CF_ROLE_ADMIN); CF_ROLE_NONE
//  for NULL or any other text. For a decoded message:
//  cf_auth_role_of_user(cf_proto_msg_user_id(msg)).
cf_role_t cf_auth_role_of_user(const char *user_id);

//  "client", "worker", "admin" or "none".
const char *cf_auth_role_name(cf_role_t role);

//  The broker's public key (Z85, borrowed for the life of auth): what
//  clients and workers need (cf-broker prints its fingerprint at start).
const char *cf_auth_server_public(cf_auth_t *auth);

typedef struct {
    uint64_t allowed;        //  handshakes answered 200
    uint64_t denied;         //  answered 400: unknown key or not CURVE
    uint64_t malformed;      //  requests that were not ZAP 1.0: answered 500
    uint64_t client_keys;    //  keys on the lists now
    uint64_t worker_keys;
    uint64_t admin_keys;
    uint64_t reloads;    //  successful cf_auth_reload calls
} cf_auth_stats_t;

//  A snapshot of counters. Thread-safe.
cf_err_t cf_auth_stats(cf_auth_t *auth, cf_auth_stats_t *stats);

#endif
