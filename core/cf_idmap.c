//  A hash map from uint64 ids to pointers, for the actors' task and peer
//  tables.
//
//  Open addressing with linear probing keeps a lookup to one or two cache
//  lines; backward-shift deletion moves later members of a probe run back
//  instead of leaving tombstones, so a map that has seen a billion puts and
//  removes probes as short as a fresh one. An empty slot is one whose value
//  is NULL, which is why NULL values are not allowed. The table grows at 3/4
//  load and shrinks at 1/8 (to 1/4 after halving), so a burst of millions of
//  tasks does not pin its memory forever and put/remove at the boundary
//  cannot thrash.

#include "cf_idmap.h"

#include <assert.h>
#include <stdlib.h>

#define CF_IDMAP_MIN_CAPACITY 8

typedef struct {
    uint64_t id;
    void *value;    //  NULL: the slot is empty
} s_slot_t;

struct cf_idmap {
    s_slot_t *slots;
    size_t capacity;        //  a power of two
    size_t size;            //  slots in use
    size_t min_capacity;    //  never shrink below what the caller asked for
};

//  Ids are often sequential (task counters): a finalizer spreads them over
//  the table so runs stay short.
static inline size_t s_hash(uint64_t id)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    id *= 0xc4ceb9fe1a85ec53ULL;
    id ^= id >> 33;
    return (size_t)id;
}

static size_t s_round_capacity(size_t wanted)
{
    size_t capacity = CF_IDMAP_MIN_CAPACITY;
    while (capacity < wanted && capacity < ((size_t)1 << (sizeof(size_t) * 8 - 2)))
        capacity <<= 1;
    return capacity;
}

cf_idmap_t *cf_idmap_new(size_t initial_capacity)
{
    cf_idmap_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    //  Room for initial_capacity entries without growing.
    self->capacity = s_round_capacity(initial_capacity + initial_capacity / 3 + 1);
    self->min_capacity = self->capacity;
    self->slots = calloc(self->capacity, sizeof *self->slots);
    if (!self->slots) {
        free(self);
        return NULL;
    }
    return self;
}

void cf_idmap_destroy(cf_idmap_t **map)
{
    if (!map || !*map)
        return;
    free((*map)->slots);
    free(*map);
    *map = NULL;
}

//  Places an entry known to be absent; the table has room.
static void s_place(s_slot_t *slots, size_t mask, uint64_t id, void *value)
{
    size_t i = s_hash(id) & mask;
    while (slots[i].value)
        i = (i + 1) & mask;
    slots[i].id = id;
    slots[i].value = value;
}

static cf_err_t s_resize(cf_idmap_t *self, size_t capacity)
{
    s_slot_t *slots = calloc(capacity, sizeof *slots);
    if (!slots)
        return CF_ENOMEM;
    for (size_t i = 0; i < self->capacity; i++)
        if (self->slots[i].value)
            s_place(slots, capacity - 1, self->slots[i].id, self->slots[i].value);
    free(self->slots);
    self->slots = slots;
    self->capacity = capacity;
    return CF_OK;
}

static inline size_t s_find(const cf_idmap_t *self, uint64_t id, bool *found)
{
    size_t mask = self->capacity - 1;
    size_t i = s_hash(id) & mask;
    while (self->slots[i].value) {
        if (self->slots[i].id == id) {
            *found = true;
            return i;
        }
        i = (i + 1) & mask;
    }
    *found = false;
    return i;
}

cf_err_t cf_idmap_put(cf_idmap_t *self, uint64_t id, void *value)
{
    assert(self);
    assert(value);    //  NULL marks an empty slot
    bool found;
    size_t i = s_find(self, id, &found);
    if (found) {
        self->slots[i].value = value;
        return CF_OK;
    }
    if ((self->size + 1) * 4 > self->capacity * 3) {
        if (s_resize(self, self->capacity * 2) != CF_OK)
            return CF_ENOMEM;
        i = s_find(self, id, &found);
    }
    self->slots[i].id = id;
    self->slots[i].value = value;
    self->size++;
    return CF_OK;
}

void *cf_idmap_get(const cf_idmap_t *self, uint64_t id)
{
    assert(self);
    bool found;
    size_t i = s_find(self, id, &found);
    return found ? self->slots[i].value : NULL;
}

void *cf_idmap_remove(cf_idmap_t *self, uint64_t id)
{
    assert(self);
    bool found;
    size_t hole = s_find(self, id, &found);
    if (!found)
        return NULL;
    void *value = self->slots[hole].value;
    size_t mask = self->capacity - 1;
    //  Backward shift: walk the rest of the run; an entry may fill the hole
    //  when its home slot is not cyclically inside (hole, j], i.e. moving it
    //  back does not put it before its home.
    size_t j = hole;
    for (;;) {
        j = (j + 1) & mask;
        if (!self->slots[j].value)
            break;
        size_t home = s_hash(self->slots[j].id) & mask;
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            self->slots[hole] = self->slots[j];
            hole = j;
        }
    }
    self->slots[hole].value = NULL;
    self->slots[hole].id = 0;
    self->size--;
    //  Shrinking is an optimisation: on ENOMEM the larger table stays valid.
    if (self->capacity > self->min_capacity && self->size * 8 < self->capacity)
        (void)s_resize(self, self->capacity / 2);
    return value;
}

size_t cf_idmap_size(const cf_idmap_t *self)
{
    assert(self);
    return self->size;
}

bool cf_idmap_next(const cf_idmap_t *self, size_t *cursor, uint64_t *id, void **value)
{
    assert(self);
    assert(cursor);
    for (size_t i = *cursor; i < self->capacity; i++) {
        if (self->slots[i].value) {
            if (id)
                *id = self->slots[i].id;
            if (value)
                *value = self->slots[i].value;
            *cursor = i + 1;
            return true;
        }
    }
    *cursor = self->capacity;
    return false;
}
