//  cf_procs: worker processes under a supervisor (see cf_procs.h).
//
//  Three kinds of party:
//  - the supervisor, a thread of the calling process: it owns the
//    bookkeeping (which slot runs which pid), calls on_exit, decides
//    replacements and runs the shutdown;
//  - the zygote, a process the supervisor's thread forks once: single
//    threaded, it forks every worker, signals them, reaps them (waitpid) and
//    reports over a SOCK_SEQPACKET socketpair (one datagram per command or
//    report, so neither side parses a stream);
//  - the workers, forked by the zygote: each runs a cf_worker with its own
//    zmq context and exits when the worker ends.
//
//  Why the zygote is forked from the supervisor's thread: PR_SET_PDEATHSIG
//  fires when the *thread* that forked a process ends, so forking from
//  whatever application thread called cf_procs_new would kill the pool the
//  day that thread returns. The supervisor thread lives exactly as long as
//  the pool.
//
//  Why every signal goes through the zygote: only a parent can signal a
//  child without a pid-reuse race (until it reaps the child, the pid cannot
//  be reused). The zygote handles one command at a time and reaps only in
//  its own loop, so a SIGNAL command never reaches a stranger.
//
//  The zygote runs nothing but system calls (no malloc, no stdio, no locks):
//  it was forked from a multi-threaded process, where another thread may
//  have held a lock at that instant. Its children start from its memory,
//  which is the caller's memory at cf_procs_new, so tasks registered by then
//  exist in every worker.
//
//  Workers report that their cf_worker started by writing their pid to a
//  pipe inherited from the supervisor; cf_procs_new returns once every first
//  worker did, or fails if one exits first (a bad endpoint, say).
//
//  Sanitizers: GCC 12's AddressSanitizer has no fork handling for its
//  allocator, and workers forked here were seen to hang in it; glibc's
//  malloc is fork-safe. cf_procs_test runs in plain and UBSan builds.
//
//  Identities: "p<pid>-<host>-<random>-<n>", where random is drawn once per
//  supervisor and n counts spawns. The pid lets a reader match logs and the
//  supervisor know which worker died; the rest keeps two hosts, two pools or
//  a reused pid from ever presenting the same routing id to a broker (a
//  ROUTER refuses a duplicate, and a broker would mistake a replacement for
//  the worker it replaces).

#define _GNU_SOURCE    //  pipe2
#include "cf_procs.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_log.h"
#include "cf_random.h"
#include "cf_registry.h"
#include "cf_worker.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define S_LOG              "procs"
//  A worker that exits sooner than this after its spawn is replaced after
//  a growing delay (S_BACKOFF_MIN_MS doubling up to S_BACKOFF_MAX_MS), so a
//  worker that cannot run does not become a fork loop.
#define S_QUICK_EXIT_MS    1000
#define S_BACKOFF_MIN_MS   100
#define S_BACKOFF_MAX_MS   5000
//  How long cf_procs_new waits for the first workers to start.
#define S_START_TIMEOUT_MS 30000
//  After SIGKILL, how long the supervisor waits for the zygote's reports
//  before it ends the zygote anyway (which kills and reaps what is left).
#define S_KILL_WAIT_MS     5000
//  A worker's main thread looks for SIGTERM and for its worker's end this
//  often.
#define S_CHILD_TICK_MS    100
//  How long a process ending for a task that overran its stop grace gives
//  its last messages (the task's Interrupted, DISCONNECT) to leave.
#define S_STOP_FLUSH_MS    500

enum {
    S_CMD_SPAWN = 1,       //  supervisor -> zygote: slot, suffix
    S_CMD_SIGNAL,          //  supervisor -> zygote: value = signal, to every worker
    S_CMD_QUIT,            //  supervisor -> zygote: kill what is left, reap, exit
    S_REP_SPAWNED,         //  zygote -> supervisor: slot, pid
    S_REP_SPAWN_FAILED,    //  zygote -> supervisor: slot, value = errno
    S_REP_EXITED,          //  zygote -> supervisor: pid, value = wait status
};

//  One datagram on the socketpair.
typedef struct {
    int32_t kind;
    int32_t slot;
    int32_t pid;
    int32_t value;
    char suffix[192];    //  SPAWN: the identity after "p<pid>-"
} s_msg_t;

typedef struct {
    pid_t pid;        //  0: none
    bool spawning;    //  SPAWN sent, no answer yet
    bool started;     //  its worker reported it started
    int64_t spawned_ms;
    int64_t respawn_ms;    //  when to spawn again; 0: not scheduled
    int backoff_ms;
    char suffix[192];      //  of the last SPAWN sent for this slot
    char identity[256];    //  "p<pid>-<suffix>" once spawned
} s_slot_t;

struct cf_procs {
    //  Copied at new; read-only afterwards (and inherited by the zygote).
    int count;
    int threads;
    char *endpoint;
    char **endpoints;    //  endpoint_count copies when the children serve several
    int endpoint_count;
    void (*initializer)(void *arg);
    void *initarg;
    int max_tasks;
    bool exit_on_broker_loss;
    bool announce_functions;
    int ivl_ms;
    int liveness;
    cf_procs_exit_fn *on_exit;
    void *on_exit_arg;
    cf_err_t (*socket_setup)(void *socket, const char *endpoint, void *arg);
    void *socket_setup_arg;
    char suffix_base[128];    //  "<host>-<random>"

    pthread_t thread;
    int wake_fd;    //  destroy -> supervisor

    //  The supervisor thread's own (and, copied, the zygote's).
    int sock;          //  supervisor's end of the socketpair
    int started_rd;    //  workers' pids, once started
    int started_wr;    //  inherited by zygote and workers
    pid_t zygote;
    pid_t *zygote_children;    //  zygote's own copy: live children
    uint64_t spawns;
    s_slot_t *slots;
    //  s_ids_per_process entries per slot, shared with every worker process
    //  (MAP_SHARED before the zygote is forked): the task each of its
    //  threads runs, its actor's thread included (cf_worker_config_t).
    _Atomic uint64_t *running;
    size_t running_size;
    //  Started reports that came before the zygote's SPAWNED for that pid
    //  (the two travel different paths); matched when it arrives.
    pid_t *early_started;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    //  Under lock.
    int alive;
    bool refused;    //  a worker exited with CF_PROCS_EXIT_REFUSED
    bool init_done;
    cf_err_t init_err;
    char init_msg[256];
    bool stopping;
    int grace_ms;
};

//  Running-task slots of one worker process: one per execution thread and
//  one for the actor's thread, which runs short tasks (cf_worker.h).
static size_t s_ids_per_process(const cf_procs_t *p)
{
    return (size_t)p->threads + 1;
}

// ---------------------------------------------------------------------------
//  Helpers used after fork (system calls only)

//  Closes every descriptor from 3 up except those in keep (sorted or not).
static void s_close_fds_except(const int *keep, int nkeep)
{
    int sorted[8];
    assert(nkeep <= 8);
    for (int i = 0; i < nkeep; i++)
        sorted[i] = keep[i];
    for (int i = 1; i < nkeep; i++) {
        for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            int t = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = t;
        }
    }
    unsigned lo = 3;
    for (int i = 0; i <= nkeep; i++) {
        unsigned hi = i < nkeep ? (unsigned)sorted[i] : ~0u;
        if (i < nkeep && (sorted[i] < 3 || (unsigned)sorted[i] < lo))
            continue;
        if (hi > lo) {
            unsigned last = i < nkeep ? hi - 1 : ~0u;
            if (syscall(SYS_close_range, lo, last, 0) != 0) {
                //  No close_range (kernel < 5.9): one by one.
                long max = sysconf(_SC_OPEN_MAX);
                unsigned end = last;
                if (max > 0 && (unsigned long)max - 1 < end)
                    end = (unsigned)max - 1;
                if (end > 65535 && last == ~0u)
                    end = 65535;
                for (unsigned fd = lo; fd <= end; fd++)
                    close((int)fd);
            }
        }
        if (i < nkeep)
            lo = hi + 1;
    }
}

//  Default dispositions for every signal and an empty mask.
static void s_reset_signals(void)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL);    //  fails harmlessly for reserved ones
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static void s_ignore(int sig)
{
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(sig, &ign, NULL);
}

static bool s_send_msg(int fd, const s_msg_t *msg)
{
    while (true) {
        ssize_t n = send(fd, msg, sizeof *msg, MSG_NOSIGNAL);
        if (n == (ssize_t)sizeof *msg)
            return true;
        if (n < 0 && errno == EINTR)
            continue;
        return false;
    }
}

// ---------------------------------------------------------------------------
//  A worker process

__attribute__((noreturn)) static void s_child_main(cf_procs_t *p, pid_t zygote, int slot,
                                                   const char *suffix)
{
    //  Dies with the zygote; if the zygote is already gone, so are we.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != zygote)
        _exit(1);
    s_reset_signals();
    //  SIGINT (a terminal's ^C reaches the whole process group) is for the
    //  program: the supervisor stops its workers itself, with SIGTERM.
    s_ignore(SIGINT);
    //  SIGTERM is awaited by this thread; blocked before any thread starts,
    //  so the worker's threads inherit the mask and never take it.
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, NULL);
    int keep[] = { p->started_wr };
    s_close_fds_except(keep, 1);

    int pid = (int)getpid();
    char identity[256];
    snprintf(identity, sizeof identity, "p%d-%s", pid, suffix);
    cf_worker_t *worker = cf_worker_new(&(cf_worker_config_t){
        .endpoint = p->endpoint,
        .endpoints = (const char *const *)p->endpoints,
        .endpoint_count = p->endpoint_count,
        .threads = p->threads,
        .identity = identity,
        .initializer = p->initializer,
        .initarg = p->initarg,
        .max_tasks = p->max_tasks,
        .exit_on_broker_loss = p->exit_on_broker_loss,
        .announce_functions = p->announce_functions,
        .heartbeat_ivl_ms = p->ivl_ms,
        .heartbeat_liveness = p->liveness,
        .socket_setup = p->socket_setup,
        .socket_setup_arg = p->socket_setup_arg,
        .running_ids = &p->running[(size_t)slot * s_ids_per_process(p)],
        //  A process of one thread holds one task: killing it for a task
        //  that ignores its stop harms no other. With more threads only
        //  the cooperative stop exists, as on threads.
        .stop_kills_process = p->threads == 1,
    });
    if (!worker) {
        cf_log_error(S_LOG, "worker process %d cannot start: %s", pid, cf_last_error());
        _exit(1);
    }
    int32_t started = pid;
    while (write(p->started_wr, &started, sizeof started) < 0 && errno == EINTR)
        ;
    close(p->started_wr);

    struct timespec tick = { .tv_sec = 0, .tv_nsec = S_CHILD_TICK_MS * 1000000L };
    bool terminated = false;
    while (true) {
        int sig = sigtimedwait(&term, NULL, &tick);
        if (sig == SIGTERM) {
            terminated = true;
            break;
        }
        if (cf_worker_wait(worker, 0) == CF_OK)
            break;
    }
    if (!terminated && cf_worker_ended(worker) == CF_EAUTH) {
        cf_worker_destroy(&worker);
        _exit(CF_PROCS_EXIT_REFUSED);
    }
    if (!terminated && cf_worker_ended(worker) == CF_ETIMEDOUT) {
        //  A task asked to stop overran its grace: its Interrupted and our
        //  DISCONNECT are sent; exiting kills it (its thread never returns).
        cf_worker_abandon(worker, S_STOP_FLUSH_MS);
        _exit(CF_PROCS_EXIT_STOPPED);
    }
    if (!terminated && cf_worker_ended(worker) == CF_ESHUTDOWN) {
        //  The broker is gone: nobody can take results, and a task may run
        //  for long. Leave now; the kernel frees everything.
        _exit(0);
    }
    cf_worker_destroy(&worker);    //  finishes the running task, says DISCONNECT
    //  _exit, not exit: atexit handlers and stdio buffers are the program's,
    //  inherited copies that must not run or flush twice.
    _exit(0);
}

// ---------------------------------------------------------------------------
//  The zygote

static void s_zygote_forget(cf_procs_t *p, pid_t pid)
{
    for (int i = 0; i < p->count; i++) {
        if (p->zygote_children[i] == pid) {
            p->zygote_children[i] = 0;
            return;
        }
    }
}

static void s_zygote_signal_all(cf_procs_t *p, int sig)
{
    for (int i = 0; i < p->count; i++) {
        if (p->zygote_children[i] > 0)
            kill(p->zygote_children[i], sig);
    }
}

//  Reaps what has exited and reports it.
static void s_zygote_reap(cf_procs_t *p)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        s_zygote_forget(p, pid);
        s_msg_t rep = { .kind = S_REP_EXITED, .pid = pid, .value = status };
        s_send_msg(p->sock, &rep);
    }
}

__attribute__((noreturn)) static void s_zygote_main(cf_procs_t *p, pid_t supervisor)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != supervisor)
        _exit(1);
    s_reset_signals();
    //  Ended by its supervisor (QUIT, a closed socket, or death), never by
    //  a signal meant for the program's process group.
    s_ignore(SIGINT);
    s_ignore(SIGTERM);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int keep[] = { p->sock, p->started_wr };
    s_close_fds_except(keep, 2);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        _exit(1);
    for (int i = 0; i < p->count; i++)
        p->zygote_children[i] = 0;
    pid_t self = getpid();

    bool quit = false;
    while (!quit) {
        struct pollfd fds[2] = { { p->sock, POLLIN, 0 }, { sfd, POLLIN, 0 } };
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (fds[1].revents & POLLIN) {
            struct signalfd_siginfo info;
            while (read(sfd, &info, sizeof info) > 0)
                ;
            s_zygote_reap(p);
        }
        if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        s_msg_t cmd;
        ssize_t n = recv(p->sock, &cmd, sizeof cmd, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)sizeof cmd)
            break;    //  supervisor gone (0) or broken
        switch (cmd.kind) {
        case S_CMD_SPAWN: {
            cmd.suffix[sizeof cmd.suffix - 1] = '\0';
            int free_index = -1;
            for (int i = 0; i < p->count && free_index < 0; i++) {
                if (p->zygote_children[i] == 0)
                    free_index = i;
            }
            pid_t pid = free_index < 0 ? -1 : fork();
            if (pid == 0) {
                close(sfd);
                close(p->sock);
                s_child_main(p, self, cmd.slot, cmd.suffix);
            }
            s_msg_t rep = { .slot = cmd.slot };
            if (pid < 0) {
                rep.kind = S_REP_SPAWN_FAILED;
                rep.value = free_index < 0 ? EAGAIN : errno;
            }
            else {
                p->zygote_children[free_index] = pid;
                rep.kind = S_REP_SPAWNED;
                rep.pid = pid;
            }
            s_send_msg(p->sock, &rep);
            break;
        }
        case S_CMD_SIGNAL:
            s_zygote_signal_all(p, cmd.value);
            break;
        case S_CMD_QUIT:
            quit = true;
            break;
        default:
            break;
        }
    }
    //  Nothing outlives the zygote.
    s_zygote_signal_all(p, SIGKILL);
    for (int i = 0; i < p->count; i++) {
        if (p->zygote_children[i] > 0) {
            while (waitpid(p->zygote_children[i], NULL, 0) < 0 && errno == EINTR)
                ;
        }
    }
    _exit(0);
}

// ---------------------------------------------------------------------------
//  The supervisor

static void s_init_finish(cf_procs_t *p, cf_err_t err, const char *fmt, ...) CF_PRINTF(3, 4);

static void s_init_finish(cf_procs_t *p, cf_err_t err, const char *fmt, ...)
{
    pthread_mutex_lock(&p->lock);
    if (!p->init_done) {
        p->init_done = true;
        p->init_err = err;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->init_msg, sizeof p->init_msg, fmt, ap);
        va_end(ap);
        pthread_cond_broadcast(&p->cond);
    }
    pthread_mutex_unlock(&p->lock);
}

static bool s_init_pending(cf_procs_t *p)
{
    pthread_mutex_lock(&p->lock);
    bool pending = !p->init_done;
    pthread_mutex_unlock(&p->lock);
    return pending;
}

static void s_set_alive(cf_procs_t *p, int delta)
{
    pthread_mutex_lock(&p->lock);
    p->alive += delta;
    pthread_mutex_unlock(&p->lock);
}

//  Forks the zygote from this (the supervisor's) thread.
static cf_err_t s_zygote_start(cf_procs_t *p)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        return cf_error_set(CF_ESYS, "procs: socketpair: %s", strerror(errno));
    pid_t supervisor = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        close(sv[0]);
        close(sv[1]);
        return cf_error_set(CF_ESYS, "procs: cannot fork the zygote: %s", strerror(err));
    }
    if (pid == 0) {
        close(sv[0]);
        p->sock = sv[1];
        s_zygote_main(p, supervisor);
    }
    close(sv[1]);
    p->sock = sv[0];
    p->zygote = pid;
    return CF_OK;
}

static void s_spawn(cf_procs_t *p, int slot)
{
    s_slot_t *s = &p->slots[slot];
    s_msg_t cmd = { .kind = S_CMD_SPAWN, .slot = slot };
    snprintf(cmd.suffix, sizeof cmd.suffix, "%s-%" PRIu64, p->suffix_base, ++p->spawns);
    memcpy(s->suffix, cmd.suffix, sizeof s->suffix);
    s->respawn_ms = 0;
    for (size_t i = 0; i < s_ids_per_process(p); i++)
        atomic_store(&p->running[(size_t)slot * s_ids_per_process(p) + i], 0);
    if (!s_send_msg(p->sock, &cmd)) {
        cf_log_error(S_LOG, "cannot reach the zygote: %s", strerror(errno));
        s->respawn_ms = cf_clock_now_ms() + S_BACKOFF_MAX_MS;
        return;
    }
    s->spawning = true;
}

static int s_slot_of(cf_procs_t *p, pid_t pid)
{
    for (int i = 0; i < p->count; i++) {
        if (p->slots[i].pid == pid)
            return i;
    }
    return -1;
}

//  A worker is gone: tell on_exit, plan its replacement.
static void s_worker_exited(cf_procs_t *p, int slot, int status, bool stopping)
{
    s_slot_t *s = &p->slots[slot];
    pid_t pid = s->pid;
    int64_t now = cf_clock_now_ms();
    int64_t lived = now - s->spawned_ms;
    s_set_alive(p, -1);
    bool stopped = WIFEXITED(status) && WEXITSTATUS(status) == CF_PROCS_EXIT_STOPPED;
    if (WIFSIGNALED(status))
        cf_log_warn(S_LOG, "worker process %d (%s) killed by signal %d", (int)pid, s->identity,
                    WTERMSIG(status));
    else if (stopped)
        cf_log_info(S_LOG,
                    "worker process %d (%s) ended a task that did not stop within its grace: "
                    "replacing it",
                    (int)pid, s->identity);
    else if (!stopping && WIFEXITED(status) && WEXITSTATUS(status) != 0)
        cf_log_warn(S_LOG, "worker process %d (%s) exited with status %d", (int)pid, s->identity,
                    WEXITSTATUS(status));
    else
        cf_log_debug(S_LOG, "worker process %d (%s) exited", (int)pid, s->identity);
    if (p->on_exit) {
        uint64_t *running = malloc(s_ids_per_process(p) * sizeof *running);
        size_t n = 0;
        for (size_t i = 0; running && i < s_ids_per_process(p); i++) {
            uint64_t id = atomic_load(&p->running[(size_t)slot * s_ids_per_process(p) + i]);
            if (id)
                running[n++] = id;
        }
        p->on_exit(p->on_exit_arg, pid, s->identity, status, running, n);
        free(running);
    }
    bool was_started = s->started;
    s->pid = 0;
    s->started = false;
    s->identity[0] = '\0';
    if (stopping)
        return;
    if (!was_started && s_init_pending(p)) {
        s_init_finish(p, CF_ESYS, "procs: worker process %d exited before it started (%s %d)",
                      (int)pid, WIFSIGNALED(status) ? "signal" : "status",
                      WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        return;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == CF_PROCS_EXIT_REFUSED) {
        cf_log_error(S_LOG, "worker process %d: the broker refused its key; not replaced",
                     (int)pid);
        pthread_mutex_lock(&p->lock);
        p->refused = true;
        pthread_mutex_unlock(&p->lock);
        return;
    }
    if (lived < S_QUICK_EXIT_MS && !stopped) {
        s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : S_BACKOFF_MIN_MS;
        if (s->backoff_ms > S_BACKOFF_MAX_MS)
            s->backoff_ms = S_BACKOFF_MAX_MS;
        s->respawn_ms = now + s->backoff_ms;
        cf_log_warn(S_LOG, "worker process %d lived %" PRId64 " ms: replacing it in %d ms",
                    (int)pid, lived, s->backoff_ms);
    }
    else {
        s->backoff_ms = 0;
        s->respawn_ms = now;
    }
}

static void s_signal_workers(cf_procs_t *p, int sig)
{
    s_msg_t cmd = { .kind = S_CMD_SIGNAL, .value = sig };
    if (!s_send_msg(p->sock, &cmd))
        cf_log_error(S_LOG, "cannot reach the zygote to signal workers: %s", strerror(errno));
}

static void s_on_spawned(cf_procs_t *p, const s_msg_t *rep, bool stopping)
{
    if (rep->slot < 0 || rep->slot >= p->count)
        return;
    s_slot_t *s = &p->slots[rep->slot];
    s->spawning = false;
    if (rep->kind == S_REP_SPAWN_FAILED) {
        cf_log_error(S_LOG, "cannot fork a worker process: %s", strerror(rep->value));
        if (s_init_pending(p)) {
            s_init_finish(p, CF_ESYS, "procs: cannot fork a worker process: %s",
                          strerror(rep->value));
            return;
        }
        s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : S_BACKOFF_MIN_MS;
        if (s->backoff_ms > S_BACKOFF_MAX_MS)
            s->backoff_ms = S_BACKOFF_MAX_MS;
        s->respawn_ms = cf_clock_now_ms() + s->backoff_ms;
        return;
    }
    s->pid = rep->pid;
    s->started = false;
    for (int i = 0; i < p->count; i++) {
        if (p->early_started[i] == rep->pid) {
            p->early_started[i] = 0;
            s->started = true;
        }
    }
    s->spawned_ms = cf_clock_now_ms();
    snprintf(s->identity, sizeof s->identity, "p%d-%s", (int)rep->pid, s->suffix);
    s_set_alive(p, 1);
    cf_log_debug(S_LOG, "worker process %d (%s) forked", (int)rep->pid, s->identity);
    if (stopping)
        s_signal_workers(p, SIGTERM);    //  it missed the first round
}

//  Reads the pids of workers whose cf_worker started.
static void s_read_started(cf_procs_t *p)
{
    int32_t pids[64];
    ssize_t n;
    while ((n = read(p->started_rd, pids, sizeof pids)) > 0) {
        for (size_t i = 0; i < (size_t)n / sizeof pids[0]; i++) {
            int slot = s_slot_of(p, pids[i]);
            if (slot >= 0) {
                p->slots[slot].started = true;
                continue;
            }
            //  Its SPAWNED is still on the way: keep it (at most count are
            //  alive, so count places suffice; a full table drops the
            //  oldest, which cannot be waiting any more).
            int place = 0;
            for (int k = 0; k < p->count; k++) {
                if (p->early_started[k] == 0) {
                    place = k;
                    break;
                }
            }
            p->early_started[place] = pids[i];
        }
    }
    if (!s_init_pending(p))
        return;
    for (int i = 0; i < p->count; i++) {
        if (!p->slots[i].started)
            return;
    }
    s_init_finish(p, CF_OK, "%s", "");
}

//  The zygote vanished (killed from outside): its workers die with it
//  (PR_SET_PDEATHSIG). Reports them, reaps it. Returns false when the pool
//  cannot go on.
static bool s_zygote_lost(cf_procs_t *p, bool stopping)
{
    if (!stopping)
        cf_log_error(S_LOG, "the zygote (pid %d) is gone: its workers die with it", (int)p->zygote);
    close(p->sock);
    p->sock = -1;
    while (waitpid(p->zygote, NULL, 0) < 0 && errno == EINTR)
        ;
    p->zygote = 0;
    for (int i = 0; i < p->count; i++) {
        p->slots[i].spawning = false;
        if (p->slots[i].pid > 0)
            s_worker_exited(p, i, SIGKILL, stopping);    //  a wait status: killed by SIGKILL
    }
    if (stopping)
        return false;
    if (s_init_pending(p)) {
        s_init_finish(p, CF_ESYS, "%s", "procs: the zygote died while the pool started");
        return false;
    }
    if (s_zygote_start(p) != CF_OK) {
        cf_log_error(S_LOG, "%s: the pool has no workers any more", cf_last_error());
        return false;
    }
    return true;
}

//  Milliseconds until the earliest of the deadlines that are set (> 0).
static int s_timeout(int64_t now, const int64_t *deadlines, size_t n)
{
    int64_t first = 0;
    for (size_t i = 0; i < n; i++) {
        if (deadlines[i] > 0 && (first == 0 || deadlines[i] < first))
            first = deadlines[i];
    }
    if (first == 0)
        return -1;
    int64_t left = first - now;
    return left <= 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
}

static void *s_supervisor_main(void *arg)
{
    cf_procs_t *p = arg;
    //  pthread_once state forked mid-flight would hang the children: settle
    //  the registry's host name here, before anything forks.
    (void)cf_registry_hostname();
    if (s_zygote_start(p) != CF_OK) {
        s_init_finish(p, cf_last_err(), "%s", cf_last_error());
        return NULL;
    }
    for (int i = 0; i < p->count; i++)
        s_spawn(p, i);
    int64_t start_deadline = cf_clock_now_ms() + S_START_TIMEOUT_MS;
    bool stopping = false;
    bool killed = false;
    int64_t kill_at = 0, give_up_at = 0;

    while (true) {
        int64_t now = cf_clock_now_ms();
        pthread_mutex_lock(&p->lock);
        bool stop_asked = p->stopping;
        int grace_ms = p->grace_ms;
        int alive = p->alive;
        pthread_mutex_unlock(&p->lock);

        if (stop_asked && !stopping) {
            stopping = true;
            kill_at = now + grace_ms;
            s_signal_workers(p, SIGTERM);
        }
        if (stopping) {
            bool spawning = false;
            for (int i = 0; i < p->count; i++)
                spawning = spawning || p->slots[i].spawning;
            if (alive == 0 && !spawning)
                break;
            if (!killed && now >= kill_at) {
                cf_log_warn(S_LOG, "%d worker processes still running after %d ms: SIGKILL", alive,
                            grace_ms);
                s_signal_workers(p, SIGKILL);
                killed = true;
                give_up_at = now + S_KILL_WAIT_MS;
            }
            if (killed && now >= give_up_at) {
                cf_log_error(S_LOG,
                             "%d worker processes not reported after SIGKILL; ending the "
                             "zygote reaps them",
                             alive);
                break;
            }
        }
        else {
            if (s_init_pending(p) && now >= start_deadline)
                s_init_finish(p, CF_ETIMEDOUT, "procs: worker processes did not start within %d ms",
                              S_START_TIMEOUT_MS);
            for (int i = 0; i < p->count; i++) {
                s_slot_t *s = &p->slots[i];
                if (s->respawn_ms && s->respawn_ms <= now && !s->pid && !s->spawning)
                    s_spawn(p, i);
            }
        }

        int64_t deadlines[4] = {
            stopping ? 0 : (s_init_pending(p) ? start_deadline : 0),
            stopping && !killed ? kill_at : 0,
            killed ? give_up_at : 0,
            0,
        };
        if (!stopping) {
            for (int i = 0; i < p->count; i++) {
                int64_t r = p->slots[i].respawn_ms;
                if (r && (deadlines[3] == 0 || r < deadlines[3]))
                    deadlines[3] = r;
            }
        }
        struct pollfd fds[3] = {
            { p->sock, POLLIN, 0 },
            { p->started_rd, POLLIN, 0 },
            { p->wake_fd, POLLIN, 0 },
        };
        int rc = poll(fds, 3, s_timeout(now, deadlines, 4));
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            cf_log_error(S_LOG, "poll: %s", strerror(errno));
            break;
        }
        if (fds[2].revents & POLLIN) {
            uint64_t v;
            while (read(p->wake_fd, &v, sizeof v) < 0 && errno == EINTR)
                ;
        }
        if (fds[1].revents & POLLIN)
            s_read_started(p);
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            bool lost = false;
            while (true) {
                s_msg_t rep;
                ssize_t n = recv(p->sock, &rep, sizeof rep, MSG_DONTWAIT);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n < 0 && errno == EAGAIN)
                    break;
                if (n != (ssize_t)sizeof rep) {
                    lost = true;
                    break;
                }
                if (rep.kind == S_REP_EXITED) {
                    //  A worker writes "started" before it can exit: read
                    //  it first, or a quick exit would look like a failed
                    //  start.
                    s_read_started(p);
                    int slot = s_slot_of(p, rep.pid);
                    if (slot >= 0)
                        s_worker_exited(p, slot, rep.value, stopping);
                }
                else
                    s_on_spawned(p, &rep, stopping);
            }
            //  Started reports may trail the exits they preceded; read them
            //  before judging the start.
            s_read_started(p);
            if (lost && !s_zygote_lost(p, stopping))
                break;
        }
    }

    if (p->zygote > 0) {
        s_msg_t quit = { .kind = S_CMD_QUIT };
        s_send_msg(p->sock, &quit);
        while (waitpid(p->zygote, NULL, 0) < 0 && errno == EINTR)
            ;
        p->zygote = 0;
        //  What the zygote killed and reaped on its way out.
        for (int i = 0; i < p->count; i++) {
            if (p->slots[i].pid > 0)
                s_worker_exited(p, i, SIGKILL, true);
        }
    }
    if (p->sock >= 0) {
        close(p->sock);
        p->sock = -1;
    }
    //  Whatever made the loop end, cf_procs_new must not wait forever.
    s_init_finish(p, CF_ESYS, "%s", "procs: the supervisor stopped");
    return NULL;
}

// ---------------------------------------------------------------------------
//  Public

//  Frees a stopped supervisor, or a half-built one (cf_procs_new's
//  failures come here).
static void s_free(cf_procs_t *p)
{
    if (p->wake_fd >= 0)
        close(p->wake_fd);
    if (p->started_rd >= 0)
        close(p->started_rd);
    if (p->started_wr >= 0)
        close(p->started_wr);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p->zygote_children);
    free(p->early_started);
    free(p->slots);
    if (p->running)
        munmap((void *)p->running, p->running_size);
    free(p->endpoint);
    for (int i = 0; p->endpoints && i < p->endpoint_count; i++)
        free(p->endpoints[i]);
    free(p->endpoints);
    free(p);
}

static void s_stop(cf_procs_t *p, int grace_ms)
{
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    p->grace_ms = grace_ms > 0 ? grace_ms : 0;
    pthread_mutex_unlock(&p->lock);
    uint64_t one = 1;
    while (write(p->wake_fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    pthread_join(p->thread, NULL);
}

cf_procs_t *cf_procs_new(const cf_procs_config_t *config)
{
    if (!config || config->count < 1 || config->threads < 1) {
        cf_error_set(CF_EINVAL, "procs: count and threads must be >= 1, got %d and %d",
                     config ? config->count : 0, config ? config->threads : 0);
        return NULL;
    }
    if ((!config->endpoint || !*config->endpoint) && config->endpoint_count <= 0) {
        cf_error_set(CF_EINVAL, "procs: a broker endpoint is required");
        return NULL;
    }
    if (config->heartbeat_ivl_ms < 0 || config->heartbeat_liveness < 0) {
        cf_error_set(CF_EINVAL, "procs: heartbeat interval and liveness must be >= 0");
        return NULL;
    }
    if (config->max_tasks_per_worker < 0) {
        cf_error_set(CF_EINVAL, "procs: max_tasks_per_worker must be >= 0, got %d",
                     config->max_tasks_per_worker);
        return NULL;
    }
    cf_procs_t *p = calloc(1, sizeof *p);
    if (!p) {
        cf_error_set(CF_ENOMEM, "out of memory");
        return NULL;
    }
    p->wake_fd = p->started_rd = p->started_wr = p->sock = -1;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->count = config->count;
    p->threads = config->threads;
    p->initializer = config->initializer;
    p->initarg = config->initarg;
    p->max_tasks = config->max_tasks_per_worker;
    p->exit_on_broker_loss = config->exit_on_broker_loss;
    p->announce_functions = config->announce_functions;
    p->ivl_ms = config->heartbeat_ivl_ms;
    p->liveness = config->heartbeat_liveness;
    p->on_exit = config->on_exit;
    p->on_exit_arg = config->on_exit_arg;
    p->socket_setup = config->socket_setup;
    p->socket_setup_arg = config->socket_setup_arg;
    p->endpoint = strdup(config->endpoint_count > 0 ? config->endpoints[0] : config->endpoint);
    if (config->endpoint_count > 1) {
        p->endpoints = calloc((size_t)config->endpoint_count, sizeof *p->endpoints);
        for (int i = 0; p->endpoints && i < config->endpoint_count; i++) {
            p->endpoints[i] = strdup(config->endpoints[i]);
            if (!p->endpoints[i]) {
                cf_error_set(CF_ENOMEM, "out of memory");
                goto failed;
            }
            p->endpoint_count = i + 1;
        }
        if (!p->endpoints) {
            cf_error_set(CF_ENOMEM, "out of memory");
            goto failed;
        }
    }
    p->slots = calloc((size_t)p->count, sizeof *p->slots);
    p->zygote_children = calloc((size_t)p->count, sizeof *p->zygote_children);
    p->early_started = calloc((size_t)p->count, sizeof *p->early_started);
    if (!p->endpoint || !p->slots || !p->zygote_children || !p->early_started) {
        cf_error_set(CF_ENOMEM, "out of memory");
        goto failed;
    }
    p->running_size = (size_t)p->count * s_ids_per_process(p) * sizeof *p->running;
    void *shared = mmap(NULL, p->running_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                        -1, 0);
    if (shared == MAP_FAILED) {
        cf_error_set(CF_ESYS, "procs: shared memory: %s", strerror(errno));
        goto failed;
    }
    p->running = shared;
    snprintf(p->suffix_base, sizeof p->suffix_base, "%.64s-%08" PRIx32, cf_registry_hostname(),
             (uint32_t)cf_random_u64());

    int started[2];
    p->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->wake_fd < 0 || pipe2(started, O_CLOEXEC) != 0) {
        cf_error_set(CF_ESYS, "procs: %s", strerror(errno));
        goto failed;
    }
    p->started_rd = started[0];
    p->started_wr = started[1];
    if (fcntl(p->started_rd, F_SETFL, O_NONBLOCK) != 0) {
        cf_error_set(CF_ESYS, "procs: fcntl: %s", strerror(errno));
        goto failed;
    }
    int rc = pthread_create(&p->thread, NULL, s_supervisor_main, p);
    if (rc != 0) {
        cf_error_set(CF_ESYS, "procs: cannot start the supervisor thread: %s", strerror(rc));
        goto failed;
    }
    pthread_mutex_lock(&p->lock);
    while (!p->init_done)
        pthread_cond_wait(&p->cond, &p->lock);
    cf_err_t err = p->init_err;
    char message[sizeof p->init_msg];
    memcpy(message, p->init_msg, sizeof message);
    pthread_mutex_unlock(&p->lock);
    if (err != CF_OK) {
        s_stop(p, 0);
        cf_error_set(err, "%s", message);
        goto failed;
    }
    cf_log_info(S_LOG, "%d worker processes started (%d threads each)", p->count, p->threads);
    return p;

failed:
    s_free(p);
    return NULL;
}

bool cf_procs_refused(cf_procs_t *p)
{
    assert(p);
    pthread_mutex_lock(&p->lock);
    bool refused = p->refused;
    pthread_mutex_unlock(&p->lock);
    return refused;
}

int cf_procs_alive(cf_procs_t *p)
{
    assert(p);
    pthread_mutex_lock(&p->lock);
    int alive = p->alive;
    pthread_mutex_unlock(&p->lock);
    return alive;
}

void cf_procs_destroy(cf_procs_t **pp, int grace_ms)
{
    if (!pp || !*pp)
        return;
    cf_procs_t *p = *pp;
    *pp = NULL;
    s_stop(p, grace_ms);
    s_free(p);
}
