//  The broker's STATS reply (see cf_broker_int.h): its counters, and, when
//  asked, a list of the workers and one of the clients (docs/protocol.md,
//  "STATS"), for cf-admin. Lists are built apart with a msgpack writer and
//  go into the reply as they are.

#include "cf_broker_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_mp.h"

#include <msgpack.h>
#include <string.h>

#define S_LOG            "broker"
//  Peers listed at most per list; the rest are counted (*_omitted), so a
//  reply stays far below the frame limit whatever the cluster's size.
#define S_MAX_LISTED     4096
//  Bytes of function names listed per worker: 4096 workers stay under 5 MiB.
#define S_FUNCTIONS_TEXT 1024

static int s_pack_str(msgpack_packer *pk, const char *text)
{
    return msgpack_pack_str_with_body(pk, text, strlen(text));
}

static int64_t s_ago_ms(int64_t now, int64_t then)
{
    return now > then ? now - then : 0;
}

//  The functions a worker serves as one text: "*" for every function, else
//  the names joined by ",", cut after about S_FUNCTIONS_TEXT bytes with
//  ",..." (function_count says how many there are).
static int s_pack_functions(msgpack_packer *pk, const cf_broker_worker_t *w)
{
    if (!w->fns)
        return s_pack_str(pk, "*");
    char text[S_FUNCTIONS_TEXT + CF_PROTO_MAX_NAME + 8];
    size_t len = 0, cursor = 0;
    void *value;
    while (cf_idmap_next(w->fns, &cursor, NULL, &value)) {
        const cf_broker_fn_t *fn = value;
        if (len >= S_FUNCTIONS_TEXT) {
            memcpy(text + len, ",...", 4);
            len += 4;
            break;
        }
        if (len)
            text[len++] = ',';
        memcpy(text + len, fn->name, fn->len);
        len += fn->len;
    }
    return msgpack_pack_str_with_body(pk, text, len);
}

//  [identity, host, pid, threads, credit, held, completed, failed, heard_ms,
//   function_count (-1: every function), functions]
static int s_pack_worker(msgpack_packer *pk, const cf_broker_worker_t *w, int64_t now)
{
    int64_t functions = w->fns ? (int64_t)cf_idmap_size(w->fns) : -1;
    return msgpack_pack_array(pk, 11) | s_pack_str(pk, w->peer.label) | s_pack_str(pk, w->host)
           | msgpack_pack_int32(pk, w->pid) | msgpack_pack_uint32(pk, w->threads)
           | msgpack_pack_uint32(pk, w->credit)
           | msgpack_pack_uint64(pk, cf_queue_size(&w->running))
           | msgpack_pack_uint64(pk, w->completed) | msgpack_pack_uint64(pk, w->failed)
           | msgpack_pack_uint64(pk, (uint64_t)s_ago_ms(now, w->peer.last_seen_ms))
           | msgpack_pack_int64(pk, functions) | s_pack_functions(pk, w);
}

//  [identity, queued, running, submitted, completed, failed, heard_ms]
static int s_pack_client(msgpack_packer *pk, const cf_broker_client_t *c, int64_t now)
{
    return msgpack_pack_array(pk, 7) | s_pack_str(pk, c->peer.label)
           | msgpack_pack_uint64(pk, c->queued) | msgpack_pack_uint64(pk, c->running)
           | msgpack_pack_uint64(pk, c->submitted) | msgpack_pack_uint64(pk, c->completed)
           | msgpack_pack_uint64(pk, c->failed)
           | msgpack_pack_uint64(pk, (uint64_t)s_ago_ms(now, c->peer.last_seen_ms));
}

//  Adds the list of peers (workers or clients) as name, and name_omitted
//  when there are more than S_MAX_LISTED.
static cf_err_t s_add_list(cf_broker_state_t *self, cf_queue_t *peers, bool workers,
                           const char *name, const char *omitted_name)
{
    int64_t now = cf_clock_now_ms();
    size_t total = cf_queue_size(peers);
    size_t listed = total < S_MAX_LISTED ? total : S_MAX_LISTED;
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    int failed = msgpack_pack_array(&w.pk, (uint32_t)listed);
    size_t n = 0;
    for (cf_queue_node_t *node = cf_queue_front(peers); node && n < listed;
         node = cf_queue_next(peers, node), n++) {
        cf_broker_peer_t *peer = cf_queue_entry(node, cf_broker_peer_t, all_node);
        failed |= workers ? s_pack_worker(&w.pk, (cf_broker_worker_t *)peer, now)
                          : s_pack_client(&w.pk, (cf_broker_client_t *)peer, now);
    }
    cf_err_t rc = failed ? CF_ENOMEM
                         : cf_proto_enc_stat_list(self->enc, name, w.buf.data, w.buf.size);
    cf_mp_writer_fini(&w);
    if (rc == CF_OK && total > listed)
        rc = cf_proto_enc_stat(self->enc, omitted_name, total - listed);
    return rc;
}

void cf_broker_stats_reply(cf_broker_state_t *self, const void *id, size_t len, uint32_t flags)
{
    cf_broker_stats_t s;
    cf_broker_state_stats(self, &s);
    const struct {
        const char *name;
        uint64_t value;
    } items[] = {
        { "stats_version", 2 },
        { "uptime_ms", (uint64_t)s_ago_ms(cf_clock_now_ms(), self->started_ms) },
        { "clients", s.clients },
        { "workers", s.workers },
        { "queued", s.queued },
        { "running", s.running },
        { "submitted", s.submitted },
        { "completed", s.completed },
        { "failed", s.failed },
        { "cancelled", s.cancelled },
        { "retried", s.retried },
        { "lost_workers", s.lost_workers },
        { "busy", s.busy },
        { "malformed", s.malformed },
        { "dropped", s.dropped },
        { "ignored", s.ignored },
        { "timed_out", s.timed_out },
        { "deferred", s.deferred },
        { "refused", s.refused },
        { "no_worker", s.no_worker },
    };
    cf_proto_enc_begin(self->enc, CF_MSG_STATS);
    cf_err_t rc = CF_OK;
    for (size_t i = 0; i < sizeof items / sizeof items[0] && rc == CF_OK; i++)
        rc = cf_proto_enc_stat(self->enc, items[i].name, items[i].value);
    if (rc == CF_OK && (flags & CF_PROTO_STATS_WORKERS))
        rc = s_add_list(self, &self->workers, true, "worker_list", "workers_omitted");
    if (rc == CF_OK && (flags & CF_PROTO_STATS_CLIENTS))
        rc = s_add_list(self, &self->clients, false, "client_list", "clients_omitted");
    if (rc != CF_OK) {
        cf_log_error(S_LOG, "cannot encode stats: %s", cf_strerror(rc));
        return;
    }
    rc = cf_proto_enc_send(self->enc, self->clients_sock, id, len);
    if (rc != CF_OK && cf_broker_log_event(self))
        cf_log_debug(S_LOG, "stats reply not sent: %s", cf_strerror(rc));
}
