//  Actors (see cf_actor.h).
//
//  Design note. The pipe is a list under a mutex plus an eventfd, not a
//  pair of inproc sockets: an actor that sleeps in poll() on plain
//  descriptors (the client, the worker) needs one descriptor for the pipe
//  and for wake-ups from other threads anyway, a request/reply call is a
//  condition variable away, and nothing in the pipe needs a zmq context,
//  so an actor can be started before any socket exists. The eventfd is
//  written only when the list goes from empty to non-empty (or by
//  cf_actor_wake), and the actor clears it before it reads the list, so a
//  message is never left unseen.

#define _GNU_SOURCE    //  pthread_setname_np

#include "cf_actor.h"

#include "cf_clock.h"
#include "cf_error.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define S_VERB_MAX      16    //  verbs are short words: "$TERM", "STATS"
#define S_SLEEP_FDS_MAX 7     //  descriptors an actor sleeps on, besides the pipe

struct cf_actor_msg {
    struct cf_actor_msg *next;
    char verb[S_VERB_MAX];
    const void *arg;    //  a send's copy follows the struct; a call's is borrowed
    size_t arg_len;
    bool is_call;    //  on the caller's stack: never freed here
    void *reply;     //  call: where the answer goes
    size_t reply_size;
    bool answered;    //  call: under lock
    cf_err_t rc;      //  call: CF_OK, or CF_ESHUTDOWN unanswered
};

struct cf_actor {
    cf_actor_fn *fn;
    void *args;
    char name[16];
    pthread_t thread;
    int wake_fd;    //  eventfd: the pipe and cf_actor_wake

    //  Held by the actor's thread except while it sleeps in cf_actor_sleep.
    pthread_mutex_t io;
    void *serving;    //  under io: cf_actor_serve's state

    pthread_mutex_t lock;      //  guards everything below
    pthread_cond_t changed;    //  started, a call answered
    cf_actor_msg_t *head, *tail;
    bool started;
    cf_err_t start_err;
    char start_msg[256];
    bool ended;    //  fn returned: the pipe refuses messages
};

//  The actor this thread is, or acts for; NULL on other threads.
static _Thread_local cf_actor_t *s_current = NULL;

// ---------------------------------------------------------------------------
//  Pipe

static void s_signal(cf_actor_t *self)
{
    uint64_t one = 1;
    while (write(self->wake_fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    //  EAGAIN: the counter is saturated, the actor will wake anyway.
}

//  Under lock: appends msg; true when the actor must be signalled.
static bool s_push_locked(cf_actor_t *self, cf_actor_msg_t *msg)
{
    msg->next = NULL;
    bool was_empty = !self->head;
    if (self->tail)
        self->tail->next = msg;
    else
        self->head = msg;
    self->tail = msg;
    return was_empty;
}

static void s_msg_drop(cf_actor_msg_t *msg, cf_err_t rc)
{
    if (msg->is_call) {
        msg->rc = rc;
        msg->answered = true;
    }
    else
        free(msg);
}

static void s_verb_copy(cf_actor_msg_t *msg, const char *verb)
{
    assert(verb && strlen(verb) < sizeof msg->verb);
    snprintf(msg->verb, sizeof msg->verb, "%s", verb);
}

cf_err_t cf_actor_send(cf_actor_t *self, const char *verb, const void *arg, size_t arg_len)
{
    assert(self);
    cf_actor_msg_t *msg = malloc(sizeof *msg + arg_len);
    if (!msg)
        return cf_error_set(CF_ENOMEM, "out of memory sending %s to an actor", verb);
    *msg = (cf_actor_msg_t){ .arg_len = arg ? arg_len : 0 };
    s_verb_copy(msg, verb);
    if (arg && arg_len) {
        memcpy(msg + 1, arg, arg_len);
        msg->arg = msg + 1;
    }
    pthread_mutex_lock(&self->lock);
    if (self->ended) {
        pthread_mutex_unlock(&self->lock);
        free(msg);
        return CF_ESHUTDOWN;
    }
    bool signal = s_push_locked(self, msg);
    pthread_mutex_unlock(&self->lock);
    if (signal)
        s_signal(self);
    return CF_OK;
}

cf_err_t cf_actor_call(cf_actor_t *self, const char *verb, const void *arg, size_t arg_len,
                       void *reply, size_t reply_size)
{
    assert(self);
    if (s_current)
        return cf_error_set(CF_EINVAL, "an actor cannot wait for an actor (%s)", verb);
    cf_actor_msg_t msg = {
        .arg = arg,
        .arg_len = arg ? arg_len : 0,
        .is_call = true,
        .reply = reply,
        .reply_size = reply ? reply_size : 0,
    };
    s_verb_copy(&msg, verb);
    pthread_mutex_lock(&self->lock);
    if (self->ended) {
        pthread_mutex_unlock(&self->lock);
        return CF_ESHUTDOWN;
    }
    bool signal = s_push_locked(self, &msg);
    if (signal) {
        pthread_mutex_unlock(&self->lock);
        s_signal(self);
        pthread_mutex_lock(&self->lock);
    }
    while (!msg.answered)
        pthread_cond_wait(&self->changed, &self->lock);
    pthread_mutex_unlock(&self->lock);
    return msg.rc;
}

void cf_actor_wake(cf_actor_t *self)
{
    assert(self);
    s_signal(self);
}

cf_actor_t *cf_actor_current(void)
{
    return s_current;
}

// ---------------------------------------------------------------------------
//  The actor's side of the pipe

int cf_actor_fd(cf_actor_t *self)
{
    assert(self);
    return self->wake_fd;
}

bool cf_actor_clear_wake(cf_actor_t *self)
{
    uint64_t count;
    ssize_t got;
    while ((got = read(self->wake_fd, &count, sizeof count)) < 0 && errno == EINTR)
        ;
    return got == (ssize_t)sizeof count;
}

cf_actor_msg_t *cf_actor_recv(cf_actor_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->lock);
    cf_actor_msg_t *msg = self->head;
    if (msg) {
        self->head = msg->next;
        if (!self->head)
            self->tail = NULL;
        msg->next = NULL;
    }
    pthread_mutex_unlock(&self->lock);
    return msg;
}

bool cf_actor_msg_is(const cf_actor_msg_t *msg, const char *verb)
{
    return msg && strcmp(msg->verb, verb) == 0;
}

const void *cf_actor_msg_arg(const cf_actor_msg_t *msg, size_t *len)
{
    if (len)
        *len = msg->arg_len;
    return msg->arg;
}

void cf_actor_reply(cf_actor_t *self, cf_actor_msg_t **msg_p, const void *reply, size_t len)
{
    if (!msg_p || !*msg_p)
        return;
    cf_actor_msg_t *msg = *msg_p;
    *msg_p = NULL;
    if (!msg->is_call) {
        free(msg);
        return;
    }
    if (reply && msg->reply)
        memcpy(msg->reply, reply, len < msg->reply_size ? len : msg->reply_size);
    pthread_mutex_lock(&self->lock);
    msg->rc = CF_OK;
    msg->answered = true;
    pthread_cond_broadcast(&self->changed);
    pthread_mutex_unlock(&self->lock);
}

bool cf_actor_term_received(cf_actor_t *self)
{
    bool term = false;
    cf_actor_msg_t *msg;
    while ((msg = cf_actor_recv(self))) {
        if (cf_actor_msg_is(msg, "$TERM"))
            term = true;
        else
            assert(!"a verb this actor does not know");
        cf_actor_reply(self, &msg, NULL, 0);
    }
    return term;
}

void cf_actor_ready(cf_actor_t *self, cf_err_t err, const char *message)
{
    pthread_mutex_lock(&self->lock);
    assert(!self->started);
    self->started = true;
    self->start_err = err;
    snprintf(self->start_msg, sizeof self->start_msg, "%s", message ? message : cf_strerror(err));
    pthread_cond_broadcast(&self->changed);
    pthread_mutex_unlock(&self->lock);
}

// ---------------------------------------------------------------------------
//  Acting for a sleeping actor

void cf_actor_serve(cf_actor_t *self, void *state)
{
    self->serving = state;    //  under io: the actor's thread holds it
}

void *cf_actor_enter(cf_actor_t *self)
{
    if (s_current || pthread_mutex_trylock(&self->io) != 0)
        return NULL;
    if (!self->serving) {
        pthread_mutex_unlock(&self->io);
        return NULL;
    }
    s_current = self;
    return self->serving;
}

void cf_actor_leave(cf_actor_t *self, bool wake)
{
    assert(s_current == self);
    s_current = NULL;
    pthread_mutex_unlock(&self->io);
    if (wake)
        s_signal(self);
}

void cf_actor_step_out(cf_actor_t *self)
{
    assert(s_current == self);
    s_current = NULL;
    pthread_mutex_unlock(&self->io);
}

void cf_actor_step_in(cf_actor_t *self)
{
    assert(!s_current);
    pthread_mutex_lock(&self->io);
    s_current = self;
}

int cf_actor_sleep(cf_actor_t *self, struct pollfd *fds, int count, int timeout_ms, bool *woken)
{
    assert(count >= 0 && count <= S_SLEEP_FDS_MAX);
    struct pollfd all[S_SLEEP_FDS_MAX + 1];
    for (int i = 0; i < count; i++)
        all[i] = (struct pollfd){ fds[i].fd, fds[i].events, 0 };
    all[count] = (struct pollfd){ self->wake_fd, POLLIN, 0 };
    pthread_mutex_unlock(&self->io);
    int rc = poll(all, (nfds_t)count + 1, timeout_ms);
    int poll_errno = errno;
    pthread_mutex_lock(&self->io);
    bool wake = false;
    if (rc < 0 && poll_errno == EINTR)
        rc = 0;
    else if (rc > 0 && (all[count].revents & POLLIN)) {
        cf_actor_clear_wake(self);
        wake = true;
        rc--;
    }
    for (int i = 0; i < count; i++)
        fds[i].revents = rc < 0 ? 0 : all[i].revents;
    if (woken)
        *woken = wake;
    errno = poll_errno;
    return rc;
}

// ---------------------------------------------------------------------------
//  Life cycle

static void *s_thread_main(void *arg)
{
    cf_actor_t *self = arg;
    s_current = self;
    pthread_mutex_lock(&self->io);
    self->fn(self, self->args);
    self->serving = NULL;
    pthread_mutex_unlock(&self->io);
    s_current = NULL;
    //  Whatever is still in the pipe will never be read: calls get
    //  CF_ESHUTDOWN, and later messages are refused.
    pthread_mutex_lock(&self->lock);
    if (!self->started) {
        self->started = true;
        self->start_err = CF_ESYS;
        snprintf(self->start_msg, sizeof self->start_msg, "%s ended before it was ready",
                 self->name);
    }
    self->ended = true;
    cf_actor_msg_t *msg = self->head;
    self->head = self->tail = NULL;
    while (msg) {
        cf_actor_msg_t *next = msg->next;
        s_msg_drop(msg, CF_ESHUTDOWN);
        msg = next;
    }
    pthread_cond_broadcast(&self->changed);
    pthread_mutex_unlock(&self->lock);
    return NULL;
}

static void s_free(cf_actor_t *self)
{
    if (self->wake_fd >= 0)
        close(self->wake_fd);
    pthread_cond_destroy(&self->changed);
    pthread_mutex_destroy(&self->lock);
    pthread_mutex_destroy(&self->io);
    free(self);
}

cf_actor_t *cf_actor_new(const char *name, cf_actor_fn *fn, void *args)
{
    assert(name && fn);
    cf_actor_t *self = calloc(1, sizeof *self);
    if (!self) {
        cf_error_set(CF_ENOMEM, "out of memory starting %s", name);
        return NULL;
    }
    self->fn = fn;
    self->args = args;
    snprintf(self->name, sizeof self->name, "%s", name);
    pthread_mutex_init(&self->io, NULL);
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->changed, NULL);
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->wake_fd < 0) {
        cf_error_set(CF_ESYS, "%s: eventfd: %s", name, strerror(errno));
        s_free(self);
        return NULL;
    }
    //  The thread inherits a full signal mask: a daemon's main thread
    //  handles signals, never an actor in the middle of its work.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&self->thread, NULL, s_thread_main, self);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        cf_error_set(CF_ESYS, "cannot start %s: %s", name, strerror(rc));
        s_free(self);
        return NULL;
    }
    pthread_setname_np(self->thread, self->name);
    pthread_mutex_lock(&self->lock);
    while (!self->started)
        pthread_cond_wait(&self->changed, &self->lock);
    cf_err_t err = self->start_err;
    pthread_mutex_unlock(&self->lock);
    if (err != CF_OK) {
        pthread_join(self->thread, NULL);
        cf_error_set(err, "%s", self->start_msg);
        s_free(self);
        return NULL;
    }
    return self;
}

void cf_actor_destroy(cf_actor_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_actor_t *self = *self_p;
    assert(s_current != self);
    (void)cf_actor_send(self, "$TERM", NULL, 0);    //  CF_ESHUTDOWN: it already ended
    pthread_join(self->thread, NULL);
    //  Only now: the actor may read the pointer until it ends.
    *self_p = NULL;
    s_free(self);
}
