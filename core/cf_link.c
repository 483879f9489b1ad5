//  cf_link (see cf_link.h): ZMTP heartbeats and reopen backoff for the
//  DEALERs of clients and workers.

#include "cf_link.h"

#include <zmq.h>

//  ZMTP carries the TTL in deciseconds in 16 bits; libzmq refuses more.
#define S_MIN_IVL_MS 100
#define S_MAX_TTL_MS 6553000

cf_err_t cf_link_setup(void *socket, int ivl_ms, int liveness)
{
    if (ivl_ms < S_MIN_IVL_MS)
        ivl_ms = S_MIN_IVL_MS;
    if (liveness < 1)
        liveness = 1;
    int64_t timeout = (int64_t)ivl_ms * liveness;
    //  The broker's side: it drops our connection one interval later than
    //  we would, so the side that sees the silence first is ours.
    int64_t ttl = timeout + ivl_ms;
    if (ttl > S_MAX_TTL_MS)
        ttl = S_MAX_TTL_MS;
    if (timeout > ttl)
        timeout = ttl;
    int ivl = ivl_ms, timeout_ms = (int)timeout, ttl_ms = (int)ttl;
    //  A connect attempt (a SYN) that got nothing back for one interval is
    //  abandoned and retried after ZMQ_RECONNECT_IVL (100 ms): after a
    //  partition heals, the next attempt comes within about an interval.
    int connect_timeout = ivl_ms;
    if (zmq_setsockopt(socket, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl) != 0
        || zmq_setsockopt(socket, ZMQ_HEARTBEAT_TIMEOUT, &timeout_ms, sizeof timeout_ms) != 0
        || zmq_setsockopt(socket, ZMQ_HEARTBEAT_TTL, &ttl_ms, sizeof ttl_ms) != 0
        || zmq_setsockopt(socket, ZMQ_CONNECT_TIMEOUT, &connect_timeout, sizeof connect_timeout)
               != 0)
        return CF_ESYS;
    return CF_OK;
}

void cf_link_backoff_init(cf_link_backoff_t *self, int min_ms, int max_ms)
{
    self->min_ms = min_ms > 0 ? min_ms : 1;
    self->max_ms = max_ms > self->min_ms ? max_ms : self->min_ms;
    cf_link_backoff_reset(self);
}

bool cf_link_backoff_take(cf_link_backoff_t *self, int64_t now)
{
    if (now < self->next_ms)
        return false;
    self->next_ms = now + self->delay_ms;
    self->delay_ms = self->delay_ms * 2 > self->max_ms ? self->max_ms : self->delay_ms * 2;
    return true;
}

void cf_link_backoff_reset(cf_link_backoff_t *self)
{
    self->delay_ms = self->min_ms;
    self->next_ms = 0;
}
