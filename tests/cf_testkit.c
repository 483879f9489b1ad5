//  cf_testkit: children, ready lines, deadlines and cleanup for the
//  integration and fault tests. See cf_testkit.h.
//
//  Children are started with fork + exec rather than posix_spawn because
//  each needs two things posix_spawn cannot do: PR_SET_PDEATHSIG, so a test
//  killed by CTest's timeout leaves no daemon behind, and its own process
//  group, so cleanup also reaches what a daemon forked (cf-worker --procs).
//  Between fork and exec the child only calls async-signal-safe functions:
//  the test process may already run threads (an executor).

#define _GNU_SOURCE    //  pipe2, asprintf, program_invocation_short_name

#include "cf_testkit.h"

#include "cf_proto.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

//  Lines of a child's log shown when a wait fails.
#define S_LOG_TAIL_LINES 40
//  A daemon's ready line and other stdout lines are short; a longer line is
//  cut (its start is what we match).
#define S_LINE_MAX       4096
//  Arguments a start helper accepts.
#define S_MAX_ARGS       64

struct cf_testkit_proc {
    cf_testkit_t *kit;
    cf_testkit_proc_t *next;    //  the kit's list
    char *label;                //  "broker-1"
    char *log_path;             //  dir/label.log
    pid_t pid;                  //  0 once reaped
    pid_t pgid;                 //  its process group, kept after the reap:
                                //  what it forked may still be in it
    int status;                 //  wait status once reaped
    int out_fd;                 //  read end of its stdout pipe, -1 when closed
    char buf[S_LINE_MAX];       //  stdout bytes not yet split into lines
    size_t buf_len;
    char line[S_LINE_MAX];     //  the last line wait_line returned
    char field[S_LINE_MAX];    //  the last value cf_testkit_field returned
    char *clients;             //  broker endpoints from its ready line
    char *workers;
};

typedef struct s_string {
    struct s_string *next;
    char text[];
} s_string_t;

struct cf_testkit {
    char *dir;                   //  the temporary directory
    cf_testkit_proc_t *procs;    //  every child started, newest first
    s_string_t *strings;         //  paths handed out, freed with the kit
    unsigned next_label;         //  numbers labels
};

// ---------------------------------------------------------------------------
//  Small helpers

int64_t cf_testkit_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cf_testkit_nap_ms(int ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int s_ms_left(int64_t deadline_ms)
{
    int64_t left = deadline_ms - cf_testkit_now_ms();
    return left < 0 ? 0 : (int)left;
}

static char *s_strdup(const char *text)
{
    char *copy = strdup(text);
    assert_non_null(copy);
    return copy;
}

static const char *s_intern(cf_testkit_t *kit, const char *fmt, ...) CF_PRINTF(2, 3);

static const char *s_intern(cf_testkit_t *kit, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert_true(len >= 0);
    s_string_t *s = malloc(sizeof *s + (size_t)len + 1);
    assert_non_null(s);
    va_start(ap, fmt);
    vsnprintf(s->text, (size_t)len + 1, fmt, ap);
    va_end(ap);
    s->next = kit->strings;
    kit->strings = s;
    return s->text;
}

//  Moves a malloc'd text (NULL: "") into the kit's keeping.
static const char *s_keep(cf_testkit_t *kit, char *text)
{
    size_t len = text ? strlen(text) : 0;
    s_string_t *s = malloc(sizeof *s + len + 1);
    assert_non_null(s);
    memcpy(s->text, text ? text : "", len + 1);
    free(text);
    s->next = kit->strings;
    kit->strings = s;
    return s->text;
}

bool cf_testkit_wait_until(cf_testkit_cond_fn *cond, void *arg, int timeout_ms)
{
    int64_t deadline = cf_testkit_now_ms() + timeout_ms;
    //  Naps grow from 2 ms to 50 ms: quick when the condition is near, cheap
    //  on the shared machine when it is not.
    int nap_ms = 2;
    for (;;) {
        if (cond(arg))
            return true;
        if (cf_testkit_now_ms() >= deadline)
            return false;
        cf_testkit_nap_ms(nap_ms);
        if (nap_ms < 50)
            nap_ms *= 2;
    }
}

char *cf_testkit_read_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    if (!text) {
        close(fd);
        return NULL;
    }
    for (;;) {
        if (len + 1 >= cap) {
            char *bigger = realloc(text, cap * 2);
            if (!bigger) {
                free(text);
                close(fd);
                return NULL;
            }
            text = bigger;
            cap *= 2;
        }
        ssize_t n = read(fd, text + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            free(text);
            close(fd);
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    text[len] = '\0';
    return text;
}

long cf_testkit_read_number(const char *path)
{
    char *text = cf_testkit_read_file(path);
    if (!text)
        return -1;
    //  A task writes "1234\n" in one write; until the newline is there the
    //  number may be incomplete.
    long value = -1;
    char *end = NULL;
    errno = 0;
    long parsed = strtol(text, &end, 10);
    if (errno == 0 && end != text && *end == '\n' && parsed > 0)
        value = parsed;
    free(text);
    return value;
}

char *cf_testkit_line_with(const char *text, const char *needle)
{
    if (!text)
        return NULL;
    const char *hit = strstr(text, needle);
    if (!hit)
        return NULL;
    const char *start = hit;
    while (start > text && start[-1] != '\n')
        start--;
    const char *end = strchr(hit, '\n');
    size_t len = end ? (size_t)(end - start) : strlen(start);
    return strndup(start, len);
}

bool cf_testkit_in_order(const char *text, const char *const *needles)
{
    if (!text)
        return false;
    const char *at = text;
    for (size_t i = 0; needles[i]; i++) {
        const char *hit = strstr(at, needles[i]);
        if (!hit)
            return false;
        at = hit + strlen(needles[i]);
    }
    return true;
}

size_t cf_testkit_count(const char *text, const char *needle)
{
    size_t count = 0;
    size_t len = strlen(needle);
    if (!text || len == 0)
        return 0;
    for (const char *at = strstr(text, needle); at; at = strstr(at + len, needle))
        count++;
    return count;
}

long cf_testkit_rss_kib(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    char *text = cf_testkit_read_file(path);
    if (!text)
        return -1;
    long kib = -1;
    const char *line = strstr(text, "\nVmRSS:");
    if (line)
        kib = strtol(line + strlen("\nVmRSS:"), NULL, 10);
    free(text);
    return kib;
}

// ---------------------------------------------------------------------------
//  The kit

static int s_remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *entry;
    int rc = 0;
    while ((entry = readdir(d))) {
        if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, ".."))
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            rc |= s_remove_tree(path);
        else if (unlink(path) < 0)
            rc = -1;
    }
    closedir(d);
    if (rmdir(dir) < 0)
        rc = -1;
    return rc;
}

cf_testkit_t *cf_testkit_new(const char *name)
{
    //  Daemons are stopped by signals and talk over sockets; a child that
    //  dies while we write to it must not kill the test.
    signal(SIGPIPE, SIG_IGN);
    cf_testkit_t *kit = calloc(1, sizeof *kit);
    if (!kit)
        return NULL;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    char templ[4096];
    snprintf(templ, sizeof templ, "%s/cf-%s-XXXXXX", tmp, name);
    if (!mkdtemp(templ)) {
        free(kit);
        return NULL;
    }
    kit->dir = strdup(templ);
    if (!kit->dir) {
        rmdir(templ);
        free(kit);
        return NULL;
    }
    return kit;
}

static void s_proc_close_stdout(cf_testkit_proc_t *proc)
{
    if (proc->out_fd >= 0) {
        close(proc->out_fd);
        proc->out_fd = -1;
    }
}

static bool s_reap(cf_testkit_proc_t *proc, bool block)
{
    if (proc->pid <= 0)
        return true;
    int status = 0;
    pid_t rc;
    do
        rc = waitpid(proc->pid, &status, block ? 0 : WNOHANG);
    while (rc < 0 && errno == EINTR);
    if (rc == proc->pid || (rc < 0 && errno == ECHILD)) {
        proc->status = rc == proc->pid ? status : -1;
        proc->pid = 0;
        return true;
    }
    return false;
}

void cf_testkit_destroy(cf_testkit_t **kit_p)
{
    if (!kit_p || !*kit_p)
        return;
    cf_testkit_t *kit = *kit_p;
    *kit_p = NULL;
    //  Kill whole process groups first (a cf-worker's children too), then
    //  reap: SIGKILL cannot be ignored, so the blocking waits end.
    for (cf_testkit_proc_t *p = kit->procs; p; p = p->next) {
        if (p->pgid > 0)
            kill(-p->pgid, SIGKILL);
        if (p->pid > 0)
            kill(p->pid, SIGKILL);
    }
    bool verbose = getenv("CF_TEST_VERBOSE") != NULL;
    if (verbose)
        cf_testkit_dump_logs(kit);
    while (kit->procs) {
        cf_testkit_proc_t *p = kit->procs;
        kit->procs = p->next;
        s_reap(p, true);
        s_proc_close_stdout(p);
        free(p->label);
        free(p->log_path);
        free(p->clients);
        free(p->workers);
        free(p);
    }
    while (kit->strings) {
        s_string_t *s = kit->strings;
        kit->strings = s->next;
        free(s);
    }
    if (getenv("CF_TEST_KEEP"))
        fprintf(stderr, "cf_testkit: kept %s\n", kit->dir);
    else
        s_remove_tree(kit->dir);
    free(kit->dir);
    free(kit);
}

int cf_testkit_setup(void **state)
{
    const char *name = program_invocation_short_name;
    cf_testkit_t *kit = cf_testkit_new(name && *name ? name : "test");
    if (!kit) {
        fprintf(stderr, "cf_testkit: cannot create a temporary directory: %s\n", strerror(errno));
        return -1;
    }
    *state = kit;
    return 0;
}

int cf_testkit_teardown(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_destroy(&kit);
    *state = NULL;
    return 0;
}

const char *cf_testkit_dir(cf_testkit_t *kit)
{
    return kit->dir;
}

const char *cf_testkit_path(cf_testkit_t *kit, const char *name)
{
    return s_intern(kit, "%s/%s", kit->dir, name);
}

const char *cf_testkit_env(const char *name)
{
    const char *value = getenv(name);
    if (!value || !*value)
        fail_msg("%s is not set: run this test through ctest (cmake/cf_test.cmake sets it; "
                 "CF_BROKER_BIN, CF_WORKER_BIN and CF_TASKS_LIB need cf-broker and cf-worker "
                 "to be built)",
                 name);
    return value;
}

const char *cf_testkit_example(cf_testkit_t *kit, const char *name)
{
    const char *path = s_intern(kit, "%s/%s", cf_testkit_env("CF_EXAMPLES_DIR"), name);
    if (access(path, X_OK) < 0)
        fail_msg("example %s is not built (%s)", path, strerror(errno));
    return path;
}

void cf_testkit_dump_logs(cf_testkit_t *kit)
{
    for (cf_testkit_proc_t *p = kit->procs; p; p = p->next) {
        char *text = cf_testkit_read_file(p->log_path);
        if (!text)
            continue;
        //  Only the tail: a --verbose daemon writes a lot.
        size_t len = strlen(text);
        const char *start = text + len;
        int lines = 0;
        while (start > text && lines <= S_LOG_TAIL_LINES) {
            start--;
            if (*start == '\n')
                lines++;
        }
        if (start != text)
            start++;
        fprintf(stderr, "---- %s (%s) stderr, last lines ----\n%s%s", p->label,
                p->pid > 0 ? "running" : "exited", start, len && text[len - 1] != '\n' ? "\n" : "");
        free(text);
    }
}

// ---------------------------------------------------------------------------
//  Children

pid_t cf_testkit_pid(cf_testkit_proc_t *proc)
{
    return proc->pid;
}

const char *cf_testkit_label(cf_testkit_proc_t *proc)
{
    return proc->label;
}

const char *cf_testkit_log_path(cf_testkit_proc_t *proc)
{
    return proc->log_path;
}

char *cf_testkit_log(cf_testkit_proc_t *proc)
{
    return cf_testkit_read_file(proc->log_path);
}

//  Prepares the pipe and log of a new child. On error everything is undone.
static cf_testkit_proc_t *s_proc_new(cf_testkit_t *kit, const char *label, int pipe_fds[2],
                                     int *log_fd)
{
    cf_testkit_proc_t *proc = calloc(1, sizeof *proc);
    if (!proc)
        return NULL;
    proc->kit = kit;
    proc->out_fd = -1;
    char name[256];
    snprintf(name, sizeof name, "%s-%u", label, ++kit->next_label);
    proc->label = strdup(name);
    if (proc->label && asprintf(&proc->log_path, "%s/%s.log", kit->dir, name) < 0)
        proc->log_path = NULL;
    if (!proc->label || !proc->log_path)
        goto failed;
    *log_fd = open(proc->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (*log_fd < 0)
        goto failed;
    if (pipe2(pipe_fds, O_CLOEXEC) < 0) {
        int saved = errno;
        close(*log_fd);
        errno = saved;
        goto failed;
    }
    return proc;
failed:;
    int saved = errno;
    free(proc->label);
    free(proc->log_path);
    free(proc);
    errno = saved;
    return NULL;
}

//  In the child, before exec or fn: its own process group, death with the
//  test, stdout on the pipe, stderr in the log. Async-signal-safe only.
static void s_child_setup(pid_t parent, int pipe_fds[2], int log_fd, int stdin_fd)
{
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);    //  the test died before prctl took effect
    if (dup2(pipe_fds[1], STDOUT_FILENO) < 0 || dup2(log_fd, STDERR_FILENO) < 0)
        _exit(127);
    if (stdin_fd >= 0 && dup2(stdin_fd, STDIN_FILENO) < 0)
        _exit(127);
    //  The rest are O_CLOEXEC for exec; a forked function closes them to
    //  keep its copy of the parent's pipes from holding them open.
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    close(log_fd);
    signal(SIGPIPE, SIG_DFL);
}

static cf_testkit_proc_t *s_start(cf_testkit_t *kit, const char *label, const char *const *argv,
                                  cf_testkit_child_fn *fn, void *arg)
{
    int pipe_fds[2];
    int log_fd;
    cf_testkit_proc_t *proc = s_proc_new(kit, label, pipe_fds, &log_fd);
    if (!proc)
        return NULL;
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t parent = getpid();
    fflush(NULL);    //  no buffered test output duplicated in a fork
    pid_t pid = fork();
    if (pid == 0) {
        s_child_setup(parent, pipe_fds, log_fd, null_fd);
        if (fn) {
            int rc = fn(arg);
            fflush(NULL);
            _exit(rc);
        }
        execv(argv[0], (char *const *)argv);
        //  Only write(2) here: the message lands in the child's log.
        static const char msg[] = "cf_testkit: exec failed\n";
        ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)ignored;
        _exit(127);
    }
    int saved = errno;
    close(pipe_fds[1]);
    close(log_fd);
    if (null_fd >= 0)
        close(null_fd);
    if (pid < 0) {
        close(pipe_fds[0]);
        free(proc->label);
        free(proc->log_path);
        free(proc);
        errno = saved;
        return NULL;
    }
    //  Also set the group from here: whichever of us runs first, the group
    //  exists before the test might signal it.
    setpgid(pid, pid);
    proc->pid = pid;
    proc->pgid = pid;
    proc->out_fd = pipe_fds[0];
    fcntl(proc->out_fd, F_SETFL, fcntl(proc->out_fd, F_GETFL) | O_NONBLOCK);
    proc->next = kit->procs;
    kit->procs = proc;
    return proc;
}

cf_testkit_proc_t *cf_testkit_spawn(cf_testkit_t *kit, const char *label, const char *const *argv)
{
    return s_start(kit, label, argv, NULL, NULL);
}

cf_testkit_proc_t *cf_testkit_fork(cf_testkit_t *kit, const char *label, cf_testkit_child_fn *fn,
                                   void *arg)
{
    return s_start(kit, label, NULL, fn, arg);
}

//  Takes one complete line out of buf into proc->line; false if none.
static bool s_take_line(cf_testkit_proc_t *proc)
{
    char *nl = memchr(proc->buf, '\n', proc->buf_len);
    if (!nl) {
        if (proc->buf_len < sizeof proc->buf)
            return false;
        nl = proc->buf + proc->buf_len - 1;    //  an over-long line: cut it
    }
    size_t len = (size_t)(nl - proc->buf);
    memcpy(proc->line, proc->buf, len);
    proc->line[len] = '\0';
    proc->buf_len -= len + 1;
    memmove(proc->buf, nl + 1, proc->buf_len);
    return true;
}

const char *cf_testkit_wait_line(cf_testkit_proc_t *proc, const char *prefix, int timeout_ms)
{
    int64_t deadline = cf_testkit_now_ms() + timeout_ms;
    size_t prefix_len = strlen(prefix);
    for (;;) {
        while (s_take_line(proc)) {
            if (!strncmp(proc->line, prefix, prefix_len))
                return proc->line;
        }
        if (proc->out_fd < 0)
            return NULL;
        struct pollfd item = { .fd = proc->out_fd, .events = POLLIN };
        int rc = poll(&item, 1, s_ms_left(deadline));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            return NULL;
        if (rc == 0)
            return NULL;    //  timed out
        ssize_t n = read(proc->out_fd, proc->buf + proc->buf_len, sizeof proc->buf - proc->buf_len);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            //  The child closed stdout (exited): a last unterminated line
            //  still counts.
            s_proc_close_stdout(proc);
            if (proc->buf_len > 0 && proc->buf_len < sizeof proc->buf)
                proc->buf[proc->buf_len++] = '\n';
            continue;
        }
        proc->buf_len += (size_t)n;
    }
}

const char *cf_testkit_field(cf_testkit_proc_t *proc, const char *key)
{
    size_t key_len = strlen(key);
    const char *at = proc->line;
    while ((at = strstr(at, key))) {
        bool starts_word = at == proc->line || at[-1] == ' ';
        if (starts_word && at[key_len] == '=') {
            const char *value = at + key_len + 1;
            size_t len = strcspn(value, " \t");
            memcpy(proc->field, value, len);
            proc->field[len] = '\0';
            return proc->field;
        }
        at += key_len;
    }
    return NULL;
}

bool cf_testkit_alive(cf_testkit_proc_t *proc)
{
    return !s_reap(proc, false);
}

bool cf_testkit_signal(cf_testkit_proc_t *proc, int sig)
{
    if (proc->pid <= 0)
        return false;
    return kill(proc->pid, sig) == 0;
}

bool cf_testkit_wait_exit(cf_testkit_proc_t *proc, int timeout_ms, int *status)
{
    int64_t deadline = cf_testkit_now_ms() + timeout_ms;
    int nap_ms = 1;
    for (;;) {
        if (s_reap(proc, false)) {
            if (status)
                *status = proc->status;
            return true;
        }
        if (cf_testkit_now_ms() >= deadline)
            return false;
        cf_testkit_nap_ms(nap_ms);
        if (nap_ms < 20)
            nap_ms *= 2;
    }
}

int cf_testkit_stop(cf_testkit_proc_t *proc, int timeout_ms)
{
    int status = -1;
    if (proc->pid > 0) {
        pid_t pid = proc->pid;
        kill(pid, SIGTERM);
        if (!cf_testkit_wait_exit(proc, timeout_ms, &status)) {
            fprintf(stderr, "cf_testkit: %s (pid %d) ignored SIGTERM for %d ms: SIGKILL\n",
                    proc->label, (int)pid, timeout_ms);
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            s_reap(proc, true);
            status = proc->status;
        }
    }
    else
        status = proc->status;
    s_proc_close_stdout(proc);
    return status;
}

void cf_testkit_kill(cf_testkit_proc_t *proc)
{
    if (proc->pid > 0) {
        kill(proc->pid, SIGKILL);
        s_reap(proc, true);
    }
}

// ---------------------------------------------------------------------------
//  Daemons

static cf_testkit_proc_t *s_start_daemon(cf_testkit_t *kit, const char *label,
                                         const char *const *argv)
{
    cf_testkit_proc_t *proc = cf_testkit_spawn(kit, label, argv);
    if (!proc)
        fail_msg("cannot start %s: %s", argv[0], strerror(errno));
    const char *line = cf_testkit_wait_line(proc, "ready", CF_TESTKIT_READY_MS);
    if (!line) {
        bool alive = cf_testkit_alive(proc);
        cf_testkit_dump_logs(kit);
        fail_msg("%s (%s) printed no ready line within %d ms (%s)", proc->label, argv[0],
                 CF_TESTKIT_READY_MS, alive ? "still running" : "it exited");
    }
    return proc;
}

//  A loopback port below the kernel's ephemeral range that nothing holds
//  now, as "tcp://127.0.0.1:PORT" in out; "tcp://127.0.0.1:*" when the range
//  leaves no room below it. Why: tests restart a broker on the endpoint it
//  had, and its peers keep dialling it meanwhile. An ephemeral port is
//  free for anyone's bind(0) in that window (another test's broker, the
//  relay of bench_smoke_relay, which then got the peers of a restarting
//  broker and hung), and the kernel never hands out these.
static void s_reserved_endpoint(char *out, size_t size)
{
    int low = 0, high = 0;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d %d", &low, &high) != 2)
            low = 0;
        fclose(f);
    }
    snprintf(out, size, "tcp://127.0.0.1:*");
    int first = low - 12000 > 10000 ? low - 12000 : 10000;
    if (low - first < 1000)
        return;
    static unsigned seed;
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    for (int attempt = 0; attempt < 64; attempt++) {
        int port = first + (int)(rand_r(&seed) % (unsigned)(low - first));
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in addr = { .sin_family = AF_INET,
                                    .sin_port = htons((uint16_t)port),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        bool free_now = bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
        close(fd);
        if (free_now) {
            snprintf(out, size, "tcp://127.0.0.1:%d", port);
            return;
        }
    }
}

//  The endpoint a broker flag gets: the caller's, unless it asks for any
//  loopback port, which becomes a reserved one.
static const char *s_broker_endpoint(const char *const *extra, const char *flag, char *buf,
                                     size_t size)
{
    for (size_t i = 0; extra && extra[i]; i++)
        if (!strcmp(extra[i], flag) && extra[i + 1] && strcmp(extra[i + 1], "tcp://127.0.0.1:*"))
            return extra[i + 1];
    s_reserved_endpoint(buf, size);
    return buf;
}

cf_testkit_proc_t *cf_testkit_start_brokerv(cf_testkit_t *kit, const char *const *extra)
{
    const char *argv[S_MAX_ARGS + 8];
    char clients_ep[64], workers_ep[64];
    cf_testkit_proc_t *broker = NULL;
    //  Another test may take a reserved port between our look and the
    //  broker's bind: then the broker exits, and we pick again.
    for (int attempt = 0; !broker; attempt++) {
        size_t n = 0;
        argv[n++] = cf_testkit_env("CF_BROKER_BIN");
        argv[n++] = "--clients";
        argv[n++] = s_broker_endpoint(extra, "--clients", clients_ep, sizeof clients_ep);
        argv[n++] = "--workers";
        argv[n++] = s_broker_endpoint(extra, "--workers", workers_ep, sizeof workers_ep);
        for (size_t i = 0; extra && extra[i]; i++) {
            if (!strcmp(extra[i], "--clients") || !strcmp(extra[i], "--workers")) {
                if (extra[i + 1])
                    i++;
                continue;
            }
            assert_true(n < S_MAX_ARGS);
            argv[n++] = extra[i];
        }
        argv[n] = NULL;
        bool ours = argv[2] == clients_ep || argv[4] == workers_ep;
        if (!ours || attempt == 3) {
            broker = s_start_daemon(kit, "broker", argv);
            break;
        }
        cf_testkit_proc_t *proc = cf_testkit_spawn(kit, "broker", argv);
        if (!proc)
            fail_msg("cannot start %s: %s", argv[0], strerror(errno));
        if (cf_testkit_wait_line(proc, "ready", CF_TESTKIT_READY_MS))
            broker = proc;
        else if (cf_testkit_alive(proc)) {
            cf_testkit_dump_logs(kit);
            fail_msg("broker (%s) printed no ready line within %d ms (still running)", argv[0],
                     CF_TESTKIT_READY_MS);
        }
    }
    const char *clients = cf_testkit_field(broker, "clients");
    if (!clients || strstr(clients, ":*")) {
        cf_testkit_dump_logs(kit);
        fail_msg("broker ready line has no resolved clients endpoint: '%s'", broker->line);
    }
    broker->clients = s_strdup(clients);
    const char *workers = cf_testkit_field(broker, "workers");
    if (!workers || strstr(workers, ":*")) {
        cf_testkit_dump_logs(kit);
        fail_msg("broker ready line has no resolved workers endpoint: '%s'", broker->line);
    }
    broker->workers = s_strdup(workers);
    return broker;
}

//  Collects NULL-terminated variadic strings into a NULL-terminated array.
static void s_collect(va_list ap, const char **out, size_t max)
{
    size_t n = 0;
    const char *arg;
    while ((arg = va_arg(ap, const char *))) {
        assert_true(n + 1 < max);
        out[n++] = arg;
    }
    out[n] = NULL;
}

cf_testkit_proc_t *cf_testkit_start_broker(cf_testkit_t *kit, ...)
{
    const char *extra[S_MAX_ARGS];
    va_list ap;
    va_start(ap, kit);
    s_collect(ap, extra, S_MAX_ARGS);
    va_end(ap);
    return cf_testkit_start_brokerv(kit, extra);
}

const char *cf_testkit_clients(cf_testkit_proc_t *broker)
{
    assert_non_null(broker->clients);
    return broker->clients;
}

const char *cf_testkit_workers(cf_testkit_proc_t *broker)
{
    assert_non_null(broker->workers);
    return broker->workers;
}

cf_testkit_proc_t *cf_testkit_start_workerv(cf_testkit_t *kit, const char *workers_endpoint,
                                            const char *const *extra)
{
    return cf_testkit_start_worker_tasks(kit, workers_endpoint, cf_testkit_env("CF_TASKS_LIB"),
                                         extra);
}

cf_testkit_proc_t *cf_testkit_start_worker_tasks(cf_testkit_t *kit, const char *workers_endpoint,
                                                 const char *tasks_lib, const char *const *extra)
{
    const char *argv[S_MAX_ARGS + 8];
    size_t n = 0;
    argv[n++] = cf_testkit_env("CF_WORKER_BIN");
    argv[n++] = "--broker";
    argv[n++] = workers_endpoint;
    argv[n++] = "--tasks";
    argv[n++] = tasks_lib;
    for (size_t i = 0; extra && extra[i]; i++) {
        assert_true(n < S_MAX_ARGS);
        argv[n++] = extra[i];
    }
    argv[n] = NULL;
    return s_start_daemon(kit, "worker", argv);
}

cf_testkit_proc_t *cf_testkit_start_worker(cf_testkit_t *kit, const char *workers_endpoint, ...)
{
    const char *extra[S_MAX_ARGS];
    va_list ap;
    va_start(ap, workers_endpoint);
    s_collect(ap, extra, S_MAX_ARGS);
    va_end(ap);
    return cf_testkit_start_workerv(kit, workers_endpoint, extra);
}

// ---------------------------------------------------------------------------
//  Clients and futures

cf_executor_t *cf_testkit_connect(const char *clients_endpoint, int heartbeat_ivl_ms)
{
    cf_options_t options = { .endpoint = clients_endpoint, .heartbeat_ivl_ms = heartbeat_ivl_ms };
    cf_executor_t *executor = cf_executor_connect(clients_endpoint, &options);
    if (!executor)
        fail_msg("cannot connect to %s: %s", clients_endpoint, cf_last_error());
    return executor;
}

void cf_testkit_expect_done(cf_testkit_t *kit, cf_future_t *f)
{
    assert_non_null(f);
    if (cf_future_wait(f, CF_TESTKIT_DEADLINE_MS) != CF_OK) {
        cf_testkit_dump_logs(kit);
        fail_msg("future of %s not done within %d ms", cf_future_function(f),
                 CF_TESTKIT_DEADLINE_MS);
    }
}

//  Fails the test saying how f ended when it is not what was expected.
static void s_fail_outcome(cf_testkit_t *kit, cf_future_t *f, cf_err_t rc, const char *wanted)
{
    const cf_task_error_t *error = cf_future_error(f);
    cf_testkit_dump_logs(kit);
    fail_msg("%s: wanted %s, got %s%s%s%s%s", cf_future_function(f), wanted, cf_strerror(rc),
             error ? " " : "", error ? error->type : "", error ? ": " : "",
             error ? error->message : "");
}

void cf_testkit_expect_int(cf_testkit_t *kit, cf_future_t *f, int64_t expected)
{
    cf_testkit_expect_done(kit, f);
    int64_t value = 0;
    cf_err_t rc = cf_future_int(f, 0, &value);
    if (rc != CF_OK)
        s_fail_outcome(kit, f, rc, "an int");
    assert_int_equal(value, expected);
}

void cf_testkit_expect_bool(cf_testkit_t *kit, cf_future_t *f, bool expected)
{
    cf_testkit_expect_done(kit, f);
    bool value = !expected;
    cf_err_t rc = cf_future_bool(f, 0, &value);
    if (rc != CF_OK)
        s_fail_outcome(kit, f, rc, "a bool");
    assert_int_equal(value, expected);
}

const cf_task_error_t *cf_testkit_expect_error(cf_testkit_t *kit, cf_future_t *f, const char *type,
                                               const char *message)
{
    cf_testkit_expect_done(kit, f);
    cf_err_t rc = cf_future_result(f, 0, NULL);
    if (rc != CF_ETASK)
        s_fail_outcome(kit, f, rc, type);
    const cf_task_error_t *error = cf_future_error(f);
    assert_non_null(error);
    if (strcmp(error->type, type) != 0 || (message && !strstr(error->message, message)))
        fail_msg("%s: wanted %s containing '%s', got %s: %s", cf_future_function(f), type,
                 message ? message : "", error->type, error->message);
    return error;
}

// ---------------------------------------------------------------------------
//  Programs run to completion

//  Appends what fd has to *text; false at end of file.
static bool s_drain(int fd, char **text, size_t *len, size_t *cap)
{
    for (;;) {
        if (*len + 4096 + 1 > *cap) {
            size_t new_cap = *cap ? *cap * 2 : 8192;
            char *bigger = realloc(*text, new_cap);
            assert_non_null(bigger);
            *text = bigger;
            *cap = new_cap;
            (*text)[*len] = '\0';    //  a text even if nothing more comes
        }
        ssize_t n = read(fd, *text + *len, *cap - *len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return true;
        if (n <= 0)
            return false;
        *len += (size_t)n;
        (*text)[*len] = '\0';
    }
}

bool cf_testkit_run(cf_testkit_t *kit, const char *const *argv, int timeout_ms,
                    cf_testkit_output_t *output)
{
    memset(output, 0, sizeof *output);
    output->exit_code = -1;
    //  An ordinary child of the kit: teardown kills it if an assertion
    //  fails while it runs; its stderr log is read back at the end.
    const char *slash = strrchr(argv[0], '/');
    cf_testkit_proc_t *proc = cf_testkit_spawn(kit, slash ? slash + 1 : argv[0], argv);
    if (!proc)
        return false;
    char *out = NULL;
    size_t out_len = 0, out_cap = 0;
    int64_t deadline = cf_testkit_now_ms() + timeout_ms;
    bool timed_out = false;
    while (proc->out_fd >= 0) {
        int left = s_ms_left(deadline);
        if (left == 0) {
            timed_out = true;
            break;
        }
        struct pollfd item = { .fd = proc->out_fd, .events = POLLIN };
        int rc = poll(&item, 1, left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            break;
        if (rc > 0 && !s_drain(proc->out_fd, &out, &out_len, &out_cap))
            s_proc_close_stdout(proc);
    }
    //  stdout closed: a program normally exits right after.
    if (timed_out || !cf_testkit_wait_exit(proc, s_ms_left(deadline) + 1000, NULL)) {
        fprintf(stderr, "cf_testkit: %s did not finish within %d ms: killed\n", argv[0],
                timeout_ms);
        kill(-proc->pid, SIGKILL);
        kill(proc->pid, SIGKILL);
        s_reap(proc, true);
        timed_out = true;
    }
    s_proc_close_stdout(proc);
    output->status = proc->status;
    output->exited = !timed_out;
    if (output->exited) {
        if (WIFEXITED(output->status))
            output->exit_code = WEXITSTATUS(output->status);
        else if (WIFSIGNALED(output->status))
            output->exit_code = 128 + WTERMSIG(output->status);
    }
    output->out = s_keep(kit, out);
    output->err = s_keep(kit, cf_testkit_read_file(proc->log_path));
    return true;
}

// ---------------------------------------------------------------------------
//  Broker counters

bool cf_testkit_broker_stat(const char *clients_endpoint, const char *name, int timeout_ms,
                            uint64_t *value)
{
    bool found = false;
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *socket = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(socket);
    int linger = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    cf_proto_enc_t *enc = cf_proto_enc_new();
    assert_non_null(enc);
    if (zmq_connect(socket, clients_endpoint) == 0) {
        cf_proto_enc_begin(enc, CF_MSG_STATS);
        //  The DEALER queues the request until connected; DONTWAIT only
        //  fails if zmq cannot even queue it.
        int64_t deadline = cf_testkit_now_ms() + timeout_ms;
        if (cf_proto_enc_send(enc, socket, NULL, 0) == CF_OK) {
            while (!found) {
                zmq_pollitem_t item = { .socket = socket, .events = ZMQ_POLLIN };
                int left = s_ms_left(deadline);
                if (left == 0)
                    break;
                int rc = zmq_poll(&item, 1, left);
                if (rc < 0 && errno == EINTR)
                    continue;
                if (rc <= 0)
                    break;
                cf_proto_msg_t *msg = NULL;
                if (cf_proto_recv(socket, false, NULL, &msg) != CF_OK)
                    continue;
                //  Heartbeats may come first; only the STATS reply counts.
                if (msg->type == CF_MSG_STATS) {
                    for (size_t i = 0; i < msg->count; i++) {
                        const cf_proto_stat_t *stat = &msg->stats[i];
                        if (stat->name.len == strlen(name)
                            && !memcmp(stat->name.ptr, name, stat->name.len)) {
                            *value = stat->value;
                            found = true;
                        }
                    }
                    cf_proto_msg_destroy(&msg);
                    break;
                }
                cf_proto_msg_destroy(&msg);
            }
        }
    }
    cf_proto_enc_destroy(&enc);
    zmq_close(socket);
    zmq_ctx_term(ctx);
    return found;
}
