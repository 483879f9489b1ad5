//  map: results in submission order, inputs pulled lazily within a window.
//
//  Design note. Python's Executor.map submits every input at once; over ten
//  million inputs, or an endless generator, that is unbounded memory. Here
//  the map keeps at most `window` tasks in flight in a ring, asks the source
//  for an input only when a slot is free, and refills as soon as the head's
//  result is taken, so memory is bounded by the window whatever the source.
//  The cost: a slow task at the head holds back the refill behind it (the
//  window is ordered), which a window of at least 2 x workers hides for
//  tasks of similar length.
//
//  Results are read in order by waiting on the head's future alone: one
//  wakeup per result, no polling.
//
//  The default window through a broker (CF_PROCESSES, CF_REMOTE).
#define S_BROKER_WINDOW 1024

//  chunksize > 1 sends each chunk as one "cf.chunk" task
//  (cf_registry.h): args [function, [args1, args2, ...]], result one
//  [0, value] or [1, type, message, host, pid] per input (a 3-item error
//  from an older worker is accepted, without host and pid). It goes through
//  the same path on every executor kind, and the per-input results are
//  unpacked here, so one failing input fails at its own index, with where it
//  ran, not the whole chunk.

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_executor.h"
#include "cf_mp.h"
#include "cf_registry.h"

#include <stdlib.h>
#include <string.h>

struct cf_args {
    cf_mp_writer_t values;     //  the values, without the array header
    cf_mp_writer_t scratch;    //  cf_args_addf's formatting space
    uint32_t count;            //  values written
    cf_err_t err;              //  first failure while adding (sticky)
};

//  One task in flight.
typedef struct {
    cf_future_t *future;
    size_t first;    //  index of its first input
    size_t count;    //  inputs it carries
} s_slot_t;

//  Storage for cf_map_ints and cf_map_strs.
typedef struct {
    const int64_t *ints;
    const char *const *strs;
    size_t count;
} s_array_source_t;

struct cf_map {
    cf_executor_t *ex;    //  borrowed: outlives the map
    char *fn;             //  the mapped function
    cf_map_source_fn *source;
    void *state;
    size_t chunksize;    //  >= 1
    size_t window;       //  >= 1
    cf_task_opts_t task_opts;
    int64_t deadline_ms;    //  -1: none
    s_slot_t *ring;         //  window slots
    size_t head;
    size_t count;
    size_t next_input;       //  index the source is asked for next
    bool source_done;        //  no more inputs will be pulled
    cf_err_t pending_err;    //  source or submit error, after the ring
    size_t pending_err_index;
    bool stopped;               //  iteration ended
    cf_args_t args;             //  given to the source, reused
    cf_mp_writer_t chunk;       //  argument lists of the chunk being built
    cf_mp_writer_t message;     //  the head (or all) of the arguments being submitted
    cf_future_t *current;       //  owner of the last value or error returned
    const cf_value_t *items;    //  current chunk's result items, or NULL
    size_t item_pos;
    size_t item_first;
    size_t index;             //  input index of the last value or error
    cf_task_error_t error;    //  the error that stopped iteration
    bool has_error;
    s_array_source_t array;    //  for the conveniences
};

// ---------------------------------------------------------------------------
//  Argument lists

static cf_err_t s_args_check(cf_args_t *args, int rc)
{
    if (rc != 0 && args->err == CF_OK)
        args->err = CF_ENOMEM;
    if (rc == 0)
        args->count++;
    return rc == 0 ? CF_OK : CF_ENOMEM;
}

cf_err_t cf_args_add_int(cf_args_t *args, int64_t value)
{
    return s_args_check(args, msgpack_pack_int64(&args->values.pk, value));
}

cf_err_t cf_args_add_double(cf_args_t *args, double value)
{
    return s_args_check(args, msgpack_pack_double(&args->values.pk, value));
}

cf_err_t cf_args_add_str(cf_args_t *args, const char *value)
{
    if (!value)
        return s_args_check(args, msgpack_pack_nil(&args->values.pk));
    size_t len = strlen(value);
    int rc = msgpack_pack_str(&args->values.pk, len);
    if (rc == 0)
        rc = msgpack_pack_str_body(&args->values.pk, value, len);
    return s_args_check(args, rc);
}

cf_err_t cf_args_add_bytes(cf_args_t *args, const void *data, size_t len)
{
    if (!data && len > 0) {
        args->err = args->err ? args->err : CF_EINVAL;
        return CF_EINVAL;
    }
    int rc = msgpack_pack_bin(&args->values.pk, len);
    if (rc == 0 && len > 0)
        rc = msgpack_pack_bin_body(&args->values.pk, data, len);
    return s_args_check(args, rc);
}

cf_err_t cf_args_addf(cf_args_t *args, const char *fmt, ...)
{
    //  The format may describe several values ("is"): format them as one
    //  array in the scratch writer, then append the array's items.
    cf_mp_writer_reset(&args->scratch);
    va_list ap;
    va_start(ap, fmt);
    cf_err_t rc = cf_mp_write_format(&args->scratch, true, fmt ? fmt : "", &ap);
    va_end(ap);
    if (rc == CF_OK) {
        cf_mp_reader_t reader;
        uint32_t n;
        cf_mp_reader_init(&reader, args->scratch.buf.data, args->scratch.buf.size);
        rc = cf_mp_read_array(&reader, UINT32_MAX, &n);
        if (rc == CF_OK) {
            size_t left = cf_mp_reader_left(&reader);
            if (left > 0
                && msgpack_sbuffer_write(&args->values.buf, args->scratch.buf.data + reader.pos,
                                         left)
                       != 0)
                rc = CF_ENOMEM;
            else
                args->count += n;
        }
    }
    if (rc != CF_OK && args->err == CF_OK)
        args->err = rc;
    return rc;
}

static void s_args_reset(cf_args_t *args)
{
    cf_mp_writer_reset(&args->values);
    args->count = 0;
    args->err = CF_OK;
}

// ---------------------------------------------------------------------------
//  Submitting

//  Ends pulling inputs with err at input index (delivered once the results
//  before it were).
static void s_fail_source(cf_map_t *map, cf_err_t err, size_t index)
{
    map->source_done = true;
    map->pending_err = err;
    map->pending_err_index = index;
}

static void s_push(cf_map_t *map, cf_future_t *f, size_t first, size_t count)
{
    s_slot_t *slot = &map->ring[(map->head + map->count) % map->window];
    slot->future = f;
    slot->first = first;
    slot->count = count;
    map->count++;
}

//  Appends the current argument list to w as one array.
static cf_err_t s_write_args(cf_mp_writer_t *w, const cf_args_t *args)
{
    if (msgpack_pack_array(&w->pk, args->count) != 0)
        return CF_ENOMEM;
    if (args->values.buf.size > 0
        && msgpack_sbuffer_write(&w->buf, args->values.buf.data, args->values.buf.size) != 0)
        return CF_ENOMEM;
    return CF_OK;
}

//  Submits fn with the arguments whose head is in map->message and whose
//  rest is body. Arguments larger than a task keeps inline are put together
//  once, in the block the task adopts: the task needs a copy of its own (it
//  keeps them until its result, to send them again), but only one.
static cf_future_t *s_submit_args(cf_map_t *map, const char *fn, const msgpack_sbuffer *body)
{
    cf_mp_writer_t *w = &map->message;
    size_t len = w->buf.size + body->size;
    if (len <= CF_TASK_INLINE_ARGS_MAX) {
        if (body->size > 0 && msgpack_sbuffer_write(&w->buf, body->data, body->size) != 0) {
            cf_error_set(CF_ENOMEM, "out of memory encoding the arguments of %s", map->fn);
            return NULL;
        }
        return cf_executor_submit_encoded(map->ex, &map->task_opts, fn, w->buf.data, w->buf.size);
    }
    uint8_t *args = malloc(len);
    if (!args) {
        cf_error_set(CF_ENOMEM, "out of memory encoding the arguments of %s", map->fn);
        return NULL;
    }
    memcpy(args, w->buf.data, w->buf.size);
    if (body->size > 0)
        memcpy(args + w->buf.size, body->data, body->size);
    return cf_executor_submit_taking(map->ex, &map->task_opts, fn, &args, len);
}

//  Submits the n argument lists gathered in map->chunk as one cf.chunk task.
static cf_err_t s_submit_chunk(cf_map_t *map, size_t first, size_t n)
{
    cf_mp_writer_t *w = &map->message;
    cf_mp_writer_reset(w);
    size_t fn_len = strlen(map->fn);
    if (msgpack_pack_array(&w->pk, 2) != 0 || msgpack_pack_str(&w->pk, fn_len) != 0
        || msgpack_pack_str_body(&w->pk, map->fn, fn_len) != 0
        || msgpack_pack_array(&w->pk, (uint32_t)n) != 0)
        return CF_ENOMEM;
    cf_future_t *f = s_submit_args(map, CF_CHUNK_FUNCTION, &map->chunk.buf);
    if (!f)
        return cf_last_err();
    s_push(map, f, first, n);
    return CF_OK;
}

//  Pulls inputs and submits them until the window is full or the source
//  ends. Errors are not returned: they end the source and are delivered in
//  order by cf_map_next.
static void s_fill(cf_map_t *map)
{
    bool chunked = map->chunksize > 1;
    while (!map->source_done && map->count < map->window) {
        size_t first = map->next_input;
        size_t n = 0;
        if (chunked)
            cf_mp_writer_reset(&map->chunk);
        while (n < map->chunksize) {
            s_args_reset(&map->args);
            int more = map->source(map->state, map->next_input, &map->args);
            if (more == 0) {
                map->source_done = true;
                break;
            }
            if (more < 0 || map->args.err != CF_OK) {
                cf_err_t err = map->args.err != CF_OK ? map->args.err : CF_EINVAL;
                cf_error_set(err, "the map source failed at input %zu", map->next_input);
                s_fail_source(map, err, map->next_input);
                break;
            }
            cf_err_t rc;
            if (chunked)
                rc = s_write_args(&map->chunk, &map->args);
            else {
                cf_mp_writer_reset(&map->message);
                rc = msgpack_pack_array(&map->message.pk, map->args.count) == 0 ? CF_OK : CF_ENOMEM;
                if (rc == CF_OK) {
                    cf_future_t *f = s_submit_args(map, map->fn, &map->args.values.buf);
                    if (f)
                        s_push(map, f, map->next_input, 1);
                    else
                        rc = cf_last_err();
                }
            }
            if (rc != CF_OK) {
                s_fail_source(map, rc, map->next_input);
                break;
            }
            map->next_input++;
            n++;
        }
        if (chunked && n > 0) {
            cf_err_t rc = s_submit_chunk(map, first, n);
            if (rc != CF_OK)
                s_fail_source(map, rc, first);
        }
    }
}

// ---------------------------------------------------------------------------
//  Iterating

//  Ends iteration: cancels what has not started, drops the rest (their
//  results will be dropped by their executor).
static void s_stop(cf_map_t *map)
{
    map->stopped = true;
    map->source_done = true;
    while (map->count > 0) {
        s_slot_t *slot = &map->ring[map->head];
        cf_future_cancel(slot->future);
        cf_future_release(&slot->future);
        map->head = (map->head + 1) % map->window;
        map->count--;
    }
}

static cf_err_t s_fail(cf_map_t *map, const char *type, const char *message)
{
    map->error = (cf_task_error_t){
        .type = type, .message = message, .function = map->fn, .host = "", .pid = 0
    };
    map->has_error = true;
    s_stop(map);
    return CF_ETASK;
}

//  The next item of the current chunk's result.
static cf_err_t s_next_item(cf_map_t *map, const cf_value_t **value)
{
    const cf_value_t *item = cf_value_at(map->items, map->item_pos);
    map->index = map->item_first + map->item_pos;
    map->item_pos++;
    int64_t status = -1;
    if (cf_value_len(item) >= 2)
        cf_value_get_int(cf_value_at(item, 0), &status);
    if (status == 0 && cf_value_len(item) == 2) {
        if (value)
            *value = cf_value_at(item, 1);
        return CF_OK;
    }
    //  [1, type, message] from an older worker, [1, type, message, host,
    //  pid] from a current one.
    size_t len = cf_value_len(item);
    if (status == 1 && (len == 3 || len == 5)) {
        const char *type = cf_value_str(cf_value_at(item, 1), NULL);
        const char *message = cf_value_str(cf_value_at(item, 2), NULL);
        const char *host = len == 5 ? cf_value_str(cf_value_at(item, 3), NULL) : "";
        int64_t pid = 0;
        if (type && message && host
            && (len == 3
                || (cf_value_get_int(cf_value_at(item, 4), &pid) == CF_OK && pid >= 0
                    && pid <= INT32_MAX))) {
            cf_err_t rc = s_fail(map, type, message);
            map->error.host = host;
            map->error.pid = (int)pid;
            return rc;
        }
    }
    return s_fail(map, "ProtocolError",
                  "a chunk result item is not [0, value] or "
                  "[1, type, message, host, pid]");
}

cf_err_t cf_map_next(cf_map_t *map, const cf_value_t **value)
{
    if (value)
        *value = NULL;
    if (!map)
        return CF_EINVAL;
    if (map->stopped)
        return CF_ESTOP;
    if (map->items && map->item_pos < cf_value_len(map->items))
        return s_next_item(map, value);
    map->items = NULL;
    cf_future_release(&map->current);

    s_fill(map);
    if (map->count == 0) {
        map->stopped = true;
        if (map->pending_err == CF_OK)
            return CF_ESTOP;
        map->index = map->pending_err_index;
        return map->pending_err;
    }
    s_slot_t slot = map->ring[map->head];
    if (cf_future_wait(slot.future, cf_clock_ms_until(map->deadline_ms)) != CF_OK) {
        //  Python's map ends with TimeoutError and cancels the rest.
        map->index = slot.first;
        s_stop(map);
        return CF_ETIMEDOUT;
    }
    map->head = (map->head + 1) % map->window;
    map->count--;
    map->current = slot.future;
    map->index = slot.first;
    s_fill(map);    //  keep the window full while the caller works

    const cf_value_t *result;
    cf_err_t rc = cf_future_result(slot.future, 0, &result);
    if (rc == CF_ETASK) {
        map->error = *cf_future_error(slot.future);
        map->has_error = true;
        s_stop(map);
        return CF_ETASK;
    }
    if (rc != CF_OK) {
        s_stop(map);
        return rc;
    }
    if (map->chunksize <= 1) {
        if (value)
            *value = result;
        return CF_OK;
    }
    if (cf_value_type(result) != CF_TYPE_ARRAY || cf_value_len(result) != slot.count)
        return s_fail(map, "ProtocolError", "a chunk result does not have one item per input");
    map->items = result;
    map->item_pos = 0;
    map->item_first = slot.first;
    return s_next_item(map, value);
}

size_t cf_map_index(cf_map_t *map)
{
    return map ? map->index : 0;
}

const cf_task_error_t *cf_map_error(cf_map_t *map)
{
    return map && map->has_error ? &map->error : NULL;
}

// ---------------------------------------------------------------------------
//  Life cycle

void cf_map_destroy(cf_map_t **pmap)
{
    if (!pmap || !*pmap)
        return;
    cf_map_t *map = *pmap;
    *pmap = NULL;
    if (map->ring)
        s_stop(map);
    cf_future_release(&map->current);
    cf_mp_writer_fini(&map->args.values);
    cf_mp_writer_fini(&map->args.scratch);
    cf_mp_writer_fini(&map->chunk);
    cf_mp_writer_fini(&map->message);
    free(map->ring);
    free(map->fn);
    free(map);
}

//  A map that has not pulled anything yet.
static cf_map_t *s_map_new(cf_executor_t *ex, const char *fn, cf_map_source_fn *source, void *state,
                           const cf_map_opts_t *opts)
{
    if (!ex || !fn || !source) {
        cf_error_set(CF_EINVAL, "map needs an executor, a function name and a source");
        return NULL;
    }
    size_t fn_len = strlen(fn);
    if (fn_len == 0 || fn_len > 255) {
        cf_error_set(CF_EINVAL, "function names are 1..255 bytes, got %zu", fn_len);
        return NULL;
    }
    cf_map_t *map = cf_calloc(1, sizeof *map);
    if (!map)
        return NULL;
    cf_mp_writer_init(&map->args.values);
    cf_mp_writer_init(&map->args.scratch);
    cf_mp_writer_init(&map->chunk);
    cf_mp_writer_init(&map->message);
    map->ex = ex;
    map->source = source;
    map->state = state;
    map->chunksize = opts && opts->chunksize > 1 ? opts->chunksize : 1;
    if (opts && opts->window > 0)
        map->window = opts->window;
    else if (cf_executor_kind(ex) == CF_THREADS) {
        size_t workers = (size_t)cf_executor_max_workers(ex);
        map->window = 2 * workers > 64 ? 2 * workers : 64;
    }
    else {
        //  Through a broker, the window must also cover the tasks on their
        //  way there and back: with 64 in flight a 2-process pool did 99k
        //  tasks/s, with 1024 568k/s (docs/benchmarks.md). 1024 slots are
        //  a few hundred KiB.
        map->window = S_BROKER_WINDOW;
    }
    if (opts)
        map->task_opts = opts->task;
    map->deadline_ms = opts && opts->timeout_ms > 0 ? cf_clock_now_ms() + opts->timeout_ms : -1;
    map->fn = strdup(fn);
    map->ring = calloc(map->window, sizeof *map->ring);
    if (!map->fn || !map->ring) {
        cf_map_destroy(&map);
        cf_error_set(CF_ENOMEM, "out of memory creating a map");
        return NULL;
    }
    return map;
}

cf_map_t *cf_map_new(cf_executor_t *ex, const char *fn, cf_map_source_fn *source, void *state,
                     const cf_map_opts_t *opts)
{
    cf_map_t *map = s_map_new(ex, fn, source, state, opts);
    if (map)
        s_fill(map);    //  work starts now, as with Python's map
    return map;
}

static int s_ints_source(void *state, size_t index, cf_args_t *args)
{
    const s_array_source_t *array = state;
    if (index >= array->count)
        return 0;
    return cf_args_add_int(args, array->ints[index]) == CF_OK ? 1 : -1;
}

static int s_strs_source(void *state, size_t index, cf_args_t *args)
{
    const s_array_source_t *array = state;
    if (index >= array->count)
        return 0;
    return cf_args_add_str(args, array->strs[index]) == CF_OK ? 1 : -1;
}

//  A map over an array the caller keeps (ints or strs set by the caller).
static cf_map_t *s_map_array(cf_executor_t *ex, const char *fn, cf_map_source_fn *source,
                             const void *inputs, size_t count, const cf_map_opts_t *opts)
{
    if (count > 0 && !inputs) {
        cf_error_set(CF_EINVAL, "no inputs given for a count of %zu", count);
        return NULL;
    }
    cf_map_t *map = s_map_new(ex, fn, source, NULL, opts);
    if (!map)
        return NULL;
    map->array.count = count;
    map->state = &map->array;
    return map;
}

cf_map_t *cf_map_ints(cf_executor_t *ex, const char *fn, const int64_t *inputs, size_t count,
                      const cf_map_opts_t *opts)
{
    cf_map_t *map = s_map_array(ex, fn, s_ints_source, inputs, count, opts);
    if (map) {
        map->array.ints = inputs;
        s_fill(map);
    }
    return map;
}

cf_map_t *cf_map_strs(cf_executor_t *ex, const char *fn, const char *const *inputs, size_t count,
                      const cf_map_opts_t *opts)
{
    cf_map_t *map = s_map_array(ex, fn, s_strs_source, inputs, count, opts);
    if (map) {
        map->array.strs = inputs;
        s_fill(map);
    }
    return map;
}
