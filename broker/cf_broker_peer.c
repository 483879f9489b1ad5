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

//  The new peer becomes the head of its hash chain.
cf_err_t cf_broker_peer_insert(cf_idmap_t *table, cf_broker_peer_t *peer)
{
    cf_broker_peer_t *first = cf_idmap_get(table, peer->hash);
    cf_err_t rc = cf_idmap_put(table, peer->hash, peer);
    if (rc == CF_OK)
        peer->hash_next = first;
    return rc;
}

void cf_broker_peer_unlink(cf_idmap_t *table, cf_broker_peer_t *peer)
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

void cf_broker_peer_init(cf_broker_peer_t *peer, const void *id, size_t len, int64_t now)
{
    memcpy(peer->id, id, len);
    peer->id_len = len;
    peer->hash = cf_hash_bytes(id, len);
    peer->last_seen_ms = now;
    peer->hash_next = NULL;
    cf_queue_node_init(&peer->all_node);
    cf_broker_peer_label(peer->id, len, peer->label, sizeof peer->label);
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

void cf_broker_peer_unknown(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                            const char *text)
{
    if (cf_broker_log_event(self)) {
        char label[24];
        cf_broker_peer_label(id, len, label, sizeof label);
        cf_log_debug(S_LOG, "unknown %s %s: told the boot id%s",
                     sock == self->clients_sock ? "client" : "worker", label,
                     !text                                      ? ""
                     : sock == self->clients_sock ? ", to resubmit"
                                                  : ", to announce itself");
    }
    cf_broker_peer_send_heartbeat(self, sock, id, len);
    if (text)
        cf_broker_peer_send_error(self, sock, id, len, 0, text);
}

// ---------------------------------------------------------------------------
//  Incoming messages

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
    cf_broker_peer_t *peer =
        cf_broker_peer_find(clients ? self->client_table : self->worker_table, id, len);
    if (peer && peer->auth_generation == generation)
        return true;
    if (cf_auth_user_allowed(self->auth, user)) {
        if (peer)
            peer->auth_generation = generation;
        return true;
    }
    if (peer && clients)
        cf_broker_client_lost(self, (cf_broker_client_t *)peer, "its key was revoked");
    else if (peer)
        cf_broker_worker_remove(self, (cf_broker_worker_t *)peer, "its key was revoked", true);
    return false;
}

static bool s_role_allowed(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                           cf_proto_msg_t *msg, bool clients)
{
    cf_role_t want = clients ? CF_ROLE_CLIENT : CF_ROLE_WORKER;
    const char *user = cf_proto_msg_user_id(msg);
    cf_role_t role = cf_auth_role_of_user(user);
    if (role == want && (!self->auth || s_key_current(self, id, len, user, clients)))
        return true;
    self->stats.refused++;
    char label[24];
    cf_broker_peer_label(id, len, label, sizeof label);
    if (role == want) {
        if (s_may_log_refusal(self))
            cf_log_warn(S_LOG, "refused %s from %s (routing id %s): its key was removed from the "
                        "allow-list", cf_broker_command_name(msg->type), user, label);
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
            len = 0;            //  cannot happen with ZeroMQ; never trust it
        if (rc == CF_OK) {
            if (len == 0)
                cf_broker_peer_malformed(self, sock, NULL, 0, "message without a routing id");
            else if (self->require_roles && !s_role_allowed(self, sock, id, len, msg, clients))
                ;               //  refused, answered and logged
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
            cf_broker_peer_t *peer = len ? cf_broker_peer_find(
                                         clients ? self->client_table : self->worker_table, id, len)
                                         : NULL;
            if (peer)
                peer->last_seen_ms = cf_clock_now_ms();
            cf_broker_peer_malformed(self, sock, len ? id : NULL, len, "malformed message");
            zmq_msg_close(&rid);
            continue;
        }
        zmq_msg_close(&rid);
        if (rc != CF_ETIMEDOUT)
            cf_log_debug(S_LOG, "receive failed: %s (%s)", cf_strerror(rc), zmq_strerror(errno));
        break;                  //  nothing more to read now (or an error: poll again)
    }
}

// ---------------------------------------------------------------------------
//  Heartbeats and liveness

//  Workers silent for the liveness period are lost (their tasks retried);
//  the others get a heartbeat, and one the ROUTER no longer knows is gone.
static void s_heartbeat_workers(cf_broker_state_t *self, int64_t now, int64_t expiry)
{
    cf_queue_node_t *node, *next;
    for (node = cf_queue_front(&self->workers); node; node = next) {
        next = cf_queue_next(&self->workers, node);
        cf_broker_worker_t *worker = cf_queue_entry(node, cf_broker_worker_t, peer.all_node);
        if (now - worker->peer.last_seen_ms > expiry) {
            char reason[64];
            snprintf(reason, sizeof reason, "silent for %" PRId64 " ms",
                     now - worker->peer.last_seen_ms);
            cf_broker_worker_remove(self, worker, reason, true);
            continue;
        }
        cf_err_t rc = cf_broker_peer_send_heartbeat(self, self->workers_sock, worker->peer.id,
                                                    worker->peer.id_len);
        if (rc == CF_ENOTFOUND)
            cf_broker_worker_remove(self, worker, "gone", true);
    }
}

//  Clients silent, or unreachable, for the liveness period are lost; the
//  others get a heartbeat.
static void s_heartbeat_clients(cf_broker_state_t *self, int64_t now, int64_t expiry)
{
    cf_queue_node_t *node, *next;
    for (node = cf_queue_front(&self->clients); node; node = next) {
        next = cf_queue_next(&self->clients, node);
        cf_broker_client_t *client = cf_queue_entry(node, cf_broker_client_t, peer.all_node);
        if (now - client->peer.last_seen_ms > expiry) {
            cf_broker_client_lost(self, client, "silent");
            continue;
        }
        if (client->unreachable_since_ms && now - client->unreachable_since_ms > expiry) {
            cf_broker_client_lost(self, client, "unreachable");
            continue;
        }
        //  A heartbeat refused here changes nothing: liveness is judged on
        //  what the client sends, delivery on the outbox.
        (void)cf_broker_peer_send_heartbeat(self, self->clients_sock, client->peer.id,
                                            client->peer.id_len);
    }
}

void cf_broker_peer_heartbeat(cf_broker_state_t *self, int64_t now)
{
    if (now < self->next_heartbeat_ms)
        return;
    self->next_heartbeat_ms = now + self->ivl_ms;
    int64_t expiry = (int64_t)self->liveness * self->ivl_ms;
    s_heartbeat_workers(self, now, expiry);
    s_heartbeat_clients(self, now, expiry);
}
