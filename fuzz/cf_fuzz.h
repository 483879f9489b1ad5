//  What the fuzz targets share: how a fuzz input becomes ZeroMQ frames (the
//  proto target and the seed generator must agree), and a check that stops
//  the fuzzer on a broken property (not only on a sanitizer report).
//
//  Frames in an input: byte 0 says how many (value % (CF_PROTO_MAX_FRAMES +
//  1)); each frame but the last is a 2-byte little-endian length and that
//  many bytes; the last frame is the rest. Lengths cut at the end of input.

#ifndef CF_FUZZ_H
#define CF_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CF_FUZZ_CHECK(cond) \
    do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: fuzz property broken: %s\n", __FILE__, __LINE__, #cond); \
            abort(); \
        } \
    } while (0)

//  Splits data into at most max frames: *count, and (ptr, len) of each.
static inline void cf_fuzz_split(const uint8_t *data, size_t size, size_t max, const uint8_t **ptr,
                                 size_t *len, size_t *count)
{
    *count = 0;
    if (size == 0)
        return;
    size_t n = data[0] % (max + 1);
    size_t pos = 1;
    for (size_t i = 0; i < n; i++) {
        size_t frame = size - pos;
        if (i + 1 < n) {
            size_t want = 0;
            if (size - pos >= 2)
                want = (size_t)data[pos] | (size_t)data[pos + 1] << 8;
            pos += size - pos >= 2 ? 2 : size - pos;
            frame = want < size - pos ? want : size - pos;
        }
        ptr[i] = data + pos;
        len[i] = frame;
        pos += frame;
    }
    *count = n;
}

#endif
