//  cf_link: what a client or a worker does to keep its DEALER to the broker
//  alive, shared by lib/cf_client.c and worker/cf_worker.c.
//
//  libzmq redials a connection it lost, but not in every case: after a ZMTP
//  protocol error (a frame over ZMQ_MAXMSGSIZE, one altered byte of a CURVE
//  stream) it drops the connection for good, and a TCP connection cut by a
//  partition stays "up" until the kernel gives up on it (minutes). So a
//  peer (1) asks libzmq for ZMTP heartbeats and a connect timeout, which
//  make it drop a dead connection and redial about once per heartbeat
//  interval, and (2) when it counts the broker as lost anyway, closes the
//  socket and opens a fresh one, with a backoff (cf_link_backoff_t) so that
//  a broker that stays away costs a reopen every few seconds, not a storm.
//  The caller then re-introduces itself exactly as after a broker restart
//  (docs/protocol.md section 7).

#ifndef CF_LINK_H
#define CF_LINK_H

#include "cfutures.h"

#include <stdint.h>

//  How long after a DISCONNECTED event libzmq has to show it redials
//  (ZMQ_EVENT_CONNECT_RETRIED or CONNECTED) before the connection counts
//  as dropped for good: both events come from the same I/O thread within
//  microseconds, so this only absorbs scheduling.
#define CF_LINK_REDIAL_GRACE_MS 250

//  Sets, on a DEALER to the broker, the ZMTP heartbeats (a PING every
//  ivl_ms; the connection is dropped when nothing came for liveness
//  intervals; the broker is asked to drop it after liveness + 1 of ours)
//  and a connect timeout of one interval (a SYN lost to a partition is
//  retried then, not after the kernel's backoff). ivl_ms is clamped to the
//  wire's 100 ms .. 6553 s. Returns CF_OK or CF_ESYS (errno kept).
cf_err_t cf_link_setup(void *socket, int ivl_ms, int liveness);

//  When a peer may open a fresh socket again: the first reopen comes at
//  once, the next after min_ms, doubling to max_ms while the broker stays
//  away; cf_link_backoff_reset once it answers.
typedef struct {
    int min_ms;
    int max_ms;
    int delay_ms;       //  before the next reopen after this one
    int64_t next_ms;    //  no reopen before this (cf_clock_now_ms)
} cf_link_backoff_t;

void cf_link_backoff_init(cf_link_backoff_t *self, int min_ms, int max_ms);
//  True when a reopen is due at now; if so, the next one is pushed back.
bool cf_link_backoff_take(cf_link_backoff_t *self, int64_t now);
void cf_link_backoff_reset(cf_link_backoff_t *self);

#endif
