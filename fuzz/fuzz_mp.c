//  Fuzz target: core/cf_mp's bounded reader, through which every msgpack
//  byte from the network is read (task arguments in a worker, results in a
//  client, message bodies in cf_proto). Properties: cf_mp_doc_decode
//  accepts exactly what cf_mp_valid accepts (out of memory aside); a decoded
//  tree can be walked and printed with the public cf_value_* calls; the
//  cursor's cf_mp_skip spans the same bytes a decode takes.

#include "cf_fuzz.h"
#include "cf_mp.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

//  Touches every node (so a wrong size or pointer shows under ASan).
static size_t s_walk(const cf_value_t *v, int depth)
{
    CF_FUZZ_CHECK(depth <= CF_MP_MAX_DEPTH + 1);
    size_t nodes = 1, len = 0;
    int64_t i;
    uint64_t u;
    double d;
    bool b;
    switch (cf_value_type(v)) {
    case CF_TYPE_ARRAY:
        for (size_t k = 0; k < cf_value_len(v); k++)
            nodes += s_walk(cf_value_at(v, k), depth + 1);
        CF_FUZZ_CHECK(cf_value_at(v, cf_value_len(v)) == NULL);
        break;
    case CF_TYPE_MAP:
        for (size_t k = 0; k < cf_value_len(v); k++) {
            nodes += s_walk(cf_value_key_at(v, k), depth + 1);
            nodes += s_walk(cf_value_val_at(v, k), depth + 1);
        }
        (void)cf_value_get(v, "a");
        break;
    case CF_TYPE_STR: {
        const char *s = cf_value_str(v, &len);
        CF_FUZZ_CHECK(s && s[len] == '\0');
        break;
    }
    case CF_TYPE_BIN: {
        const uint8_t *p = cf_value_bin(v, &len);
        CF_FUZZ_CHECK(len == 0 || p);
        if (len)
            (void)(volatile uint8_t)p[len - 1];
        break;
    }
    default:
        (void)cf_value_get_int(v, &i);
        (void)cf_value_get_uint(v, &u);
        (void)cf_value_get_double(v, &d);
        (void)cf_value_get_bool(v, &b);
        break;
    }
    return nodes;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    //  Copied so that a read one past the end is an ASan report.
    uint8_t *copy = malloc(size ? size : 1);
    CF_FUZZ_CHECK(copy);
    memcpy(copy, data, size);

    bool valid = cf_mp_valid(copy, size);
    cf_mp_doc_t *doc = NULL;
    cf_err_t rc = cf_mp_doc_decode(copy, size, &doc);
    CF_FUZZ_CHECK(rc == CF_OK || rc == CF_EPROTO || rc == CF_ENOMEM);
    CF_FUZZ_CHECK((rc == CF_OK) == (doc != NULL));
    if (rc != CF_ENOMEM)
        CF_FUZZ_CHECK(valid == (rc == CF_OK));

    cf_mp_reader_t r;
    cf_mp_reader_init(&r, copy, size);
    const uint8_t *start = NULL;
    size_t span = 0;
    cf_err_t skip = cf_mp_skip(&r, &start, &span);
    if (valid) {
        CF_FUZZ_CHECK(skip == CF_OK && start == copy && span == size);
        CF_FUZZ_CHECK(cf_mp_reader_left(&r) == 0);
    }
    if (skip != CF_OK)
        CF_FUZZ_CHECK(r.pos == 0);

    if (doc) {
        const cf_value_t *root = cf_mp_doc_root(doc);
        s_walk(root, 0);
        //  Printing bounds itself; bodies with millions of nodes are slow,
        //  so only small documents.
        if (size < 4096) {
            char *repr = cf_value_repr(root);
            free(repr);
        }
        cf_mp_doc_destroy(&doc);
    }
    free(copy);
    return 0;
}
