//  cf_unitkit (see cf_unitkit.h).

#define _GNU_SOURCE    //  nftw

#include "cf_unitkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static pthread_mutex_t s_gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t s_gate_cond = PTHREAD_COND_INITIALIZER;
static bool s_gate_open = true;
static int s_gate_reached;    //  tasks that reached it since it closed

void cf_unitkit_use_env(void)
{
    if (getenv("CF_TEST_LOG"))
        cf_log_set_handler(cf_log_to_stderr, NULL, CF_LOG_DEBUG);
    if (getenv("CF_TEST_FILTER"))
        cmocka_set_test_filter(getenv("CF_TEST_FILTER"));
}

static char s_dir[64];

static int s_remove(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

const char *cf_unitkit_dir_make(const char *name)
{
    static bool removed_at_exit;
    if (!removed_at_exit) {
        atexit(cf_unitkit_dir_remove);
        removed_at_exit = true;
    }
    snprintf(s_dir, sizeof s_dir, "/tmp/%s.XXXXXX", name);
    if (!mkdtemp(s_dir)) {
        s_dir[0] = '\0';
        return NULL;
    }
    return s_dir;
}

void cf_unitkit_dir_remove(void)
{
    if (s_dir[0])
        nftw(s_dir, s_remove, 16, FTW_DEPTH | FTW_PHYS);
    s_dir[0] = '\0';
}

const char *cf_unitkit_dir(void)
{
    return s_dir;
}

const char *cf_unitkit_dir_path(const char *name)
{
    static char paths[4][256];
    static int next;
    char *path = paths[next++ % 4];
    snprintf(path, sizeof paths[0], "%s/%s", s_dir, name);
    return path;
}

void cf_unitkit_gate_close(void)
{
    pthread_mutex_lock(&s_gate_lock);
    s_gate_open = false;
    s_gate_reached = 0;
    pthread_mutex_unlock(&s_gate_lock);
}

void cf_unitkit_gate_open(void)
{
    pthread_mutex_lock(&s_gate_lock);
    s_gate_open = true;
    pthread_cond_broadcast(&s_gate_cond);
    pthread_mutex_unlock(&s_gate_lock);
}

void cf_unitkit_gate_pass(void)
{
    pthread_mutex_lock(&s_gate_lock);
    s_gate_reached++;
    pthread_cond_broadcast(&s_gate_cond);
    while (!s_gate_open)
        pthread_cond_wait(&s_gate_cond, &s_gate_lock);
    pthread_mutex_unlock(&s_gate_lock);
}

void cf_unitkit_gate_task(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    cf_unitkit_gate_pass();
    cf_return_int(call, x);
}

void cf_unitkit_expect_at_gate(int n, int timeout_ms)
{
    //  CLOCK_REALTIME: the condition variable's default clock.
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s_gate_lock);
    int rc = 0;
    while (s_gate_reached < n && rc == 0)
        rc = pthread_cond_timedwait(&s_gate_cond, &s_gate_lock, &deadline);
    int reached = s_gate_reached;
    pthread_mutex_unlock(&s_gate_lock);
    if (reached < n)
        fail_msg("%d of %d tasks reached the gate in %d ms", reached, n, timeout_ms);
}

int64_t cf_unitkit_expect_int(cf_future_t *f, int timeout_ms)
{
    int64_t value = -1;
    cf_err_t rc = cf_future_int(f, timeout_ms, &value);
    if (rc != CF_OK) {
        const cf_task_error_t *e = cf_future_error(f);
        fail_msg("future of %s: %s (%s: %s)", cf_future_function(f), cf_strerror(rc),
                 e ? e->type : "-", e ? e->message : "-");
    }
    return value;
}

const cf_task_error_t *cf_unitkit_expect_task_error(cf_future_t *f, int timeout_ms,
                                                    const char *type)
{
    assert_int_equal(cf_future_result(f, timeout_ms, NULL), CF_ETASK);
    const cf_task_error_t *e = cf_future_error(f);
    assert_non_null(e);
    assert_string_equal(e->type, type);
    return e;
}

void cf_unitkit_release_all(cf_future_t **fs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cf_future_release(&fs[i]);
}

// ---------------------------------------------------------------------------
//  Log capture

static pthread_mutex_t s_log_lock = PTHREAD_MUTEX_INITIALIZER;
static char s_log[16384];

static void s_log_handler(cf_log_level_t level, const char *component, const char *message,
                          void *arg)
{
    (void)arg;
    if (getenv("CF_TEST_DEBUG"))
        fprintf(stderr, "%c %s: %s\n", "DIWE"[level], component, message);
    pthread_mutex_lock(&s_log_lock);
    size_t len = strlen(s_log);
    if (len + 512 < sizeof s_log)
        snprintf(s_log + len, sizeof s_log - len, "%c %s: %.400s\n", "DIWE"[level], component,
                 message);
    pthread_mutex_unlock(&s_log_lock);
}

void cf_unitkit_log_start(void)
{
    pthread_mutex_lock(&s_log_lock);
    s_log[0] = '\0';
    pthread_mutex_unlock(&s_log_lock);
    cf_log_set_handler(s_log_handler, NULL, getenv("CF_TEST_DEBUG") ? CF_LOG_DEBUG : CF_LOG_INFO);
}

void cf_unitkit_log_stop(void)
{
    cf_log_set_handler(NULL, NULL, CF_LOG_WARN);
}

bool cf_unitkit_log_has(const char *needle)
{
    pthread_mutex_lock(&s_log_lock);
    bool found = strstr(s_log, needle) != NULL;
    pthread_mutex_unlock(&s_log_lock);
    return found;
}

bool cf_unitkit_log_await(const char *needle, int timeout_ms)
{
    for (int waited = 0; !cf_unitkit_log_has(needle); waited += 10) {
        if (waited >= timeout_ms)
            return false;
        struct timespec nap = { 0, 10 * 1000 * 1000 };
        nanosleep(&nap, NULL);
    }
    return true;
}
