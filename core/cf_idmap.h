//  A hash map from uint64 ids to pointers: open addressing, linear probing
//  in Robin Hood order, backward-shift deletion (no tombstones, so a long-running broker's map
//  never degrades). It grows at 3/4 load and shrinks again when mostly empty.
//  Not thread-safe: each actor owns its maps.

#ifndef CF_IDMAP_H
#define CF_IDMAP_H

#include "cfutures.h"

typedef struct cf_idmap cf_idmap_t;

//  A map with room for initial_capacity entries before it grows (it never
//  shrinks below that). NULL when out of memory.
cf_idmap_t *cf_idmap_new(size_t initial_capacity);
//  The same for ids the owner hands out itself, in order (a counter): id N
//  lives at slot N modulo the table's size, so ids in flight together sit
//  side by side and taking tasks in roughly the order they came walks memory
//  in order (a queue of a million costs no cache miss per lookup). Never for
//  ids a peer chooses: it could pick ids that all share one slot.
cf_idmap_t *cf_idmap_new_dense(size_t initial_capacity);
//  Frees the map, not the values. Safe with NULL and twice.
void cf_idmap_destroy(cf_idmap_t **map);
//  Inserts or replaces. value must not be NULL (NULL marks an empty slot).
//  CF_OK or CF_ENOMEM (the map is unchanged).
cf_err_t cf_idmap_put(cf_idmap_t *map, uint64_t id, void *value);
//  The value, or NULL.
void *cf_idmap_get(const cf_idmap_t *map, uint64_t id);
//  Removes and returns the value, or NULL when absent.
void *cf_idmap_remove(cf_idmap_t *map, uint64_t id);
size_t cf_idmap_size(const cf_idmap_t *map);
//  Iteration: *cursor starts at 0; returns false at the end. Removing the
//  current entry during iteration is not allowed; collect ids first.
bool cf_idmap_next(const cf_idmap_t *map, size_t *cursor, uint64_t *id, void **value);

#endif
