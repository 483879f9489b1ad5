//  cf_mp: every type both ways, hostile input (bombs, truncation, trailing
//  bytes, depth), the argument format language and Python-like repr.

#include "cf_mp.h"

#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

// ---------------------------------------------------------------------------
//  Helpers

//  Writes fmt into a fresh writer (as an argument array or one value).
static cf_err_t s_format(cf_mp_writer_t *w, bool as_array, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cf_err_t rc = cf_mp_write_format(w, as_array, fmt, &ap);
    va_end(ap);
    return rc;
}

//  Decodes data and returns the repr of its root (caller frees).
static char *s_repr_of(const void *data, size_t size)
{
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(data, size, &doc), CF_OK);
    char *text = cf_value_repr(cf_mp_doc_root(doc));
    assert_non_null(text);
    cf_mp_doc_destroy(&doc);
    return text;
}

static void s_assert_repr(const void *data, size_t size, const char *expected)
{
    char *text = s_repr_of(data, size);
    assert_string_equal(text, expected);
    free(text);
}

//  The repr of what a one-value format writes.
static void s_assert_format_repr(const char *expected, const char *fmt, ...)
{
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    va_list ap;
    va_start(ap, fmt);
    assert_int_equal(cf_mp_write_format(&w, false, fmt, &ap), CF_OK);
    va_end(ap);
    s_assert_repr(w.buf.data, w.buf.size, expected);
    cf_mp_writer_fini(&w);
}

//  One value of every kind, with encodings of every width: the corpus for
//  round trips and truncation.
static const uint8_t s_every_type[] = {
    0xdc, 0x00, 0x24,                                           //  array16 of 36
    0xc0,                                                       //  nil
    0xc2, 0xc3,                                                 //  false, true
    0x05, 0xe0,                                                 //  fixint 5, -32
    0xcc, 0xff,                                                 //  uint8 255
    0xcd, 0x01, 0x00,                                           //  uint16 256
    0xce, 0x00, 0x01, 0x00, 0x00,                               //  uint32 65536
    0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,       //  uint64 max
    0xd0, 0x80,                                                 //  int8 -128
    0xd1, 0x80, 0x00,                                           //  int16 -32768
    0xd2, 0x80, 0x00, 0x00, 0x00,                               //  int32 min
    0xd3, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,       //  int64 min
    0xd0, 0x07,                                                 //  int8 holding 7
    0xca, 0x3f, 0x00, 0x00, 0x00,                               //  float32 0.5
    0xcb, 0x3f, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,       //  float64 1.5
    0xa2, 'h',  'i',                                            //  fixstr
    0xd9, 0x01, 'a',                                            //  str8
    0xda, 0x00, 0x01, 'b',                                      //  str16
    0xdb, 0x00, 0x00, 0x00, 0x01, 'c',                          //  str32
    0xc4, 0x02, 0x00, 0xff,                                     //  bin8
    0xc5, 0x00, 0x01, 0x01,                                     //  bin16
    0xc6, 0x00, 0x00, 0x00, 0x00,                               //  bin32, empty
    0xd4, 0x01, 0xaa,                                           //  fixext1
    0xd5, 0x02, 0xaa, 0xbb,                                     //  fixext2
    0xd6, 0x03, 1,    2,    3,    4,                            //  fixext4
    0xd7, 0x04, 1,    2,    3,    4,    5,    6,    7,    8,    //  fixext8
    0xd8, 0xff, 1,    2,    3,    4,    5,    6,    7,    8,
    9,    10,   11,   12,   13,   14,   15,   16,    //  fixext16
    0xc7, 0x01, 0x05, 0x42,                          //  ext8
    0xc8, 0x00, 0x00, 0x06,                          //  ext16, empty
    0xc9, 0x00, 0x00, 0x00, 0x01, 0x07, 0x43,        //  ext32
    0x91, 0x90,                                      //  [[]]
    0xdd, 0x00, 0x00, 0x00, 0x01, 0x01,              //  array32 [1]
    0x81, 0xa1, 'k',  0x80,                          //  {'k': {}}
    0xde, 0x00, 0x01, 0x01, 0x02,                    //  map16 {1: 2}
    0xdf, 0x00, 0x00, 0x00, 0x00,                    //  map32 {}
};

// ---------------------------------------------------------------------------
//  Reading

static void test_decode_reads_every_type_and_width(void **state)
{
    (void)state;
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(s_every_type, sizeof s_every_type, &doc), CF_OK);
    const cf_value_t *root = cf_mp_doc_root(doc);
    assert_int_equal(cf_value_type(root), CF_TYPE_ARRAY);
    assert_int_equal(cf_value_len(root), 36);

    int64_t i;
    uint64_t u;
    double d;
    bool b;
    size_t len;
    assert_int_equal(cf_value_type(cf_value_at(root, 0)), CF_TYPE_NIL);
    assert_int_equal(cf_value_get_bool(cf_value_at(root, 1), &b), CF_OK);
    assert_false(b);
    assert_int_equal(cf_value_get_bool(cf_value_at(root, 2), &b), CF_OK);
    assert_true(b);
    assert_int_equal(cf_value_get_int(cf_value_at(root, 3), &i), CF_OK);
    assert_int_equal(i, 5);
    assert_int_equal(cf_value_get_int(cf_value_at(root, 4), &i), CF_OK);
    assert_int_equal(i, -32);
    assert_int_equal(cf_value_get_uint(cf_value_at(root, 5), &u), CF_OK);
    assert_int_equal(u, 255);
    assert_int_equal(cf_value_get_uint(cf_value_at(root, 6), &u), CF_OK);
    assert_int_equal(u, 256);
    assert_int_equal(cf_value_get_uint(cf_value_at(root, 7), &u), CF_OK);
    assert_int_equal(u, 65536);
    assert_int_equal(cf_value_get_uint(cf_value_at(root, 8), &u), CF_OK);
    assert_true(u == UINT64_MAX);
    assert_int_equal(cf_value_get_int(cf_value_at(root, 8), &i), CF_ETYPE);
    assert_int_equal(cf_value_get_int(cf_value_at(root, 9), &i), CF_OK);
    assert_int_equal(i, -128);
    assert_int_equal(cf_value_get_int(cf_value_at(root, 10), &i), CF_OK);
    assert_int_equal(i, -32768);
    assert_int_equal(cf_value_get_int(cf_value_at(root, 11), &i), CF_OK);
    assert_int_equal(i, INT32_MIN);
    assert_int_equal(cf_value_get_int(cf_value_at(root, 12), &i), CF_OK);
    assert_true(i == INT64_MIN);
    assert_int_equal(cf_value_get_uint(cf_value_at(root, 12), &u), CF_ETYPE);
    //  A signed encoding of a non-negative number is one int, both views.
    assert_int_equal(cf_value_get_uint(cf_value_at(root, 13), &u), CF_OK);
    assert_int_equal(u, 7);
    assert_int_equal(cf_value_get_double(cf_value_at(root, 14), &d), CF_OK);
    assert_true(d == 0.5);
    assert_int_equal(cf_value_get_double(cf_value_at(root, 15), &d), CF_OK);
    assert_true(d == 1.5);
    assert_string_equal(cf_value_str(cf_value_at(root, 16), &len), "hi");
    assert_int_equal(len, 2);
    assert_string_equal(cf_value_str(cf_value_at(root, 17), NULL), "a");
    assert_string_equal(cf_value_str(cf_value_at(root, 18), NULL), "b");
    assert_string_equal(cf_value_str(cf_value_at(root, 19), NULL), "c");
    const uint8_t *bin = cf_value_bin(cf_value_at(root, 20), &len);
    assert_int_equal(len, 2);
    assert_int_equal(bin[0], 0x00);
    assert_int_equal(bin[1], 0xff);
    assert_non_null(cf_value_bin(cf_value_at(root, 22), &len));
    assert_int_equal(len, 0);
    for (size_t k = 23; k <= 30; k++)
        assert_int_equal(cf_value_type(cf_value_at(root, k)), CF_TYPE_EXT);
    assert_int_equal(cf_value_len(cf_value_at(root, 27)), 0);    //  ext bytes are not counted
    const cf_value_t *nested = cf_value_at(root, 31);
    assert_int_equal(cf_value_type(cf_value_at(nested, 0)), CF_TYPE_ARRAY);
    assert_int_equal(cf_value_len(cf_value_at(nested, 0)), 0);
    int64_t one;
    assert_int_equal(cf_value_get_int(cf_value_at(cf_value_at(root, 32), 0), &one), CF_OK);
    assert_int_equal(one, 1);
    const cf_value_t *map = cf_value_at(root, 33);
    assert_int_equal(cf_value_type(map), CF_TYPE_MAP);
    assert_string_equal(cf_value_str(cf_value_key_at(map, 0), NULL), "k");
    assert_int_equal(cf_value_type(cf_value_get(map, "k")), CF_TYPE_MAP);
    assert_int_equal(cf_value_get_int(cf_value_val_at(cf_value_at(root, 34), 0), &i), CF_OK);
    assert_int_equal(i, 2);
    assert_int_equal(cf_value_len(cf_value_at(root, 35)), 0);
    cf_mp_doc_destroy(&doc);
    assert_null(doc);
    cf_mp_doc_destroy(&doc);    //  safe twice
}

static void test_decode_copies_so_the_input_may_be_freed(void **state)
{
    (void)state;
    uint8_t *input = malloc(sizeof s_every_type);
    assert_non_null(input);
    memcpy(input, s_every_type, sizeof s_every_type);
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(input, sizeof s_every_type, &doc), CF_OK);
    memset(input, 0, sizeof s_every_type);
    free(input);
    const cf_value_t *root = cf_mp_doc_root(doc);
    assert_string_equal(cf_value_str(cf_value_at(root, 16), NULL), "hi");
    size_t len;
    const uint8_t *bin = cf_value_bin(cf_value_at(root, 20), &len);
    assert_int_equal(bin[1], 0xff);
    cf_mp_doc_destroy(&doc);
}

//  Borrowed: bins and exts are the input's own bytes, strs still copies
//  with their NUL, and the values read the same as a copying decode's.
static void test_borrowed_decode_points_bins_into_the_input(void **state)
{
    (void)state;
    uint8_t *input = malloc(sizeof s_every_type);
    assert_non_null(input);
    memcpy(input, s_every_type, sizeof s_every_type);
    cf_mp_doc_t *doc = NULL, *copied = NULL;
    assert_int_equal(cf_mp_doc_decode_borrowed(input, sizeof s_every_type, &doc), CF_OK);
    assert_int_equal(cf_mp_doc_decode(input, sizeof s_every_type, &copied), CF_OK);
    char *borrowed_repr = cf_value_repr(cf_mp_doc_root(doc));
    char *copied_repr = cf_value_repr(cf_mp_doc_root(copied));
    assert_string_equal(borrowed_repr, copied_repr);
    free(borrowed_repr);
    free(copied_repr);

    const cf_value_t *root = cf_mp_doc_root(doc);
    size_t len;
    const uint8_t *bin = cf_value_bin(cf_value_at(root, 20), &len);
    assert_int_equal(len, 2);
    assert_true(bin >= input && bin + len <= input + sizeof s_every_type);
    const char *str = cf_value_str(cf_value_at(root, 16), &len);
    assert_true((const uint8_t *)str < input
                || (const uint8_t *)str >= input + sizeof s_every_type);
    assert_int_equal(str[len], '\0');
    //  A change to the input shows through the bin alone.
    for (size_t k = 0; k + 3 <= sizeof s_every_type; k++)
        if (memcmp(input + k, "\xa2hi", 3) == 0)
            input[k + 1] = 'X';
    input[bin - input + 1] = 0x7f;
    assert_int_equal(bin[1], 0x7f);
    assert_string_equal(cf_value_str(cf_value_at(root, 16), NULL), "hi");
    const uint8_t *copy = cf_value_bin(cf_value_at(cf_mp_doc_root(copied), 20), NULL);
    assert_int_equal(copy[1], 0xff);
    cf_mp_doc_destroy(&doc);
    cf_mp_doc_destroy(&copied);
    free(input);
}

static void test_strings_are_nul_terminated_and_keep_embedded_nuls(void **state)
{
    (void)state;
    const uint8_t data[] = { 0xa3, 'a', 0, 'b' };
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(data, sizeof data, &doc), CF_OK);
    size_t len;
    const char *s = cf_value_str(cf_mp_doc_root(doc), &len);
    assert_int_equal(len, 3);
    assert_memory_equal(s, "a\0b", 4);    //  and the terminating NUL
    cf_mp_doc_destroy(&doc);
}

static void test_write_value_copies_every_type_byte_for_byte(void **state)
{
    (void)state;
    //  A corpus the packer writes minimally (float64 only, no non-minimal
    //  widths), so the copy must equal the input.
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    const uint8_t bin[] = { 0, 1, 2 };
    assert_int_equal(s_format(&w, true, "n b b i i L U L d s y [] {} [i [s]] {s i, s {}}", 1, 0, -1,
                              127, INT64_MIN, UINT64_MAX, (int64_t)-40000, -2.25, "text", bin,
                              sizeof bin, 1, "x", "a", 1, "b"),
                     CF_OK);
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(w.buf.data, w.buf.size, &doc), CF_OK);
    cf_mp_writer_t copy;
    cf_mp_writer_init(&copy);
    assert_int_equal(cf_mp_write_value(&copy, cf_mp_doc_root(doc)), CF_OK);
    assert_int_equal(copy.buf.size, w.buf.size);
    assert_memory_equal(copy.buf.data, w.buf.data, w.buf.size);
    cf_mp_doc_destroy(&doc);

    //  Ext survives too, and NULL writes nil.
    const uint8_t ext[] = { 0x92, 0xd5, 0x02, 0xaa, 0xbb, 0xc7, 0x03, 0x09, 1, 2, 3 };
    assert_int_equal(cf_mp_doc_decode(ext, sizeof ext, &doc), CF_OK);
    cf_mp_writer_reset(&copy);
    assert_int_equal(cf_mp_write_value(&copy, cf_mp_doc_root(doc)), CF_OK);
    assert_int_equal(copy.buf.size, sizeof ext);
    assert_memory_equal(copy.buf.data, ext, sizeof ext);
    cf_mp_doc_destroy(&doc);
    cf_mp_writer_reset(&copy);
    assert_int_equal(cf_mp_write_value(&copy, NULL), CF_OK);
    assert_int_equal(copy.buf.size, 1);
    assert_int_equal((uint8_t)copy.buf.data[0], 0xc0);
    cf_mp_writer_fini(&copy);
    cf_mp_writer_fini(&w);
}

static void test_decode_rejects_the_4_gib_array_bomb_before_allocating(void **state)
{
    (void)state;
    //  msgpack-c reserves 4 GiB for these 5 bytes. Here the count is held
    //  against the 0 bytes that follow before anything is allocated: the
    //  answer is CF_EPROTO, never CF_ENOMEM.
    const uint8_t bomb[] = { 0xdd, 0x05, 0xf5, 0xe1, 0x00 };
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(bomb, sizeof bomb, &doc), CF_EPROTO);
    assert_null(doc);
    assert_false(cf_mp_valid(bomb, sizeof bomb));
    cf_mp_reader_t r;
    cf_mp_reader_init(&r, bomb, sizeof bomb);
    uint32_t count = 12345;
    assert_int_equal(cf_mp_read_array(&r, UINT32_MAX, &count), CF_EPROTO);
    assert_int_equal(count, 12345);
    assert_int_equal(r.pos, 0);
    //  The same for a map, a str and a bin claiming 4 GiB.
    const uint8_t map_bomb[] = { 0xdf, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02 };
    const uint8_t str_bomb[] = { 0xdb, 0xff, 0xff, 0xff, 0xff, 'a' };
    const uint8_t bin_bomb[] = { 0xc6, 0xff, 0xff, 0xff, 0xff, 0x00 };
    const uint8_t ext_bomb[] = { 0xc9, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00 };
    assert_int_equal(cf_mp_doc_decode(map_bomb, sizeof map_bomb, &doc), CF_EPROTO);
    assert_int_equal(cf_mp_doc_decode(str_bomb, sizeof str_bomb, &doc), CF_EPROTO);
    assert_int_equal(cf_mp_doc_decode(bin_bomb, sizeof bin_bomb, &doc), CF_EPROTO);
    assert_int_equal(cf_mp_doc_decode(ext_bomb, sizeof ext_bomb, &doc), CF_EPROTO);
}

static void test_decode_rejects_a_count_larger_than_the_bytes_left(void **state)
{
    (void)state;
    //  Three items announced, two present; a map of two pairs with 3 bytes.
    const uint8_t short_array[] = { 0x93, 0x01, 0x02 };
    const uint8_t short_map[] = { 0x82, 0x01, 0x02, 0x03 };
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(short_array, sizeof short_array, &doc), CF_EPROTO);
    assert_int_equal(cf_mp_doc_decode(short_map, sizeof short_map, &doc), CF_EPROTO);
    cf_mp_reader_t r;
    uint32_t count;
    cf_mp_reader_init(&r, short_map, sizeof short_map);
    assert_int_equal(cf_mp_read_map(&r, 100, &count), CF_EPROTO);
}

static void test_decode_rejects_every_truncation(void **state)
{
    (void)state;
    for (size_t cut = 0; cut < sizeof s_every_type; cut++) {
        cf_mp_doc_t *doc = NULL;
        uint8_t *copy = malloc(cut ? cut : 1);    //  ASan sees any overread
        assert_non_null(copy);
        memcpy(copy, s_every_type, cut);
        assert_int_equal(cf_mp_doc_decode(copy, cut, &doc), CF_EPROTO);
        assert_null(doc);
        assert_false(cf_mp_valid(copy, cut));
        cf_mp_reader_t r;
        cf_mp_reader_init(&r, copy, cut);
        assert_int_equal(cf_mp_skip(&r, NULL, NULL), CF_EPROTO);
        assert_int_equal(r.pos, 0);
        free(copy);
    }
    //  And every single value of the corpus cut short on its own.
    cf_mp_reader_t r;
    cf_mp_reader_init(&r, s_every_type, sizeof s_every_type);
    uint32_t count;
    assert_int_equal(cf_mp_read_array(&r, 100, &count), CF_OK);
    for (uint32_t k = 0; k < count; k++) {
        const uint8_t *start;
        size_t len;
        assert_int_equal(cf_mp_skip(&r, &start, &len), CF_OK);
        for (size_t cut = 0; cut < len; cut++)
            assert_false(cf_mp_valid(start, cut));
        assert_true(cf_mp_valid(start, len));
    }
    assert_int_equal(cf_mp_reader_left(&r), 0);
}

static void test_decode_rejects_trailing_bytes(void **state)
{
    (void)state;
    uint8_t data[sizeof s_every_type + 1];
    memcpy(data, s_every_type, sizeof s_every_type);
    data[sizeof s_every_type] = 0xc0;
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(data, sizeof data, &doc), CF_EPROTO);
    assert_null(doc);
    assert_false(cf_mp_valid(data, sizeof data));
    const uint8_t two_ints[] = { 0x01, 0x02 };
    assert_false(cf_mp_valid(two_ints, sizeof two_ints));
    assert_int_equal(cf_mp_doc_decode(two_ints, sizeof two_ints, &doc), CF_EPROTO);
}

static void test_decode_rejects_empty_input_and_the_unused_byte(void **state)
{
    (void)state;
    cf_mp_doc_t *doc = NULL;
    const uint8_t c1[] = { 0xc1 };
    const uint8_t nested_c1[] = { 0x91, 0xc1 };
    assert_int_equal(cf_mp_doc_decode(c1, 0, &doc), CF_EPROTO);
    assert_int_equal(cf_mp_doc_decode(NULL, 5, &doc), CF_EPROTO);
    assert_int_equal(cf_mp_doc_decode(c1, sizeof c1, &doc), CF_EPROTO);
    assert_int_equal(cf_mp_doc_decode(nested_c1, sizeof nested_c1, &doc), CF_EPROTO);
    assert_false(cf_mp_valid(NULL, 0));
}

//  n levels of [[[...]]] (or {0: {0: ...}} when map), innermost empty.
static uint8_t *s_nested(size_t n, bool map, size_t *size)
{
    size_t per = map ? 2 : 1;
    uint8_t *data = malloc(n * per + 1);
    assert_non_null(data);
    size_t pos = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        data[pos++] = map ? 0x81 : 0x91;
        if (map)
            data[pos++] = 0x00;
    }
    data[pos++] = map ? 0x80 : 0x90;
    *size = pos;
    return data;
}

static void test_decode_accepts_max_depth_and_rejects_one_more(void **state)
{
    (void)state;
    for (int map = 0; map <= 1; map++) {
        size_t size;
        uint8_t *data = s_nested(CF_MP_MAX_DEPTH, map, &size);
        cf_mp_doc_t *doc = NULL;
        assert_int_equal(cf_mp_doc_decode(data, size, &doc), CF_OK);
        //  The deepest value is reachable and repr walks it all.
        char *text = cf_value_repr(cf_mp_doc_root(doc));
        assert_non_null(text);
        free(text);
        cf_mp_doc_destroy(&doc);
        free(data);

        data = s_nested(CF_MP_MAX_DEPTH + 1, map, &size);
        assert_int_equal(cf_mp_doc_decode(data, size, &doc), CF_EPROTO);
        assert_false(cf_mp_valid(data, size));
        free(data);
    }
}

static void test_skip_survives_a_million_levels_of_nesting(void **state)
{
    (void)state;
    //  Recursion over this would blow the stack; the walk is iterative and
    //  stops at CF_MP_MAX_DEPTH.
    size_t size;
    uint8_t *data = s_nested(1000 * 1000, false, &size);
    cf_mp_reader_t r;
    cf_mp_reader_init(&r, data, size);
    assert_int_equal(cf_mp_skip(&r, NULL, NULL), CF_EPROTO);
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(data, size, &doc), CF_EPROTO);
    free(data);
}

static void test_decode_rejects_more_values_than_the_limit(void **state)
{
    (void)state;
    //  An array32 of CF_MP_MAX_VALUES nils is that many values plus the
    //  array itself: one too many. One fewer nil fits the limit exactly.
    size_t size = 5 + CF_MP_MAX_VALUES;
    uint8_t *data = malloc(size);
    assert_non_null(data);
    memset(data, 0xc0, size);
    uint32_t n = CF_MP_MAX_VALUES;
    data[0] = 0xdd;
    data[1] = (uint8_t)(n >> 24);
    data[2] = (uint8_t)(n >> 16);
    data[3] = (uint8_t)(n >> 8);
    data[4] = (uint8_t)n;
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(data, size, &doc), CF_EPROTO);
    assert_true(cf_mp_valid(data, size));    //  well-formed, just too many
    n--;
    data[4] = (uint8_t)n;
    data[3] = (uint8_t)(n >> 8);
    data[2] = (uint8_t)(n >> 16);
    data[1] = (uint8_t)(n >> 24);
    assert_int_equal(cf_mp_doc_decode(data, size - 1, &doc), CF_OK);
    assert_int_equal(cf_value_len(cf_mp_doc_root(doc)), n);
    cf_mp_doc_destroy(&doc);
    free(data);
}

static void test_cursor_reads_fields_and_stays_put_on_a_wrong_type(void **state)
{
    (void)state;
    const uint8_t data[] = { 0x96, 0x2a, 0xff, 0xc3, 0xa3, 'a', 'b', 'c', 0xc4, 0x01, 0x09, 0xc0 };
    cf_mp_reader_t r;
    cf_mp_reader_init(&r, data, sizeof data);
    uint32_t count;
    assert_int_equal(cf_mp_read_array(&r, 5, &count), CF_EPROTO);    //  over max_count
    assert_int_equal(r.pos, 0);
    assert_int_equal(cf_mp_read_array(&r, 6, &count), CF_OK);
    assert_int_equal(count, 6);
    uint64_t u;
    int64_t i;
    bool b;
    const char *s;
    const void *p;
    size_t len;
    assert_int_equal(cf_mp_read_str(&r, 10, &s, &len), CF_EPROTO);
    assert_int_equal(cf_mp_read_uint(&r, &u), CF_OK);
    assert_int_equal(u, 42);
    assert_int_equal(cf_mp_read_uint(&r, &u), CF_EPROTO);    //  -1
    size_t before = r.pos;
    assert_int_equal(cf_mp_read_bool(&r, &b), CF_EPROTO);
    assert_int_equal(r.pos, before);
    assert_int_equal(cf_mp_read_int(&r, &i), CF_OK);
    assert_int_equal(i, -1);
    assert_int_equal(cf_mp_read_bool(&r, &b), CF_OK);
    assert_true(b);
    assert_int_equal(cf_mp_read_str(&r, 2, &s, &len), CF_EPROTO);    //  over max_len
    assert_int_equal(cf_mp_read_str(&r, 3, &s, &len), CF_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(s, "abc", 3);
    assert_ptr_equal(s, data + 5);    //  points into the input
    assert_int_equal(cf_mp_read_bin(&r, 0, &p, &len), CF_EPROTO);
    assert_int_equal(cf_mp_read_bin(&r, 1, &p, &len), CF_OK);
    assert_int_equal(*(const uint8_t *)p, 9);
    assert_true(cf_mp_peek_nil(&r));
    assert_int_equal(cf_mp_read_nil(&r), CF_OK);
    assert_false(cf_mp_peek_nil(&r));
    assert_int_equal(cf_mp_read_nil(&r), CF_EPROTO);
    assert_int_equal(cf_mp_reader_left(&r), 0);
}

static void test_read_int_rejects_a_uint64_beyond_int64(void **state)
{
    (void)state;
    const uint8_t big[] = { 0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0 };
    cf_mp_reader_t r;
    cf_mp_reader_init(&r, big, sizeof big);
    int64_t i;
    assert_int_equal(cf_mp_read_int(&r, &i), CF_EPROTO);
    uint64_t u;
    assert_int_equal(cf_mp_read_uint(&r, &u), CF_OK);
    assert_true(u == (uint64_t)1 << 63);
}

static void test_skip_reports_the_span_of_a_nested_value(void **state)
{
    (void)state;
    const uint8_t data[] = { 0x92, 0x82, 0xa1, 'a', 0x91, 0x01, 0x02, 0xc0, 0x07 };
    cf_mp_reader_t r;
    cf_mp_reader_init(&r, data, sizeof data);
    uint32_t count;
    assert_int_equal(cf_mp_read_array(&r, 2, &count), CF_OK);
    const uint8_t *start;
    size_t len;
    assert_int_equal(cf_mp_skip(&r, &start, &len), CF_OK);
    assert_ptr_equal(start, data + 1);
    assert_int_equal(len, 7);
    assert_int_equal(cf_mp_skip(&r, NULL, NULL), CF_OK);
    assert_int_equal(cf_mp_reader_left(&r), 0);
}

static void test_valid_array_wants_exactly_one_array(void **state)
{
    (void)state;
    const uint8_t array[] = { 0x92, 0x01, 0x02 };
    const uint8_t array16[] = { 0xdc, 0x00, 0x01, 0x01 };
    const uint8_t map[] = { 0x81, 0x01, 0x02 };
    const uint8_t scalar[] = { 0x01 };
    assert_true(cf_mp_valid_array(array, sizeof array));
    assert_true(cf_mp_valid_array(array16, sizeof array16));
    assert_false(cf_mp_valid_array(map, sizeof map));
    assert_false(cf_mp_valid_array(scalar, sizeof scalar));
    assert_false(cf_mp_valid_array(array, 2));
    assert_true(cf_mp_valid(map, sizeof map));
}

// ---------------------------------------------------------------------------
//  Accessors

static void test_accessors_answer_null_and_etype_for_the_wrong_type(void **state)
{
    (void)state;
    const uint8_t data[] = { 0x92, 0xa1, 'x', 0x81, 0xa1, 'k', 0x01 };
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(data, sizeof data, &doc), CF_OK);
    const cf_value_t *root = cf_mp_doc_root(doc);
    const cf_value_t *str = cf_value_at(root, 0);
    const cf_value_t *map = cf_value_at(root, 1);
    int64_t i;
    double d;
    bool b;
    size_t len = 99;
    assert_int_equal(cf_value_get_int(str, &i), CF_ETYPE);
    assert_int_equal(cf_value_get_double(str, &d), CF_ETYPE);
    assert_int_equal(cf_value_get_bool(str, &b), CF_ETYPE);
    assert_null(cf_value_bin(str, &len));
    assert_int_equal(len, 99);
    assert_null(cf_value_str(map, NULL));
    assert_null(cf_value_at(root, 2));
    assert_null(cf_value_at(map, 0));
    assert_null(cf_value_key_at(root, 0));
    assert_null(cf_value_key_at(map, 1));
    assert_null(cf_value_val_at(map, 1));
    assert_null(cf_value_get(map, "missing"));
    assert_null(cf_value_get(root, "k"));
    assert_int_equal(cf_value_len(str), 1);
    assert_int_equal(cf_value_len(map), 1);
    assert_int_equal(cf_value_get_double(cf_value_get(map, "k"), &d), CF_OK);    //  ints convert
    assert_true(d == 1.0);
    //  NULL anywhere is harmless.
    assert_int_equal(cf_value_type(NULL), CF_TYPE_NIL);
    assert_int_equal(cf_value_get_int(NULL, &i), CF_ETYPE);
    assert_int_equal(cf_value_len(NULL), 0);
    assert_null(cf_value_at(NULL, 0));
    assert_null(cf_value_get(NULL, "k"));
    assert_null(cf_mp_doc_root(NULL));
    cf_mp_doc_destroy(&doc);
}

static void test_type_names_are_the_documented_ones(void **state)
{
    (void)state;
    assert_string_equal(cf_type_name(CF_TYPE_NIL), "nil");
    assert_string_equal(cf_type_name(CF_TYPE_BOOL), "bool");
    assert_string_equal(cf_type_name(CF_TYPE_INT), "int");
    assert_string_equal(cf_type_name(CF_TYPE_FLOAT), "float");
    assert_string_equal(cf_type_name(CF_TYPE_STR), "str");
    assert_string_equal(cf_type_name(CF_TYPE_BIN), "bin");
    assert_string_equal(cf_type_name(CF_TYPE_ARRAY), "array");
    assert_string_equal(cf_type_name(CF_TYPE_MAP), "map");
    assert_string_equal(cf_type_name(CF_TYPE_EXT), "ext");
    assert_string_equal(cf_type_name((cf_type_t)99), "unknown");
}

// ---------------------------------------------------------------------------
//  repr

static void test_repr_reads_like_python(void **state)
{
    (void)state;
    s_assert_format_repr("None", "n");
    s_assert_format_repr("True", "b", 1);
    s_assert_format_repr("False", "b", 0);
    s_assert_format_repr("-42", "i", -42);
    s_assert_format_repr("18446744073709551615", "U", UINT64_MAX);
    s_assert_format_repr("-9223372036854775808", "L", INT64_MIN);
    s_assert_format_repr("'text'", "s", "text");
    s_assert_format_repr("[0, 2, 4]", "[iii]", 0, 2, 4);
    s_assert_format_repr("{'a': 1, 'b': [None, True]}", "{s i s [n b]}", "a", 1, "b", 1);
    s_assert_format_repr("{}", "{}");
    s_assert_format_repr("[]", "[]");
    s_assert_format_repr("[[1], {2: 'x'}]", "[[i] {i s}]", 1, 2, "x");
    s_assert_format_repr("b'\\x00ab\\xff'", "y", "\0ab\xff", (size_t)4);
    s_assert_format_repr("b''", "y", NULL, (size_t)0);
    s_assert_format_repr("''", "s", "");
}

static void test_repr_quotes_and_escapes_strings_like_python(void **state)
{
    (void)state;
    s_assert_format_repr("\"it's\"", "s", "it's");
    s_assert_format_repr("'say \"hi\"'", "s", "say \"hi\"");
    s_assert_format_repr("'both \\' and \"'", "s", "both ' and \"");
    s_assert_format_repr("'a\\\\b\\n\\t\\r\\x01'", "s", "a\\b\n\t\r\x01");
    s_assert_format_repr("'caf\xc3\xa9'", "s", "caf\xc3\xa9");    //  UTF-8 as is
}

static void test_repr_prints_floats_like_python(void **state)
{
    (void)state;
    s_assert_format_repr("0.5", "d", 0.5);
    s_assert_format_repr("1.0", "d", 1.0);
    s_assert_format_repr("-0.0", "d", -0.0);
    s_assert_format_repr("0.1", "d", 0.1);
    s_assert_format_repr("0.30000000000000004", "d", 0.1 + 0.2);
    s_assert_format_repr("123.456", "d", 123.456);
    s_assert_format_repr("1e+16", "d", 1e16);
    s_assert_format_repr("1000000000000000.0", "d", 1e15);
    s_assert_format_repr("0.0001", "d", 1e-4);
    s_assert_format_repr("1e-05", "d", 1e-5);
    s_assert_format_repr("1.5e-07", "d", 1.5e-7);
    s_assert_format_repr("1.7976931348623157e+308", "d", 1.7976931348623157e308);
    s_assert_format_repr("5e-324", "d", 5e-324);
    s_assert_format_repr("inf", "d", 1.0 / 0.0);
    s_assert_format_repr("-inf", "d", -1.0 / 0.0);
    s_assert_format_repr("nan", "d", 0.0 / 0.0);
    s_assert_format_repr("[2.5, 3]", "[d i]", 2.5, 3);
}

static void test_repr_shows_ext_like_msgpack_python(void **state)
{
    (void)state;
    const uint8_t ext[] = { 0xd5, 0x05, 0x01, 0x41 };
    s_assert_repr(ext, sizeof ext, "ExtType(code=5, data=b'\\x01A')");
    const uint8_t f32[] = { 0xca, 0x3e, 0x80, 0x00, 0x00 };
    s_assert_repr(f32, sizeof f32, "0.25");
}

static void test_repr_of_null_is_none(void **state)
{
    (void)state;
    char *text = cf_value_repr(NULL);
    assert_string_equal(text, "None");
    free(text);
}

// ---------------------------------------------------------------------------
//  Writing: the format language

static void test_format_writes_every_letter(void **state)
{
    (void)state;
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    const uint8_t raw[] = { 0x92, 0x01, 0xa1, 'r' };
    const uint8_t v_src[] = { 0x81, 0xa1, 'v', 0xc3 };
    cf_mp_doc_t *vdoc = NULL;
    assert_int_equal(cf_mp_doc_decode(v_src, sizeof v_src, &vdoc), CF_OK);
    assert_int_equal(s_format(&w, true, "n b i l L u U d s s y v v m", 1, -7, -70000L,
                              (int64_t)1 << 40, 4000000000u, UINT64_MAX, 0.25, "str", NULL, "by",
                              (size_t)2, cf_mp_doc_root(vdoc), NULL, raw, sizeof raw),
                     CF_OK);
    s_assert_repr(w.buf.data, w.buf.size,
                  "[None, True, -7, -70000, 1099511627776, 4000000000, 18446744073709551615, "
                  "0.25, 'str', None, b'by', {'v': True}, None, [1, 'r']]");
    cf_mp_doc_destroy(&vdoc);
    cf_mp_writer_fini(&w);
}

static void test_format_ignores_spaces_and_commas(void **state)
{
    (void)state;
    cf_mp_writer_t a, b;
    cf_mp_writer_init(&a);
    cf_mp_writer_init(&b);
    assert_int_equal(s_format(&a, true, " i, [ s , i ] ,{s i} ", 1, "x", 2, "k", 3), CF_OK);
    assert_int_equal(s_format(&b, true, "i[si]{si}", 1, "x", 2, "k", 3), CF_OK);
    assert_int_equal(a.buf.size, b.buf.size);
    assert_memory_equal(a.buf.data, b.buf.data, a.buf.size);
    s_assert_repr(a.buf.data, a.buf.size, "[1, ['x', 2], {'k': 3}]");
    cf_mp_writer_fini(&a);
    cf_mp_writer_fini(&b);
}

static void test_format_as_array_wraps_zero_or_more_values(void **state)
{
    (void)state;
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    assert_int_equal(s_format(&w, true, ""), CF_OK);
    assert_int_equal(w.buf.size, 1);
    assert_int_equal((uint8_t)w.buf.data[0], 0x90);
    assert_true(cf_mp_valid_array(w.buf.data, w.buf.size));
    cf_mp_writer_reset(&w);
    assert_int_equal(s_format(&w, true, "ii", 2, 3), CF_OK);
    s_assert_repr(w.buf.data, w.buf.size, "[2, 3]");
    cf_mp_writer_reset(&w);
    assert_int_equal(s_format(&w, false, "[ii]", 2, 3), CF_OK);
    s_assert_repr(w.buf.data, w.buf.size, "[2, 3]");
    cf_mp_writer_fini(&w);
}

static void test_format_counts_large_and_nested_containers(void **state)
{
    (void)state;
    //  20 items at the top, a 16-item array (array16 header) inside, 40
    //  brackets in all (more than the pre-scan's stack room).
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    char fmt[512] = "[iiiiiiiiiiiiiiii]";
    for (int k = 0; k < 39; k++)
        strcat(fmt, "[]");
    strcat(fmt, "n");
    assert_int_equal(s_format(&w, true, fmt, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16),
                     CF_OK);
    cf_mp_doc_t *doc = NULL;
    assert_int_equal(cf_mp_doc_decode(w.buf.data, w.buf.size, &doc), CF_OK);
    const cf_value_t *root = cf_mp_doc_root(doc);
    assert_int_equal(cf_value_len(root), 41);
    assert_int_equal(cf_value_len(cf_value_at(root, 0)), 16);
    int64_t last;
    assert_int_equal(cf_value_get_int(cf_value_at(cf_value_at(root, 0), 15), &last), CF_OK);
    assert_int_equal(last, 16);
    assert_int_equal(cf_value_type(cf_value_at(root, 40)), CF_TYPE_NIL);
    cf_mp_doc_destroy(&doc);
    cf_mp_writer_fini(&w);
}

//  A bad format: CF_EINVAL, a message naming the position, the writer as
//  it was.
static void s_assert_bad_format(bool as_array, const char *fmt, const char *says, ...)
{
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    assert_int_equal(s_format(&w, false, "i", 7), CF_OK);
    size_t before = w.buf.size;
    va_list ap;
    va_start(ap, says);
    assert_int_equal(cf_mp_write_format(&w, as_array, fmt, &ap), CF_EINVAL);
    va_end(ap);
    assert_int_equal(w.buf.size, before);
    if (!strstr(cf_last_error(), says))
        fail_msg("error for \"%s\" was \"%s\", expected it to say \"%s\"", fmt, cf_last_error(),
                 says);
    cf_mp_writer_fini(&w);
}

static void test_format_rejects_bad_formats_naming_the_position(void **state)
{
    (void)state;
    s_assert_bad_format(true, "i q", "unknown letter 'q' at position 2");
    s_assert_bad_format(true, "[i", "']' missing");
    s_assert_bad_format(true, "{si", "'}' missing");
    s_assert_bad_format(true, "i]", "at position 1 closes nothing");
    s_assert_bad_format(true, "[i}", "at position 2 does not match");
    s_assert_bad_format(true, "{s i s}", "has 3 items");
    s_assert_bad_format(false, "ii", "describes 2 values, not one");
    s_assert_bad_format(false, "", "describes 0 values, not one");
    s_assert_bad_format(true, "i y", "'y' at position 2 got NULL", 1, NULL, (size_t)3);
    const uint8_t bad[] = { 0x92, 0x01 };
    s_assert_bad_format(true, "i m", "'m' at position 2 is not one valid", 1, bad, sizeof bad);
    const uint8_t two[] = { 0x01, 0x02 };
    s_assert_bad_format(true, "m", "'m' at position 0", two, sizeof two);
    s_assert_bad_format(true, "m", "'m' at position 0", NULL, (size_t)0);
    char deep[CF_MP_MAX_DEPTH * 2 + 3];
    memset(deep, '[', CF_MP_MAX_DEPTH + 1);
    memset(deep + CF_MP_MAX_DEPTH + 1, ']', CF_MP_MAX_DEPTH + 1);
    deep[2 * CF_MP_MAX_DEPTH + 2] = '\0';
    s_assert_bad_format(false, deep, "nesting deeper than");
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    assert_int_equal(s_format(&w, true, NULL), CF_EINVAL);
    assert_int_equal(w.buf.size, 0);
    cf_mp_writer_fini(&w);
}

static void test_format_accepts_max_depth(void **state)
{
    (void)state;
    char deep[CF_MP_MAX_DEPTH * 2 + 1];
    memset(deep, '[', CF_MP_MAX_DEPTH);
    memset(deep + CF_MP_MAX_DEPTH, ']', CF_MP_MAX_DEPTH);
    deep[2 * CF_MP_MAX_DEPTH] = '\0';
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    assert_int_equal(s_format(&w, false, deep), CF_OK);
    assert_true(cf_mp_valid(w.buf.data, w.buf.size));
    cf_mp_writer_fini(&w);
}

static void test_writer_take_hands_over_the_bytes_and_resets(void **state)
{
    (void)state;
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    size_t len = 99;
    uint8_t *empty = cf_mp_writer_take(&w, &len);
    assert_non_null(empty);
    assert_int_equal(len, 0);
    free(empty);
    assert_int_equal(s_format(&w, false, "s", "abc"), CF_OK);
    uint8_t *data = cf_mp_writer_take(&w, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(data,
                        "\xa3"
                        "abc",
                        4);
    free(data);
    assert_int_equal(w.buf.size, 0);
    assert_int_equal(s_format(&w, false, "i", 1), CF_OK);    //  usable again
    assert_int_equal(w.buf.size, 1);
    cf_mp_writer_fini(&w);
    cf_mp_writer_fini(&w);    //  fini twice is harmless
}

static void test_writer_take_fit_leaves_no_slack(void **state)
{
    (void)state;
    enum { N = 100 * 1024 };
    uint8_t *payload = malloc(N);
    assert_non_null(payload);
    for (size_t i = 0; i < N; i++)
        payload[i] = (uint8_t)(i * 7);
    cf_mp_writer_t w;
    cf_mp_writer_init(&w);
    assert_int_equal(s_format(&w, false, "y", payload, (size_t)N), CF_OK);
    assert_true(w.buf.alloc >= N + 4096);    //  grown by doubling: slack to shed
    size_t len = 0;
    uint8_t *data = cf_mp_writer_take_fit(&w, &len);
    assert_int_equal(len, N + 5);
    assert_true(malloc_usable_size(data) < len + 4096);
    assert_memory_equal(data + 5, payload, N);
    assert_int_equal(w.buf.size, 0);
    assert_int_equal(w.buf.alloc, 0);
    free(data);
    data = cf_mp_writer_take_fit(&w, &len);    //  nothing written: still a buffer
    assert_non_null(data);
    assert_int_equal(len, 0);
    free(data);
    cf_mp_writer_fini(&w);
    free(payload);
}

//  Random bytes never crash the reader, and whatever it accepts round
//  trips through a document and the writer to an equal value.
static void test_random_bytes_are_rejected_or_round_trip(void **state)
{
    (void)state;
    uint32_t seed = 12345;
    uint8_t data[64];
    int accepted = 0;
    for (int n = 0; n < 20000; n++) {
        size_t size = 1 + (seed >> 8) % sizeof data;
        for (size_t k = 0; k < size; k++) {
            seed = seed * 1103515245u + 12345u;
            data[k] = (uint8_t)(seed >> 16);
        }
        cf_mp_doc_t *doc = NULL;
        cf_err_t rc = cf_mp_doc_decode(data, size, &doc);
        assert_true(rc == CF_OK || rc == CF_EPROTO);
        assert_int_equal(rc == CF_OK, cf_mp_valid(data, size));
        if (rc != CF_OK)
            continue;
        accepted++;
        cf_mp_writer_t w;
        cf_mp_writer_init(&w);
        assert_int_equal(cf_mp_write_value(&w, cf_mp_doc_root(doc)), CF_OK);
        char *a = cf_value_repr(cf_mp_doc_root(doc));
        char *b = s_repr_of(w.buf.data, w.buf.size);
        assert_string_equal(a, b);
        free(a);
        free(b);
        cf_mp_writer_fini(&w);
        cf_mp_doc_destroy(&doc);
    }
    assert_true(accepted > 0);    //  the generator does reach valid input
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_reads_every_type_and_width),
        cmocka_unit_test(test_decode_copies_so_the_input_may_be_freed),
        cmocka_unit_test(test_borrowed_decode_points_bins_into_the_input),
        cmocka_unit_test(test_strings_are_nul_terminated_and_keep_embedded_nuls),
        cmocka_unit_test(test_write_value_copies_every_type_byte_for_byte),
        cmocka_unit_test(test_decode_rejects_the_4_gib_array_bomb_before_allocating),
        cmocka_unit_test(test_decode_rejects_a_count_larger_than_the_bytes_left),
        cmocka_unit_test(test_decode_rejects_every_truncation),
        cmocka_unit_test(test_decode_rejects_trailing_bytes),
        cmocka_unit_test(test_decode_rejects_empty_input_and_the_unused_byte),
        cmocka_unit_test(test_decode_accepts_max_depth_and_rejects_one_more),
        cmocka_unit_test(test_skip_survives_a_million_levels_of_nesting),
        cmocka_unit_test(test_decode_rejects_more_values_than_the_limit),
        cmocka_unit_test(test_cursor_reads_fields_and_stays_put_on_a_wrong_type),
        cmocka_unit_test(test_read_int_rejects_a_uint64_beyond_int64),
        cmocka_unit_test(test_skip_reports_the_span_of_a_nested_value),
        cmocka_unit_test(test_valid_array_wants_exactly_one_array),
        cmocka_unit_test(test_accessors_answer_null_and_etype_for_the_wrong_type),
        cmocka_unit_test(test_type_names_are_the_documented_ones),
        cmocka_unit_test(test_repr_reads_like_python),
        cmocka_unit_test(test_repr_quotes_and_escapes_strings_like_python),
        cmocka_unit_test(test_repr_prints_floats_like_python),
        cmocka_unit_test(test_repr_shows_ext_like_msgpack_python),
        cmocka_unit_test(test_repr_of_null_is_none),
        cmocka_unit_test(test_format_writes_every_letter),
        cmocka_unit_test(test_format_ignores_spaces_and_commas),
        cmocka_unit_test(test_format_as_array_wraps_zero_or_more_values),
        cmocka_unit_test(test_format_counts_large_and_nested_containers),
        cmocka_unit_test(test_format_rejects_bad_formats_naming_the_position),
        cmocka_unit_test(test_format_accepts_max_depth),
        cmocka_unit_test(test_writer_take_hands_over_the_bytes_and_resets),
        cmocka_unit_test(test_writer_take_fit_leaves_no_slack),
        cmocka_unit_test(test_random_bytes_are_rejected_or_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
