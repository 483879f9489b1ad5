//  The ZAP handler (see cf_auth.h); the lists it judges by are cf_allowlist.
//
//  Design note: a reload builds whole new allow-lists (cf_allowlist) in the
//  caller's thread and hands the pointer to the actor (a cf_actor_call, whose lock orders the list's construction
//  before its use where ThreadSanitizer can see it), which swaps it in
//  between two requests, with the User-Ids cf_auth_user_allowed reads.
//  The actor creates and binds its ZAP socket itself, so the socket never
//  changes thread; a bind that fails is reported through cf_actor_ready,
//  and cf_auth_new returns that error as its own.
//
//  Nothing a ZAP request holds can crash the handler: frames are counted and
//  sized before use, a message longer than CF_AUTH_ZAP_MAX_FRAMES is drained,
//  and every request gets a reply (a REP socket must answer before it can
//  read again). Requests only come from libzmq inside this process, but the
//  inproc endpoint is open to any code in it.

#include "cf_auth.h"

#include "cf_actor.h"
#include "cf_error.h"
#include "cf_keys.h"
#include "cf_log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_LOG                  "auth"
#define CF_AUTH_ZAP_MAX_FRAMES 8      //  a CURVE request has 7
#define CF_AUTH_MAX_REQUEST_ID 255    //  bytes of a request id we echo
#define S_ADDRESS_MAX          63     //  bytes of a peer address we log

// ---------------------------------------------------------------------------
//  The actor

//  The ZAP handler: the actor's state, its alone while it runs (cf_auth_new
//  fills it in before the thread starts, cf_auth_destroy frees it after the
//  join).
typedef struct {
    void *ctx;               //  the broker's context (borrowed)
    void *zap;               //  REP bound at CF_AUTH_ZAP_ENDPOINT, made by the actor
    cf_allowlist_t *list;    //  owned; replaced by RELOAD
    cf_auth_stats_t stats;
    bool terminated;    //  $TERM received or the context ended
    //  Denials are logged at most CF_AUTH_LOG_PER_SEC a second: anyone who
    //  knows the server key can cause one per handshake.
    cf_log_limit_t denial_log;
} s_handler_t;

//  The User-Ids the lists allow ("client:<fp>"), sorted, for
//  cf_auth_user_allowed: a copy the broker's thread may read, since the
//  actor's list is the actor's alone.
typedef char s_user_t[CF_AUTH_USER_ID_SIZE];

//  RELOAD's argument: new lists built by the caller. The call's answer says
//  the actor took them; a call that fails (the actor ended) leaves them
//  with the caller.
typedef struct {
    cf_allowlist_t *list;
    s_user_t *users;
    size_t user_count;
} s_reload_t;

struct cf_auth {
    cf_actor_t *actor;      //  the ZAP handler's thread
    s_handler_t handler;    //  the actor's state
    pthread_mutex_t users_lock;
    s_user_t *users;    //  under users_lock; swapped by the actor on RELOAD
    size_t user_count;
    _Atomic uint64_t generation;    //  successful reloads
    char secret_z85[CF_KEY_Z85_SIZE];
    char public_z85[CF_KEY_Z85_SIZE];
    char *client_keys;    //  configured paths, for reload
    char *worker_keys;
    char *admin_keys;
    int handshake_ivl_ms;
};

static bool s_may_log_denial(s_handler_t *self)
{
    return cf_log_limit_allow(&self->denial_log, S_LOG, "denied handshakes");
}

static bool s_frame_is(zmq_msg_t *frame, const char *text)
{
    size_t len = strlen(text);
    return zmq_msg_size(frame) == len && memcmp(zmq_msg_data(frame), text, len) == 0;
}

//  A printable copy of a frame for logs, cut to fit.
static void s_printable(zmq_msg_t *frame, char *out, size_t size)
{
    size_t len = zmq_msg_size(frame);
    const char *data = zmq_msg_data(frame);
    size_t i = 0;
    for (; i < len && i + 1 < size; i++)
        out[i] = (data[i] >= 0x20 && data[i] < 0x7f) ? data[i] : '?';
    out[i] = '\0';
}

static void s_send_reply(s_handler_t *self, zmq_msg_t *request_id, const char *status,
                         const char *text, const char *user_id)
{
    const void *id = "";
    size_t id_len = 0;
    if (request_id && zmq_msg_size(request_id) <= CF_AUTH_MAX_REQUEST_ID) {
        id = zmq_msg_data(request_id);
        id_len = zmq_msg_size(request_id);
    }
    //  DONTWAIT: a requester that went away must not block the handler; its
    //  handshake then times out on ZMQ_HANDSHAKE_IVL.
    int flags = ZMQ_SNDMORE | ZMQ_DONTWAIT;
    if (zmq_send(self->zap, "1.0", 3, flags) < 0 || zmq_send(self->zap, id, id_len, flags) < 0
        || zmq_send(self->zap, status, strlen(status), flags) < 0
        || zmq_send(self->zap, text, strlen(text), flags) < 0
        || zmq_send(self->zap, user_id, strlen(user_id), flags) < 0
        || zmq_send(self->zap, "", 0, ZMQ_DONTWAIT) < 0)
        cf_log_debug(S_LOG, "cannot send ZAP reply: %s", zmq_strerror(errno));
}

//  Reads one ZAP request into frames (at most CF_AUTH_ZAP_MAX_FRAMES; the
//  rest is drained and *too_many set). Returns how many frames were kept:
//  0 when nothing was read (no reply owed).
static size_t s_zap_read(s_handler_t *self, zmq_msg_t *frames, bool *too_many)
{
    size_t count = 0;
    *too_many = false;
    for (;;) {
        zmq_msg_t scratch;
        zmq_msg_t *frame = count < CF_AUTH_ZAP_MAX_FRAMES ? &frames[count] : &scratch;
        zmq_msg_init(frame);
        if (zmq_msg_recv(frame, self->zap, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(frame);
            if (errno == ETERM)
                self->terminated = true;
            return count;
        }
        bool more = zmq_msg_more(frame);
        if (frame == &scratch) {
            zmq_msg_close(frame);
            *too_many = true;
        }
        else {
            count++;
        }
        if (!more)
            return count;
    }
}

//  Whether a key of role may connect to a socket of ZAP domain: the role
//  domains admit their role (and the client domain admin keys too: cf-admin
//  asks for STATS at the client endpoint); any other domain admits all.
static bool s_domain_admits(zmq_msg_t *domain, cf_role_t role)
{
    if (s_frame_is(domain, CF_AUTH_DOMAIN_CLIENTS))
        return role == CF_ROLE_CLIENT || role == CF_ROLE_ADMIN;
    if (s_frame_is(domain, CF_AUTH_DOMAIN_WORKERS))
        return role == CF_ROLE_WORKER;
    return true;
}

//  Answers a well-formed CURVE request (7 frames, a 32-byte key): 200 with
//  the key's User-Id when its role may use the request's domain, else 400.
static void s_zap_curve(s_handler_t *self, zmq_msg_t *frames, const char *address)
{
    uint8_t key[CF_KEY_BIN_LEN];
    memcpy(key, zmq_msg_data(&frames[6]), sizeof key);
    char z85[CF_KEY_Z85_SIZE], fp[CF_KEY_FP_SIZE];
    cf_keys_encode(key, z85);
    cf_keys_fingerprint(z85, fp);
    cf_role_t role = cf_allowlist_role(self->list, key);
    if (role == CF_ROLE_NONE) {
        self->stats.denied++;
        if (s_may_log_denial(self))
            cf_log_warn(S_LOG, "denied unknown key %s from %s", fp, address);
        s_send_reply(self, &frames[1], "400", "key not allowed", "");
        return;
    }
    if (!s_domain_admits(&frames[2], role)) {
        self->stats.denied++;
        if (s_may_log_denial(self))
            cf_log_warn(S_LOG, "denied %s key %s from %s on the %s endpoint",
                        cf_auth_role_name(role), fp, address,
                        s_frame_is(&frames[2], CF_AUTH_DOMAIN_WORKERS) ? "worker" : "client");
        s_send_reply(self, &frames[1], "400", "key not allowed on this endpoint", "");
        return;
    }
    self->stats.allowed++;
    char user_id[CF_AUTH_USER_ID_SIZE];
    snprintf(user_id, sizeof user_id, "%s:%s", cf_auth_role_name(role), fp);
    cf_log_debug(S_LOG, "allowed %s from %s", user_id, address);
    s_send_reply(self, &frames[1], "200", "OK", user_id);
}

//  Answers one request of count frames: malformed ones 500, other
//  mechanisms than CURVE 400, CURVE by its key.
static void s_zap_answer(s_handler_t *self, zmq_msg_t *frames, size_t count, bool too_many)
{
    if (too_many || count < 6 || !s_frame_is(&frames[0], "1.0")
        || zmq_msg_size(&frames[1]) > CF_AUTH_MAX_REQUEST_ID) {
        self->stats.malformed++;
        cf_log_debug(S_LOG, "malformed ZAP request (%zu%s frames)", count, too_many ? "+" : "");
        s_send_reply(self, count > 1 ? &frames[1] : NULL, "500", "malformed request", "");
        return;
    }
    char address[S_ADDRESS_MAX + 1];
    s_printable(&frames[3], address, sizeof address);
    if (!s_frame_is(&frames[5], "CURVE")) {
        self->stats.denied++;
        char mechanism[16];
        s_printable(&frames[5], mechanism, sizeof mechanism);
        if (s_may_log_denial(self))
            cf_log_warn(S_LOG, "denied %s handshake from %s: only CURVE is allowed", mechanism,
                        address);
        s_send_reply(self, &frames[1], "400", "mechanism not allowed", "");
        return;
    }
    if (count != 7 || zmq_msg_size(&frames[6]) != CF_KEY_BIN_LEN) {
        self->stats.malformed++;
        cf_log_debug(S_LOG, "malformed CURVE ZAP request");
        s_send_reply(self, &frames[1], "500", "malformed request", "");
        return;
    }
    s_zap_curve(self, frames, address);
}

//  ZAP request (RFC 27): version, request id, domain, address, identity,
//  mechanism, credentials... For CURVE one credential: the 32-byte key.
static void s_handle_zap(s_handler_t *self)
{
    zmq_msg_t frames[CF_AUTH_ZAP_MAX_FRAMES];
    bool too_many;
    size_t count = s_zap_read(self, frames, &too_many);
    if (count == 0)
        return;    //  nothing read: no reply owed
    s_zap_answer(self, frames, count, too_many);
    for (size_t i = 0; i < count; i++)
        zmq_msg_close(&frames[i]);
}

//  Creates and binds the ZAP socket; linger 0, so a request in flight never
//  holds the context's end.
static cf_err_t s_zap_open(s_handler_t *self)
{
    self->zap = zmq_socket(self->ctx, ZMQ_REP);
    int linger = 0;
    if (!self->zap || zmq_setsockopt(self->zap, ZMQ_LINGER, &linger, sizeof linger) != 0)
        return cf_error_set(CF_ESYS, "cannot create auth sockets: %s", zmq_strerror(errno));
    if (zmq_bind(self->zap, CF_AUTH_ZAP_ENDPOINT) != 0)
        return cf_error_set(
            CF_ESYS, "cannot bind %s: %s%s", CF_AUTH_ZAP_ENDPOINT, zmq_strerror(errno),
            errno == EADDRINUSE ? " (a ZAP handler already runs in this context)" : "");
    return CF_OK;
}

static void s_zap_close(s_handler_t *self)
{
    if (!self->zap)
        return;
    //  zmq_close releases an inproc endpoint only later, on libzmq's reaper
    //  thread; unbinding first frees it now, so a handler started right
    //  after this one (a restart in the same context) can bind it.
    zmq_unbind(self->zap, CF_AUTH_ZAP_ENDPOINT);    //  fails if never bound
    zmq_close(self->zap);
    self->zap = NULL;
}

//  RELOAD: the new lists replace the old, and the User-Ids with them, in
//  the order the reloads reach the actor.
static void s_take_reload(cf_auth_t *auth, const s_reload_t *reload)
{
    s_handler_t *self = &auth->handler;
    cf_allowlist_destroy(&self->list);
    self->list = reload->list;
    self->stats.reloads++;
    pthread_mutex_lock(&auth->users_lock);
    s_user_t *old = auth->users;
    auth->users = reload->users;
    auth->user_count = reload->user_count;
    pthread_mutex_unlock(&auth->users_lock);
    free(old);
    atomic_fetch_add(&auth->generation, 1);
}

static void s_handle_pipe(cf_auth_t *auth, cf_actor_t *actor)
{
    s_handler_t *self = &auth->handler;
    cf_actor_clear_wake(actor);
    cf_actor_msg_t *msg;
    while ((msg = cf_actor_recv(actor))) {
        size_t len = 0;
        const void *arg = cf_actor_msg_arg(msg, &len);
        if (cf_actor_msg_is(msg, "$TERM"))
            self->terminated = true;
        else if (cf_actor_msg_is(msg, "RELOAD") && len == sizeof(s_reload_t))
            s_take_reload(auth, arg);
        else if (cf_actor_msg_is(msg, "STATS")) {
            cf_auth_stats_t stats = self->stats;
            stats.client_keys = cf_allowlist_count(self->list, CF_ROLE_CLIENT);
            stats.worker_keys = cf_allowlist_count(self->list, CF_ROLE_WORKER);
            stats.admin_keys = cf_allowlist_count(self->list, CF_ROLE_ADMIN);
            cf_actor_reply(actor, &msg, &stats, sizeof stats);
        }
        else
            cf_log_error(S_LOG, "unknown pipe command");
        cf_actor_reply(actor, &msg, NULL, 0);    //  NULL once answered
    }
}

static void s_handler_run(cf_actor_t *actor, void *args)
{
    cf_auth_t *auth = args;
    s_handler_t *self = &auth->handler;
    cf_err_t rc = s_zap_open(self);
    if (rc != CF_OK) {
        s_zap_close(self);
        cf_actor_ready(actor, rc, cf_last_error());
        return;
    }
    cf_actor_ready(actor, CF_OK, NULL);
    zmq_pollitem_t items[] = {
        { NULL, cf_actor_fd(actor), ZMQ_POLLIN, 0 },
        { self->zap, 0, ZMQ_POLLIN, 0 },
    };
    while (!self->terminated) {
        int n = zmq_poll(items, 2, -1);
        if (n < 0 && errno == EINTR)
            continue;    //  a signal; revents are stale
        if (n < 0)
            break;    //  context terminated
        if (items[0].revents & ZMQ_POLLIN)
            s_handle_pipe(auth, actor);
        if (!self->terminated && (items[1].revents & ZMQ_POLLIN))
            s_handle_zap(self);
    }
    s_zap_close(self);
}

// ---------------------------------------------------------------------------
//  The API

static int s_user_compare(const void *a, const void *b)
{
    return strcmp(a, b);
}

//  The sorted User-Ids of list; NULL and CF_ENOMEM when out of memory.
static s_user_t *s_users_of(const cf_allowlist_t *list, size_t *count)
{
    size_t n = cf_allowlist_count(list, CF_ROLE_NONE);
    s_user_t *users = malloc((n ? n : 1) * sizeof *users);
    if (!users) {
        cf_error_set(CF_ENOMEM, "out of memory loading allow-lists");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t key[CF_KEY_BIN_LEN];
        cf_role_t role = cf_allowlist_entry(list, i, key);
        char z85[CF_KEY_Z85_SIZE], fp[CF_KEY_FP_SIZE];
        cf_keys_encode(key, z85);
        cf_keys_fingerprint(z85, fp);
        snprintf(users[i], sizeof users[i], "%s:%s", cf_auth_role_name(role), fp);
    }
    qsort(users, n, sizeof *users, s_user_compare);
    *count = n;
    return users;
}

void cf_auth_destroy(cf_auth_t **auth_p)
{
    if (!auth_p || !*auth_p)
        return;
    cf_auth_t *self = *auth_p;
    *auth_p = NULL;
    //  $TERM and the join; an actor that already left on ETERM (its context
    //  ended) is only joined. It closed its socket itself.
    cf_actor_destroy(&self->actor);
    cf_allowlist_destroy(&self->handler.list);
    explicit_bzero(self->secret_z85, sizeof self->secret_z85);
    free(self->client_keys);
    free(self->worker_keys);
    free(self->admin_keys);
    free(self->users);
    pthread_mutex_destroy(&self->users_lock);
    free(self);
}

//  Reads the key and the lists of config into self.
static cf_err_t s_load_config(cf_auth_t *self, const cf_auth_config_t *config)
{
    if (config->secret_key_file) {
        if (cf_keys_read_secret(config->secret_key_file, self->secret_z85) != CF_OK)
            return cf_last_err();
    }
    else if (cf_keys_valid(config->secret_key))
        memcpy(self->secret_z85, config->secret_key, CF_KEY_Z85_SIZE);
    else
        return cf_error_set(CF_EINVAL, "the broker's secret key is not valid Z85");
    if (cf_keys_public_of(self->secret_z85, self->public_z85) != CF_OK)
        return cf_last_err();
    if ((config->client_keys && !(self->client_keys = strdup(config->client_keys)))
        || (config->worker_keys && !(self->worker_keys = strdup(config->worker_keys)))
        || (config->admin_keys && !(self->admin_keys = strdup(config->admin_keys))))
        return cf_error_set(CF_ENOMEM, "out of memory");
    self->handler.list = cf_allowlist_load(self->client_keys, self->worker_keys, self->admin_keys);
    if (!self->handler.list)
        return cf_last_err();
    self->users = s_users_of(self->handler.list, &self->user_count);
    return self->users ? CF_OK : cf_last_err();
}

static bool s_config_valid(const cf_auth_config_t *config)
{
    if (!config || !config->zmq_context)
        cf_error_set(CF_EINVAL, "auth needs the broker's zmq context");
    else if (!config->secret_key_file == !config->secret_key)
        cf_error_set(CF_EINVAL, "auth needs exactly one of a secret key file and a secret key");
    else if (!config->client_keys && !config->worker_keys)
        cf_error_set(CF_EINVAL, "auth needs a client or a worker allow-list");
    else if (config->handshake_ivl_ms < 0)
        cf_error_set(CF_EINVAL, "handshake_ivl_ms must be >= 0, got %d", config->handshake_ivl_ms);
    else
        return true;
    return false;
}

cf_auth_t *cf_auth_new(const cf_auth_config_t *config)
{
    if (!s_config_valid(config))
        return NULL;
    cf_auth_t *self = cf_calloc(1, sizeof *self);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->users_lock, NULL);
    self->handshake_ivl_ms = config->handshake_ivl_ms ? config->handshake_ivl_ms
                                                      : CF_AUTH_HANDSHAKE_IVL_MS;
    self->handler.ctx = config->zmq_context;
    self->handler.denial_log.per_sec = CF_AUTH_LOG_PER_SEC;
    if (s_load_config(self, config) != CF_OK)
        goto failed;
    //  Counted now: once the thread runs, the list is its alone.
    size_t clients = cf_allowlist_count(self->handler.list, CF_ROLE_CLIENT),
           workers = cf_allowlist_count(self->handler.list, CF_ROLE_WORKER),
           admins = cf_allowlist_count(self->handler.list, CF_ROLE_ADMIN);
    //  Returns once the actor has bound the ZAP endpoint, or with why not.
    self->actor = cf_actor_new("cf-auth", s_handler_run, self);
    if (!self->actor)
        goto failed;
    cf_log_info(S_LOG,
                "CURVE authentication on: server key %.8s, %zu client and %zu "
                "worker keys allowed, %zu admin keys%s",
                self->public_z85, clients, workers, admins,
                self->admin_keys ? "" : " (no admin list: STATS is refused to every key)");
    return self;
failed:
    cf_auth_destroy(&self);
    return NULL;
}

cf_err_t cf_auth_apply_server(void *socket, cf_auth_t *auth, const char *domain)
{
    if (!socket || !auth)
        return cf_error_set(CF_EINVAL, "apply_server needs a socket and an auth");
    if (!domain)
        domain = CF_AUTH_DOMAIN;
    if (!*domain || strlen(domain) > 254)
        return cf_error_set(CF_EINVAL, "ZAP domain must be 1..254 bytes");
    cf_err_t rc = cf_keys_apply_server(socket, auth->secret_z85);
    if (rc != CF_OK)
        return rc;
    //  A non-empty domain and ENFORCE_DOMAIN: with no handler bound in the
    //  socket's context, libzmq then refuses every client instead of
    //  accepting anyone who knows the server key.
    int on = 1;
    if (zmq_setsockopt(socket, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) != 0
        || zmq_setsockopt(socket, ZMQ_ZAP_ENFORCE_DOMAIN, &on, sizeof on) != 0
        || zmq_setsockopt(socket, ZMQ_HANDSHAKE_IVL, &auth->handshake_ivl_ms,
                          sizeof auth->handshake_ivl_ms)
               != 0)
        return cf_error_set(CF_ESYS, "cannot set CURVE server options: %s", zmq_strerror(errno));
    return CF_OK;
}

cf_err_t cf_auth_reload(cf_auth_t *auth)
{
    if (!auth)
        return cf_error_set(CF_EINVAL, "no auth");
    s_reload_t reload = { .list = cf_allowlist_load(auth->client_keys, auth->worker_keys,
                                                    auth->admin_keys) };
    if (!reload.list)
        return cf_last_err();
    size_t clients = cf_allowlist_count(reload.list, CF_ROLE_CLIENT),
           workers = cf_allowlist_count(reload.list, CF_ROLE_WORKER),
           admins = cf_allowlist_count(reload.list, CF_ROLE_ADMIN);
    reload.users = s_users_of(reload.list, &reload.user_count);
    if (!reload.users) {
        cf_allowlist_destroy(&reload.list);
        return cf_last_err();
    }
    //  Answered: the actor owns both now. Not answered: they are still ours.
    cf_err_t rc = cf_actor_call(auth->actor, "RELOAD", &reload, sizeof reload, NULL, 0);
    if (rc != CF_OK) {
        cf_allowlist_destroy(&reload.list);
        free(reload.users);
        return cf_error_set(CF_ESYS, "cannot reach the auth actor: %s", cf_strerror(rc));
    }
    cf_log_info(S_LOG, "allow-lists reloaded: %zu client and %zu worker keys, %zu admin keys",
                clients, workers, admins);
    return CF_OK;
}

bool cf_auth_user_allowed(cf_auth_t *auth, const char *user_id)
{
    if (!auth || !user_id || strlen(user_id) >= CF_AUTH_USER_ID_SIZE)
        return false;
    pthread_mutex_lock(&auth->users_lock);
    bool found = bsearch(user_id, auth->users, auth->user_count, sizeof *auth->users,
                         s_user_compare)
                 != NULL;
    pthread_mutex_unlock(&auth->users_lock);
    return found;
}

uint64_t cf_auth_generation(cf_auth_t *auth)
{
    return auth ? atomic_load(&auth->generation) : 0;
}

cf_err_t cf_auth_stats(cf_auth_t *auth, cf_auth_stats_t *stats)
{
    if (!auth || !stats)
        return cf_error_set(CF_EINVAL, "stats needs an auth and a struct");
    cf_err_t rc = cf_actor_call(auth->actor, "STATS", NULL, 0, stats, sizeof *stats);
    if (rc != CF_OK)
        return cf_error_set(CF_ESYS, "cannot reach the auth actor: %s", cf_strerror(rc));
    return CF_OK;
}

cf_role_t cf_auth_role_of(zmq_msg_t *frame)
{
    return frame ? cf_auth_role_of_user(zmq_msg_gets(frame, "User-Id")) : CF_ROLE_NONE;
}

cf_role_t cf_auth_role_of_user(const char *user_id)
{
    if (!user_id)
        return CF_ROLE_NONE;
    if (strncmp(user_id, "client:", 7) == 0)
        return CF_ROLE_CLIENT;
    if (strncmp(user_id, "worker:", 7) == 0)
        return CF_ROLE_WORKER;
    if (strncmp(user_id, "admin:", 6) == 0)
        return CF_ROLE_ADMIN;
    return CF_ROLE_NONE;
}

const char *cf_auth_role_name(cf_role_t role)
{
    switch (role) {
    case CF_ROLE_CLIENT:
        return "client";
    case CF_ROLE_WORKER:
        return "worker";
    case CF_ROLE_ADMIN:
        return "admin";
    default:
        return "none";
    }
}

const char *cf_auth_server_public(cf_auth_t *auth)
{
    return auth ? auth->public_z85 : NULL;
}
