//  See cf_hash.h.

#include "cf_hash.h"

uint64_t cf_hash_bytes(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t hash = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++) {
        hash ^= p[i];
        hash *= 1099511628211ULL;
    }
    return hash;
}
