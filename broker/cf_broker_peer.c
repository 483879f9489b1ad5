//  The broker's peers (see cf_broker_int.h): clients and workers by
//  routing id, what comes in on the two ROUTERs (with CURVE, checked for
//  the sender's role before it touches any state), the simple replies, and
//  heartbeats both ways with the liveness that loses silent peers.
//
//  Peer tables map an identity's hash to its peer; the rare peers whose
//  hashes collide are chained. Every message a peer sends, even a malformed
//  one, counts as a sign of life.

#include "cf_broker_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_hash.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define S_LOG "broker"

// ---------------------------------------------------------------------------
//  Identities and tables

void cf_broker_peer_label(const uint8_t *id, size_t len, char *label, size_t size)
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

cf_broker_peer_t *cf_broker_peer_find(cf_idmap_t *table, const void *id, size_t len)
{
    uint64_t hash = cf_hash_bytes(id, len);
    for (cf_broker_peer_t *peer = cf_idmap_get(table, hash); peer; peer = peer->hash_next)
        if (peer->id_len == len && memcmp(peer->id, id, len) == 0)
            return peer;
    return NULL;
}

cf_broker_peer_t *cf_broker_peer_seen(cf_idmap_t *table, const void *id, size_t len, int64_t now)
{
    cf_broker_peer_t *peer = cf_broker_peer_find(table, id, len);
    if (peer)
        peer->last_seen_ms = now;
    return peer;
}

//  The new peer becomes the head of its hash chain.
static cf_err_t s_peer_insert(cf_idmap_t *table, cf_broker_peer_t *peer)
{
    cf_broker_peer_t *first = cf_idmap_get(table, peer->hash);
    cf_err_t rc = cf_idmap_put(table, peer->hash, peer);
    if (rc == CF_OK)
        peer->hash_next = first;
    return rc;
}

static void s_peer_unlink(cf_idmap_t *table, cf_broker_peer_t *peer)
{
    cf_broker_peer_t *first = cf_idmap_get(table, peer->hash);
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
    for (cf_broker_peer_t *p = first; p; p = p->hash_next) {
        if (p->hash_next == peer) {
            p->hash_next = peer->hash_next;
            return;
        }
    }
}

cf_broker_peer_t *cf_broker_peer_new(cf_broker_state_t *self, bool worker, size_t size,
                                     const void *id, size_t len, int64_t now)
{
    assert(size >= sizeof(cf_broker_peer_t) && len <= CF_BROKER_MAX_IDENTITY);
    cf_broker_peer_t *peer = calloc(1, size);
    if (!peer)
        return NULL;
    memcpy(peer->id, id, len);
    peer->id_len = len;
    peer->hash = cf_hash_bytes(id, len);
    peer->last_seen_ms = now;
    cf_queue_node_init(&peer->all_node);
    cf_broker_peer_label(peer->id, len, peer->label, sizeof peer->label);
    if (s_peer_insert(worker ? self->worker_table : self->client_table, peer) != CF_OK) {
        free(peer);
        return NULL;
    }
    cf_queue_push_back(worker ? &self->workers : &self->clients, &peer->all_node);
    return peer;
}

void cf_broker_peer_remove(cf_broker_state_t *self, cf_broker_peer_t *peer, bool worker)
{
    cf_queue_remove(worker ? &self->workers : &self->clients, &peer->all_node);
    s_peer_unlink(worker ? self->worker_table : self->client_table, peer);
}

// ---------------------------------------------------------------------------
//  Simple replies. Failures of these are not kept: a heartbeat or an error
//  reply that cannot go now is replaced by the next one.

cf_err_t cf_broker_peer_send_heartbeat(cf_broker_state_t *self, void *sock, const void *id,
                                       size_t len)
{
    cf_proto_enc_heartbeat(self->enc, self->boot, (uint32_t)self->ivl_ms);
    return cf_proto_enc_send(self->enc, sock, id, len);
}

void cf_broker_peer_send_error(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                               uint64_t ref, const char *text)
{
    cf_proto_enc_begin(self->enc, CF_MSG_ERROR);
    cf_proto_enc_text(self->enc, text, ref);
    cf_err_t rc = cf_proto_enc_send(self->enc, sock, id, len);
    if (rc != CF_OK && cf_broker_log_event(self))
        cf_log_debug(S_LOG, "error reply not sent: %s", cf_strerror(rc));
}

void cf_broker_peer_malformed(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                              const char *text)
{
    self->stats.malformed++;
    if (cf_broker_log_event(self)) {
        char label[24];
        cf_broker_peer_label(id, len, label, sizeof label);
        cf_log_debug(S_LOG, "refused a message from %s %s: %s",
                     sock == self->clients_sock ? "client" : "worker", id ? label : "(unknown)",
                     text);
    }
    if (id)
        cf_broker_peer_send_error(self, sock, id, len, 0, text);
}

void cf_broker_peer_unexpected(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                               cf_msg_type_t type)
{
    char text[64];
    snprintf(text, sizeof text, "unexpected %s from a %s", cf_broker_command_name(type),
             sock == self->clients_sock ? "client" : "worker");
    cf_broker_peer_malformed(self, sock, id, len, text);
}

void cf_broker_peer_unknown(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                            const char *text)
{
    if (cf_broker_log_event(self)) {
        char label[24];
        cf_broker_peer_label(id, len, label, sizeof label);
        cf_log_debug(S_LOG, "unknown %s %s: told the boot id%s",
                     sock == self->clients_sock ? "client" : "worker", label,
                     !text                        ? ""
                     : sock == self->clients_sock ? ", to resubmit"
                                                  : ", to announce itself");
    }
    cf_broker_peer_send_heartbeat(self, sock, id, len);
    if (text)
        cf_broker_peer_send_error(self, sock, id, len, 0, text);
}

// ---------------------------------------------------------------------------
//  Incoming messages

//  The peer is lost (a worker's tasks retried or failed, a client's
//  dropped) for reason.
static void s_peer_lose(cf_broker_state_t *self, cf_broker_peer_t *peer, bool worker,
                        const char *reason)
{
    if (worker)
        cf_broker_worker_remove(self, (cf_broker_worker_t *)peer, reason, true);
    else
        cf_broker_client_lost(self, (cf_broker_client_t *)peer, reason);
}

//  With CURVE, libzmq tags every frame of an authenticated connection with
//  the User-Id cf_auth gave it ("client:<fp>"): a message whose role does
//  not fit the socket is refused before it can touch any state. The role
//  domains already refuse such keys at the handshake; this is the second
//  check docs/security.md promises, for a misconfigured domain or a key
//  added to the wrong list by a reload. The audit line names the key by
//  fingerprint only (the User-Id holds nothing more).
static bool s_may_log_refusal(cf_broker_state_t *self)
{
    return cf_log_limit_allow(&self->refused_log, S_LOG, "refused messages");
}

//  Whether the sender's key is still on the allow-lists. Until a reload
//  every connection passed its handshake against the lists as they are; after
//  one, each peer is looked up once per reload. A revoked key's peer is
//  dropped here; its later messages find no peer and are refused again.
static bool s_key_current(cf_broker_state_t *self, const void *id, size_t len, const char *user,
                          bool clients)
{
    uint64_t generation = cf_auth_generation(self->auth);
    if (generation == 0)
        return true;
    cf_broker_peer_t *peer = cf_broker_peer_find(clients ? self->client_table : self->worker_table,
                                                 id, len);
    if (peer && peer->auth_generation == generation)
        return true;
    if (cf_auth_user_allowed(self->auth, user)) {
        if (peer)
            peer->auth_generation = generation;
        return true;
    }
    if (peer)
        s_peer_lose(self, peer, !clients, "its key was revoked");
    return false;
}

//  What a key of an admitted role may send: STATS is for admin keys alone
//  (cf-admin; docs/security.md), and an admin key sends nothing that makes
//  it a peer or touches tasks: STATS, HEARTBEAT and DISCONNECT (which are
//  answered, or ignored, without peer state). NULL when allowed, else the
//  ERROR text; *why says it for the log.
static const char *s_command_refusal(cf_msg_type_t type, cf_role_t role, const char **why)
{
    if (role == CF_ROLE_ADMIN
        && !(type == CF_MSG_STATS || type == CF_MSG_HEARTBEAT || type == CF_MSG_DISCONNECT)) {
        *why = "an admin key may only ask for STATS";
        return CF_PROTO_NOT_ALLOWED;    //  a client library using it fails at once
    }
    if (role != CF_ROLE_ADMIN && type == CF_MSG_STATS) {
        *why = "STATS needs an admin key (cf-broker --admin-keys)";
        return CF_AUTH_STATS_NEEDS_ADMIN;    //  not fatal to a client: it may still submit
    }
    return NULL;
}

static bool s_role_allowed(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                           cf_proto_msg_t *msg, bool clients)
{
    cf_role_t want = clients ? CF_ROLE_CLIENT : CF_ROLE_WORKER;
    const char *user = cf_proto_msg_user_id(msg);
    cf_role_t role = cf_auth_role_of_user(user);
    //  Admin keys use the client endpoint too.
    bool admitted = role == want || (clients && role == CF_ROLE_ADMIN);
    const char *why = NULL, *refusal = NULL;
    if (admitted && (!self->auth || s_key_current(self, id, len, user, clients))) {
        refusal = s_command_refusal(msg->type, role, &why);
        if (!refusal)
            return true;
    }
    self->stats.refused++;
    char label[24];
    cf_broker_peer_label(id, len, label, sizeof label);
    if (refusal) {
        if (s_may_log_refusal(self))
            cf_log_warn(S_LOG, "refused %s from %s (routing id %s): %s",
                        cf_broker_command_name(msg->type), user, label, why);
        cf_broker_peer_send_error(self, sock, id, len, 0, refusal);
        return false;
    }
    if (admitted) {
        if (s_may_log_refusal(self))
            cf_log_warn(S_LOG,
                        "refused %s from %s (routing id %s): its key was removed from the "
                        "allow-list",
                        cf_broker_command_name(msg->type), user, label);
        cf_broker_peer_send_error(self, sock, id, len, 0, CF_PROTO_KEY_REVOKED);
        return false;
    }
    if (s_may_log_refusal(self))
        cf_log_warn(S_LOG,
                    "refused %s from %s (routing id %s) on the %s endpoint: a %s key "
                    "may not use it",
                    cf_broker_command_name(msg->type), user ? user : "an unauthenticated peer",
                    label, clients ? "client" : "worker", cf_auth_role_name(role));
    cf_broker_peer_send_error(self, sock, id, len, 0, CF_PROTO_NOT_ALLOWED);
    return false;
}

//  Reads what the socket has, up to the budget.
void cf_broker_peer_read(cf_broker_state_t *self, void *sock)
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
            len = 0;    //  cannot happen with ZeroMQ; never trust it
        if (rc == CF_OK) {
            if (len == 0)
                cf_broker_peer_malformed(self, sock, NULL, 0, "message without a routing id");
            else if (self->require_roles && !s_role_allowed(self, sock, id, len, msg, clients))
                ;    //  refused, answered and logged
            else if (clients)
                cf_broker_client_on_message(self, id, len, msg);
            else
                cf_broker_worker_on_message(self, id, len, msg);
            cf_proto_msg_destroy(&msg);
            zmq_msg_close(&rid);
            continue;
        }
        cf_proto_msg_destroy(&msg);
        if (rc == CF_EPROTO) {
            //  Any message is liveness, even a bad one.
            if (len)
                cf_broker_peer_seen(clients ? self->client_table : self->worker_table, id, len,
                                    cf_clock_now_ms());
            //  The codec's last error says what it could of why (for a
            //  SUBMIT, which task), for the ERROR and the log.
            cf_broker_peer_malformed(self, sock, len ? id : NULL, len, cf_last_error());
            zmq_msg_close(&rid);
            continue;
        }
        zmq_msg_close(&rid);
        if (rc != CF_ETIMEDOUT)
            cf_log_debug(S_LOG, "receive failed: %s (%s)", cf_strerror(rc), zmq_strerror(errno));
        break;    //  nothing more to read now (or an error: poll again)
    }
}

// ---------------------------------------------------------------------------
//  Heartbeats and liveness

//  Heartbeats every client or every worker. Peers silent for the liveness
//  period are lost (a worker's tasks retried), and so is a client that
//  stayed unreachable as long; a worker the ROUTER no longer knows is gone.
//  A heartbeat refused by a client changes nothing: its liveness is judged
//  on what it sends, delivery on its outbox.
static void s_heartbeat_peers(cf_broker_state_t *self, bool workers, int64_t now, int64_t expiry)
{
    cf_queue_t *all = workers ? &self->workers : &self->clients;
    void *sock = workers ? self->workers_sock : self->clients_sock;
    cf_queue_node_t *node, *next;
    for (node = cf_queue_front(all); node; node = next) {
        next = cf_queue_next(all, node);
        cf_broker_peer_t *peer = cf_queue_entry(node, cf_broker_peer_t, all_node);
        char reason[64] = "";
        if (now - peer->last_seen_ms > expiry)
            snprintf(reason, sizeof reason, "silent for %" PRId64 " ms", now - peer->last_seen_ms);
        else if (!workers && ((cf_broker_client_t *)peer)->unreachable_since_ms
                 && now - ((cf_broker_client_t *)peer)->unreachable_since_ms > expiry)
            snprintf(reason, sizeof reason, "unreachable");
        else if (cf_broker_peer_send_heartbeat(self, sock, peer->id, peer->id_len) == CF_ENOTFOUND
                 && workers)
            snprintf(reason, sizeof reason, "gone");
        if (reason[0])
            s_peer_lose(self, peer, workers, reason);
    }
}

//  Runs on the heartbeat tick, once per interval: a peer's silence is seen
//  between liveness and liveness + 1 intervals after its last message
//  (docs/protocol.md section 7 says so). Checking on every wakeup would
//  walk every peer per message for a second's precision nobody needs.
void cf_broker_peer_heartbeat(cf_broker_state_t *self, int64_t now)
{
    if (now < self->next_heartbeat_ms)
        return;
    self->next_heartbeat_ms = now + self->ivl_ms;
    int64_t expiry = (int64_t)self->liveness * self->ivl_ms;
    s_heartbeat_peers(self, true, now, expiry);
    s_heartbeat_peers(self, false, now, expiry);
}
