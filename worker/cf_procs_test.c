//  cf_procs: worker processes forked by the zygote, against a raw ROUTER
//  playing the broker. Workers start and run tasks in their own process; a
//  worker killed with SIGKILL is reported through on_exit and replaced;
//  SIGTERM lets a worker finish its task; max_tasks replaces a worker;
//  destroy leaves no process behind; and all of it works when the caller
//  runs other threads, including one holding a lock while the zygote forks
//  and a creating thread that exits.

#include "cf_procs.h"

#include "cf_fakebroker.h"
#include "cf_mp.h"
#include "cf_proto.h"
#include "cf_sanitize.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

//  A hang guard for what must happen, not a timing assertion.
#define S_WAIT_MS 20000

static void s_sleep_ms(int ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

// ---------------------------------------------------------------------------
//  Tasks (registered before any pool exists, so every worker has them)

static int s_child_init_value;    //  set by the initializer, in the child

static void p_pid(cf_call_t *call)
{
    cf_return_int(call, (int64_t)getpid());
}
CF_TASK(p_pid);

static void p_init(cf_call_t *call)
{
    cf_return_int(call, s_child_init_value);
}
CF_TASK(p_init);

static void s_initializer(void *arg)
{
    s_child_init_value = *(int *)arg;
}

//  Creates file `running`, then waits until file `go` exists.
static void p_wait_file(cf_call_t *call)
{
    const char *running = cf_arg_str(call, 0);
    const char *go = cf_arg_str(call, 1);
    if (cf_failed(call))
        return;
    FILE *f = fopen(running, "w");
    if (f)
        fclose(f);
    struct stat st;
    while (stat(go, &st) != 0)
        s_sleep_ms(5);
    cf_return_int(call, (int64_t)getpid());
}
CF_TASK(p_wait_file);

// ---------------------------------------------------------------------------
//  Exit reports

typedef struct {
    pid_t pid;
    char identity[256];
    int status;
} s_exit_t;

static pthread_mutex_t s_exit_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t s_exit_cond = PTHREAD_COND_INITIALIZER;
static s_exit_t s_exits[64];
static int s_exit_count;

static void s_on_exit(void *arg, pid_t pid, const char *identity, int status,
                      const uint64_t *running, size_t n_running)
{
    (void)running;
    (void)n_running;
    assert_ptr_equal(arg, &s_exit_count);
    pthread_mutex_lock(&s_exit_lock);
    if (s_exit_count < 64) {
        s_exits[s_exit_count].pid = pid;
        snprintf(s_exits[s_exit_count].identity, sizeof s_exits[0].identity, "%s",
                 identity ? identity : "");
        s_exits[s_exit_count].status = status;
        s_exit_count++;
    }
    pthread_cond_broadcast(&s_exit_cond);
    pthread_mutex_unlock(&s_exit_lock);
}

//  Waits for exit report number n (0-based) and returns a copy.
static s_exit_t s_wait_exit(int n)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += S_WAIT_MS / 1000;
    pthread_mutex_lock(&s_exit_lock);
    while (s_exit_count <= n) {
        if (pthread_cond_timedwait(&s_exit_cond, &s_exit_lock, &deadline) != 0)
            break;
    }
    bool got = s_exit_count > n;
    s_exit_t e = got ? s_exits[n] : (s_exit_t){ 0 };
    pthread_mutex_unlock(&s_exit_lock);
    if (!got)
        fail_msg("no exit report number %d", n);
    return e;
}

// ---------------------------------------------------------------------------
//  The fake broker (tests/cf_fakebroker.h)

//  Workers of the pool under test that said READY: a worker that trims its
//  prefetch (a first task that ran long on a loaded machine) says READY
//  again, and that is not a new worker.
static char s_ready_ids[16][256];
static int s_ready_count;

static bool s_ready_before(const char *identity)
{
    for (int i = 0; i < s_ready_count; i++)
        if (strcmp(s_ready_ids[i], identity) == 0)
            return true;
    return false;
}

//  A new pool: no exit reported and no worker seen yet.
static void s_pool_reset(void)
{
    pthread_mutex_lock(&s_exit_lock);
    s_exit_count = 0;
    pthread_mutex_unlock(&s_exit_lock);
    s_ready_count = 0;
}

//  Waits for READY from a worker new to the test and returns its pid,
//  parsed from "p<pid>-...".
static pid_t s_expect_ready(cf_fakebroker_t *b)
{
    cf_proto_msg_t *msg = cf_fakebroker_expect(b, CF_MSG_READY);
    while (s_ready_before(b->peer)) {
        cf_proto_msg_destroy(&msg);
        msg = cf_fakebroker_expect(b, CF_MSG_READY);
    }
    assert_true(s_ready_count < 16);
    snprintf(s_ready_ids[s_ready_count++], sizeof s_ready_ids[0], "%s", b->peer);
    int pid_in_msg = msg->pid;
    cf_proto_msg_destroy(&msg);
    assert_true(b->peer[0] == 'p');
    char *end = NULL;
    long pid = strtol(b->peer + 1, &end, 10);
    assert_true(end && *end == '-');
    assert_int_equal(pid, pid_in_msg);
    assert_true(pid != getpid());
    return (pid_t)pid;
}

//  s_expect_ready that also copies the sender's identity to id.
static pid_t s_expect_ready_id(cf_fakebroker_t *b, char id[static 256])
{
    pid_t pid = s_expect_ready(b);
    snprintf(id, 256, "%s", b->peer);
    return pid;
}

//  Sends one task to identity and returns its int result.
static int64_t s_run_on(cf_fakebroker_t *b, const char *identity, uint64_t id, const char *fn,
                        const char *fmt, ...)
{
    cf_proto_enc_begin(b->enc, CF_MSG_TASK);
    va_list ap;
    va_start(ap, fmt);
    cf_fakebroker_add_taskv(b, id, fn, fmt, &ap);
    va_end(ap);
    cf_fakebroker_send_to(b, identity);
    cf_proto_msg_t *msg = cf_fakebroker_expect(b, CF_MSG_RESULT);
    assert_string_equal(b->peer, identity);
    assert_int_equal(msg->count, 1);
    assert_int_equal(msg->results[0].id, id);
    assert_int_equal(msg->results[0].status, CF_STATUS_OK);
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(msg->results[0].value, msg->results[0].value_len, &doc),
                     CF_OK);
    int64_t value = -1;
    assert_int_equal(cf_value_get_int(cf_mp_doc_root(doc), &value), CF_OK);
    cf_mp_doc_destroy(&doc);
    cf_proto_msg_destroy(&msg);
    return value;
}

static cf_procs_t *s_procs(cf_fakebroker_t *b, int count, int max_tasks)
{
    s_pool_reset();
    cf_procs_t *procs = cf_procs_new(&(cf_procs_config_t){
        .count = count,
        .threads = 1,
        .endpoint = b->endpoint,
        .max_tasks_per_worker = max_tasks,
        .on_exit = s_on_exit,
        .on_exit_arg = &s_exit_count,
    });
    if (!procs)
        fail_msg("cf_procs_new: %s", cf_last_error());
    return procs;
}

static bool s_process_gone(pid_t pid)
{
    return kill(pid, 0) != 0 && errno == ESRCH;
}

//  Nothing of ours is left: no child at all (the zygote was ours).
static void s_expect_no_children(void)
{
    errno = 0;
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
}

//  The processes are gone and nothing of ours is left.
static void s_expect_gone(const pid_t *pids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_true(s_process_gone(pids[i]));
    s_expect_no_children();
}

static void s_wait_alive(cf_procs_t *procs, int n)
{
    for (int waited = 0; cf_procs_alive(procs) != n; waited += 5) {
        if (waited > S_WAIT_MS)
            fail_msg("alive stays %d, expected %d", cf_procs_alive(procs), n);
        s_sleep_ms(5);
    }
}

// ---------------------------------------------------------------------------
//  Tests

static void test_workers_start_run_tasks_and_leave_nothing_behind(void **state)
{
    cf_fakebroker_t *b = *state;
    cf_procs_t *procs = s_procs(b, 2, 0);
    assert_int_equal(cf_procs_alive(procs), 2);
    pid_t pids[2];
    char ids[2][256];
    for (int i = 0; i < 2; i++) {
        pids[i] = s_expect_ready_id(b, ids[i]);
        assert_int_equal(kill(pids[i], 0), 0);
    }
    assert_true(pids[0] != pids[1]);
    assert_string_not_equal(ids[0], ids[1]);
    for (int i = 0; i < 2; i++)
        assert_int_equal(s_run_on(b, ids[i], (uint64_t)i + 1, "p_pid", ""), pids[i]);

    cf_procs_destroy(&procs, 5000);
    assert_null(procs);
    cf_procs_destroy(&procs, 5000);    //  safe with NULL
    //  Both said DISCONNECT (SIGTERM is graceful) and were reported.
    for (int i = 0; i < 2; i++)
        cf_fakebroker_await(b, CF_MSG_DISCONNECT);
    for (int i = 0; i < 2; i++) {
        s_exit_t e = s_wait_exit(i);
        int k = e.pid == pids[0] ? 0 : 1;
        assert_int_equal(e.pid, pids[k]);
        assert_string_equal(e.identity, ids[k]);
        assert_true(WIFEXITED(e.status));
        assert_int_equal(WEXITSTATUS(e.status), 0);
    }
    s_expect_gone(pids, 2);
}

static void test_a_killed_worker_is_reported_and_replaced(void **state)
{
    cf_fakebroker_t *b = *state;
    cf_procs_t *procs = s_procs(b, 2, 0);
    char first_id[256];
    pid_t first = s_expect_ready_id(b, first_id);
    pid_t second = s_expect_ready(b);

    assert_int_equal(kill(first, SIGKILL), 0);
    s_exit_t e = s_wait_exit(0);
    assert_int_equal(e.pid, first);
    assert_string_equal(e.identity, first_id);
    assert_true(WIFSIGNALED(e.status));
    assert_int_equal(WTERMSIG(e.status), SIGKILL);

    char replacement_id[256];
    pid_t replacement = s_expect_ready_id(b, replacement_id);
    assert_true(replacement != first && replacement != second);
    assert_string_not_equal(replacement_id, first_id);
    assert_int_equal(s_run_on(b, replacement_id, 9, "p_pid", ""), replacement);
    s_wait_alive(procs, 2);

    cf_procs_destroy(&procs, 5000);
    s_expect_gone((pid_t[]){ first, second, replacement }, 3);
}

static void test_sigterm_lets_a_worker_finish_its_task(void **state)
{
    cf_fakebroker_t *b = *state;
    char dir[] = "/tmp/cf-procs-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char running[64], go[64];
    snprintf(running, sizeof running, "%s/running", dir);
    snprintf(go, sizeof go, "%s/go", dir);

    cf_procs_t *procs = s_procs(b, 1, 0);
    char id[256];
    pid_t pid = s_expect_ready_id(b, id);

    cf_proto_enc_begin(b->enc, CF_MSG_TASK);
    cf_fakebroker_add_task(b, 1, "p_wait_file", "ss", running, go);
    cf_fakebroker_send_to(b, id);
    struct stat st;
    for (int waited = 0; stat(running, &st) != 0; waited += 5) {
        if (waited > S_WAIT_MS)
            fail_msg("the task never started");
        s_sleep_ms(5);
    }
    assert_int_equal(kill(pid, SIGTERM), 0);
    FILE *f = fopen(go, "w");
    assert_non_null(f);
    fclose(f);
    cf_proto_msg_t *msg = cf_fakebroker_expect(b, CF_MSG_RESULT);
    assert_int_equal(msg->results[0].status, CF_STATUS_OK);
    cf_proto_msg_destroy(&msg);
    msg = cf_fakebroker_expect(b, CF_MSG_DISCONNECT);
    assert_string_equal(b->peer, id);
    cf_proto_msg_destroy(&msg);
    s_exit_t e = s_wait_exit(0);
    assert_int_equal(e.pid, pid);
    assert_true(WIFEXITED(e.status));
    assert_int_equal(WEXITSTATUS(e.status), 0);
    //  And it is replaced.
    assert_true(s_expect_ready(b) != pid);

    cf_procs_destroy(&procs, 5000);
    s_expect_no_children();
    unlink(running);
    unlink(go);
    rmdir(dir);
}

static void test_max_tasks_replaces_the_worker(void **state)
{
    cf_fakebroker_t *b = *state;
    cf_procs_t *procs = s_procs(b, 1, 1);
    char id[256];
    pid_t pid = s_expect_ready_id(b, id);
    assert_int_equal(s_run_on(b, id, 1, "p_pid", ""), pid);
    cf_fakebroker_await(b, CF_MSG_DISCONNECT);
    s_exit_t e = s_wait_exit(0);
    assert_int_equal(e.pid, pid);
    assert_true(WIFEXITED(e.status) && WEXITSTATUS(e.status) == 0);
    pid_t next = s_expect_ready(b);
    assert_true(next != pid);
    cf_procs_destroy(&procs, 5000);
    s_expect_no_children();
}

static void test_the_initializer_runs_in_the_worker(void **state)
{
    cf_fakebroker_t *b = *state;
    static int value = 42;
    s_pool_reset();
    cf_procs_t *procs = cf_procs_new(&(cf_procs_config_t){
        .count = 1,
        .threads = 2,
        .endpoint = b->endpoint,
        .initializer = s_initializer,
        .initarg = &value,
        .on_exit = s_on_exit,
        .on_exit_arg = &s_exit_count,
    });
    assert_non_null(procs);
    char id[256];
    (void)s_expect_ready_id(b, id);
    assert_int_equal(s_run_on(b, id, 1, "p_init", ""), 42);
    assert_int_equal(s_child_init_value, 0);    //  it ran there, not here
    cf_procs_destroy(&procs, 5000);
    s_expect_no_children();
}

//  Busy threads of "the application": one holds a lock across the fork,
//  others allocate and format.
static pthread_mutex_t s_app_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool s_app_stop;

static void *s_app_busy(void *arg)
{
    (void)arg;
    while (!atomic_load(&s_app_stop)) {
        char *p = malloc(1000);
        assert_non_null(p);
        snprintf(p, 1000, "%d", rand());
        free(p);
    }
    return NULL;
}

static void *s_app_holder(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&s_app_lock);
    while (!atomic_load(&s_app_stop))
        s_sleep_ms(1);
    pthread_mutex_unlock(&s_app_lock);
    return NULL;
}

typedef struct {
    cf_fakebroker_t *broker;
    cf_procs_t *procs;
} s_creator_t;

static void *s_creator(void *arg)
{
    s_creator_t *c = arg;
    c->procs = s_procs(c->broker, 2, 0);
    return NULL;    //  this thread ends; the pool must not
}

static void test_it_works_when_the_caller_runs_threads(void **state)
{
    cf_fakebroker_t *b = *state;
    atomic_store(&s_app_stop, false);
    pthread_t app[3];
    assert_int_equal(pthread_create(&app[0], NULL, s_app_holder, NULL), 0);
    assert_int_equal(pthread_create(&app[1], NULL, s_app_busy, NULL), 0);
    assert_int_equal(pthread_create(&app[2], NULL, s_app_busy, NULL), 0);

    //  Created from a thread that then exits (PR_SET_PDEATHSIG follows the
    //  forking thread: the supervisor's, not this one).
    s_creator_t creator = { .broker = b };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_creator, &creator), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_non_null(creator.procs);

    pid_t pids[2];
    char ids[2][256];
    for (int i = 0; i < 2; i++) {
        pids[i] = s_expect_ready_id(b, ids[i]);
    }
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 2; i++)
            assert_int_equal(s_run_on(b, ids[i], (uint64_t)(10 * round + i + 1), "p_pid", ""),
                             pids[i]);
    }
    assert_int_equal(cf_procs_alive(creator.procs), 2);
    //  No worker died with its creating thread.
    pthread_mutex_lock(&s_exit_lock);
    assert_int_equal(s_exit_count, 0);
    pthread_mutex_unlock(&s_exit_lock);

    cf_procs_destroy(&creator.procs, 5000);
    atomic_store(&s_app_stop, true);
    for (int i = 0; i < 3; i++)
        pthread_join(app[i], NULL);
    s_expect_gone(pids, 2);
}

static void test_workers_that_cannot_start_fail_new(void **state)
{
    (void)state;
    cf_procs_t *procs = cf_procs_new(&(cf_procs_config_t){
        .count = 2,
        .threads = 1,
        .endpoint = "not-an-endpoint",
    });
    assert_null(procs);
    assert_int_equal(cf_last_err(), CF_ESYS);
    assert_non_null(strstr(cf_last_error(), "exited before it started"));
    s_expect_no_children();
}

static void test_bad_configurations_are_refused(void **state)
{
    (void)state;
    assert_null(cf_procs_new(NULL));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(cf_procs_new(&(cf_procs_config_t){ .count = 0, .threads = 1, .endpoint = "x" }));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(cf_procs_new(&(cf_procs_config_t){ .count = 1, .threads = 0, .endpoint = "x" }));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(cf_procs_new(&(cf_procs_config_t){ .count = 1, .threads = 1 }));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(cf_procs_new(&(cf_procs_config_t){
        .count = 1, .threads = 1, .endpoint = "x", .max_tasks_per_worker = -1 }));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    s_expect_no_children();
}

int main(void)
{
#if CF_TEST_ASAN
    //  GCC 12's AddressSanitizer takes no lock around fork(): a worker
    //  forked by the zygote was seen to hang forever inside ASan's
    //  allocator (GetFromAllocator, a region mutex left locked in the
    //  copy). glibc's own malloc is fork-safe; run this test in plain and
    //  UBSan builds (LLVM 17's ASan locks its allocator around fork).
    //  77: CTest shows the program as Skipped, not Passed. The worker
    //  process code gets its memory checks from cf_procs_test.memcheck
    //  (valgrind, in the normal build) instead.
    fprintf(stderr, "cf_procs_test: skipped under AddressSanitizer (fork deadlock in its "
                    "allocator)\n");
    return 77;
#endif
    const struct CMUnitTest tests[] = {
        CF_FAKEBROKER_TEST(test_workers_start_run_tasks_and_leave_nothing_behind),
        CF_FAKEBROKER_TEST(test_a_killed_worker_is_reported_and_replaced),
        CF_FAKEBROKER_TEST(test_sigterm_lets_a_worker_finish_its_task),
        CF_FAKEBROKER_TEST(test_max_tasks_replaces_the_worker),
        CF_FAKEBROKER_TEST(test_the_initializer_runs_in_the_worker),
        CF_FAKEBROKER_TEST(test_it_works_when_the_caller_runs_threads),
        cmocka_unit_test(test_workers_that_cannot_start_fail_new),
        cmocka_unit_test(test_bad_configurations_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
