//  The one hash of short byte strings (function names, routing ids) for
//  hash tables.

#ifndef CF_HASH_H
#define CF_HASH_H

#include <stddef.h>
#include <stdint.h>

//  FNV-1a, 64 bits: names and ids are short, and this is cheap and spreads
//  them well enough for tables kept at most half full. Not keyed: a peer
//  choosing its own ids could aim them at one slot.
uint64_t cf_hash_bytes(const void *data, size_t len);

#endif
