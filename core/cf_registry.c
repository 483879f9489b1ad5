//  cf_registry: task functions by name, and running one task from encoded
//  arguments to an encoded outcome (see cf_registry.h). Also the task-side
//  API of cfutures.h: cf_task_register, the cf_arg_* getters, cf_return_*,
//  cf_raise.
//
//  Design note: lookups are the hot path (one per task, from every
//  execution thread at once) and registrations are rare (constructors before
//  main, a task library being loaded). So the table is an open-addressing
//  hash whose readers take no lock at all: a slot holds a pointer to an
//  immutable entry, stored and loaded atomically. Writers are serialised by
//  a statically initialised mutex (constructors may run before main, in any
//  order), insert in place while the load stays under one half, and
//  otherwise build a table twice the size and publish it with one atomic
//  store. A reader still probing an old table must never see it freed, and
//  there is no cheap way to know when the last reader left, so old tables
//  and replaced entries are kept for the life of the process on a retired
//  list. Doubling keeps that waste below the size of the live table; a
//  replaced entry costs its own few bytes.
//
//  Running a task costs one malloc for the decoded arguments (cf_mp_doc, one
//  block, whose bins point into the arguments) and one for the outcome's
//  copy of the result. Results are written into a writer kept per thread,
//  so its buffer is reused from task to task; a result of CF_MP_TAKE_MIN
//  bytes or more is not copied but takes the writer's buffer along, and the
//  writer grows a new one. A nested run (a task running another task,
//  cf.chunk's items) writes into a writer of its own so it never clobbers
//  its caller's result.

#include "cf_registry.h"

#include "cf_error.h"
#include "cf_hash.h"
#include "cf_mp.h"
#include "cf_proto.h"
#include "cf_utf8.h"

#include <assert.h>
#include <dlfcn.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//  Function names, as the wire carries them.
#define S_MAX_NAME          CF_PROTO_MAX_NAME
//  Error types and messages are cut to what a RESULT item carries.
#define S_MAX_TEXT          (CF_PROTO_MAX_TEXT - 1)
//  Slots of the first table (a power of two).
#define S_FIRST_SLOTS       64
//  A thread's result writer that grew past this is freed after the task,
//  so one huge result does not pin its memory in every thread forever.
#define S_WRITER_KEEP_BYTES (1024u * 1024)
//  Names starting with this are the library's own (cf.chunk).
#define S_RESERVED_PREFIX   "cf."

// ---------------------------------------------------------------------------
//  The table

typedef struct s_entry {
    cf_task_fn *fn;
    uint64_t hash;
    size_t len;
    struct s_entry *retired_next;    //  on the retired list once replaced
    char name[];                     //  NUL-terminated
} s_entry_t;

typedef struct s_table {
    size_t mask;                     //  slots - 1
    size_t used;                     //  entries (written under s_write_lock)
    struct s_table *retired_next;    //  on the retired list once replaced
    _Atomic(s_entry_t *) slots[];
} s_table_t;

static _Atomic(s_table_t *) s_table = NULL;
static pthread_mutex_t s_write_lock = PTHREAD_MUTEX_INITIALIZER;
//  Under s_write_lock: what readers may still hold.
static s_table_t *s_retired_tables = NULL;
static s_entry_t *s_retired_entries = NULL;
//  Under s_write_lock: every successful registration, replacements
//  included, so cf_registry_load can tell whether a library registered.
static uint64_t s_registrations = 0;

static s_table_t *s_table_new(size_t slots)
{
    s_table_t *t = calloc(1, sizeof *t + slots * sizeof t->slots[0]);
    if (!t)
        return NULL;
    t->mask = slots - 1;
    for (size_t i = 0; i < slots; i++)
        atomic_init(&t->slots[i], NULL);
    return t;
}

//  Under s_write_lock: a table with room for one more entry, grown and
//  published when the current one would pass half full. NULL when out of
//  memory.
static s_table_t *s_table_with_room(void)
{
    s_table_t *t = atomic_load_explicit(&s_table, memory_order_relaxed);
    if (t && (t->used + 1) * 2 <= t->mask + 1)
        return t;
    size_t slots = t ? (t->mask + 1) * 2 : S_FIRST_SLOTS;
    s_table_t *bigger = s_table_new(slots);
    if (!bigger)
        return NULL;
    if (t) {
        for (size_t i = 0; i <= t->mask; i++) {
            s_entry_t *e = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
            if (!e)
                continue;
            size_t j = e->hash & bigger->mask;
            while (atomic_load_explicit(&bigger->slots[j], memory_order_relaxed))
                j = (j + 1) & bigger->mask;
            atomic_store_explicit(&bigger->slots[j], e, memory_order_relaxed);
        }
        bigger->used = t->used;
        t->retired_next = s_retired_tables;
        s_retired_tables = t;
    }
    //  Release: a reader that sees the new table sees its slots filled.
    atomic_store_explicit(&s_table, bigger, memory_order_release);
    return bigger;
}

//  Adds or replaces name; the one writer path, built-ins included.
static cf_err_t s_insert(const char *name, size_t len, cf_task_fn *fn)
{
    s_entry_t *entry = malloc(sizeof *entry + len + 1);
    if (!entry)
        return CF_ENOMEM;
    entry->fn = fn;
    entry->hash = cf_hash_bytes(name, len);
    entry->len = len;
    entry->retired_next = NULL;
    memcpy(entry->name, name, len);
    entry->name[len] = '\0';

    pthread_mutex_lock(&s_write_lock);
    s_table_t *t = s_table_with_room();
    if (!t) {
        pthread_mutex_unlock(&s_write_lock);
        free(entry);
        return CF_ENOMEM;
    }
    size_t i = entry->hash & t->mask;
    while (true) {
        s_entry_t *old = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
        if (!old) {
            t->used++;
            break;
        }
        if (old->hash == entry->hash && old->len == len && memcmp(old->name, name, len) == 0) {
            //  A reader may hold the old entry right now: keep it.
            old->retired_next = s_retired_entries;
            s_retired_entries = old;
            break;
        }
        i = (i + 1) & t->mask;
    }
    //  Release: a reader that sees the entry sees its fields.
    atomic_store_explicit(&t->slots[i], entry, memory_order_release);
    s_registrations++;
    pthread_mutex_unlock(&s_write_lock);
    return CF_OK;
}

cf_err_t cf_task_register(const char *name, cf_task_fn *fn)
{
    if (!name || !fn)
        return CF_EINVAL;
    size_t len = strnlen(name, S_MAX_NAME + 1);
    if (len == 0 || len > S_MAX_NAME)
        return CF_EINVAL;
    if (strncmp(name, S_RESERVED_PREFIX, sizeof S_RESERVED_PREFIX - 1) == 0)
        return CF_EINVAL;
    return s_insert(name, len, fn);
}

cf_task_fn *cf_registry_find(const char *name, size_t name_len)
{
    if (!name || name_len == 0 || name_len > S_MAX_NAME)
        return NULL;
    s_table_t *t = atomic_load_explicit(&s_table, memory_order_acquire);
    if (!t)
        return NULL;
    uint64_t h = cf_hash_bytes(name, name_len);
    //  The table is never more than half full, so the probe ends.
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        s_entry_t *e = atomic_load_explicit(&t->slots[i], memory_order_acquire);
        if (!e)
            return NULL;
        if (e->hash == h && e->len == name_len && memcmp(e->name, name, name_len) == 0)
            return e->fn;
    }
}

size_t cf_registry_count(void)
{
    pthread_mutex_lock(&s_write_lock);
    s_table_t *t = atomic_load_explicit(&s_table, memory_order_relaxed);
    size_t count = t ? t->used : 0;
    pthread_mutex_unlock(&s_write_lock);
    return count;
}

uint64_t cf_registry_generation(void)
{
    pthread_mutex_lock(&s_write_lock);
    uint64_t n = s_registrations;
    pthread_mutex_unlock(&s_write_lock);
    return n;
}

char **cf_registry_names(size_t *count, uint64_t *generation)
{
    assert(count);
    pthread_mutex_lock(&s_write_lock);
    s_table_t *t = atomic_load_explicit(&s_table, memory_order_relaxed);
    size_t slots = t ? t->mask + 1 : 0, n = 1, bytes = sizeof CF_CHUNK_FUNCTION;
    for (size_t i = 0; i < slots; i++) {
        s_entry_t *e = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
        if (e && cf_utf8_name_ok(e->name, e->len) && strcmp(e->name, CF_CHUNK_FUNCTION) != 0) {
            n++;
            bytes += e->len + 1;
        }
    }
    char **names = malloc(n * sizeof *names + bytes);
    if (names) {
        char *text = (char *)(names + n);
        size_t k = 0;
        names[k++] = memcpy(text, CF_CHUNK_FUNCTION, sizeof CF_CHUNK_FUNCTION);
        text += sizeof CF_CHUNK_FUNCTION;
        for (size_t i = 0; i < slots; i++) {
            s_entry_t *e = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
            if (e && cf_utf8_name_ok(e->name, e->len) && strcmp(e->name, CF_CHUNK_FUNCTION) != 0) {
                names[k++] = memcpy(text, e->name, e->len + 1);
                text += e->len + 1;
            }
        }
        *count = n;
    }
    if (generation)
        *generation = s_registrations;
    pthread_mutex_unlock(&s_write_lock);
    return names;
}

// ---------------------------------------------------------------------------
//  Task libraries

//  RTLD_NOW: every symbol the library needs is resolved here, so a library
//  built against something missing fails at startup with dlerror()'s text,
//  not with a lazy-binding abort in the middle of a task.
//  RTLD_LOCAL: the library's own symbols stay private to it. Its CF_TASK
//  constructors reach cf_task_register through libcfutures, which the
//  loading program already has in the global scope, so nothing needs the
//  library's symbols; and two task libraries that both define, say, a
//  helper named `parse` each keep their own instead of silently binding to
//  the first one loaded (RTLD_GLOBAL interposition).
//  The handle is never closed: registered function pointers point into it.
cf_err_t cf_registry_load(const char *path)
{
    if (!path || !*path)
        return cf_error_set(CF_EINVAL, "no task library path given");
    //  Loaded already (the same --tasks twice): its constructors ran once
    //  and will not run again, so "registered nothing" would be wrong.
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (handle) {
        dlclose(handle);    //  drops only the reference just taken
        return CF_OK;
    }
    uint64_t before = cf_registry_generation();
    dlerror();
    handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *why = dlerror();
        return cf_error_set(CF_ENOTFOUND, "cannot load task library: %s", why ? why : path);
    }
    if (cf_registry_generation() == before) {
        //  Useless, and its constructors did nothing we depend on.
        dlclose(handle);
        return cf_error_set(CF_EINVAL,
                            "task library %s registered no tasks (no CF_TASK in it, or it "
                            "is linked to another copy of libcfutures)",
                            path);
    }
    return CF_OK;
}

// ---------------------------------------------------------------------------
//  Host name

static char s_hostname[256] = "unknown";
static pthread_once_t s_hostname_once = PTHREAD_ONCE_INIT;

static void s_hostname_init(void)
{
    char name[sizeof s_hostname];
    if (gethostname(name, sizeof name) == 0) {
        name[sizeof name - 1] = '\0';    //  truncation may leave it unterminated
        if (name[0])
            memcpy(s_hostname, name, sizeof name);
    }
}

const char *cf_registry_hostname(void)
{
    pthread_once(&s_hostname_once, s_hostname_init);
    return s_hostname;
}

// ---------------------------------------------------------------------------
//  Calls

struct cf_call {
    const char *function;       //  NUL-terminated
    const cf_value_t *args;     //  the argument array
    const uint8_t *args_raw;    //  its encoding
    size_t args_len;
    cf_mp_writer_t *result;    //  where returns are written
    bool has_result;           //  result holds one value
    bool failed;               //  raised: later raises and returns are ignored
    bool out_of_memory;        //  a raise could not store its text
    char *error_type;          //  malloc'd once failed
    char *error_message;
    const cf_run_ctx_t *ctx;    //  what its runner lent it, or NULL
    bool stop_seen;             //  cf_stop_requested said true: the outcome is Interrupted
    uint64_t done, total;       //  its last cf_task_progress, for cf_task_partialf
};

//  The length of s cut to at most max bytes without splitting a UTF-8
//  sequence (a cut one would make the message invalid msgpack str content
//  for strict decoders).
static size_t s_utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t cut = max;
    while (cut > 0 && ((uint8_t)s[cut] & 0xC0) == 0x80)
        cut--;
    return cut;
}

static char *s_text_dup(const char *s, size_t max)
{
    size_t len = s_utf8_cut(s, strlen(s), max);
    char *copy = malloc(len + 1);
    if (copy) {
        memcpy(copy, s, len);
        copy[len] = '\0';
    }
    return copy;
}

static void s_raise_v(cf_call_t *call, const char *type, const char *fmt, va_list ap)
{
    if (call->failed)
        return;    //  the first raise wins
    call->failed = true;
    call->has_result = false;
    char stack[512];
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(stack, sizeof stack, fmt ? fmt : "", copy);
    va_end(copy);
    char *message = NULL;
    if (n < 0)
        message = s_text_dup("(unprintable message)", S_MAX_TEXT);
    else if ((size_t)n < sizeof stack)
        message = s_text_dup(stack, S_MAX_TEXT);
    else {
        char *full = malloc((size_t)n + 1);
        if (full) {
            vsnprintf(full, (size_t)n + 1, fmt, ap);
            full[s_utf8_cut(full, (size_t)n, S_MAX_TEXT)] = '\0';
            message = full;
        }
    }
    call->error_type = s_text_dup(type && *type ? type : "Exception", S_MAX_TEXT);
    call->error_message = message;
    if (!call->error_type || !call->error_message)
        call->out_of_memory = true;
}

void cf_raise(cf_call_t *call, const char *type, const char *fmt, ...)
{
    assert(call);
    va_list ap;
    va_start(ap, fmt);
    s_raise_v(call, type, fmt, ap);
    va_end(ap);
}

bool cf_failed(cf_call_t *call)
{
    assert(call);
    return call->failed;
}

// ---------------------------------------------------------------------------
//  Stopping (cf_future_stop): the task asks; once told yes, its outcome is
//  Interrupted whatever it does after (s_interrupt, in cf_registry_run).

bool cf_stop_requested(cf_call_t *call)
{
    assert(call);
    const cf_run_ctx_t *ctx = call->ctx;
    if (!ctx || !ctx->stop || !atomic_load_explicit(ctx->stop, memory_order_acquire))
        return false;
    call->stop_seen = true;
    return true;
}

//  Replaces what the call produced with the Interrupted error.
static void s_interrupt(cf_call_t *call)
{
    free(call->error_type);
    free(call->error_message);
    call->error_type = call->error_message = NULL;
    call->failed = false;
    call->out_of_memory = false;
    call->has_result = false;
    cf_raise(call, CF_INTERRUPTED, "%s() was asked to stop and returned early", call->function);
}

const char *cf_call_function(cf_call_t *call)
{
    assert(call);
    return call->function;
}

size_t cf_arg_count(cf_call_t *call)
{
    assert(call);
    return cf_value_len(call->args);
}

const cf_value_t *cf_args(cf_call_t *call)
{
    assert(call);
    return call->args;
}

const void *cf_args_raw(cf_call_t *call, size_t *len)
{
    assert(call);
    if (len)
        *len = call->args_len;
    return call->args_raw;
}

//  Argument i, or NULL after raising TypeError for a missing one.
static const cf_value_t *s_arg(cf_call_t *call, size_t i)
{
    assert(call);
    const cf_value_t *v = cf_value_at(call->args, i);
    if (!v) {
        size_t given = cf_value_len(call->args);
        cf_raise(call, "TypeError", "%s() missing argument %zu (%zu argument%s given)",
                 call->function, i, given, given == 1 ? "" : "s");
    }
    return v;
}

static void s_wrong_type(cf_call_t *call, size_t i, const char *expected, const cf_value_t *v)
{
    cf_raise(call, "TypeError", "%s() argument %zu: expected %s, got %s", call->function, i,
             expected, cf_type_name(cf_value_type(v)));
}

const cf_value_t *cf_arg(cf_call_t *call, size_t i)
{
    return s_arg(call, i);
}

int64_t cf_arg_int(cf_call_t *call, size_t i)
{
    const cf_value_t *v = s_arg(call, i);
    if (!v)
        return 0;
    int64_t value = 0;
    if (cf_value_type(v) != CF_TYPE_INT) {
        s_wrong_type(call, i, "int", v);
        return 0;
    }
    if (cf_value_get_int(v, &value) != CF_OK) {
        uint64_t big = 0;
        cf_value_get_uint(v, &big);
        cf_raise(call, "TypeError", "%s() argument %zu: int %" PRIu64 " does not fit int64",
                 call->function, i, big);
        return 0;
    }
    return value;
}

uint64_t cf_arg_uint(cf_call_t *call, size_t i)
{
    const cf_value_t *v = s_arg(call, i);
    if (!v)
        return 0;
    if (cf_value_type(v) != CF_TYPE_INT) {
        s_wrong_type(call, i, "non-negative int", v);
        return 0;
    }
    uint64_t value = 0;
    if (cf_value_get_uint(v, &value) != CF_OK) {
        int64_t negative = 0;
        cf_value_get_int(v, &negative);
        cf_raise(call, "TypeError", "%s() argument %zu: expected non-negative int, got %" PRId64,
                 call->function, i, negative);
        return 0;
    }
    return value;
}

double cf_arg_double(cf_call_t *call, size_t i)
{
    const cf_value_t *v = s_arg(call, i);
    if (!v)
        return 0.0;
    double value = 0.0;
    if (cf_value_get_double(v, &value) != CF_OK) {
        s_wrong_type(call, i, "float", v);
        return 0.0;
    }
    return value;
}

bool cf_arg_bool(cf_call_t *call, size_t i)
{
    const cf_value_t *v = s_arg(call, i);
    if (!v)
        return false;
    bool value = false;
    if (cf_value_get_bool(v, &value) != CF_OK) {
        s_wrong_type(call, i, "bool", v);
        return false;
    }
    return value;
}

const char *cf_arg_str(cf_call_t *call, size_t i)
{
    const cf_value_t *v = s_arg(call, i);
    if (!v)
        return "";
    const char *value = cf_value_str(v, NULL);
    if (!value) {
        s_wrong_type(call, i, "str", v);
        return "";
    }
    return value;
}

const void *cf_arg_bytes(cf_call_t *call, size_t i, size_t *len)
{
    if (len)
        *len = 0;
    const cf_value_t *v = s_arg(call, i);
    if (!v)
        return NULL;
    size_t n = 0;
    const void *value = cf_value_bin(v, &n);
    if (!value) {
        s_wrong_type(call, i, "bytes", v);
        return NULL;
    }
    if (len)
        *len = n;
    return value;
}

//  Returns: the writer is emptied, one value written; the last return
//  wins. A packer failure is a failed allocation.
static msgpack_packer *s_return_begin(cf_call_t *call)
{
    assert(call);
    if (call->failed)
        return NULL;
    cf_mp_writer_reset(call->result);
    call->has_result = false;
    return &call->result->pk;
}

static void s_return_end(cf_call_t *call, int packer_rc)
{
    if (packer_rc == 0) {
        call->has_result = true;
        return;
    }
    cf_mp_writer_reset(call->result);
    cf_raise(call, "MemoryError", "out of memory writing the result of %s()", call->function);
}

void cf_return_nil(cf_call_t *call)
{
    msgpack_packer *pk = s_return_begin(call);
    if (pk)
        s_return_end(call, msgpack_pack_nil(pk));
}

void cf_return_int(cf_call_t *call, int64_t value)
{
    msgpack_packer *pk = s_return_begin(call);
    if (pk)
        s_return_end(call, msgpack_pack_int64(pk, value));
}

void cf_return_uint(cf_call_t *call, uint64_t value)
{
    msgpack_packer *pk = s_return_begin(call);
    if (pk)
        s_return_end(call, msgpack_pack_uint64(pk, value));
}

void cf_return_double(cf_call_t *call, double value)
{
    msgpack_packer *pk = s_return_begin(call);
    if (pk)
        s_return_end(call, msgpack_pack_double(pk, value));
}

void cf_return_bool(cf_call_t *call, bool value)
{
    msgpack_packer *pk = s_return_begin(call);
    if (pk)
        s_return_end(call, value ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
}

void cf_return_str(cf_call_t *call, const char *value)
{
    msgpack_packer *pk = s_return_begin(call);
    if (!pk)
        return;
    if (!value) {
        s_return_end(call, msgpack_pack_nil(pk));    //  as the format's `s` does
        return;
    }
    s_return_end(call, msgpack_pack_str_with_body(pk, value, strlen(value)));
}

void cf_return_bytes(cf_call_t *call, const void *data, size_t len)
{
    assert(call);
    if (call->failed)
        return;
    if (!data && len > 0) {
        cf_raise(call, "ValueError", "%s(): cf_return_bytes with NULL data and %zu bytes",
                 call->function, len);
        return;
    }
    if (len > UINT32_MAX) {
        cf_raise(call, "ValueError", "%s(): a %zu-byte result is more than msgpack carries",
                 call->function, len);
        return;
    }
    msgpack_packer *pk = s_return_begin(call);
    s_return_end(call, msgpack_pack_bin_with_body(pk, len ? data : "", len));
}

void cf_returnf(cf_call_t *call, const char *fmt, ...)
{
    assert(call);
    if (call->failed)
        return;
    cf_mp_writer_t *w = call->result;
    cf_mp_writer_reset(w);
    call->has_result = false;
    va_list ap;
    va_start(ap, fmt);
    cf_err_t rc = cf_mp_write_format(w, false, fmt, &ap);
    va_end(ap);
    if (rc == CF_OK)
        call->has_result = true;
    else if (rc == CF_ENOMEM)
        cf_raise(call, "MemoryError", "out of memory writing the result of %s()", call->function);
    else
        cf_raise(call, "ValueError", "%s(): cf_returnf: %s", call->function, cf_last_error());
}

void cf_return_raw(cf_call_t *call, const void *msgpack, size_t len)
{
    assert(call);
    if (call->failed)
        return;
    if (!msgpack || !cf_mp_valid(msgpack, len)) {
        cf_raise(call, "ValueError",
                 "%s(): cf_return_raw: not exactly one well-formed "
                 "msgpack value",
                 call->function);
        return;
    }
    cf_mp_writer_reset(call->result);
    call->has_result = false;
    s_return_end(call, msgpack_sbuffer_write(&call->result->buf, msgpack, len));
}

// ---------------------------------------------------------------------------
//  Progress: what the task reports goes to its runner's sink (ctx), which
//  coalesces and rate-limits it (core/cf_report.h).

_Static_assert(CF_TASK_MAX_PARTIAL == CF_PROTO_MAX_PARTIAL, "a partial value fits a PROGRESS item");

void cf_task_progress(cf_call_t *call, uint64_t done, uint64_t total)
{
    assert(call);
    call->done = done;
    call->total = total;
    if (call->ctx && call->ctx->progress)
        call->ctx->progress(call->ctx->progress_arg, done, total, NULL, 0);
}

cf_err_t cf_task_partial_raw(cf_call_t *call, const void *msgpack, size_t len)
{
    assert(call);
    if (len > CF_TASK_MAX_PARTIAL)
        return cf_error_set(CF_ETOOBIG, "%s(): a partial value of %zu bytes is over %u",
                            call->function, len, CF_TASK_MAX_PARTIAL);
    if (!msgpack || !cf_mp_valid(msgpack, len))
        return cf_error_set(CF_EINVAL, "%s(): not exactly one well-formed msgpack value",
                            call->function);
    if (call->ctx && call->ctx->progress)
        call->ctx->progress(call->ctx->progress_arg, call->done, call->total, msgpack, len);
    return CF_OK;
}

cf_err_t cf_task_partialf(cf_call_t *call, const char *fmt, ...)
{
    assert(call);
    if (!call->ctx || !call->ctx->progress)
        return CF_OK;    //  nobody listens: not even encoded
    cf_mp_writer_t local;
    cf_mp_writer_t *w = cf_mp_thread_writer(S_WRITER_KEEP_BYTES);
    if (!w) {
        cf_mp_writer_init(&local);
        w = &local;
    }
    va_list ap;
    va_start(ap, fmt);
    cf_err_t rc = cf_mp_write_format(w, false, fmt ? fmt : "", &ap);
    va_end(ap);
    if (rc == CF_OK && w->buf.size > CF_TASK_MAX_PARTIAL)
        rc = cf_error_set(CF_ETOOBIG, "%s(): a partial value of %zu bytes is over %u",
                          call->function, w->buf.size, CF_TASK_MAX_PARTIAL);
    if (rc == CF_OK)
        call->ctx->progress(call->ctx->progress_arg, call->done, call->total, w->buf.data,
                            w->buf.size);
    if (w == &local)
        cf_mp_writer_fini(&local);
    else
        cf_mp_thread_writer_release(w);
    return rc;
}

// ---------------------------------------------------------------------------
//  Running

static void s_call_fini(cf_call_t *call)
{
    free(call->error_type);
    free(call->error_message);
    call->error_type = call->error_message = NULL;
}

void cf_outcome_fini(cf_outcome_t *outcome)
{
    if (!outcome)
        return;
    free(outcome->value);
    free(outcome->error_type);
    free(outcome->error_message);
    memset(outcome, 0, sizeof *outcome);
}

//  Fills outcome with an error (a runtime error found before the task ran).
static cf_err_t s_outcome_error(cf_outcome_t *outcome, const char *type, const char *fmt, ...)
    CF_PRINTF(3, 4);

static cf_err_t s_outcome_error(cf_outcome_t *outcome, const char *type, const char *fmt, ...)
{
    cf_call_t call = { .function = "" };
    va_list ap;
    va_start(ap, fmt);
    s_raise_v(&call, type, fmt, ap);
    va_end(ap);
    if (call.out_of_memory) {
        s_call_fini(&call);
        return CF_ENOMEM;
    }
    outcome->ok = false;
    outcome->error_type = call.error_type;
    outcome->error_message = call.error_message;
    return CF_OK;
}

//  Moves what a finished call produced into outcome.
static cf_err_t s_outcome_take(cf_call_t *call, cf_outcome_t *outcome)
{
    if (call->out_of_memory) {
        s_call_fini(call);
        return CF_ENOMEM;
    }
    if (call->failed) {
        outcome->ok = false;
        outcome->error_type = call->error_type;
        outcome->error_message = call->error_message;
        call->error_type = call->error_message = NULL;
        return CF_OK;
    }
    if (call->has_result && call->result->buf.size >= CF_MP_TAKE_MIN) {
        //  The writer's own buffer: a large result is not copied once more.
        outcome->value = cf_mp_writer_take_fit(call->result, &outcome->value_len);
        if (!outcome->value)
            return CF_ENOMEM;
        outcome->ok = true;
        return CF_OK;
    }
    static const uint8_t nil = 0xc0;
    const void *bytes = &nil;
    if (call->has_result)
        bytes = call->result->buf.data;
    size_t len = call->has_result ? call->result->buf.size : 1;
    uint8_t *value = malloc(len);
    if (!value)
        return CF_ENOMEM;
    memcpy(value, bytes, len);
    outcome->ok = true;
    outcome->value = value;
    outcome->value_len = len;
    return CF_OK;
}

//  A function name from the network, for a message: control bytes become
//  '?', so an error or a log line never carries them.
static void s_printable_name(const char *name, size_t len, char out[S_MAX_NAME + 1])
{
    if (len > S_MAX_NAME)
        len = S_MAX_NAME;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)name[i];
        out[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    out[len] = '\0';
}

cf_err_t cf_registry_run(const char *function, size_t function_len, const void *args,
                         size_t args_len, const cf_run_ctx_t *ctx, cf_outcome_t *outcome)
{
    assert(outcome);
    memset(outcome, 0, sizeof *outcome);
    if (!function)
        function_len = 0;
    char name[S_MAX_NAME + 1];
    s_printable_name(function ? function : "", function_len, name);
    cf_task_fn *fn = cf_registry_find(function, function_len);
    if (!fn)
        return s_outcome_error(outcome, "UnknownFunction",
                               "no task named '%s%s' is registered on host %s", name,
                               function_len > S_MAX_NAME ? "..." : "", cf_registry_hostname());
    //  A registered name has no control bytes, so name is the exact name.

    cf_mp_doc_t *doc = NULL;
    //  Borrowed: args outlive the call, and so what the task reads
    //  (cf_arg_bytes) is the caller's bytes, not a copy of them.
    cf_err_t rc = args && args_len ? cf_mp_doc_decode_borrowed(args, args_len, &doc) : CF_EPROTO;
    if (rc == CF_ENOMEM)
        return CF_ENOMEM;
    if (rc != CF_OK)
        return s_outcome_error(outcome, "ProtocolError",
                               "arguments of %s() are not one well-formed msgpack value", name);
    const cf_value_t *root = cf_mp_doc_root(doc);
    if (cf_value_type(root) != CF_TYPE_ARRAY) {
        rc = s_outcome_error(outcome, "ProtocolError",
                             "arguments of %s() must be a msgpack array, got %s", name,
                             cf_type_name(cf_value_type(root)));
        cf_mp_doc_destroy(&doc);
        return rc;
    }

    cf_mp_writer_t local;
    cf_mp_writer_t *w = cf_mp_thread_writer(S_WRITER_KEEP_BYTES);
    if (!w) {
        cf_mp_writer_init(&local);
        w = &local;
    }
    cf_call_t call = {
        .function = name,
        .args = root,
        .args_raw = args,
        .args_len = args_len,
        .result = w,
        .ctx = ctx,
    };
    fn(&call);
    if (call.stop_seen)
        s_interrupt(&call);
    rc = s_outcome_take(&call, outcome);
    s_call_fini(&call);
    if (w == &local)
        cf_mp_writer_fini(&local);
    else
        cf_mp_thread_writer_release(w);
    cf_mp_doc_destroy(&doc);
    return rc;
}

// ---------------------------------------------------------------------------
//  cf.chunk: [function, [args1, args2, ...]]
//      -> [[0, value] | [1, type, message, host, pid], ...]

static void s_chunk(cf_call_t *call)
{
    const cf_value_t *fn_value = cf_arg(call, 0);
    const cf_value_t *lists = cf_arg(call, 1);
    if (cf_failed(call))
        return;
    size_t fn_len = 0;
    const char *fn_name = cf_value_str(fn_value, &fn_len);
    if (!fn_name) {
        s_wrong_type(call, 0, "str", fn_value);
        return;
    }
    if (cf_value_type(lists) != CF_TYPE_ARRAY) {
        s_wrong_type(call, 1, "array", lists);
        return;
    }
    cf_task_fn *fn = cf_registry_find(fn_name, fn_len);
    if (!fn) {
        char printable[S_MAX_NAME + 1];
        s_printable_name(fn_name, fn_len, printable);
        cf_raise(call, "UnknownFunction", "no task named '%s%s' is registered on host %s",
                 printable, fn_len > S_MAX_NAME ? "..." : "", cf_registry_hostname());
        return;
    }

    //  Each item's raw bytes: the decoded lists give the values, this walk
    //  the spans, so items run without being encoded or decoded again. The
    //  document was decoded from these bytes, so the walk cannot fail.
    cf_mp_reader_t r;
    uint32_t outer = 0, count = 0;
    cf_mp_reader_init(&r, call->args_raw, call->args_len);
    if (cf_mp_read_array(&r, UINT32_MAX, &outer) != CF_OK || cf_mp_skip(&r, NULL, NULL) != CF_OK
        || cf_mp_read_array(&r, UINT32_MAX, &count) != CF_OK || count != cf_value_len(lists)) {
        cf_raise(call, "ProtocolError", "cf.chunk(): arguments do not match their encoding");
        return;
    }

    cf_mp_writer_t *out = call->result;
    cf_mp_writer_reset(out);
    cf_mp_writer_t item_result;
    cf_mp_writer_init(&item_result);
    int prc = msgpack_pack_array(&out->pk, count);
    for (uint32_t i = 0; i < count && prc == 0; i++) {
        const uint8_t *raw = NULL;
        size_t raw_len = 0;
        if (cf_mp_skip(&r, &raw, &raw_len) != CF_OK) {
            prc = -2;
            break;
        }
        const cf_value_t *item_args = cf_value_at(lists, i);
        cf_call_t item = {
            .function = fn_name,
            .args = item_args,
            .args_raw = raw,
            .args_len = raw_len,
            .result = &item_result,
            .ctx = call->ctx,
        };
        if (cf_value_type(item_args) != CF_TYPE_ARRAY)
            cf_raise(&item, "TypeError",
                     "%s() input %" PRIu32 " of the chunk: arguments must "
                     "be an array, got %s",
                     fn_name, i, cf_type_name(cf_value_type(item_args)));
        else
            fn(&item);
        if (item.stop_seen) {
            //  The whole chunk is Interrupted (cf_registry_run): the inputs
            //  after this one are not run.
            call->stop_seen = true;
            s_call_fini(&item);
            break;
        }
        if (item.out_of_memory) {
            s_call_fini(&item);
            prc = -1;
            break;
        }
        if (item.failed) {
            //  Where it failed too, as a single task's error says: the
            //  chunk's own future succeeded, so nothing else carries it.
            const char *host = cf_registry_hostname();
            prc = msgpack_pack_array(&out->pk, 5);
            prc = prc ? prc : msgpack_pack_int(&out->pk, 1);
            prc = prc ? prc
                      : msgpack_pack_str_with_body(&out->pk, item.error_type,
                                                   strlen(item.error_type));
            prc = prc ? prc
                      : msgpack_pack_str_with_body(&out->pk, item.error_message,
                                                   strlen(item.error_message));
            prc = prc ? prc : msgpack_pack_str_with_body(&out->pk, host, strlen(host));
            prc = prc ? prc : msgpack_pack_int64(&out->pk, (int64_t)getpid());
        }
        else {
            prc = msgpack_pack_array(&out->pk, 2);
            prc = prc ? prc : msgpack_pack_int(&out->pk, 0);
            if (prc == 0 && item.has_result)
                prc = msgpack_sbuffer_write(&out->buf, item_result.buf.data, item_result.buf.size);
            else if (prc == 0)
                prc = msgpack_pack_nil(&out->pk);
        }
        s_call_fini(&item);
        cf_mp_writer_reset(&item_result);
    }
    cf_mp_writer_fini(&item_result);
    (void)outer;
    if (prc == 0) {
        call->has_result = true;
        return;
    }
    cf_mp_writer_reset(out);
    if (prc == -2)
        cf_raise(call, "ProtocolError", "cf.chunk(): arguments do not match their encoding");
    else
        cf_raise(call, "MemoryError", "out of memory running a chunk of %s()", fn_name);
}

__attribute__((constructor)) static void s_register_builtins(void)
{
    //  Out of memory before main: the chunk then is an unknown function,
    //  which is what every use of it reports.
    (void)s_insert(CF_CHUNK_FUNCTION, strlen(CF_CHUNK_FUNCTION), s_chunk);
}
