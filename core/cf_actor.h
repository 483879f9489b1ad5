//  An actor: a thread that owns its sockets and state and talks to other
//  threads only through its pipe. The broker, the CURVE authenticator, the
//  client and the worker are actors; this module is the one place that
//  starts, feeds, stops and joins them.
//
//  The contract is CZMQ's zactor's:
//    - cf_actor_new starts the thread and returns once the actor's function
//      has called cf_actor_ready: the actor is serving (or it failed, and
//      new returns NULL with the actor's error).
//    - cf_actor_destroy sends "$TERM" down the pipe and joins the thread;
//      the function must return soon after it receives $TERM.
//    - The pipe carries verbs with an optional argument, one way
//      (cf_actor_send) or as a request waiting for its answer
//      (cf_actor_call). It is an in-process mailbox, not a zmq socket: the
//      actor polls one descriptor, cf_actor_fd, which is also what
//      cf_actor_wake signals for work handed over by other means (a client's
//      inbox of submissions, a worker's finished tasks).
//
//  Acting for a sleeping actor. Waking a sleeping thread costs a hand-off
//  (about 12 us on the 2-core VM this was measured on) on every
//  one-at-a-time round trip. So an actor may keep its state and sockets
//  under the actor's io mutex, which it then holds always except while it
//  sleeps in cf_actor_sleep (poll() on plain descriptors: its sockets'
//  ZMQ_FD and the pipe). Another thread that would wake it tries
//  cf_actor_enter instead: when the actor sleeps, the caller holds io and
//  does the actor's work itself, then cf_actor_leave (waking the actor only
//  if something is left for it). ZeroMQ allows a socket to change threads
//  with a full memory barrier between (the mutex). An actor that never
//  calls cf_actor_serve (the broker, the authenticator) is never entered.

#ifndef CF_ACTOR_H
#define CF_ACTOR_H

#include "cfutures.h"

#include <poll.h>
#include <stddef.h>

typedef struct cf_actor cf_actor_t;

//  The actor's body, run on its own thread with every signal blocked (a
//  daemon's main thread handles them) and the io mutex held. It calls
//  cf_actor_ready once, then serves until it receives $TERM or decides to
//  end; an error reported by cf_actor_ready must be followed by return.
typedef void(cf_actor_fn)(cf_actor_t *actor, void *args);

//  Starts fn(actor, args) on a new thread named name (at most 15 bytes
//  shown) and waits for its cf_actor_ready. NULL with cf_last_error() when
//  the thread cannot start or the actor reported an error.
cf_actor_t *cf_actor_new(const char *name, cf_actor_fn *fn, void *args);
//  Sends $TERM, joins the thread and frees the actor; messages the actor
//  never read are dropped, calls still waiting get CF_ESHUTDOWN. Safe with
//  NULL and twice. Never from the actor's own thread.
void cf_actor_destroy(cf_actor_t **actor);

// ---------------------------------------------------------------------------
//  Any thread

//  Queues verb (with a copy of arg, may be NULL) for the actor. CF_OK,
//  CF_ENOMEM, or CF_ESHUTDOWN once the actor's function returned.
cf_err_t cf_actor_send(cf_actor_t *self, const char *verb, const void *arg, size_t arg_len);
//  Sends verb and waits for the actor's cf_actor_reply, copying at most
//  reply_size bytes of it into reply. CF_OK, CF_ENOMEM, CF_ESHUTDOWN when
//  the actor ended without answering, CF_EINVAL from the actor's own thread
//  (it would wait for itself).
cf_err_t cf_actor_call(cf_actor_t *self, const char *verb, const void *arg, size_t arg_len,
                       void *reply, size_t reply_size);
//  Makes the actor's cf_actor_fd readable (cf_actor_sleep returns). Never
//  blocks.
void cf_actor_wake(cf_actor_t *self);
//  The actor whose thread this is, or for which this thread acts (between
//  cf_actor_enter and cf_actor_leave); NULL elsewhere. Such a thread must
//  not wait for an actor, least of all its own.
cf_actor_t *cf_actor_current(void);

//  Tries to act for the actor: returns the state it passed to
//  cf_actor_serve, with io held, when the actor sleeps in cf_actor_sleep
//  and the caller is not itself an actor; NULL otherwise (then wake it).
void *cf_actor_enter(cf_actor_t *self);
//  Ends acting for the actor (releases io); wake: it has work to see to.
void cf_actor_leave(cf_actor_t *self, bool wake);

// ---------------------------------------------------------------------------
//  The actor's thread

//  Reports the start to cf_actor_new: CF_OK when serving, else the error
//  (message may be NULL) that cf_actor_new returns with.
void cf_actor_ready(cf_actor_t *self, cf_err_t err, const char *message);

//  The descriptor to poll for the pipe and cf_actor_wake (POLLIN): with
//  zmq_poll, a zmq_pollitem_t with socket NULL and this fd. After it fires,
//  cf_actor_clear_wake, then read the pipe with cf_actor_recv until NULL.
int cf_actor_fd(cf_actor_t *self);
//  Consumes the wake-up signal; true when there was one.
bool cf_actor_clear_wake(cf_actor_t *self);

//  One message from the pipe.
typedef struct cf_actor_msg cf_actor_msg_t;
//  The next message, or NULL when the pipe is empty. Answer it (calls must
//  be answered) or drop it with cf_actor_reply.
cf_actor_msg_t *cf_actor_recv(cf_actor_t *self);
//  True when msg's verb is verb.
bool cf_actor_msg_is(const cf_actor_msg_t *msg, const char *verb);
//  The message's argument (NULL when none) and its length.
const void *cf_actor_msg_arg(const cf_actor_msg_t *msg, size_t *len);
//  Answers msg with len bytes of reply (a call's waiter gets them; a send
//  needs none: pass NULL) and frees it. Safe with NULL.
void cf_actor_reply(cf_actor_t *self, cf_actor_msg_t **msg, const void *reply, size_t len);

//  Reads the whole pipe of an actor whose only verb is $TERM (the client,
//  the worker): true when $TERM was in it. Any other verb is a mistake of
//  ours (asserted) and dropped.
bool cf_actor_term_received(cf_actor_t *self);

//  From now until cf_actor_serve(actor, NULL), other threads may act for
//  the actor with state while it sleeps (see the header's note).
void cf_actor_serve(cf_actor_t *self, void *state);
//  Steps out of the actor while its thread does something long that uses
//  none of its state or sockets (the worker running a short task where it
//  was received): io is released, as in cf_actor_sleep, so other threads
//  may act for it meanwhile, and the thread is no actor's (cf_actor_current
//  is NULL: what it runs may wait for actors) until cf_actor_step_in takes
//  io back.
void cf_actor_step_out(cf_actor_t *self);
void cf_actor_step_in(cf_actor_t *self);
//  Releases io, polls fds[0..count-1] and the pipe for at most timeout_ms
//  (-1: no limit), takes io again and clears the wake-up signal. Returns
//  poll()'s count (a signal interrupting it counts as 0 ready) or -1 with
//  errno; *woken (may be NULL) says whether the pipe or cf_actor_wake fired.
int cf_actor_sleep(cf_actor_t *self, struct pollfd *fds, int count, int timeout_ms, bool *woken);

#endif
