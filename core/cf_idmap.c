//  A hash map from uint64 ids to pointers, for the actors' task and peer
//  tables.
//
//  Open addressing with linear probing keeps a lookup to one or two cache
//  lines. Robin Hood placement keeps each run ordered by home slot, so a
//  lookup of an absent id stops early; backward-shift deletion moves the
//  displaced members of a run back instead of leaving tombstones, so a map
//  that has seen a billion puts and removes probes as short as a fresh one.
//  An empty slot is one whose value is NULL, which is why NULL values are
//  not allowed. The table grows at 3/4 load and shrinks at 1/8 (to 1/4
//  after halving), so a burst of millions of tasks does not pin its memory
//  forever and put/remove at the boundary cannot thrash.

#include "cf_idmap.h"

#include "cf_random.h"

#include <assert.h>
#include <stdint.h>
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
    //  Dense maps place id at slot id & mask (see cf_idmap_new_dense); the
    //  others mix the id with seed, a random value of their own.
    bool dense;
    uint64_t seed;
};

//  Ids a peer chooses are often sequential (task counters). A finalizer
//  spreads them over the table in blocks of S_BLOCK: the block number is
//  mixed, the id's place in its block kept, so ids in flight together share
//  cache lines while blocks land anywhere. The finalizer is a known
//  bijection: the random seed mixed in first is what keeps a peer from
//  choosing ids whose blocks share one home and turning lookups into walks.
#define S_BLOCK_BITS 3
static inline size_t s_hash(const cf_idmap_t *self, uint64_t id)
{
    if (self->dense)
        return (size_t)id;
    uint64_t block = (id >> S_BLOCK_BITS) ^ self->seed;
    block ^= block >> 33;
    block *= 0xff51afd7ed558ccdULL;
    block ^= block >> 33;
    block *= 0xc4ceb9fe1a85ec53ULL;
    block ^= block >> 33;
    return (size_t)((block << S_BLOCK_BITS) | (id & ((1u << S_BLOCK_BITS) - 1)));
}

static size_t s_round_capacity(size_t wanted)
{
    size_t capacity = CF_IDMAP_MIN_CAPACITY;
    while (capacity < wanted && capacity < ((size_t)1 << (sizeof(size_t) * 8 - 2)))
        capacity <<= 1;
    return capacity;
}

static cf_idmap_t *s_new(size_t initial_capacity, bool dense)
{
    cf_idmap_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->dense = dense;
    self->seed = dense ? 0 : cf_random_u64();
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

cf_idmap_t *cf_idmap_new(size_t initial_capacity)
{
    return s_new(initial_capacity, false);
}

cf_idmap_t *cf_idmap_new_dense(size_t initial_capacity)
{
    return s_new(initial_capacity, true);
}

void cf_idmap_destroy(cf_idmap_t **map)
{
    if (!map || !*map)
        return;
    free((*map)->slots);
    free(*map);
    *map = NULL;
}

//  How far the entry in slot i sits from its home slot.
static inline size_t s_dist(const cf_idmap_t *self, size_t mask, size_t i, uint64_t id)
{
    return (i - (s_hash(self, id) & mask)) & mask;
}

//  Places an entry known to be absent; the table has room. Robin Hood: an
//  entry that has come further from its home than the one in its way takes
//  that slot and carries the other on, so every run is ordered by home slot.
//  That order is what lets a lookup stop early and a removal shift back only
//  the displaced entries after the hole; without it, a removal must walk to
//  the end of its run, and a dense map's ids in flight form one run as long
//  as the queue.
static void s_place(const cf_idmap_t *self, s_slot_t *slots, size_t mask, uint64_t id, void *value)
{
    s_slot_t carry = { id, value };
    size_t i = s_hash(self, id) & mask;
    for (size_t d = 0; slots[i].value; i = (i + 1) & mask, d++) {
        size_t theirs = s_dist(self, mask, i, slots[i].id);
        if (theirs < d) {
            s_slot_t held = slots[i];
            slots[i] = carry;
            carry = held;
            d = theirs;
        }
    }
    slots[i] = carry;
}

static cf_err_t s_resize(cf_idmap_t *self, size_t capacity)
{
    s_slot_t *slots = calloc(capacity, sizeof *slots);
    if (!slots)
        return CF_ENOMEM;
    for (size_t i = 0; i < self->capacity; i++)
        if (self->slots[i].value)
            s_place(self, slots, capacity - 1, self->slots[i].id, self->slots[i].value);
    free(self->slots);
    self->slots = slots;
    self->capacity = capacity;
    return CF_OK;
}

//  The slot holding id, or SIZE_MAX. The walk ends at an empty slot or at an
//  entry nearer its home than id would be: by the Robin Hood order, id
//  cannot lie beyond it.
static inline size_t s_find(const cf_idmap_t *self, uint64_t id)
{
    size_t mask = self->capacity - 1;
    size_t i = s_hash(self, id) & mask;
    for (size_t d = 0; self->slots[i].value; i = (i + 1) & mask, d++) {
        if (self->slots[i].id == id)
            return i;
        if (s_dist(self, mask, i, self->slots[i].id) < d)
            break;
    }
    return SIZE_MAX;
}

cf_err_t cf_idmap_put(cf_idmap_t *self, uint64_t id, void *value)
{
    assert(self);
    assert(value);    //  NULL marks an empty slot
    size_t i = s_find(self, id);
    if (i != SIZE_MAX) {
        self->slots[i].value = value;
        return CF_OK;
    }
    if ((self->size + 1) * 4 > self->capacity * 3 && s_resize(self, self->capacity * 2) != CF_OK)
        return CF_ENOMEM;
    s_place(self, self->slots, self->capacity - 1, id, value);
    self->size++;
    return CF_OK;
}

void *cf_idmap_get(const cf_idmap_t *self, uint64_t id)
{
    assert(self);
    size_t i = s_find(self, id);
    return i == SIZE_MAX ? NULL : self->slots[i].value;
}

void *cf_idmap_remove(cf_idmap_t *self, uint64_t id)
{
    assert(self);
    size_t hole = s_find(self, id);
    if (hole == SIZE_MAX)
        return NULL;
    void *value = self->slots[hole].value;
    size_t mask = self->capacity - 1;
    //  Backward shift: the displaced entries after the hole move back one
    //  slot each, which keeps the Robin Hood order; the first entry at its
    //  home (or an empty slot) ends the run's displaced part.
    for (size_t j = (hole + 1) & mask;
         self->slots[j].value && s_dist(self, mask, j, self->slots[j].id) > 0; j = (j + 1) & mask) {
        self->slots[hole] = self->slots[j];
        hole = j;
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
