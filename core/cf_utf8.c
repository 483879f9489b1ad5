//  cf_utf8: the validator and the sanitizing copy. The validator sits on
//  the decode and encode path of every task (its function name), so ASCII,
//  which names almost always are, is checked a word at a time; anything else
//  goes through one small table-free decoder of a character, shared with
//  the sanitizer so both agree on what is well-formed.

#include "cf_utf8.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

#define S_HIGH_BITS 0x8080808080808080ull
#define S_ONES      0x0101010101010101ull

//  The character at p (left > 0 bytes available). Returns true and its
//  length in *len when well-formed; else false and in *len the length of
//  the maximal ill-formed subpart (at least 1): the bytes one U+FFFD stands
//  for.
static bool s_char(const uint8_t *p, size_t left, size_t *len)
{
    uint8_t b = p[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf;    //  the second byte's range (Unicode Table 3-7)
    if (b < 0x80) {
        *len = 1;
        return true;
    }
    if (b >= 0xc2 && b <= 0xdf)
        need = 2;
    else if (b >= 0xe0 && b <= 0xef) {
        need = 3;
        if (b == 0xe0)
            lo = 0xa0;    //  no overlong forms
        else if (b == 0xed)
            hi = 0x9f;    //  no surrogates
    }
    else if (b >= 0xf0 && b <= 0xf4) {
        need = 4;
        if (b == 0xf0)
            lo = 0x90;    //  no overlong forms
        else if (b == 0xf4)
            hi = 0x8f;    //  nothing above U+10FFFF
    }
    else {
        *len = 1;    //  80..C1, F5..FF start nothing
        return false;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= left || p[i] < lo || p[i] > hi) {
            *len = i;
            return false;
        }
        lo = 0x80;
        hi = 0xbf;
    }
    *len = need;
    return true;
}

//  True when text (len > 0) is ASCII only, without NUL when no_nul: whole
//  words, then the last word again overlapping (the checks are per byte, so
//  bytes seen twice do no harm), or one padded word when len < 8. A NUL
//  byte minus one borrows and sets its high bit; no byte borrows unless one
//  is NUL, so the test is exact on any byte order.
static bool s_all_ascii(const uint8_t *p, size_t len, bool no_nul)
{
    uint64_t w, nul = no_nul ? S_ONES : 0;
    if (len < 8) {
        w = S_ONES;    //  padding that passes both tests
        memcpy(&w, p, len);
        return (((w - nul) | w) & S_HIGH_BITS) == 0;
    }
    for (size_t i = 0; i + 8 <= len; i += 8) {
        memcpy(&w, p + i, 8);
        if ((((w - nul) | w) & S_HIGH_BITS) != 0)
            return false;
    }
    memcpy(&w, p + len - 8, 8);
    return (((w - nul) | w) & S_HIGH_BITS) == 0;
}

bool cf_utf8_name_ok(const void *text, size_t len)
{
    assert(text || len == 0);
    if (len == 0 || s_all_ascii(text, len, true))
        return true;
    return !memchr(text, '\0', len) && cf_utf8_valid(text, len);
}

bool cf_utf8_valid(const void *text, size_t len)
{
    assert(text || len == 0);
    const uint8_t *p = text;
    if (len == 0 || s_all_ascii(p, len, false))
        return true;
    size_t i = 0;
    while (i < len) {
        if (len - i >= 8) {
            uint64_t word;
            memcpy(&word, p + i, 8);
            if ((word & S_HIGH_BITS) == 0) {
                i += 8;
                continue;
            }
        }
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t n;
        if (!s_char(p + i, len - i, &n))
            return false;
        i += n;
    }
    return true;
}

size_t cf_utf8_sanitize(char *dst, size_t size, const void *text, size_t len)
{
    assert(dst && size > 0 && (text || len == 0));
    const uint8_t *p = text;
    size_t out = 0, i = 0;
    while (i < len) {
        size_t n;
        bool ok = s_char(p + i, len - i, &n);
        const void *piece = ok ? (const void *)(p + i) : CF_UTF8_REPLACEMENT;
        size_t piece_len = ok ? n : CF_UTF8_REPLACEMENT_LEN;
        if (out + piece_len > size - 1)
            break;    //  cut at a character boundary
        memcpy(dst + out, piece, piece_len);
        out += piece_len;
        i += n;
    }
    dst[out] = '\0';
    return out;
}
