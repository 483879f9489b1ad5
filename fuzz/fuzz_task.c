//  Fuzz target: the task paths that take network bytes. A worker runs a
//  TASK's arguments (one msgpack array from the broker) through
//  cf_registry_run, the built-in cf.chunk included; a client reads a
//  RESULT's value (one msgpack value from the broker) through the future's
//  getters. Byte 0 of an input picks the path, the rest is the bytes:
//      0  cf_registry_run("cf.chunk", bytes): map's chunks, [fn, [args...]]
//      1  cf_registry_run("fuzz_args", bytes): a task reading its arguments
//         with every cf_arg_* getter and returning them again
//      2  cf_future_set_result(bytes), then every cf_future_* reader
//  Properties: an outcome is either a value that cf_mp_valid accepts or an
//  error with a type and a message; a future's readers agree with each
//  other.

#include "cf_fuzz.h"
#include "cf_future.h"
#include "cf_mp.h"
#include "cf_registry.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

//  Reads every argument with the getter of its type and a wrong one, then
//  returns the arguments as they came (cf_returnf "v") or one of them.
static void fuzz_args(cf_call_t *call)
{
    size_t count = cf_arg_count(call);
    for (size_t i = 0; i < count && i < 16; i++) {
        const cf_value_t *v = cf_arg(call, i);
        size_t len = 0;
        switch (cf_value_type(v)) {
        case CF_TYPE_INT:
            (void)cf_arg_int(call, i);
            (void)cf_arg_uint(call, i);
            break;
        case CF_TYPE_STR:
            (void)cf_arg_str(call, i);
            break;
        case CF_TYPE_BIN:
            (void)cf_arg_bytes(call, i, &len);
            break;
        default:
            (void)cf_arg_double(call, i);
            (void)cf_arg_bool(call, i);
            break;
        }
    }
    if (cf_failed(call))
        return;
    size_t raw_len = 0;
    const void *raw = cf_args_raw(call, &raw_len);
    if (count % 2)
        cf_return_raw(call, raw, raw_len);
    else
        cf_returnf(call, "v", cf_args(call));
}
CF_TASK(fuzz_args);

static void s_run(const char *function, const uint8_t *bytes, size_t len)
{
    cf_outcome_t outcome;
    cf_err_t rc = cf_registry_run(function, strlen(function), bytes, len, NULL, &outcome);
    CF_FUZZ_CHECK(rc == CF_OK || rc == CF_ENOMEM);
    if (rc == CF_OK && outcome.ok)
        CF_FUZZ_CHECK(outcome.value && cf_mp_valid(outcome.value, outcome.value_len));
    if (rc == CF_OK && !outcome.ok)
        CF_FUZZ_CHECK(outcome.error_type && outcome.error_type[0] && outcome.error_message);
    cf_outcome_fini(&outcome);
}

static void s_result(const uint8_t *bytes, size_t len)
{
    cf_future_t *f = cf_future_new("fuzz", 4);
    CF_FUZZ_CHECK(f);
    CF_FUZZ_CHECK(cf_future_set_result(f, bytes, len));
    bool valid = cf_mp_valid(bytes, len);
    int64_t i = 0;
    double d = 0;
    bool b = false;
    const char *s = NULL;
    const void *raw = NULL;
    size_t raw_len = 0;
    const cf_value_t *value = NULL;
    cf_err_t rc_int = cf_future_int(f, 0, &i);
    (void)cf_future_double(f, 0, &d);
    (void)cf_future_bool(f, 0, &b);
    (void)cf_future_str(f, 0, &s);
    cf_err_t rc_raw = cf_future_raw(f, 0, &raw, &raw_len);
    cf_err_t rc = cf_future_result(f, 0, &value);
    const cf_task_error_t *error = cf_future_error(f);
    //  A malformed value is a ProtocolError everywhere; a valid one is read.
    CF_FUZZ_CHECK((rc == CF_OK) == valid || rc == CF_ENOMEM);
    if (rc == CF_OK) {
        CF_FUZZ_CHECK(rc_raw == CF_OK && raw_len == len && !error);
        if (cf_value_type(value) == CF_TYPE_INT) {
            int64_t j;
            if (cf_value_get_int(value, &j) == CF_OK)
                CF_FUZZ_CHECK(rc_int == CF_OK && i == j);
        }
    }
    else if (rc == CF_ETASK) {
        CF_FUZZ_CHECK(error && strcmp(error->type, "ProtocolError") == 0);
        CF_FUZZ_CHECK(rc_int != CF_OK && rc_raw != CF_OK);
    }
    cf_future_release(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    //  Copied so that a read one past the end is an ASan report.
    size_t len = size - 1;
    uint8_t *bytes = malloc(len ? len : 1);
    CF_FUZZ_CHECK(bytes);
    memcpy(bytes, data + 1, len);
    switch (data[0] % 3) {
    case 0:
        s_run(CF_CHUNK_FUNCTION, bytes, len);
        break;
    case 1:
        s_run("fuzz_args", bytes, len);
        break;
    default:
        s_result(bytes, len);
        break;
    }
    free(bytes);
    return 0;
}
