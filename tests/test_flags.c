//  SPDX-License-Identifier: MIT
//
//  The flags examples against flags_server on loopback (never the
//  internet): the sequential, thread-pool and process-pool versions print
//  the same lines and save the same twenty images; the pool versions run
//  on a cluster too (workers loaded with libdownload_tasks.so), as does
//  download with `remote`; flags_progress retries what the server fails on
//  purpose and draws its bar as plain lines when not on a terminal. And the
//  example tasks never return a wrapped number: square(2**40) raises
//  OverflowError.

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define S_RUN_MS   120000
//  The server's delay per answer: twenty of them one after the other take
//  at least a second, which is what the sequential version must take.
#define S_DELAY_MS "50"

static const char *const s_pop20[] = { "BD", "BR", "CD", "CN", "DE", "EG", "ET", "FR", "ID", "IN",
                                       "IR", "JP", "MX", "NG", "PH", "PK", "RU", "TR", "US", "VN" };

//  flags_server with this delay, failing the first request for each flag
//  when flaky; returns its base URL.
static const char *s_server(cf_testkit_t *kit, const char *delay_ms, bool flaky)
{
    const char *argv[] = { cf_testkit_example(kit, "flags_server"),
                           "-p",
                           "0",
                           "-d",
                           delay_ms,
                           flaky ? "-f" : NULL,
                           NULL };
    cf_testkit_proc_t *server = cf_testkit_spawn(kit, "flags_server", argv);
    assert_non_null(server);
    if (!cf_testkit_wait_line(server, "ready ", CF_TESTKIT_READY_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("flags_server did not start");
    }
    const char *url = cf_testkit_field(server, "url");
    assert_non_null(url);
    //  Keep a copy: fields live until the next wait on the proc. A test
    //  starts at most a few servers.
    static char urls[8][256];
    static size_t next = 0;
    char *copy = urls[next++ % 8];
    snprintf(copy, sizeof urls[0], "%s", url);
    return copy;
}

static void s_run(cf_testkit_t *kit, const char *const *argv, cf_testkit_output_t *output)
{
    assert_true(cf_testkit_run(kit, argv, S_RUN_MS, output));
    if (!output->exited)
        fail_msg("%s did not finish:\n%s\n%s", argv[0], output->out, output->err);
}

//  The classic output: the twenty codes on one line (in any order), then
//  "20 downloads in X.XXs"; and the twenty images in dir. Returns the time.
static double s_expect_flags(const cf_testkit_output_t *output, const char *dir)
{
    if (output->exit_code != 0)
        fail_msg("exit %d:\n%s\n%s", output->exit_code, output->out, output->err);
    char *codes = cf_testkit_line_with(output->out, " ");
    assert_non_null(codes);
    for (size_t i = 0; i < 20; i++) {
        char code[4];
        snprintf(code, sizeof code, "%s ", s_pop20[i]);
        if (!strstr(codes, code))
            fail_msg("%s missing from '%s'", s_pop20[i], codes);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.gif", dir, s_pop20[i]);
        char *image = cf_testkit_read_file(path);
        if (!image || strncmp(image, "GIF89a", 6) != 0)
            fail_msg("%s is not the server's image", path);
        free(image);
        remove(path);
    }
    free(codes);
    char *summary = cf_testkit_line_with(output->out, " downloads in ");
    assert_non_null(summary);
    double seconds = -1;
    assert_int_equal(sscanf(summary, "20 downloads in %lfs", &seconds), 1);
    free(summary);
    return seconds;
}

static void test_sequential_and_pool_versions_download_the_same_flags(void **state)
{
    cf_testkit_t *kit = *state;
    const char *url = s_server(kit, S_DELAY_MS, false);
    const char *dir = cf_testkit_path(kit, "flags");
    cf_testkit_output_t output;
    s_run(kit, (const char *[]){ cf_testkit_example(kit, "flags"), "-u", url, "-o", dir, NULL },
          &output);
    double sequential = s_expect_flags(&output, dir);
    //  One request after another: at least twenty delays.
    assert_true(sequential >= 1.0);
    s_run(
        kit,
        (const char *[]){ cf_testkit_example(kit, "flags_threadpool"), "-u", url, "-o", dir, NULL },
        &output);
    double threads = s_expect_flags(&output, dir);
    //  Twenty at once: less than the one-at-a-time sum of delays.
    if (!(threads < sequential))
        fail_msg("threads took %.2fs, sequential %.2fs", threads, sequential);
    s_run(kit,
          (const char *[]){ cf_testkit_example(kit, "flags_processpool"), "-u", url, "-o", dir,
                            NULL },
          &output);
    s_expect_flags(&output, dir);
}

static void test_pool_versions_and_download_run_on_a_cluster(void **state)
{
    cf_testkit_t *kit = *state;
    const char *url = s_server(kit, "0", false);
    const char *dir = cf_testkit_path(kit, "flags");
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "4", "--tasks",
                            cf_testkit_example(kit, "libdownload_tasks.so"), NULL);
    cf_testkit_output_t output;
    s_run(kit,
          (const char *[]){ cf_testkit_example(kit, "flags_processpool"), "-u", url, "-o", dir,
                            "remote", cf_testkit_clients(broker), NULL },
          &output);
    s_expect_flags(&output, dir);
    s_run(kit,
          (const char *[]){ cf_testkit_example(kit, "flags_threadpool"), "-u", url, "-o", dir,
                            "remote", cf_testkit_clients(broker), NULL },
          &output);
    s_expect_flags(&output, dir);

    char found[512], missing[512];
    snprintf(found, sizeof found, "%s/cn/cn.gif", url);
    snprintf(missing, sizeof missing, "%s/zz/zz.gif", url);
    s_run(kit,
          (const char *[]){ cf_testkit_example(kit, "download"), "-r", "0", "remote",
                            cf_testkit_clients(broker), found, missing, NULL },
          &output);
    assert_int_equal(output.exit_code, 1);    //  one URL failed
    char *ok = cf_testkit_line_with(output.out, found);
    char *failed = cf_testkit_line_with(output.out, missing);
    assert_non_null(ok);
    assert_non_null(failed);
    if (!strstr(ok, "] ok ") || !strstr(failed, "FAILED") || !strstr(failed, "HTTP 404"))
        fail_msg("download remote:\n%s\n%s", output.out, output.err);
    free(ok);
    free(failed);
}

static void test_flags_progress_retries_and_draws_plain_lines(void **state)
{
    cf_testkit_t *kit = *state;
    const char *dir = cf_testkit_path(kit, "flags");
    const char *bin = cf_testkit_example(kit, "flags_progress");
    cf_testkit_output_t output;
    //  The first request for each flag fails (503): without retries, all
    //  twenty fail.
    const char *url = s_server(kit, "0", true);
    s_run(kit, (const char *[]){ bin, "-u", url, "-o", dir, "-r", "0", NULL }, &output);
    assert_int_equal(output.exit_code, 1);
    if (!strstr(output.out, "0 flags downloaded.\n") || !strstr(output.out, "20 errors.\n"))
        fail_msg("without retries:\n%s", output.out);
    //  With retries the same failures are retried away (the second request
    //  for a flag always succeeds).
    url = s_server(kit, "0", true);
    s_run(kit, (const char *[]){ bin, "-u", url, "-o", dir, "-m", "4", "-r", "2", NULL }, &output);
    if (output.exit_code != 0 || !strstr(output.out, "20 flags downloaded.\n")
        || strstr(output.out, "error"))
        fail_msg("with retries: exit %d\n%s", output.exit_code, output.out);
    //  Not a terminal: one plain line per tenth, the last one complete.
    assert_int_equal(cf_testkit_count(output.err, "\r"), 0);
    assert_int_equal(cf_testkit_count(output.err, "%|"), 10);
    if (!strstr(output.err, "flags 100%|####################| 20/20 ["))
        fail_msg("no final bar:\n%s", output.err);
    //  -a: every two-letter code; the server knows fifty.
    url = s_server(kit, "0", false);
    s_run(kit, (const char *[]){ bin, "-u", url, "-o", dir, "-a", "-m", "16", "-r", "5", NULL },
          &output);
    if (output.exit_code != 0 || !strstr(output.out, "50 flags downloaded.\n")
        || !strstr(output.out, "626 not found.\n"))
        fail_msg("-a: exit %d\n%s", output.exit_code, output.out);
}

static void test_example_tasks_raise_overflow_instead_of_wrapping(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "2", NULL);
    cf_executor_t *ex = cf_testkit_connect(cf_testkit_clients(broker), 0);
    cf_future_t *big = cf_submit(ex, "square", "L", (int64_t)1 << 40);
    cf_future_t *edge = cf_submit(ex, "square", "L", (int64_t)3037000499);    //  fits: 9.22e18
    cf_future_t *twice = cf_submit(ex, "slow_double", "L", INT64_MAX / 2 + 1);
    cf_future_t *sum = cf_submit(ex, "add", "LL", INT64_MAX, (int64_t)1);
    cf_testkit_expect_error(kit, big, "OverflowError", "does not fit in 64 bits");
    cf_testkit_expect_int(kit, edge, (int64_t)3037000499 * 3037000499);
    cf_testkit_expect_error(kit, twice, "OverflowError", "does not fit in 64 bits");
    cf_testkit_expect_error(kit, sum, "OverflowError", "does not fit in 64 bits");
    cf_future_release(&big);
    cf_future_release(&edge);
    cf_future_release(&twice);
    cf_future_release(&sum);
    cf_executor_destroy(&ex);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sequential_and_pool_versions_download_the_same_flags,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_pool_versions_and_download_run_on_a_cluster,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_flags_progress_retries_and_draws_plain_lines,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_example_tasks_raise_overflow_instead_of_wrapping,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
