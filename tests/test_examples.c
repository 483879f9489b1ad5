//  Every example program, run as a user would run it, with its output
//  checked against what its header comment promises: the primes demo on
//  processes and on a cluster, map_slow on each kind, as_completed's order,
//  fanout's three stories, the progress bar a task drives through a broker, and the downloader against a small HTTP server
//  this test runs on loopback (fast files, a slow one, a 404, a 500, one
//  that fails once) so it never touches the internet.

#define _GNU_SOURCE    //  pipe2, accept4

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

//  Examples finish in seconds; this bounds a hang.
#define S_EXAMPLE_MS 120000

static void s_run_example(cf_testkit_t *kit, const char *name, const char *const *args,
                          cf_testkit_output_t *output)
{
    const char *argv[32];
    size_t n = 0;
    argv[n++] = cf_testkit_example(kit, name);
    for (size_t i = 0; args && args[i]; i++) {
        assert_true(n < 31);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    assert_true(cf_testkit_run(kit, argv, S_EXAMPLE_MS, output));
    if (!output->exited)
        fail_msg("%s did not finish:\n%s\n%s", name, output->out, output->err);
}

//  Fails the test showing the whole output when text lacks needle.
static void s_expect_in(const cf_testkit_output_t *output, const char *needle)
{
    if (!strstr(output->out, needle))
        fail_msg("expected '%s' in the output:\n%s\nstderr:\n%s", needle, output->out, output->err);
}

static void s_expect_exit(const cf_testkit_output_t *output, int code)
{
    if (output->exit_code != code)
        fail_msg("expected exit code %d, got %d:\n%s\nstderr:\n%s", code, output->exit_code,
                 output->out, output->err);
}

// ---------------------------------------------------------------------------
//  primes

static void s_expect_primes_output(const cf_testkit_output_t *output)
{
    s_expect_exit(output, 0);
    static const struct {
        const char *number;
        bool prime;
    } expected[] = {
        { "2", true },
        { "11111111111111111", false },
        { "11111111111111113", false },
        { "112272535095293", true },
        { "999999999999999989", true },
        { "1000000000000000001", false },
        { "1000000000000000003", true },
        { "1099726899285419", false },
        { "9999999999999999", false },
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, " %s  %s\n", expected[i].number,
                 expected[i].prime ? "is prime" : "is not prime");
        s_expect_in(output, line);
    }
    //  The one bad input fails alone, with a TypeError.
    char *bad = cf_testkit_line_with(output->out, "1e18");
    assert_non_null(bad);
    if (!strstr(bad, "failed: TypeError"))
        fail_msg("the non-integer input should fail with TypeError: '%s'", bad);
    free(bad);
    s_expect_in(output, "Checked 10 numbers in ");
    s_expect_in(output, "(1 failed)");
}

static void test_primes_checks_numbers_on_processes_by_default(void **state)
{
    cf_testkit_output_t output;
    s_run_example(*state, "primes", NULL, &output);
    s_expect_in(&output, "on processes");
    s_expect_primes_output(&output);
}

static void test_primes_runs_on_a_cluster(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "1", NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "1", NULL);
    cf_testkit_output_t output;
    s_run_example(kit, "primes", (const char *[]){ "remote", cf_testkit_clients(broker), NULL },
                  &output);
    s_expect_in(&output, "on remote");
    s_expect_primes_output(&output);
}

// ---------------------------------------------------------------------------
//  map_slow, as_completed, fanout

static void test_map_slow_doubles_in_order_on_every_kind(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "5", NULL);
    const char *const *kinds[] = {
        (const char *[]){ NULL },
        (const char *[]){ "threads", NULL },
        (const char *[]){ "processes", NULL },
        (const char *[]){ "remote", cf_testkit_clients(broker), NULL },
    };
    static const char *const kind_names[] = { "threads", "threads", "processes", "remote" };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        cf_testkit_output_t output;
        s_run_example(kit, "map_slow", kinds[i], &output);
        s_expect_exit(&output, 0);
        s_expect_in(&output, "[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]\n");
        char line[64];
        snprintf(line, sizeof line, "10 results on %s in ", kind_names[i]);
        s_expect_in(&output, line);
    }
}

static void test_examples_refuse_an_unknown_kind(void **state)
{
    cf_testkit_output_t output;
    s_run_example(*state, "map_slow", (const char *[]){ "quantum", NULL }, &output);
    s_expect_exit(&output, 2);
    assert_non_null(strstr(output.err, "usage:"));
}

static void test_as_completed_prints_in_finishing_order(void **state)
{
    cf_testkit_output_t output;
    s_run_example(*state, "as_completed", NULL, &output);
    s_expect_exit(&output, 0);
    //  B (100 ms, fails) before A (200 ms) before C (300 ms).
    static const char *const order[] = { "B raised ValueError('B failed')\n", "A done\n",
                                         "C done\n", NULL };
    if (!cf_testkit_in_order(output.out, order))
        fail_msg("expected B's error, then A, then C:\n%s", output.out);
    assert_int_equal(cf_testkit_count(output.out, "\n"), 3);
}

static void test_fanout_maps_reports_progress_and_isolates_errors(void **state)
{
    cf_testkit_output_t output;
    s_run_example(*state, "fanout", NULL, &output);
    s_expect_exit(&output, 0);
    s_expect_in(&output, "[1, 4, 9, 16, 25, 36, 49, 64]\n");
    for (int i = 1; i <= 6; i++) {
        char progress[32];
        snprintf(progress, sizeof progress, "[%d/6] task of ", i);
        s_expect_in(&output, progress);
    }
    s_expect_in(&output, "ok:     alpha  -> ALPHA\n");
    s_expect_in(&output, "ok:     beta   -> BETA\n");
    s_expect_in(&output, "ok:     gamma  -> GAMMA\n");
    s_expect_in(&output, "failed: !boom  -> ValueError: cannot shout '!boom'\n");
    s_expect_in(&output, "failed: !nope  -> ValueError: cannot shout '!nope'\n");
    s_expect_in(&output, "3 succeeded, 2 failed\n");
}

// ---------------------------------------------------------------------------
//  progress: a task's own progress drives the client's bar, through a broker

static void test_progress_draws_a_bar_from_a_task_through_a_broker(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "1", NULL);
    cf_testkit_output_t output;
    s_run_example(kit, "progress",
                  (const char *[]){ "remote", cf_testkit_clients(broker), "300000", NULL },
                  &output);
    s_expect_exit(&output, 0);
    s_expect_in(&output, "Counting primes below 300000 on remote\n");
    //  Not a terminal: plain lines, the last one at 100% (the task's last
    //  report comes before its result).
    s_expect_in(&output, "primes 100%|####################| 300000/300000 [");
    s_expect_in(&output, "25997 primes below 300000 in ");
    s_expect_in(&output, "last report 300000/300000 with 25997 primes");
}

// ---------------------------------------------------------------------------
//  download, against a loopback HTTP server

#define S_MAX_CONNECTIONS 256

typedef struct {
    int listen_fd;
    int stop_pipe[2];    //  written once to stop everything
    int port;
    pthread_t acceptor;
    pthread_mutex_t lock;
    pthread_t connections[S_MAX_CONNECTIONS];
    size_t connection_count;
    atomic_int hits_missing, hits_broken, hits_flaky, hits_slow;
} http_server_t;

typedef struct {
    http_server_t *server;
    int fd;
} connection_t;

static void s_write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;    //  the client left: nothing to do
        data += n;
        len -= (size_t)n;
    }
}

static void s_respond(int fd, int status, const char *reason, size_t body_len)
{
    char head[256];
    int len = snprintf(head, sizeof head,
                       "HTTP/1.1 %d %s\r\nContent-Type: application/octet-stream\r\n"
                       "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                       status, reason, body_len);
    s_write_all(fd, head, (size_t)len);
    char chunk[4096];
    memset(chunk, 'x', sizeof chunk);
    while (body_len > 0) {
        size_t n = body_len < sizeof chunk ? body_len : sizeof chunk;
        s_write_all(fd, chunk, n);
        body_len -= n;
    }
}

//  Waits until the server stops or the client goes away (a timed-out
//  download), at most timeout_ms.
static void s_stall(http_server_t *server, int fd, int timeout_ms)
{
    struct pollfd items[2] = { { .fd = server->stop_pipe[0], .events = POLLIN },
                               { .fd = fd, .events = POLLIN } };
    int64_t deadline = cf_testkit_now_ms() + timeout_ms;
    while (cf_testkit_now_ms() < deadline) {
        int rc = poll(items, 2, (int)(deadline - cf_testkit_now_ms()));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc != 0)
            return;    //  stop, or the client closed (or sent more)
    }
}

static void *s_serve_connection(void *arg)
{
    connection_t *conn = arg;
    http_server_t *server = conn->server;
    char request[8192];
    size_t len = 0;
    request[0] = '\0';
    //  Read the request head (GET only, no body).
    while (len < sizeof request - 1 && !strstr(request, "\r\n\r\n")) {
        struct pollfd item = { .fd = conn->fd, .events = POLLIN };
        if (poll(&item, 1, 10000) <= 0)
            break;
        ssize_t n = recv(conn->fd, request + len, sizeof request - 1 - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        request[len] = '\0';
    }
    request[len] = '\0';
    char path[1024] = "";
    if (sscanf(request, "GET %1023s HTTP/1.", path) != 1)
        s_respond(conn->fd, 400, "Bad Request", 0);
    else if (!strncmp(path, "/file/", 6))
        s_respond(conn->fd, 200, "OK", (size_t)atoi(path + 6) * 1000);
    else if (!strcmp(path, "/missing")) {
        atomic_fetch_add(&server->hits_missing, 1);
        s_respond(conn->fd, 404, "Not Found", 9);
    }
    else if (!strcmp(path, "/broken")) {
        atomic_fetch_add(&server->hits_broken, 1);
        s_respond(conn->fd, 500, "Internal Server Error", 5);
    }
    else if (!strcmp(path, "/flaky")) {
        //  Fails the first time only: a retry succeeds.
        if (atomic_fetch_add(&server->hits_flaky, 1) == 0)
            s_respond(conn->fd, 503, "Service Unavailable", 0);
        else
            s_respond(conn->fd, 200, "OK", 1000);
    }
    else if (!strcmp(path, "/slow")) {
        atomic_fetch_add(&server->hits_slow, 1);
        s_stall(server, conn->fd, 20000);
        s_respond(conn->fd, 200, "OK", 10);
    }
    else
        s_respond(conn->fd, 404, "Not Found", 0);
    close(conn->fd);
    free(conn);
    return NULL;
}

static void *s_accept_loop(void *arg)
{
    http_server_t *server = arg;
    for (;;) {
        struct pollfd items[2] = { { .fd = server->stop_pipe[0], .events = POLLIN },
                                   { .fd = server->listen_fd, .events = POLLIN } };
        int rc = poll(items, 2, -1);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0 || items[0].revents)
            return NULL;
        int fd = accept4(server->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        connection_t *conn = malloc(sizeof *conn);
        pthread_mutex_lock(&server->lock);
        bool room = conn && server->connection_count < S_MAX_CONNECTIONS;
        if (room) {
            conn->server = server;
            conn->fd = fd;
            if (pthread_create(&server->connections[server->connection_count], NULL,
                               s_serve_connection, conn)
                == 0)
                server->connection_count++;
            else
                room = false;
        }
        pthread_mutex_unlock(&server->lock);
        if (!room) {
            free(conn);
            close(fd);
        }
    }
}

static void s_server_start(http_server_t *server)
{
    memset(server, 0, sizeof *server);
    pthread_mutex_init(&server->lock, NULL);
    server->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(server->listen_fd >= 0);
    struct sockaddr_in addr = { .sin_family = AF_INET,
                                .sin_port = 0,
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(server->listen_fd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(listen(server->listen_fd, 64), 0);
    socklen_t addr_len = sizeof addr;
    assert_int_equal(getsockname(server->listen_fd, (struct sockaddr *)&addr, &addr_len), 0);
    server->port = ntohs(addr.sin_port);
    assert_int_equal(pipe2(server->stop_pipe, O_CLOEXEC), 0);
    assert_int_equal(pthread_create(&server->acceptor, NULL, s_accept_loop, server), 0);
}

static void s_server_stop(http_server_t *server)
{
    ssize_t ignored = write(server->stop_pipe[1], "x", 1);
    (void)ignored;
    pthread_join(server->acceptor, NULL);
    for (size_t i = 0; i < server->connection_count; i++)
        pthread_join(server->connections[i], NULL);
    close(server->listen_fd);
    close(server->stop_pipe[0]);
    close(server->stop_pipe[1]);
    pthread_mutex_destroy(&server->lock);
}

//  The server lives in the test's state for the download tests only; a
//  failing assertion leaves it to the process exit (its threads are idle).
static http_server_t s_server;

static void s_url(char *out, size_t size, const char *path)
{
    snprintf(out, size, "http://127.0.0.1:%d%s", s_server.port, path);
}

static void s_expect_download_line(const cf_testkit_output_t *output, const char *path,
                                   const char *what)
{
    char url[256], needle[512];
    s_url(url, sizeof url, path);
    snprintf(needle, sizeof needle, "%s%s", url, what);
    s_expect_in(output, needle);
}

static void test_download_reports_each_url_and_survives_failures(void **state)
{
    cf_testkit_t *kit = *state;
    s_server_start(&s_server);
    static const char *const paths[] = { "/file/1", "/file/2",  "/file/3", "/file/40", "/file/7",
                                         "/slow",   "/missing", "/broken", "/flaky" };
    enum { URLS = sizeof paths / sizeof paths[0] };
    char urls[URLS][256];
    const char *args[8 + URLS];
    size_t n = 0;
    args[n++] = "-t";
    args[n++] = "500";
    args[n++] = "-r";
    args[n++] = "2";
    args[n++] = "-w";
    args[n++] = "4";
    for (size_t i = 0; i < URLS; i++) {
        s_url(urls[i], sizeof urls[i], paths[i]);
        args[n++] = urls[i];
    }
    args[n] = NULL;

    cf_testkit_output_t output;
    s_run_example(kit, "download", args, &output);
    s_server_stop(&s_server);

    //  Some failed: exit status 1, and the batch still finished.
    s_expect_exit(&output, 1);
    s_expect_download_line(&output, "/file/1", " 1000 bytes (1 attempt)\n");
    s_expect_download_line(&output, "/file/2", " 2000 bytes (1 attempt)\n");
    s_expect_download_line(&output, "/file/3", " 3000 bytes (1 attempt)\n");
    s_expect_download_line(&output, "/file/40", " 40000 bytes (1 attempt)\n");
    s_expect_download_line(&output, "/file/7", " 7000 bytes (1 attempt)\n");
    s_expect_download_line(&output, "/flaky", " 1000 bytes (2 attempts)\n");
    s_expect_download_line(&output, "/slow",
                           ": TimeoutError: no answer within 500 ms "
                           "(3 attempts)\n");
    s_expect_download_line(&output, "/missing", ": HTTPError: HTTP 404 (1 attempt)\n");
    s_expect_download_line(&output, "/broken", ": HTTPError: HTTP 500 (3 attempts)\n");
    s_expect_in(&output, "6 downloaded (54000 bytes), 3 failed");
    //  Progress counts every URL once.
    for (int i = 1; i <= URLS; i++) {
        char progress[32];
        snprintf(progress, sizeof progress, "[%d/%d] ", i, URLS);
        assert_int_equal(cf_testkit_count(output.out, progress), 1);
    }
    assert_int_equal(cf_testkit_count(output.out, " FAILED "), 3);
    //  Retries are bounded and 404 is never retried.
    assert_int_equal(atomic_load(&s_server.hits_missing), 1);
    assert_int_equal(atomic_load(&s_server.hits_broken), 3);
    assert_int_equal(atomic_load(&s_server.hits_slow), 3);
    assert_int_equal(atomic_load(&s_server.hits_flaky), 2);
}

static void test_download_reads_urls_from_a_file_and_saves_them(void **state)
{
    cf_testkit_t *kit = *state;
    s_server_start(&s_server);
    const char *list_path = cf_testkit_path(kit, "urls.txt");
    const char *dir = cf_testkit_path(kit, "saved");
    assert_int_equal(mkdir(dir, 0755), 0);
    FILE *list = fopen(list_path, "w");
    assert_non_null(list);
    char url[256];
    fprintf(list, "# files to fetch\n\n");
    s_url(url, sizeof url, "/file/5");
    fprintf(list, "%s\n", url);
    s_url(url, sizeof url, "/file/12");
    fprintf(list, "  %s   # with a comment\n", url);
    assert_int_equal(fclose(list), 0);

    cf_testkit_output_t output;
    s_run_example(kit, "download", (const char *[]){ "-o", dir, "-f", list_path, NULL }, &output);
    s_server_stop(&s_server);
    s_expect_exit(&output, 0);
    s_expect_in(&output, "2 downloaded (17000 bytes), 0 failed");

    struct stat st;
    assert_int_equal(stat(cf_testkit_path(kit, "saved/5"), &st), 0);
    assert_int_equal(st.st_size, 5000);
    assert_int_equal(stat(cf_testkit_path(kit, "saved/12"), &st), 0);
    assert_int_equal(st.st_size, 12000);
}

static void test_download_without_urls_prints_usage(void **state)
{
    cf_testkit_output_t output;
    s_run_example(*state, "download", NULL, &output);
    s_expect_exit(&output, 2);
    assert_non_null(strstr(output.err, "usage:"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_primes_checks_numbers_on_processes_by_default,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_primes_runs_on_a_cluster, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_map_slow_doubles_in_order_on_every_kind,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_examples_refuse_an_unknown_kind, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_as_completed_prints_in_finishing_order,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_fanout_maps_reports_progress_and_isolates_errors,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_progress_draws_a_bar_from_a_task_through_a_broker,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_download_reports_each_url_and_survives_failures,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_download_reads_urls_from_a_file_and_saves_them,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_download_without_urls_prints_usage, cf_testkit_setup,
                                        cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
