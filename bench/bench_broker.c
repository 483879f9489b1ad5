//  See bench_broker.h.

#include "bench_broker.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

//  In the child: stdout to the pipe, stderr to the log, the limit, exec.
static void s_exec(const char *bin, const bench_broker_opts_t *opts, int out)
{
    dup2(out, 1);
    int err = opts->log ? open(opts->log, O_WRONLY | O_CREAT | O_APPEND, 0644)
                        : open("/dev/null", O_WRONLY);
    if (err >= 0)
        dup2(err, 2);
    if (opts->fd_limit > 0) {
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = (rlim_t)opts->fd_limit;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    char liveness[16];
    snprintf(liveness, sizeof liveness, "%d", opts->liveness);
    if (opts->liveness > 0)
        execl(bin, bin, "--clients", "tcp://127.0.0.1:*", "--workers", "tcp://127.0.0.1:*",
              "--max-queued", "10000000", "--liveness", liveness, (char *)NULL);
    else
        execl(bin, bin, "--clients", "tcp://127.0.0.1:*", "--workers", "tcp://127.0.0.1:*",
              "--max-queued", "10000000", (char *)NULL);
    _exit(127);
}

bool bench_broker_start(const char *bin, const bench_broker_opts_t *opts, bench_broker_t *b)
{
    static const bench_broker_opts_t none = { 0 };
    int fds[2];
    if (pipe(fds) != 0)
        return false;
    b->pid = fork();
    if (b->pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return false;
    }
    if (b->pid == 0) {
        close(fds[0]);
        s_exec(bin, opts ? opts : &none, fds[1]);
    }
    close(fds[1]);
    FILE *out = fdopen(fds[0], "r");
    char line[512];
    bool ready = out && fgets(line, sizeof line, out)
                 && sscanf(line, "ready clients=%127s workers=%127s", b->clients, b->workers) == 2;
    if (out)
        fclose(out);
    else
        close(fds[0]);
    if (!ready)
        bench_broker_stop(b);
    return ready;
}

void bench_broker_stop(bench_broker_t *b)
{
    if (b->pid <= 0)
        return;
    kill(b->pid, SIGTERM);
    waitpid(b->pid, NULL, 0);
    b->pid = 0;
}

int64_t bench_broker_cpu_us(pid_t pid)
{
    clockid_t clock;
    struct timespec ts;
    if (clock_getcpuclockid(pid, &clock) != 0 || clock_gettime(clock, &ts) != 0)
        return -1;
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
