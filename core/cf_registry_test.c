//  cf_registry: registration, lookups under concurrent registration, every
//  getter and return kind, the TypeError texts, first raise wins, runtime
//  errors (unknown function, malformed arguments), cf.chunk, task libraries.

#include "cf_registry.h"

#include "cf_mp.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// ---------------------------------------------------------------------------
//  Helpers

//  Encodes an argument list described by fmt; the caller frees.
static uint8_t *s_args(size_t *len, const char *fmt, ...)
{
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    va_list ap;
    va_start(ap, fmt);
    cf_err_t rc = cf_mp_write_format(&w, true, fmt, &ap);
    va_end(ap);
    assert_int_equal(rc, CF_OK);
    uint8_t *data = cf_mp_writer_take(&w, len);
    assert_non_null(data);
    cf_mp_writer_fini(&w);
    return data;
}

//  Runs fn with the arguments fmt describes; the outcome is the caller's.
static cf_outcome_t s_run(const char *fn, const char *fmt, ...)
{
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    va_list ap;
    va_start(ap, fmt);
    assert_int_equal(cf_mp_write_format(&w, true, fmt, &ap), CF_OK);
    va_end(ap);
    cf_outcome_t outcome;
    assert_int_equal(cf_registry_run(fn, strlen(fn), w.buf.data, w.buf.size, NULL, &outcome),
                     CF_OK);
    cf_mp_writer_fini(&w);
    return outcome;
}

//  The outcome's value, decoded; destroy the doc.
static const cf_value_t *s_value(const cf_outcome_t *outcome, cf_mp_doc_t **doc)
{
    if (!outcome->ok)
        fail_msg("expected ok, got %s: %s", outcome->error_type, outcome->error_message);
    assert_int_equal(cf_mp_doc_decode(outcome->value, outcome->value_len, doc), CF_OK);
    return cf_mp_doc_root(*doc);
}

static void s_expect_error(cf_outcome_t *outcome, const char *type, const char *message)
{
    if (outcome->ok)
        fail_msg("expected %s, got a value", type);
    assert_string_equal(outcome->error_type, type);
    if (message)
        assert_string_equal(outcome->error_message, message);
    cf_outcome_fini(outcome);
}

//  The error for a task name that nobody registered on this host.
static void s_expect_unknown_function(cf_outcome_t *outcome, const char *name)
{
    char expected[512];
    snprintf(expected, sizeof expected, "no task named '%s' is registered on host %s", name,
             cf_registry_hostname());
    s_expect_error(outcome, "UnknownFunction", expected);
}

static void s_expect_int(cf_outcome_t *outcome, int64_t expected)
{
    cf_mp_doc_t *doc = NULL;
    int64_t value = 0;
    assert_int_equal(cf_value_get_int(s_value(outcome, &doc), &value), CF_OK);
    assert_int_equal(value, expected);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(outcome);
}

static void s_expect_str(cf_outcome_t *outcome, const char *expected)
{
    cf_mp_doc_t *doc = NULL;
    const char *value = cf_value_str(s_value(outcome, &doc), NULL);
    assert_non_null(value);
    assert_string_equal(value, expected);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(outcome);
}

//  The value, as cf_value_repr writes it.
static void s_expect_repr(cf_outcome_t *outcome, const char *expected)
{
    cf_mp_doc_t *doc = NULL;
    char *repr = cf_value_repr(s_value(outcome, &doc));
    assert_string_equal(repr, expected);
    free(repr);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(outcome);
}

static void s_expect_nil(cf_outcome_t *outcome)
{
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_value_type(s_value(outcome, &doc)), CF_TYPE_NIL);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(outcome);
}

// ---------------------------------------------------------------------------
//  Tasks

static void t_int(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    cf_return_int(call, x);
}
CF_TASK(t_int);

static void t_uint(cf_call_t *call)
{
    uint64_t x = cf_arg_uint(call, 0);
    cf_return_uint(call, x);
}
CF_TASK(t_uint);

static void t_double(cf_call_t *call)
{
    double x = cf_arg_double(call, 0);
    cf_return_double(call, x * 2);
}
CF_TASK(t_double);

static void t_bool(cf_call_t *call)
{
    bool b = cf_arg_bool(call, 0);
    cf_return_bool(call, !b);
}
CF_TASK(t_bool);

static void t_str(cf_call_t *call)
{
    const char *s = cf_arg_str(call, 0);
    assert_non_null(s);    //  "" on error, never NULL
    cf_return_str(call, s);
}
CF_TASK(t_str);

static void t_bytes(cf_call_t *call)
{
    size_t len = 99;
    const void *data = cf_arg_bytes(call, 0, &len);
    if (cf_failed(call)) {
        assert_null(data);
        assert_int_equal(len, 0);
        return;
    }
    cf_return_bytes(call, data, len);
}
CF_TASK(t_bytes);

//  Where its bytes argument is, for the test to compare with the input.
static const void *s_seen_bytes;

static void t_bytes_where(cf_call_t *call)
{
    size_t len = 0;
    s_seen_bytes = cf_arg_bytes(call, 0, &len);
    cf_return_nil(call);
}
CF_TASK(t_bytes_where);

//  Echoes its argument list as it came, and reports introspection.
static void t_introspect(cf_call_t *call)
{
    size_t len = 0;
    const void *raw = cf_args_raw(call, &len);
    assert_non_null(raw);
    assert_true(cf_mp_valid_array(raw, len));
    assert_int_equal(cf_value_len(cf_args(call)), cf_arg_count(call));
    assert_ptr_equal(cf_arg(call, 0), cf_value_at(cf_args(call), 0));
    assert_string_equal(cf_call_function(call), "t_introspect");
    cf_returnf(call, "[im]", (int)cf_arg_count(call), raw, len);
}
CF_TASK(t_introspect);

//  Reads every argument as an int: a task that checks once at the end.
static void t_three_ints(cf_call_t *call)
{
    int64_t a = cf_arg_int(call, 0);
    int64_t b = cf_arg_int(call, 1);
    int64_t c = cf_arg_int(call, 2);
    if (cf_failed(call))
        return;
    cf_return_int(call, a + b + c);
}
CF_TASK(t_three_ints);

static void t_raise_twice(cf_call_t *call)
{
    cf_return_int(call, 1);
    cf_raise(call, "ValueError", "first %d", 1);
    cf_raise(call, "KeyError", "second");
    assert_true(cf_failed(call));
    cf_return_int(call, 2);       //  ignored
    (void)cf_arg_str(call, 5);    //  a failing getter after a raise changes nothing
}
CF_TASK(t_raise_twice);

static void t_getter_then_raise(cf_call_t *call)
{
    (void)cf_arg_bool(call, 0);
    cf_raise(call, "ValueError", "never seen");
    cf_return_int(call, 3);
}
CF_TASK(t_getter_then_raise);

static void t_nothing(cf_call_t *call)
{
    (void)call;
}
CF_TASK(t_nothing);

//  Returns according to its first argument: every return kind.
static void t_returns(cf_call_t *call)
{
    const char *kind = cf_arg_str(call, 0);
    static const uint8_t raw[] = { 0x92, 0x01, 0xa1, 'x' };    //  [1, "x"]
    static const uint8_t bad_raw[] = { 0x92, 0x01 };           //  truncated
    if (!strcmp(kind, "nil"))
        cf_return_nil(call);
    else if (!strcmp(kind, "str_null"))
        cf_return_str(call, NULL);
    else if (!strcmp(kind, "bytes_empty"))
        cf_return_bytes(call, NULL, 0);
    else if (!strcmp(kind, "bytes_null"))
        cf_return_bytes(call, NULL, 3);
    else if (!strcmp(kind, "format"))
        cf_returnf(call, "[is{sb}]", 1, "one", "k", 1);
    else if (!strcmp(kind, "bad_format"))
        cf_returnf(call, "[i", 1);
    else if (!strcmp(kind, "two_values"))
        cf_returnf(call, "ii", 1, 2);
    else if (!strcmp(kind, "raw"))
        cf_return_raw(call, raw, sizeof raw);
    else if (!strcmp(kind, "bad_raw"))
        cf_return_raw(call, bad_raw, sizeof bad_raw);
    else if (!strcmp(kind, "last_wins")) {
        cf_return_str(call, "a long string that is replaced");
        cf_return_int(call, 7);
    }
    else
        cf_raise(call, "ValueError", "unknown kind '%s'", kind);
}
CF_TASK(t_returns);

static void t_fail_on_odd(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    if (cf_failed(call))
        return;
    if (x % 2)
        cf_raise(call, "ValueError", "%lld is odd", (long long)x);
    else
        cf_return_int(call, x * 10);
}
CF_TASK(t_fail_on_odd);

//  Runs t_int on its argument from inside a task, then returns its own
//  result built before and after: the nested run must not clobber it.
static void t_nested(cf_call_t *call)
{
    cf_return_str(call, "outer");
    size_t len;
    uint8_t *args = s_args(&len, "i", 41);
    cf_outcome_t inner;
    assert_int_equal(cf_registry_run("t_int", 5, args, len, NULL, &inner), CF_OK);
    free(args);
    s_expect_int(&inner, 41);
}
CF_TASK(t_nested);

static void t_long_message(cf_call_t *call)
{
    size_t n = 10000;
    char *text = malloc(n + 1);
    assert_non_null(text);
    memset(text, 'm', n);
    text[n] = '\0';
    cf_raise(call, "ValueError", "%s", text);
    free(text);
}
CF_TASK(t_long_message);

// ---------------------------------------------------------------------------
//  Registration

static void s_noop(cf_call_t *call)
{
    (void)call;
}

static void test_register_rejects_bad_names(void **state)
{
    (void)state;
    char long_name[300];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    assert_int_equal(cf_task_register(NULL, s_noop), CF_EINVAL);
    assert_int_equal(cf_task_register("", s_noop), CF_EINVAL);
    assert_int_equal(cf_task_register("x", NULL), CF_EINVAL);
    assert_int_equal(cf_task_register(long_name, s_noop), CF_EINVAL);
    assert_int_equal(cf_task_register("cf.chunk", s_noop), CF_EINVAL);
    assert_int_equal(cf_task_register("cf.mine", s_noop), CF_EINVAL);
    long_name[255] = '\0';    //  255 bytes: the longest allowed
    assert_int_equal(cf_task_register(long_name, s_noop), CF_OK);
    assert_ptr_equal(cf_registry_find(long_name, 255), s_noop);
}

static void test_register_replaces_by_name(void **state)
{
    (void)state;
    size_t before = cf_registry_count();
    assert_int_equal(cf_task_register("replace_me", s_noop), CF_OK);
    assert_int_equal(cf_registry_count(), before + 1);
    assert_int_equal(cf_task_register("replace_me", t_int), CF_OK);
    assert_int_equal(cf_registry_count(), before + 1);
    assert_ptr_equal(cf_registry_find("replace_me", 10), t_int);
    //  Lengths count, not terminators.
    assert_null(cf_registry_find("replace_m", 9));
    assert_ptr_equal(cf_registry_find("replace_me_not", 10), t_int);
    assert_null(cf_registry_find("replace_me", 0));
    assert_null(cf_registry_find(NULL, 3));
}

static void test_constructors_registered_the_tasks_and_the_chunk(void **state)
{
    (void)state;
    assert_ptr_equal(cf_registry_find("t_int", 5), t_int);
    assert_non_null(cf_registry_find(CF_CHUNK_FUNCTION, strlen(CF_CHUNK_FUNCTION)));
}

static size_t s_count_name(char **names, size_t count, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        n += strcmp(names[i], name) == 0;
    return n;
}

//  What a worker announces (READY's function list): every function once,
//  cf.chunk included, none a task could not name; a registration moves the
//  generation, so the worker announces again.
static void test_names_list_what_a_worker_announces(void **state)
{
    (void)state;
    size_t count = 0;
    uint64_t generation = 0;
    char **names = cf_registry_names(&count, &generation);
    assert_non_null(names);
    assert_int_equal(s_count_name(names, count, "t_int"), 1);
    assert_int_equal(s_count_name(names, count, CF_CHUNK_FUNCTION), 1);
    assert_int_equal(count, cf_registry_count() + (cf_registry_find(CF_CHUNK_FUNCTION, 8) ? 0 : 1));
    free(names);
    assert_true(cf_registry_generation() == generation);
    assert_int_equal(cf_task_register("names_later", s_noop), CF_OK);
    assert_true(cf_registry_generation() > generation);
    //  A name no task can carry (not UTF-8) runs locally but is not named.
    assert_int_equal(cf_task_register("bad\xff", s_noop), CF_OK);
    names = cf_registry_names(&count, NULL);
    assert_non_null(names);
    assert_int_equal(s_count_name(names, count, "names_later"), 1);
    assert_int_equal(s_count_name(names, count, "bad\xff"), 0);
    free(names);
}

static void test_many_registrations_are_all_found(void **state)
{
    (void)state;
    char name[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(name, sizeof name, "many_%d", i);
        assert_int_equal(cf_task_register(name, i % 2 ? s_noop : t_int), CF_OK);
    }
    for (int i = 0; i < 3000; i++) {
        int n = snprintf(name, sizeof name, "many_%d", i);
        assert_ptr_equal(cf_registry_find(name, (size_t)n), i % 2 ? s_noop : t_int);
    }
    assert_null(cf_registry_find("many_3000", 9));
}

typedef struct {
    atomic_bool stop;
    atomic_long misses;
    atomic_long lookups;
} s_race_t;

static void *s_reader(void *arg)
{
    s_race_t *race = arg;
    while (!atomic_load(&race->stop)) {
        if (cf_registry_find("t_str", 5) != t_str)
            atomic_fetch_add(&race->misses, 1);
        atomic_fetch_add(&race->lookups, 1);
    }
    return NULL;
}

//  Readers never miss an existing task while the table grows and entries
//  are replaced under them (run under TSan too).
static void test_lookups_run_during_registrations(void **state)
{
    (void)state;
    s_race_t race;
    atomic_init(&race.stop, false);
    atomic_init(&race.misses, 0);
    atomic_init(&race.lookups, 0);
    pthread_t readers[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&readers[i], NULL, s_reader, &race), 0);
    char name[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof name, "race_%d", i);
        assert_int_equal(cf_task_register(name, s_noop), CF_OK);
        if (i % 100 == 0)
            assert_int_equal(cf_task_register("t_str", t_str), CF_OK);    //  replaced
    }
    //  Let the readers run at least once each after the last change.
    while (atomic_load(&race.lookups) < 100)
        sched_yield();
    atomic_store(&race.stop, true);
    for (int i = 0; i < 3; i++)
        pthread_join(readers[i], NULL);
    assert_int_equal(atomic_load(&race.misses), 0);
}

// ---------------------------------------------------------------------------
//  Getters

static void test_int_getter(void **state)
{
    (void)state;
    cf_outcome_t o = s_run("t_int", "L", (int64_t)INT64_MIN);
    s_expect_int(&o, INT64_MIN);
    o = s_run("t_int", "U", (uint64_t)INT64_MAX);
    s_expect_int(&o, INT64_MAX);
    o = s_run("t_int", "s", "7");
    s_expect_error(&o, "TypeError", "t_int() argument 0: expected int, got str");
    o = s_run("t_int", "d", 1.0);
    s_expect_error(&o, "TypeError", "t_int() argument 0: expected int, got float");
    o = s_run("t_int", "U", (uint64_t)UINT64_MAX);
    s_expect_error(&o, "TypeError",
                   "t_int() argument 0: int 18446744073709551615 does not fit int64");
    o = s_run("t_int", "");
    s_expect_error(&o, "TypeError", "t_int() missing argument 0 (0 arguments given)");
}

static void test_uint_getter(void **state)
{
    (void)state;
    cf_outcome_t o = s_run("t_uint", "U", (uint64_t)UINT64_MAX);
    cf_mp_doc_t *doc = NULL;
    uint64_t u = 0;
    assert_int_equal(cf_value_get_uint(s_value(&o, &doc), &u), CF_OK);
    assert_true(u == UINT64_MAX);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(&o);
    o = s_run("t_uint", "i", -5);
    s_expect_error(&o, "TypeError", "t_uint() argument 0: expected non-negative int, got -5");
    o = s_run("t_uint", "n");
    s_expect_error(&o, "TypeError", "t_uint() argument 0: expected non-negative int, got nil");
}

static void test_double_getter_accepts_ints(void **state)
{
    (void)state;
    cf_mp_doc_t *doc = NULL;
    double d = 0;
    cf_outcome_t o = s_run("t_double", "d", 1.25);
    assert_int_equal(cf_value_get_double(s_value(&o, &doc), &d), CF_OK);
    assert_true(d == 2.5);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(&o);
    o = s_run("t_double", "i", -3);
    assert_int_equal(cf_value_get_double(s_value(&o, &doc), &d), CF_OK);
    assert_true(d == -6.0);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(&o);
    o = s_run("t_double", "b", 1);
    s_expect_error(&o, "TypeError", "t_double() argument 0: expected float, got bool");
}

static void test_bool_str_bytes_getters(void **state)
{
    (void)state;
    cf_mp_doc_t *doc = NULL;
    bool b = true;
    cf_outcome_t o = s_run("t_bool", "b", 1);
    assert_int_equal(cf_value_get_bool(s_value(&o, &doc), &b), CF_OK);
    assert_false(b);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(&o);
    o = s_run("t_bool", "i", 1);
    s_expect_error(&o, "TypeError", "t_bool() argument 0: expected bool, got int");

    o = s_run("t_str", "s", "héllo");
    s_expect_str(&o, "héllo");
    o = s_run("t_str", "y", "ab", (size_t)2);
    s_expect_error(&o, "TypeError", "t_str() argument 0: expected str, got bin");

    o = s_run("t_bytes", "y", "a\0b", (size_t)3);
    size_t len = 0;
    const void *bin = cf_value_bin(s_value(&o, &doc), &len);
    assert_int_equal(len, 3);
    assert_memory_equal(bin, "a\0b", 3);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(&o);
    o = s_run("t_bytes", "s", "abc");
    s_expect_error(&o, "TypeError", "t_bytes() argument 0: expected bytes, got str");
    o = s_run("t_bytes", "");
    s_expect_error(&o, "TypeError", "t_bytes() missing argument 0 (0 arguments given)");
}

//  The task reads its bytes where the caller put them: no copy.
static void test_bytes_arguments_are_read_in_place(void **state)
{
    (void)state;
    size_t len = 0;
    uint8_t *args = s_args(&len, "y", "payload", (size_t)7);
    cf_outcome_t o;
    assert_int_equal(cf_registry_run("t_bytes_where", 13, args, len, NULL, &o), CF_OK);
    s_expect_nil(&o);
    assert_true((const uint8_t *)s_seen_bytes > args
                && (const uint8_t *)s_seen_bytes + 7 <= args + len);
    free(args);
}

//  A large result leaves with the thread's writer buffer (the writer is
//  empty after), a small one is copied (the writer keeps its buffer); both
//  read back the same.
static void test_a_large_result_takes_the_writer_buffer(void **state)
{
    (void)state;
    size_t sizes[] = { 100, CF_MP_TAKE_MIN, 64 * 1024, 3 * 1024 * 1024 };
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        uint8_t *payload = malloc(n);
        assert_non_null(payload);
        for (size_t i = 0; i < n; i++)
            payload[i] = (uint8_t)(i * 13 + k);
        cf_outcome_t o = s_run("t_bytes", "y", payload, n);
        cf_mp_writer_t *w = cf_mp_thread_writer(SIZE_MAX);
        assert_non_null(w);
        if (n + 5 >= CF_MP_TAKE_MIN)
            assert_int_equal(w->buf.alloc, 0);
        else
            assert_true(w->buf.alloc > 0);
        cf_mp_thread_writer_release(w);
        cf_mp_doc_t *doc = NULL;
        size_t len = 0;
        const void *bin = cf_value_bin(s_value(&o, &doc), &len);
        assert_int_equal(len, n);
        assert_memory_equal(bin, payload, n);
        cf_mp_doc_destroy(&doc);
        cf_outcome_fini(&o);
        free(payload);
    }
}

static void test_introspection(void **state)
{
    (void)state;
    cf_outcome_t o = s_run("t_introspect", "i[s]", 5, "x");
    cf_mp_doc_t *doc = NULL;
    const cf_value_t *v = s_value(&o, &doc);
    int64_t count = 0;
    assert_int_equal(cf_value_get_int(cf_value_at(v, 0), &count), CF_OK);
    assert_int_equal(count, 2);
    const cf_value_t *echo = cf_value_at(v, 1);
    assert_int_equal(cf_value_len(echo), 2);
    assert_string_equal(cf_value_str(cf_value_at(cf_value_at(echo, 1), 0), NULL), "x");
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(&o);
}

static void test_a_task_reads_all_then_checks_once(void **state)
{
    (void)state;
    cf_outcome_t o = s_run("t_three_ints", "iii", 1, 2, 3);
    s_expect_int(&o, 6);
    //  The first failing getter names its index; the later ones change nothing.
    o = s_run("t_three_ints", "isn", 1, "two");
    s_expect_error(&o, "TypeError", "t_three_ints() argument 1: expected int, got str");
    o = s_run("t_three_ints", "i", 1);
    s_expect_error(&o, "TypeError", "t_three_ints() missing argument 1 (1 argument given)");
}

static void test_first_raise_wins_and_returns_after_it_are_ignored(void **state)
{
    (void)state;
    cf_outcome_t o = s_run("t_raise_twice", "");
    s_expect_error(&o, "ValueError", "first 1");
    o = s_run("t_getter_then_raise", "s", "no");
    s_expect_error(&o, "TypeError", "t_getter_then_raise() argument 0: expected bool, got str");
}

static void test_messages_are_cut_to_what_a_result_carries(void **state)
{
    (void)state;
    cf_outcome_t o = s_run("t_long_message", "");
    assert_false(o.ok);
    assert_true(strlen(o.error_message) < 4096);
    assert_true(strlen(o.error_message) > 4000);
    cf_outcome_fini(&o);
}

// ---------------------------------------------------------------------------
//  Returns

static void test_every_return_kind(void **state)
{
    (void)state;
    cf_mp_doc_t *doc = NULL;
    cf_outcome_t o = s_run("t_nothing", "");
    s_expect_nil(&o);
    o = s_run("t_returns", "s", "nil");
    s_expect_nil(&o);
    o = s_run("t_returns", "s", "str_null");
    s_expect_nil(&o);

    o = s_run("t_returns", "s", "bytes_empty");
    size_t len = 99;
    assert_non_null(cf_value_bin(s_value(&o, &doc), &len));
    assert_int_equal(len, 0);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(&o);
    o = s_run("t_returns", "s", "bytes_null");
    s_expect_error(&o, "ValueError", NULL);

    o = s_run("t_returns", "s", "format");
    s_expect_repr(&o, "[1, 'one', {'k': True}]");
    o = s_run("t_returns", "s", "bad_format");
    s_expect_error(&o, "ValueError", NULL);
    o = s_run("t_returns", "s", "two_values");
    s_expect_error(&o, "ValueError", NULL);

    o = s_run("t_returns", "s", "raw");
    assert_true(o.ok);
    assert_int_equal(o.value_len, 4);
    assert_memory_equal(o.value, "\x92\x01\xa1x", 4);
    cf_outcome_fini(&o);
    o = s_run("t_returns", "s", "bad_raw");
    s_expect_error(&o, "ValueError",
                   "t_returns(): cf_return_raw: not exactly one well-formed "
                   "msgpack value");

    o = s_run("t_returns", "s", "last_wins");
    s_expect_int(&o, 7);
}

static void test_a_nested_run_keeps_the_outer_result(void **state)
{
    (void)state;
    cf_outcome_t o = s_run("t_nested", "");
    s_expect_str(&o, "outer");
}

// ---------------------------------------------------------------------------
//  Runtime errors

static void test_unknown_function(void **state)
{
    (void)state;
    cf_outcome_t o = s_run("foo", "");
    s_expect_unknown_function(&o, "foo");
    //  Control bytes from the network never reach the message.
    assert_int_equal(cf_registry_run("a\nb", 3, "\x90", 1, NULL, &o), CF_OK);
    assert_false(o.ok);
    assert_null(strchr(o.error_message, '\n'));
    cf_outcome_fini(&o);
    assert_int_equal(cf_registry_run(NULL, 0, "\x90", 1, NULL, &o), CF_OK);
    s_expect_error(&o, "UnknownFunction", NULL);
}

static void test_malformed_arguments_are_a_protocol_error(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        { "\x92\x01", 2 },                //  truncated array
        { "\x91\x01\x02", 3 },            //  trailing byte
        { "\x05", 1 },                    //  not an array
        { "\xc1", 1 },                    //  never-used type byte
        { "\xdd\x05\xf5\xe1\x00", 5 },    //  array of 100 million with no items
        { "", 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cf_outcome_t o;
        assert_int_equal(cf_registry_run("t_int", 5, cases[i].bytes, cases[i].len, NULL, &o),
                         CF_OK);
        s_expect_error(&o, "ProtocolError", NULL);
    }
    cf_outcome_t o;
    assert_int_equal(cf_registry_run("t_int", 5, NULL, 4, NULL, &o), CF_OK);
    s_expect_error(&o, "ProtocolError", NULL);
    o = s_run("t_int", "i", 1);    //  and the next run is fine
    s_expect_int(&o, 1);
}

static void test_hostname_is_this_host(void **state)
{
    (void)state;
    char name[256];
    assert_int_equal(gethostname(name, sizeof name), 0);
    name[sizeof name - 1] = '\0';
    assert_string_equal(cf_registry_hostname(), name);
    assert_ptr_equal(cf_registry_hostname(), cf_registry_hostname());
}

// ---------------------------------------------------------------------------
//  cf.chunk

static void test_chunk_runs_each_input_and_isolates_failures(void **state)
{
    (void)state;
    cf_outcome_t o = s_run(CF_CHUNK_FUNCTION, "s[[i][i][s][i]i]", "t_fail_on_odd", 2, 3, "x", 4, 5);
    //  Each error says where it ran, as a single task's error does.
    char expected[1500];
    char where[300];
    snprintf(where, sizeof where, "'%s', %ld", cf_registry_hostname(), (long)getpid());
    assert_true(snprintf(expected, sizeof expected,
                         "[[0, 20], [1, 'ValueError', '3 is odd', %s], "
                         "[1, 'TypeError', 't_fail_on_odd() argument 0: expected int, got str', "
                         "%s], [0, 40], "
                         "[1, 'TypeError', 't_fail_on_odd() input 4 of the chunk: arguments must "
                         "be an array, got int', %s]]",
                         where, where, where)
                < (int)sizeof expected);
    s_expect_repr(&o, expected);
}

static void test_chunk_of_nothing_and_of_tasks_returning_nothing(void **state)
{
    (void)state;
    cf_outcome_t o = s_run(CF_CHUNK_FUNCTION, "s[]", "t_nothing");
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_value_len(s_value(&o, &doc)), 0);
    cf_mp_doc_destroy(&doc);
    cf_outcome_fini(&o);
    o = s_run(CF_CHUNK_FUNCTION, "s[[][]]", "t_nothing");
    s_expect_repr(&o, "[[0, None], [0, None]]");
}

static void test_chunk_refuses_bad_arguments(void **state)
{
    (void)state;
    cf_outcome_t o = s_run(CF_CHUNK_FUNCTION, "s[[i]]", "nope", 1);
    s_expect_unknown_function(&o, "nope");
    o = s_run(CF_CHUNK_FUNCTION, "i[]", 1);
    s_expect_error(&o, "TypeError", "cf.chunk() argument 0: expected str, got int");
    o = s_run(CF_CHUNK_FUNCTION, "si", "t_int", 1);
    s_expect_error(&o, "TypeError", "cf.chunk() argument 1: expected array, got int");
    o = s_run(CF_CHUNK_FUNCTION, "s", "t_int");
    s_expect_error(&o, "TypeError", "cf.chunk() missing argument 1 (1 argument given)");
}

static void test_chunk_of_chunks(void **state)
{
    (void)state;
    cf_outcome_t o = s_run(CF_CHUNK_FUNCTION, "s[[s[[i]]]]", CF_CHUNK_FUNCTION, "t_int", 9);
    s_expect_repr(&o, "[[0, [[0, 9]]]]");
}

// ---------------------------------------------------------------------------
//  Stopping (cf_stop_requested)

static atomic_int s_stop_looks;    //  t_look_then_return's calls that saw true

//  Returns its argument; looks at cf_stop_requested first when told to.
static void t_look_then_return(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    bool look = cf_arg_bool(call, 1);
    if (look && cf_stop_requested(call))
        atomic_fetch_add(&s_stop_looks, 1);
    cf_return_int(call, x);
}
CF_TASK(t_look_then_return);

static void t_look_then_raise(cf_call_t *call)
{
    if (cf_stop_requested(call))
        cf_raise(call, "ValueError", "raised after the stop");
    cf_return_int(call, 1);
}
CF_TASK(t_look_then_raise);

static cf_outcome_t s_run_ctx(const cf_run_ctx_t *ctx, const char *fn, const char *fmt, ...)
{
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    va_list ap;
    va_start(ap, fmt);
    assert_int_equal(cf_mp_write_format(&w, true, fmt, &ap), CF_OK);
    va_end(ap);
    cf_outcome_t outcome;
    assert_int_equal(cf_registry_run(fn, strlen(fn), w.buf.data, w.buf.size, ctx, &outcome), CF_OK);
    cf_mp_writer_fini(&w);
    return outcome;
}

static void test_a_task_that_saw_the_stop_is_interrupted_whatever_it_returns(void **state)
{
    (void)state;
    atomic_bool stop = false;
    cf_run_ctx_t ctx = { .stop = &stop };
    //  Not asked: its own result.
    cf_outcome_t o = s_run_ctx(&ctx, "t_look_then_return", "ib", 5, true);
    s_expect_repr(&o, "5");
    //  Asked, and it looked: Interrupted, its return dropped.
    atomic_store(&stop, true);
    o = s_run_ctx(&ctx, "t_look_then_return", "ib", 5, true);
    s_expect_error(&o, CF_INTERRUPTED, "t_look_then_return() was asked to stop and returned early");
    //  A raise after the look is Interrupted too.
    o = s_run_ctx(&ctx, "t_look_then_raise", "");
    s_expect_error(&o, CF_INTERRUPTED, NULL);
    //  Asked, but it never looked: its own result.
    o = s_run_ctx(&ctx, "t_look_then_return", "ib", 6, false);
    s_expect_repr(&o, "6");
    //  No context, or one without a flag: never asked.
    o = s_run_ctx(NULL, "t_look_then_return", "ib", 7, true);
    s_expect_repr(&o, "7");
    cf_run_ctx_t empty = { 0 };
    o = s_run_ctx(&empty, "t_look_then_return", "ib", 8, true);
    s_expect_repr(&o, "8");
}

static void test_a_chunk_that_saw_the_stop_is_interrupted_and_runs_no_further(void **state)
{
    (void)state;
    atomic_bool stop = true;
    cf_run_ctx_t ctx = { .stop = &stop };
    atomic_store(&s_stop_looks, 0);
    //  The second input looks: the third never runs, the chunk is Interrupted.
    cf_outcome_t o = s_run_ctx(&ctx, CF_CHUNK_FUNCTION, "s[[ib][ib][ib]]", "t_look_then_return", 1,
                               false, 2, true, 3, true);
    s_expect_error(&o, CF_INTERRUPTED, NULL);
    assert_int_equal(atomic_load(&s_stop_looks), 1);
    //  No input looks: the chunk's results.
    o = s_run_ctx(&ctx, CF_CHUNK_FUNCTION, "s[[ib]]", "t_look_then_return", 4, false);
    s_expect_repr(&o, "[[0, 4]]");
}

// ---------------------------------------------------------------------------
//  Task libraries

static void test_load_of_a_missing_library_says_why(void **state)
{
    (void)state;
    assert_int_equal(cf_registry_load("/nonexistent/libnothing.so"), CF_ENOTFOUND);
    assert_non_null(strstr(cf_last_error(), "/nonexistent/libnothing.so"));
    assert_non_null(strstr(cf_last_error(), "No such file"));
    assert_int_equal(cf_registry_load(""), CF_EINVAL);
    assert_int_equal(cf_registry_load(NULL), CF_EINVAL);
}

static void test_load_of_a_library_without_tasks_is_refused(void **state)
{
    (void)state;
    //  libz is a dependency of nothing here and registers nothing.
    cf_err_t rc = cf_registry_load("libz.so.1");
    if (rc == CF_ENOTFOUND)
        skip();    //  not installed on this machine
    assert_int_equal(rc, CF_EINVAL);
    assert_non_null(strstr(cf_last_error(), "registered no tasks"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_rejects_bad_names),
        cmocka_unit_test(test_register_replaces_by_name),
        cmocka_unit_test(test_constructors_registered_the_tasks_and_the_chunk),
        cmocka_unit_test(test_names_list_what_a_worker_announces),
        cmocka_unit_test(test_many_registrations_are_all_found),
        cmocka_unit_test(test_lookups_run_during_registrations),
        cmocka_unit_test(test_int_getter),
        cmocka_unit_test(test_uint_getter),
        cmocka_unit_test(test_double_getter_accepts_ints),
        cmocka_unit_test(test_bool_str_bytes_getters),
        cmocka_unit_test(test_bytes_arguments_are_read_in_place),
        cmocka_unit_test(test_a_large_result_takes_the_writer_buffer),
        cmocka_unit_test(test_introspection),
        cmocka_unit_test(test_a_task_reads_all_then_checks_once),
        cmocka_unit_test(test_first_raise_wins_and_returns_after_it_are_ignored),
        cmocka_unit_test(test_messages_are_cut_to_what_a_result_carries),
        cmocka_unit_test(test_every_return_kind),
        cmocka_unit_test(test_a_nested_run_keeps_the_outer_result),
        cmocka_unit_test(test_unknown_function),
        cmocka_unit_test(test_malformed_arguments_are_a_protocol_error),
        cmocka_unit_test(test_hostname_is_this_host),
        cmocka_unit_test(test_chunk_runs_each_input_and_isolates_failures),
        cmocka_unit_test(test_chunk_of_nothing_and_of_tasks_returning_nothing),
        cmocka_unit_test(test_chunk_refuses_bad_arguments),
        cmocka_unit_test(test_chunk_of_chunks),
        cmocka_unit_test(test_a_task_that_saw_the_stop_is_interrupted_whatever_it_returns),
        cmocka_unit_test(test_a_chunk_that_saw_the_stop_is_interrupted_and_runs_no_further),
        cmocka_unit_test(test_load_of_a_missing_library_says_why),
        cmocka_unit_test(test_load_of_a_library_without_tasks_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
