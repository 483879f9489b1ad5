//  cf_utf8: the validator against a plain reference decoder over every
//  sequence of up to three bytes, the edges Unicode names (overlong forms,
//  surrogates, past U+10FFFF, truncation), the ASCII fast path with a bad
//  byte at every offset, and the sanitizer's replacement and cutting rules.

#include "cf_utf8.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

//  The reference: decodes code points by the textbook formulas and checks
//  the ranges afterwards (slow and obvious, unlike the code under test).
static bool s_reference_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n;
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        if ((p[i] & 0xe0) == 0xc0) {
            n = 2;
            cp = p[i] & 0x1f;
        }
        else if ((p[i] & 0xf0) == 0xe0) {
            n = 3;
            cp = p[i] & 0x0f;
        }
        else if ((p[i] & 0xf8) == 0xf0) {
            n = 4;
            cp = p[i] & 0x07;
        }
        else
            return false;
        if (i + n > len)
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
        if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n;
    }
    return true;
}

static void test_every_short_sequence_matches_the_reference(void **state)
{
    (void)state;
    uint8_t b[3];
    for (unsigned x = 0; x < 256; x++) {
        b[0] = (uint8_t)x;
        assert_int_equal(cf_utf8_valid(b, 1), s_reference_valid(b, 1));
        for (unsigned y = 0; y < 256; y++) {
            b[1] = (uint8_t)y;
            assert_int_equal(cf_utf8_valid(b, 2), s_reference_valid(b, 2));
            for (unsigned z = 0; z < 256; z++) {
                b[2] = (uint8_t)z;
                if (cf_utf8_valid(b, 3) != s_reference_valid(b, 3))
                    fail_msg("%02x %02x %02x", x, y, z);
            }
        }
    }
}

static void test_four_byte_edges_and_named_cases(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        bool valid;
    } cases[] = {
        { "", true },
        { "slow_double", true },
        { "caf\xc3\xa9", true },          //  é
        { "\xe2\x82\xac", true },         //  €
        { "\xef\xbf\xbd", true },         //  U+FFFD
        { "\xf0\x90\x80\x80", true },     //  U+10000
        { "\xf4\x8f\xbf\xbf", true },     //  U+10FFFF
        { "\xf4\x90\x80\x80", false },    //  U+110000
        { "\xf0\x8f\xbf\xbf", false },    //  overlong U+FFFF
        { "\xc0\x80", false },            //  overlong NUL
        { "\xc1\xbf", false },            //  overlong
        { "\xe0\x9f\xbf", false },        //  overlong U+07FF
        { "\xed\xa0\x80", false },        //  U+D800, a surrogate
        { "\xed\xbf\xbf", false },        //  U+DFFF
        { "\xed\x9f\xbf", true },         //  U+D7FF
        { "\xf5\x80\x80\x80", false },    //  F5 starts nothing
        { "\xff", false },
        { "\x80", false },                 //  a lone continuation
        { "\xe2\x82", false },             //  truncated
        { "\xf0\x9f\x98", false },         //  truncated
        { "f\xf0\x9f\x98\x80x", true },    //  an emoji inside
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *s = cases[i].bytes;
        if (cf_utf8_valid(s, strlen(s)) != cases[i].valid)
            fail_msg("case %zu", i);
        assert_int_equal(s_reference_valid((const uint8_t *)s, strlen(s)), cases[i].valid);
    }
    //  NUL is a character: refusing it is the caller's business.
    assert_true(cf_utf8_valid("a\0b", 3));
}

static void test_a_bad_byte_is_found_at_every_offset_of_a_long_ascii_text(void **state)
{
    (void)state;
    char text[40];
    for (size_t len = 1; len <= sizeof text; len++) {
        memset(text, 'a', sizeof text);
        assert_true(cf_utf8_valid(text, len));
        for (size_t at = 0; at < len; at++) {
            memset(text, 'a', sizeof text);
            text[at] = (char)0xff;
            if (cf_utf8_valid(text, len))
                fail_msg("len %zu, bad byte at %zu not seen", len, at);
            //  A bad byte just past len is not looked at.
            assert_true(cf_utf8_valid(text, at));
        }
    }
}

//  A name is valid UTF-8 without NUL: against the two checks made apart,
//  every short sequence and a NUL at every offset of every length.
static void test_a_name_is_utf8_without_nul(void **state)
{
    (void)state;
    uint8_t b[3];
    for (unsigned x = 0; x < 256; x++) {
        for (unsigned y = 0; y < 256; y++) {
            for (unsigned z = 0; z < 256; z += 17) {
                b[0] = (uint8_t)x;
                b[1] = (uint8_t)y;
                b[2] = (uint8_t)z;
                for (size_t len = 1; len <= 3; len++) {
                    bool want = s_reference_valid(b, len) && !memchr(b, 0, len);
                    if (cf_utf8_name_ok(b, len) != want)
                        fail_msg("%02x %02x %02x, len %zu", x, y, z, len);
                }
            }
        }
    }
    char text[40];
    for (size_t len = 1; len <= sizeof text; len++) {
        memset(text, 'n', sizeof text);
        assert_true(cf_utf8_name_ok(text, len));
        for (size_t at = 0; at < len; at++) {
            memset(text, 'n', sizeof text);
            text[at] = '\0';
            if (cf_utf8_name_ok(text, len))
                fail_msg("len %zu, NUL at %zu not seen", len, at);
            assert_true(cf_utf8_valid(text, len));    //  a character, only not in a name
            text[at] = (char)0xc3;                    //  a cut sequence, also in the slow path
            if (cf_utf8_name_ok(text, len) || cf_utf8_valid(text, len))
                fail_msg("len %zu, cut sequence at %zu not seen", len, at);
        }
    }
    assert_true(cf_utf8_name_ok("", 0));
    assert_true(cf_utf8_name_ok("caf\xc3\xa9 au lait", 13));
    assert_false(cf_utf8_name_ok("caf\xc3\xa9\0", 6));
}

static void test_sanitize_replaces_each_maximal_subpart(void **state)
{
    (void)state;
    //  The example of Unicode's "U+FFFD Substitution of Maximal Subparts"
    //  (Table 3-8): a, F1 80 80, E1 80, C2, b, 80, c, 80, BF, d.
    static const char in[] = "\x61\xf1\x80\x80\xe1\x80\xc2\x62\x80\x63\x80\xbf\x64";
    static const char want[] = "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                               "b\xef\xbf\xbd"
                               "c\xef\xbf\xbd\xef\xbf\xbd"
                               "d";
    char out[64];
    size_t n = cf_utf8_sanitize(out, sizeof out, in, sizeof in - 1);
    assert_int_equal(n, sizeof want - 1);
    assert_string_equal(out, want);
    assert_true(cf_utf8_valid(out, n));

    //  Well-formed text is copied as it is.
    n = cf_utf8_sanitize(out, sizeof out, "caf\xc3\xa9", 5);
    assert_int_equal(n, 5);
    assert_string_equal(out, "caf\xc3\xa9");
    //  Surrogates and overlongs are replaced like any ill-formed byte.
    n = cf_utf8_sanitize(out, sizeof out, "\xed\xa0\x80!", 4);
    assert_string_equal(out, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd!");
    n = cf_utf8_sanitize(out, sizeof out, "\xc0\x80", 2);
    assert_string_equal(out, "\xef\xbf\xbd\xef\xbf\xbd");
}

static void test_sanitize_cuts_at_a_character_boundary(void **state)
{
    (void)state;
    char out[8];
    //  "ab" + é + € = 2 + 2 + 3 = 7 bytes: fits exactly in 8 with the NUL.
    assert_int_equal(cf_utf8_sanitize(out, 8, "ab\xc3\xa9\xe2\x82\xac", 7), 7);
    //  One byte less: the € does not fit whole and is left out.
    assert_int_equal(cf_utf8_sanitize(out, 7, "ab\xc3\xa9\xe2\x82\xac", 7), 4);
    assert_string_equal(out, "ab\xc3\xa9");
    //  Nor does a replacement character.
    assert_int_equal(cf_utf8_sanitize(out, 4, "ab\xff", 3), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(cf_utf8_sanitize(out, 1, "abc", 3), 0);
    assert_string_equal(out, "");
    assert_int_equal(cf_utf8_sanitize(out, sizeof out, NULL, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_short_sequence_matches_the_reference),
        cmocka_unit_test(test_four_byte_edges_and_named_cases),
        cmocka_unit_test(test_a_bad_byte_is_found_at_every_offset_of_a_long_ascii_text),
        cmocka_unit_test(test_a_name_is_utf8_without_nul),
        cmocka_unit_test(test_sanitize_replaces_each_maximal_subpart),
        cmocka_unit_test(test_sanitize_cuts_at_a_character_boundary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
