//  cf_idmap: put/get/remove, growth and shrinking, iteration, and a long run
//  of random operations checked against a plain array as the reference.

#include "cf_idmap.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

//  Values are never dereferenced: any distinct non-NULL pointer will do.
static void *s_value(uint64_t n)
{
    return (void *)(uintptr_t)(n * 8 + 8);
}

static void test_put_get_remove_round_trip(void **state)
{
    (void)state;
    cf_idmap_t *map = cf_idmap_new(0);
    assert_non_null(map);
    assert_int_equal(cf_idmap_size(map), 0);
    assert_null(cf_idmap_get(map, 42));

    assert_int_equal(cf_idmap_put(map, 42, s_value(1)), CF_OK);
    assert_int_equal(cf_idmap_put(map, 0, s_value(2)), CF_OK);    //  0 is a valid id
    assert_int_equal(cf_idmap_put(map, UINT64_MAX, s_value(3)), CF_OK);
    assert_int_equal(cf_idmap_size(map), 3);
    assert_ptr_equal(cf_idmap_get(map, 42), s_value(1));
    assert_ptr_equal(cf_idmap_get(map, 0), s_value(2));
    assert_ptr_equal(cf_idmap_get(map, UINT64_MAX), s_value(3));

    assert_ptr_equal(cf_idmap_remove(map, 0), s_value(2));
    assert_null(cf_idmap_get(map, 0));
    assert_null(cf_idmap_remove(map, 0));
    assert_int_equal(cf_idmap_size(map), 2);
    cf_idmap_destroy(&map);
    assert_null(map);
    cf_idmap_destroy(&map);    //  safe twice
}

static void test_put_replaces_an_existing_value(void **state)
{
    (void)state;
    cf_idmap_t *map = cf_idmap_new(4);
    assert_int_equal(cf_idmap_put(map, 7, s_value(1)), CF_OK);
    assert_int_equal(cf_idmap_put(map, 7, s_value(2)), CF_OK);
    assert_int_equal(cf_idmap_size(map), 1);
    assert_ptr_equal(cf_idmap_get(map, 7), s_value(2));
    cf_idmap_destroy(&map);
}

static void test_map_grows_and_shrinks_keeping_every_entry(void **state)
{
    (void)state;
    cf_idmap_t *map = cf_idmap_new(0);
    const uint64_t count = 100000;
    //  Sequential ids, like task counters, are the common case.
    for (uint64_t i = 0; i < count; i++)
        assert_int_equal(cf_idmap_put(map, 1000 + i, s_value(i)), CF_OK);
    assert_int_equal(cf_idmap_size(map), count);
    for (uint64_t i = 0; i < count; i++)
        assert_ptr_equal(cf_idmap_get(map, 1000 + i), s_value(i));
    //  Remove all but a few: the table shrinks and the rest stay reachable.
    for (uint64_t i = 0; i < count - 10; i++)
        assert_ptr_equal(cf_idmap_remove(map, 1000 + i), s_value(i));
    assert_int_equal(cf_idmap_size(map), 10);
    for (uint64_t i = count - 10; i < count; i++)
        assert_ptr_equal(cf_idmap_get(map, 1000 + i), s_value(i));
    assert_null(cf_idmap_get(map, 1000));
    cf_idmap_destroy(&map);
}

static void test_iteration_visits_each_entry_once(void **state)
{
    (void)state;
    cf_idmap_t *map = cf_idmap_new(16);
    enum { N = 500 };
    static bool seen[N];
    memset(seen, 0, sizeof seen);
    for (uint64_t i = 0; i < N; i++)
        assert_int_equal(cf_idmap_put(map, i * 7919, s_value(i)), CF_OK);
    size_t cursor = 0, visits = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(map, &cursor, &id, &value)) {
        assert_int_equal(id % 7919, 0);
        uint64_t n = id / 7919;
        assert_true(n < N);
        assert_false(seen[n]);
        assert_ptr_equal(value, s_value(n));
        seen[n] = true;
        visits++;
    }
    assert_int_equal(visits, N);
    //  At the end it stays at the end.
    assert_false(cf_idmap_next(map, &cursor, &id, &value));

    cf_idmap_t *empty = cf_idmap_new(0);
    cursor = 0;
    assert_false(cf_idmap_next(empty, &cursor, NULL, NULL));
    cf_idmap_destroy(&empty);
    cf_idmap_destroy(&map);
}

//  The map's mixer, copied so the test can pick ids that share a home slot:
//  long probe runs are where backward-shift deletion can go wrong.
static uint64_t s_mix(uint64_t id)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    id *= 0xc4ceb9fe1a85ec53ULL;
    id ^= id >> 33;
    return id;
}

static void test_colliding_ids_survive_removal_in_the_middle_of_a_run(void **state)
{
    (void)state;
    //  Capacity 64 (room for 40 without growing): 20 ids with home slot 5
    //  and 10 with home slot 6 make one run of 30 that wraps nothing but
    //  interleaves two homes.
    cf_idmap_t *map = cf_idmap_new(40);
    uint64_t ids[30];
    size_t n5 = 0, n6 = 0;
    for (uint64_t id = 1; n5 + n6 < 30; id++) {
        uint64_t home = s_mix(id) & 63;
        if (home == 5 && n5 < 20)
            ids[n5++ + n6] = id;
        else if (home == 6 && n6 < 10)
            ids[n5 + n6++] = id;
    }
    for (size_t i = 0; i < 30; i++)
        assert_int_equal(cf_idmap_put(map, ids[i], s_value(i)), CF_OK);
    //  Remove from the front, the middle and the end of the run.
    static const size_t gone[] = { 0, 13, 14, 29, 7, 21 };
    for (size_t g = 0; g < sizeof gone / sizeof gone[0]; g++)
        assert_ptr_equal(cf_idmap_remove(map, ids[gone[g]]), s_value(gone[g]));
    for (size_t i = 0; i < 30; i++) {
        bool removed = false;
        for (size_t g = 0; g < sizeof gone / sizeof gone[0]; g++)
            removed |= gone[g] == i;
        if (removed)
            assert_null(cf_idmap_get(map, ids[i]));
        else
            assert_ptr_equal(cf_idmap_get(map, ids[i]), s_value(i));
    }
    //  And a run that wraps around the end of the table.
    cf_idmap_t *wrap = cf_idmap_new(40);
    uint64_t w[12];
    size_t nw = 0;
    for (uint64_t id = 1; nw < 12; id++)
        if ((s_mix(id) & 63) == 60)
            w[nw++] = id;
    for (size_t i = 0; i < 12; i++)
        assert_int_equal(cf_idmap_put(wrap, w[i], s_value(i)), CF_OK);
    assert_ptr_equal(cf_idmap_remove(wrap, w[1]), s_value(1));
    assert_ptr_equal(cf_idmap_remove(wrap, w[5]), s_value(5));
    for (size_t i = 0; i < 12; i++)
        if (i != 1 && i != 5)
            assert_ptr_equal(cf_idmap_get(wrap, w[i]), s_value(i));
    cf_idmap_destroy(&wrap);
    cf_idmap_destroy(&map);
}

//  A simple xorshift so the run is the same on every machine.
static uint64_t s_rand_state = 0x9e3779b97f4a7c15ULL;
static uint64_t s_rand(void)
{
    s_rand_state ^= s_rand_state << 13;
    s_rand_state ^= s_rand_state >> 7;
    s_rand_state ^= s_rand_state << 17;
    return s_rand_state;
}

//  state: NULL for an ordinary map, non-NULL for a dense one (whose ids
//  below, multiples of a large odd number, collide often modulo the table).
static void test_random_operations_match_a_reference(void **state)
{
    //  Reference: ids drawn from a small universe so puts, replaces and
    //  removes of present and absent ids all happen often.
    enum { UNIVERSE = 2048, STEPS = 200000 };
    static void *ref[UNIVERSE];
    memset(ref, 0, sizeof ref);
    size_t ref_size = 0;
    cf_idmap_t *map = *state ? cf_idmap_new_dense(0) : cf_idmap_new(0);
    for (int step = 0; step < STEPS; step++) {
        uint64_t r = s_rand();
        uint64_t n = (r >> 8) % UNIVERSE;
        //  Spread ids over 64 bits but keep them recoverable.
        uint64_t id = n * 0x100000001b3ULL;
        //  Phases of mostly-put and mostly-remove make the table grow and
        //  shrink repeatedly.
        bool growing = (step / 20000) % 2 == 0;
        unsigned op = (unsigned)(r % 10);
        if (op < (growing ? 6u : 3u)) {
            void *value = s_value(s_rand() % 100000);
            assert_int_equal(cf_idmap_put(map, id, value), CF_OK);
            if (!ref[n])
                ref_size++;
            ref[n] = value;
        }
        else if (op < 9) {
            assert_ptr_equal(cf_idmap_remove(map, id), ref[n]);
            if (ref[n])
                ref_size--;
            ref[n] = NULL;
        }
        else
            assert_ptr_equal(cf_idmap_get(map, id), ref[n]);
        assert_int_equal(cf_idmap_size(map), ref_size);
        if (step % 10007 == 0) {
            for (uint64_t k = 0; k < UNIVERSE; k++)
                assert_ptr_equal(cf_idmap_get(map, k * 0x100000001b3ULL), ref[k]);
            size_t cursor = 0, visits = 0;
            uint64_t got;
            void *value;
            while (cf_idmap_next(map, &cursor, &got, &value)) {
                assert_int_equal(got % 0x100000001b3ULL, 0);
                assert_ptr_equal(ref[got / 0x100000001b3ULL], value);
                visits++;
            }
            assert_int_equal(visits, ref_size);
        }
    }
    cf_idmap_destroy(&map);
}

//  What the dense map is for: ids handed out in order sit in order, so a
//  walk over them is a walk over memory; an ordinary map's seed scatters
//  them, differently in each map.
static void test_dense_maps_keep_counter_ids_in_order_and_others_scatter_them(void **state)
{
    (void)state;
    enum { IDS = 100 };
    cf_idmap_t *dense = cf_idmap_new_dense(256), *a = cf_idmap_new(256), *b = cf_idmap_new(256);
    for (uint64_t id = 1000; id < 1000 + IDS; id++) {
        assert_int_equal(cf_idmap_put(dense, id, s_value(id)), CF_OK);
        assert_int_equal(cf_idmap_put(a, id, s_value(id)), CF_OK);
        assert_int_equal(cf_idmap_put(b, id, s_value(id)), CF_OK);
    }
    uint64_t order[3][IDS];
    cf_idmap_t *maps[3] = { dense, a, b };
    for (int m = 0; m < 3; m++) {
        size_t cursor = 0, n = 0;
        uint64_t id;
        while (cf_idmap_next(maps[m], &cursor, &id, NULL))
            order[m][n++] = id;
        assert_int_equal(n, IDS);
    }
    for (int i = 1; i < IDS; i++)
        assert_true(order[0][i] == order[0][i - 1] + 1 || order[0][i] < order[0][i - 1]);
    //  Two seeds giving the same order of 100 ids: about 1 in 100!.
    assert_memory_not_equal(order[1], order[2], sizeof order[1]);
    cf_idmap_destroy(&dense);
    cf_idmap_destroy(&a);
    cf_idmap_destroy(&b);
}

int main(void)
{
    static int dense = 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_remove_round_trip),
        cmocka_unit_test(test_put_replaces_an_existing_value),
        cmocka_unit_test(test_map_grows_and_shrinks_keeping_every_entry),
        cmocka_unit_test(test_iteration_visits_each_entry_once),
        cmocka_unit_test(test_colliding_ids_survive_removal_in_the_middle_of_a_run),
        cmocka_unit_test_prestate(test_random_operations_match_a_reference, NULL),
        cmocka_unit_test_prestate(test_random_operations_match_a_reference, &dense),
        cmocka_unit_test(test_dense_maps_keep_counter_ids_in_order_and_others_scatter_them),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
