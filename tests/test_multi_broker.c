//  Several brokers under load, one killed, restarted, another killed (issue
//  11): three real cf-brokers, three cf-workers (each serving one broker,
//  then, in the second test, each serving all three), two clients (each an
//  executor on its own thread, each given all three brokers) running
//  100,000 short tasks and 50 tasks of 0.5 s. Broker 0 is killed (SIGKILL)
//  a tenth of the way in, started again on the same endpoints 5 s later
//  (the scenario's only fixed wait), and once it runs tasks again broker 1
//  is killed.
//
//  Asserted: every future resolves exactly once (a done callback counts)
//  with its own result; every task ran at least once; a task that ran more
//  than once ran on a killed broker's worker (at-least-once only across a
//  broker's death), and the extra runs are bounded by what those workers
//  can hold (threads + prefetch, each); the clients moved tasks and noticed
//  each death; the restarted broker took tasks again; the load was still
//  running at each event.
//
//  Printed: for each death, the time until each client moved the broker's
//  tasks, and until the tasks its worker held began on another worker;
//  the re-executions. Each task appends a record (task, worker pid, start
//  time) to a file (tests/multi_tasks.c), which is how runs are counted.

#include "cf_executor.h"
#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_BROKERS          3
#define S_CLIENTS          2
#define S_SHORT_PER_CLIENT 50000
#define S_SLOW_PER_CLIENT  25
#define S_TASKS_PER_CLIENT (S_SHORT_PER_CLIENT + S_SLOW_PER_CLIENT)
#define S_TASKS            (S_CLIENTS * S_TASKS_PER_CLIENT)
#define S_SHORT_US         100
#define S_SLOW_US          500000
#define S_HB_MS            200
#define S_HB_TEXT          "200"
#define S_THREADS          2
#define S_THREADS_TEXT     "2"
//  A cf-worker holds at most its threads plus its prefetch
//  (CF_WORKER_PREFETCH_MAX in worker/cf_worker_int.h).
#define S_WORKER_HOLDS_MAX (S_THREADS + 256)
//  A cf-worker serving several brokers holds at most its threads plus its
//  shared allowance (by default its threads again) from all of them.
#define S_SHARED_HOLDS_MAX (2 * S_THREADS)
//  Tasks each client keeps submitted and unresolved: submission goes on
//  through the whole scenario, so a broker that comes back gets new tasks.
#define S_WINDOW           2000
#define S_RESTART_AFTER_MS 5000
#define S_DEADLINE_MS      60000

//  One execution, as tests/multi_tasks.c writes it.
typedef struct {
    uint32_t index;
    int32_t pid;
    int64_t start_us;
} s_record_t;

typedef struct {
    cf_executor_t *ex;
    int client;
    const char *records;    //  the file the tasks append to
    pthread_t thread;
    cf_err_t failed;    //  a submission that failed (CF_OK: none)
} s_client_t;

static atomic_int s_resolutions[S_TASKS];
static cf_future_t *s_futures[S_TASKS];
static atomic_long s_done;

static int s_count_done(cf_future_t *f, void *arg)
{
    (void)f;
    atomic_fetch_add(&s_resolutions[(uintptr_t)arg], 1);
    atomic_fetch_add(&s_done, 1);
    return 0;
}

//  A client's thread: its tasks in order, one slow task in every
//  S_TASKS_PER_CLIENT / S_SLOW_PER_CLIENT, the window bounding how far it
//  runs ahead.
static void *s_client_main(void *arg)
{
    s_client_t *c = arg;
    int every = S_TASKS_PER_CLIENT / S_SLOW_PER_CLIENT;
    for (int k = 0; k < S_TASKS_PER_CLIENT; k++) {
        int index = c->client * S_TASKS_PER_CLIENT + k;
        int sleep_us = k % every == every / 2 ? S_SLOW_US : S_SHORT_US;
        cf_future_t *f = cf_submit(c->ex, "multi_mark", "sii", c->records, index, sleep_us);
        if (!f) {
            c->failed = cf_last_err();
            fprintf(stderr, "client %d: submit %d: %s\n", c->client, k, cf_last_error());
            return NULL;
        }
        if (cf_future_add_done_callback(f, s_count_done, (void *)(uintptr_t)index) != CF_OK)
            c->failed = CF_ENOMEM;
        s_futures[index] = f;
    }
    return NULL;
}

// ---------------------------------------------------------------------------
//  The cluster

typedef struct {
    cf_testkit_t *kit;
    cf_testkit_proc_t *brokers[S_BROKERS];
    char clients[S_BROKERS][256];    //  each broker's client endpoint
    char workers[S_BROKERS][256];    //  each broker's worker endpoint
    cf_testkit_proc_t *workers_procs[S_BROKERS];
    pid_t worker_pids[S_BROKERS];
    //  Every cf-worker serves every broker (--broker with the list), or
    //  worker w serves broker w alone.
    bool shared;
    char workers_list[S_BROKERS * 260];
} s_cluster_t;

static cf_testkit_proc_t *s_start_broker(s_cluster_t *cl, int b)
{
    const char *clients = cl->clients[b][0] ? cl->clients[b] : "tcp://127.0.0.1:*";
    const char *workers = cl->workers[b][0] ? cl->workers[b] : "tcp://127.0.0.1:*";
    cf_testkit_proc_t *broker = cf_testkit_start_broker(cl->kit, "--clients", clients, "--workers",
                                                        workers, "--heartbeat-ms", S_HB_TEXT,
                                                        "--liveness", "3", NULL);
    snprintf(cl->clients[b], sizeof cl->clients[b], "%s", cf_testkit_clients(broker));
    snprintf(cl->workers[b], sizeof cl->workers[b], "%s", cf_testkit_workers(broker));
    cl->brokers[b] = broker;
    return broker;
}

//  Where each cf-worker connects: every broker's worker endpoint (shared),
//  or broker w's alone.
static const char *s_worker_endpoint(s_cluster_t *cl, int w)
{
    if (!cl->shared)
        return cl->workers[w];
    cl->workers_list[0] = '\0';
    for (int b = 0; b < S_BROKERS; b++) {
        if (b)
            strcat(cl->workers_list, ",");
        strcat(cl->workers_list, cl->workers[b]);
    }
    return cl->workers_list;
}

static void s_start_workers(s_cluster_t *cl)
{
    const char *lib = cf_testkit_env("CF_MULTI_TASKS_LIB");
    const char *extra[] = { "--threads", S_THREADS_TEXT, "--heartbeat-ms",
                            S_HB_TEXT,   "--liveness",   "3",
                            NULL };
    for (int w = 0; w < S_BROKERS; w++) {
        cl->workers_procs[w] = cf_testkit_start_worker_tasks(cl->kit, s_worker_endpoint(cl, w), lib,
                                                             extra);
        cl->worker_pids[w] = cf_testkit_pid(cl->workers_procs[w]);
    }
}

// ---------------------------------------------------------------------------
//  Waiting for the scenario's events

static bool s_done_reaches(void *arg)
{
    return atomic_load(&s_done) >= *(long *)arg;
}

typedef struct {
    s_client_t *clients;
    uint64_t failovers;    //  each client has at least this many
} s_failover_wait_t;

static bool s_failed_over(void *arg)
{
    s_failover_wait_t *w = arg;
    for (int c = 0; c < S_CLIENTS; c++) {
        cf_client_counters_t counters;
        if (!cf_executor_client_counters(w->clients[c].ex, &counters)
            || counters.failovers < w->failovers)
            return false;
    }
    return true;
}

static bool s_broker_completes(void *arg)
{
    uint64_t completed = 0;
    return cf_testkit_broker_stat(arg, "completed", 1000, &completed) && completed >= 100;
}

//  Kills broker b and waits until each client moved its tasks (failovers
//  reaches failovers); prints how long that took for each.
//  Kills broker b and waits for the clients to move its tasks. Returns
//  when the kill began; *reaped_ms is when the broker was gone for sure.
static int64_t s_kill_and_watch(s_cluster_t *cl, s_client_t *clients, int b, uint64_t failovers,
                                int64_t *reaped_ms)
{
    uint64_t running = 0;
    (void)cf_testkit_broker_stat(cl->clients[b], "running", 1000, &running);
    //  Before the kill: cf_testkit_kill returns once the broker is reaped,
    //  by when its clients may have noticed.
    int64_t killed_ms = cf_testkit_now_ms();
    cf_testkit_kill(cl->brokers[b]);
    *reaped_ms = cf_testkit_now_ms();
    long done = atomic_load(&s_done);
    printf("multi: broker %d killed at %ld of %d resolved; its STATS just before: %" PRIu64
           " tasks running (or prefetched) on its worker\n",
           b, done, S_TASKS, running);
    assert_true(done < S_TASKS);    //  mid-load
    s_failover_wait_t wait = { clients, failovers };
    if (!cf_testkit_wait_until(s_failed_over, &wait, S_DEADLINE_MS)) {
        cf_testkit_dump_logs(cl->kit);
        fail_msg("a client did not move broker %d's tasks", b);
    }
    for (int c = 0; c < S_CLIENTS; c++) {
        cf_client_counters_t counters;
        assert_true(cf_executor_client_counters(clients[c].ex, &counters));
        printf("multi: broker %d death -> client %d moved its tasks after %" PRId64
               " ms (moved so far %" PRIu64 ")\n",
               b, c, counters.last_failover_ms - killed_ms, counters.moved);
    }
    return killed_ms;
}

// ---------------------------------------------------------------------------
//  The runs

//  A task's runs (sorted by start) beyond its first are explained by the
//  deaths: one-broker workers, one of the runs was on a killed broker's
//  worker; shared workers, each run after the first began after a death
//  whose span (s_in_death_span) the run before it began in.
//  Whether a run that began at start_us may have been a task of a broker
//  reaped (gone for sure) at reaped_ms: begun before it was gone, or after, from
//  what a shared worker still held of it (it runs what it holds: at most
//  S_SHARED_HOLDS_MAX tasks, which begin within that many slow tasks).
#define S_HELD_DRAIN_MS (S_SHARED_HOLDS_MAX * (S_SLOW_US / 1000))
static bool s_in_death_span(int64_t start_us, int64_t reaped_ms)
{
    return start_us < (reaped_ms + S_HELD_DRAIN_MS) * 1000;
}

static bool s_explained(const s_cluster_t *cl, const s_record_t *runs, size_t count,
                        const int64_t killed_ms[2], const int64_t reaped_ms[2], const int dead[2])
{
    if (!cl->shared) {
        for (size_t r = 0; r < count; r++)
            if (runs[r].pid == cl->worker_pids[dead[0]] || runs[r].pid == cl->worker_pids[dead[1]])
                return true;
        return false;
    }
    for (size_t r = 1; r < count; r++) {
        bool death_between = false;
        for (int d = 0; d < 2; d++)
            death_between = death_between
                            || (s_in_death_span(runs[r - 1].start_us, reaped_ms[d])
                                && runs[r].start_us >= killed_ms[d] * 1000);
        if (!death_between)
            return false;
    }
    return true;
}

static int s_by_index(const void *a, const void *b)
{
    const s_record_t *x = a, *y = b;
    if (x->index != y->index)
        return x->index < y->index ? -1 : 1;
    return x->start_us < y->start_us ? -1 : x->start_us > y->start_us;
}

//  Counts the runs of every task and checks them (see the file's
//  comment); prints the re-executions and the time from each death to the
//  tasks its worker held beginning elsewhere.
static void s_check_runs(s_cluster_t *cl, const char *path, const int64_t killed_ms[2],
                         const int64_t reaped_ms[2], const int dead[2])
{
    FILE *in = fopen(path, "rb");
    assert_non_null(in);
    size_t cap = S_TASKS + 4096, len = 0;
    s_record_t *records = malloc(cap * sizeof *records);
    assert_non_null(records);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            records = realloc(records, cap * sizeof *records);
            assert_non_null(records);
        }
        size_t n = fread(records + len, sizeof *records, cap - len, in);
        len += n;
        if (n == 0)
            break;
    }
    fclose(in);
    qsort(records, len, sizeof *records, s_by_index);

    size_t extra = 0, twice = 0, unexplained = 0, never = 0;
    //  [death]: from the death to a task its worker held beginning elsewhere
    int64_t first_us[2] = { INT64_MAX, INT64_MAX }, last_us[2] = { 0, 0 };
    size_t moved_running[2] = { 0, 0 };
    size_t i = 0;
    for (uint32_t index = 0; index < S_TASKS; index++) {
        size_t from = i;
        while (i < len && records[i].index == index)
            i++;
        size_t runs = i - from;
        if (runs == 0) {
            never++;
            continue;
        }
        if (runs == 1)
            continue;
        twice++;
        extra += runs - 1;
        if (!s_explained(cl, records + from, runs, killed_ms, reaped_ms, dead)
            && unexplained++ < 5) {
            fprintf(stderr, "multi: task %" PRIu32 " ran %zu times, unexplained:", index, runs);
            for (size_t r = from; r < i; r++)
                fprintf(stderr, " [pid %d at %+.1f ms from death 0, %+.1f ms from death 1]",
                        (int)records[r].pid,
                        (double)(records[r].start_us - killed_ms[0] * 1000) / 1000,
                        (double)(records[r].start_us - killed_ms[1] * 1000) / 1000);
            fprintf(stderr, "\n");
        }
        for (int d = 0; d < 2; d++) {
            int64_t death_us = killed_ms[d] * 1000;
            bool running_there = false;
            int64_t elsewhere_us = INT64_MAX;
            if (cl->shared) {
                //  Runs cannot be told apart by pid: the first run in the
                //  dead broker's span, the next after the death, is its
                //  task run again.
                running_there = s_in_death_span(records[from].start_us, reaped_ms[d]);
                if (records[from + 1].start_us >= death_us)
                    elsewhere_us = records[from + 1].start_us;
            }
            else
                for (size_t r = from; r < i; r++) {
                    //  Its worker had it: ran it before the death, or after
                    //  from its prefetch (before the restart, no new task
                    //  reached it).
                    if (records[r].pid == cl->worker_pids[dead[d]]
                        && records[r].start_us < death_us + S_RESTART_AFTER_MS * 1000)
                        running_there = true;
                    else if (records[r].pid != cl->worker_pids[dead[d]]
                             && records[r].start_us >= death_us
                             && records[r].start_us < elsewhere_us)
                        elsewhere_us = records[r].start_us;
                }
            if (!running_there || elsewhere_us == INT64_MAX)
                continue;
            moved_running[d]++;
            if (elsewhere_us - death_us < first_us[d])
                first_us[d] = elsewhere_us - death_us;
            if (elsewhere_us - death_us > last_us[d])
                last_us[d] = elsewhere_us - death_us;
        }
    }
    free(records);
    //  Per death: what the dead broker's workers held.
    size_t bound = cl->shared ? 2 * S_BROKERS * S_SHARED_HOLDS_MAX : 2 * S_WORKER_HOLDS_MAX;
    printf("multi: %s workers: %zu runs of %d tasks: %zu tasks ran more than once, %zu extra "
           "runs (bound %zu), %zu unexplained, %zu never ran\n",
           cl->shared ? "shared" : "one-broker", len, S_TASKS, twice, extra, bound, unexplained,
           never);
    for (int d = 0; d < 2; d++) {
        if (moved_running[d])
            printf("multi: broker %d death -> %zu tasks its worker held began elsewhere after "
                   "%.1f ms (first) to %.1f ms (last)\n",
                   dead[d], moved_running[d], (double)first_us[d] / 1000,
                   (double)last_us[d] / 1000);
        else
            printf("multi: broker %d death -> none of the tasks its worker held ran again\n",
                   dead[d]);
    }
    assert_int_equal(never, 0);
    assert_int_equal(unexplained, 0);
    assert_true(extra <= bound);
}

// ---------------------------------------------------------------------------
//  The test

static void s_two_clients_survive_two_broker_deaths_and_a_restart(cf_testkit_t *kit, bool shared)
{
    s_cluster_t cl = { .kit = kit, .shared = shared };
    for (int i = 0; i < S_TASKS; i++) {
        atomic_store(&s_resolutions[i], 0);
        s_futures[i] = NULL;
    }
    atomic_store(&s_done, 0);
    for (int b = 0; b < S_BROKERS; b++)
        s_start_broker(&cl, b);
    s_start_workers(&cl);
    char list[S_BROKERS * 260] = "";
    for (int b = 0; b < S_BROKERS; b++) {
        if (b)
            strcat(list, ", ");
        strcat(list, cl.clients[b]);
    }
    const char *records = cf_testkit_path(kit, "runs.bin");

    s_client_t clients[S_CLIENTS];
    for (int c = 0; c < S_CLIENTS; c++) {
        clients[c] = (s_client_t){ .client = c, .records = records };
        clients[c].ex = cf_executor_connect(list, &(cf_options_t){
                                                      .heartbeat_ivl_ms = S_HB_MS,
                                                      .max_outstanding = S_WINDOW,
                                                      //  a task is retried after a
                                                      //  lost worker, not a lost broker
                                                      .retries = 10,
                                                  });
        if (!clients[c].ex)
            fail_msg("connect to %s: %s", list, cf_last_error());
    }
    int64_t start_ms = cf_testkit_now_ms();
    for (int c = 0; c < S_CLIENTS; c++)
        assert_int_equal(pthread_create(&clients[c].thread, NULL, s_client_main, &clients[c]), 0);

    long tenth = S_TASKS / 10;
    assert_true(cf_testkit_wait_until(s_done_reaches, &tenth, S_DEADLINE_MS));
    int dead[2] = { 0, 1 };
    int64_t killed_ms[2], reaped_ms[2];
    killed_ms[0] = s_kill_and_watch(&cl, clients, dead[0], 1, &reaped_ms[0]);

    //  The scenario's own wait: the broker stays dead this long.
    struct timespec restart_after = { S_RESTART_AFTER_MS / 1000, 0 };
    nanosleep(&restart_after, NULL);
    char again_endpoint[sizeof cl.clients[0]];
    memcpy(again_endpoint, cl.clients[dead[0]], sizeof again_endpoint);
    s_start_broker(&cl, dead[0]);
    assert_string_equal(cl.clients[dead[0]], again_endpoint);
    int64_t restarted_ms = cf_testkit_now_ms();
    if (!cf_testkit_wait_until(s_broker_completes, cl.clients[dead[0]], S_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("the restarted broker ran no task again");
    }
    printf("multi: broker %d restarted; 100 tasks completed there %" PRId64 " ms later\n", dead[0],
           cf_testkit_now_ms() - restarted_ms);

    killed_ms[1] = s_kill_and_watch(&cl, clients, dead[1], 2, &reaped_ms[1]);

    long all = S_TASKS;
    if (!cf_testkit_wait_until(s_done_reaches, &all, S_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("%ld of %d futures resolved", atomic_load(&s_done), S_TASKS);
    }
    int64_t took_ms = cf_testkit_now_ms() - start_ms;
    for (int c = 0; c < S_CLIENTS; c++) {
        assert_int_equal(pthread_join(clients[c].thread, NULL), 0);
        assert_int_equal(clients[c].failed, CF_OK);
    }

    size_t wrong = 0, twice = 0;
    for (int i = 0; i < S_TASKS; i++) {
        int64_t value = -1;
        if (cf_future_int(s_futures[i], 0, &value) != CF_OK || value != (int64_t)i * 3 + 1) {
            if (wrong++ < 5)
                fprintf(stderr, "task %d: %s, value %" PRId64 "\n", i,
                        cf_future_error(s_futures[i]) ? cf_future_error(s_futures[i])->message
                                                      : "no error",
                        value);
        }
        twice += atomic_load(&s_resolutions[i]) != 1;
        cf_future_release(&s_futures[i]);
    }
    cf_client_counters_t total = { 0 };
    for (int c = 0; c < S_CLIENTS; c++) {
        cf_client_counters_t counters;
        assert_true(cf_executor_client_counters(clients[c].ex, &counters));
        total.moved += counters.moved;
        total.late += counters.late;
        total.failovers += counters.failovers;
        cf_executor_destroy(&clients[c].ex);
    }
    printf("multi: %d futures in %" PRId64 " ms: wrong %zu, not resolved exactly once %zu; "
           "clients moved %" PRIu64 " tasks in %" PRIu64 " failovers, ignored %" PRIu64
           " late replies\n",
           S_TASKS, took_ms, wrong, twice, total.moved, total.failovers, total.late);
    assert_int_equal(wrong, 0);
    assert_int_equal(twice, 0);
    assert_true(total.moved > 0);
    s_check_runs(&cl, records, killed_ms, reaped_ms, dead);
}

//  Each cf-worker serves one broker: a run is the dead broker's by its pid.
static void test_two_clients_survive_two_broker_deaths_and_a_restart(void **state)
{
    s_two_clients_survive_two_broker_deaths_and_a_restart(*state, false);
}

//  Each cf-worker serves all three brokers (their tasks share its slots):
//  a dead broker's held tasks run again elsewhere, within what the workers
//  can hold, and the restarted broker is served again without restarting
//  any worker.
static void test_shared_workers_survive_two_broker_deaths_and_a_restart(void **state)
{
    s_two_clients_survive_two_broker_deaths_and_a_restart(*state, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_two_clients_survive_two_broker_deaths_and_a_restart,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_shared_workers_survive_two_broker_deaths_and_a_restart,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
