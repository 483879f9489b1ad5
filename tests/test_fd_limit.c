//  A cf-broker at its file-descriptor limit (issue 11): started under a
//  low `ulimit -n`, with a client and a cf-worker connected, then more
//  connections than its limit allows. libzmq fails the accept silently and
//  retries it; the broker must say so in a clear line (what failed, why,
//  what to do) and go on serving the peers it has.

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

//  The broker's limit: room for its own descriptors (about 20: standard
//  streams, ZeroMQ's mailboxes and poller, two listeners) and a few peers.
#define S_LIMIT   "48"
#define S_EXTRA   80    //  connections beyond that, from this process
#define S_HB_TEXT "200"

static int s_open_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(dir));)
        n += e->d_name[0] != '.';
    closedir(dir);
    return n;
}

typedef struct {
    cf_testkit_proc_t *broker;
    const char *text;
} s_log_wait_t;

static bool s_log_has(void *arg)
{
    s_log_wait_t *wait = arg;
    char *log = cf_testkit_log(wait->broker);
    bool found = log && strstr(log, wait->text);
    free(log);
    return found;
}

static void test_a_broker_at_its_fd_limit_says_so_and_serves_its_peers(void **state)
{
    cf_testkit_t *kit = *state;
    const char *bin = cf_testkit_env("CF_BROKER_BIN");
    char command[1024];
    snprintf(command, sizeof command,
             "ulimit -n " S_LIMIT " && exec '%s' --clients \"tcp://127.0.0.1:*\" --workers "
             "\"tcp://127.0.0.1:*\" --heartbeat-ms " S_HB_TEXT,
             bin);
    const char *argv[] = { "/bin/sh", "-c", command, NULL };
    cf_testkit_proc_t *broker = cf_testkit_spawn(kit, "broker", argv);
    assert_non_null(broker);
    if (!cf_testkit_wait_line(broker, "ready", CF_TESTKIT_READY_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("the broker did not start under ulimit -n " S_LIMIT);
    }
    char clients[256], workers[256];
    snprintf(clients, sizeof clients, "%s", cf_testkit_field(broker, "clients"));
    snprintf(workers, sizeof workers, "%s", cf_testkit_field(broker, "workers"));

    //  The peers it has: a cf-worker and a client, served.
    cf_testkit_start_worker(kit, workers, "--heartbeat-ms", S_HB_TEXT, NULL);
    cf_executor_t *ex = cf_testkit_connect(clients, CF_TESTKIT_FAST_HEARTBEAT_MS);
    cf_future_t *f = cf_submit(ex, "square", "i", 3);
    assert_non_null(f);
    cf_testkit_expect_int(kit, f, 9);
    cf_future_release(&f);
    int before = s_open_fds(cf_testkit_pid(broker));
    assert_true(before > 0 && before < atoi(S_LIMIT));

    //  More connections than it can take, on both endpoints.
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *extra[S_EXTRA];
    for (int i = 0; i < S_EXTRA; i++) {
        extra[i] = zmq_socket(ctx, ZMQ_DEALER);
        assert_non_null(extra[i]);
        int linger = 0;
        zmq_setsockopt(extra[i], ZMQ_LINGER, &linger, sizeof linger);
        assert_int_equal(zmq_connect(extra[i], i % 2 ? clients : workers), 0);
    }
    s_log_wait_t wait = { broker, "cannot accept a connection on tcp://127.0.0.1:" };
    if (!cf_testkit_wait_until(s_log_has, &wait, CF_TESTKIT_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("no line about the failed accept");
    }
    wait.text = "Too many open files (raise LimitNOFILE / ulimit -n)";
    assert_true(s_log_has(&wait));

    //  Still serving what it has, while the extra connections wait.
    assert_true(cf_testkit_alive(broker));
    enum { TASKS = 20 };
    cf_future_t *futures[TASKS];
    for (int i = 0; i < TASKS; i++) {
        futures[i] = cf_submit(ex, "square", "i", i);
        assert_non_null(futures[i]);
    }
    for (int i = 0; i < TASKS; i++) {
        cf_testkit_expect_int(kit, futures[i], (int64_t)i * i);
        cf_future_release(&futures[i]);
    }
    //  Reported once, not once per failed attempt.
    char *log = cf_testkit_log(broker);
    assert_non_null(log);
    int lines = 0;
    for (const char *at = log; (at = strstr(at, "cannot accept a connection")); at++)
        lines++;
    free(log);
    assert_true(lines >= 1 && lines <= 4);

    for (int i = 0; i < S_EXTRA; i++)
        zmq_close(extra[i]);
    zmq_ctx_term(ctx);
    cf_executor_destroy(&ex);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_broker_at_its_fd_limit_says_so_and_serves_its_peers,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
