//  cf_queue: FIFO order, removal by handle, push to the front, iteration,
//  and round-robin fairness between queues.

#include "cf_queue.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

typedef struct {
    int owner;    //  which queue it was pushed to
    int seq;      //  order within its owner
    cf_queue_node_t node;
} s_item_t;

static s_item_t *s_item(cf_queue_node_t *node)
{
    return node ? cf_queue_entry(node, s_item_t, node) : NULL;
}

static void s_items_init(s_item_t *items, size_t count, int owner)
{
    for (size_t i = 0; i < count; i++) {
        items[i].owner = owner;
        items[i].seq = (int)i;
        cf_queue_node_init(&items[i].node);
    }
}

static void test_queue_is_first_in_first_out(void **state)
{
    (void)state;
    cf_queue_t queue;
    cf_queue_init(&queue);
    assert_true(cf_queue_empty(&queue));
    assert_null(cf_queue_front(&queue));
    assert_null(cf_queue_back(&queue));
    assert_null(cf_queue_pop_front(&queue));

    s_item_t items[5];
    s_items_init(items, 5, 0);
    for (int i = 0; i < 5; i++) {
        assert_false(cf_queue_linked(&items[i].node));
        cf_queue_push_back(&queue, &items[i].node);
        assert_true(cf_queue_linked(&items[i].node));
    }
    assert_int_equal(cf_queue_size(&queue), 5);
    assert_ptr_equal(s_item(cf_queue_front(&queue)), &items[0]);
    assert_ptr_equal(s_item(cf_queue_back(&queue)), &items[4]);
    for (int i = 0; i < 5; i++) {
        s_item_t *item = s_item(cf_queue_pop_front(&queue));
        assert_ptr_equal(item, &items[i]);
        assert_false(cf_queue_linked(&item->node));
    }
    assert_true(cf_queue_empty(&queue));
}

static void test_push_front_puts_an_item_back_at_the_head(void **state)
{
    (void)state;
    cf_queue_t queue;
    cf_queue_init(&queue);
    s_item_t items[3];
    s_items_init(items, 3, 0);
    cf_queue_push_back(&queue, &items[1].node);
    cf_queue_push_back(&queue, &items[2].node);
    cf_queue_push_front(&queue, &items[0].node);
    for (int i = 0; i < 3; i++)
        assert_ptr_equal(s_item(cf_queue_pop_front(&queue)), &items[i]);
}

static void test_remove_by_handle_keeps_the_others_in_order(void **state)
{
    (void)state;
    cf_queue_t queue;
    cf_queue_init(&queue);
    s_item_t items[6];
    s_items_init(items, 6, 0);
    for (int i = 0; i < 6; i++)
        cf_queue_push_back(&queue, &items[i].node);
    cf_queue_remove(&queue, &items[0].node);    //  head
    cf_queue_remove(&queue, &items[3].node);    //  middle
    cf_queue_remove(&queue, &items[5].node);    //  tail
    assert_false(cf_queue_linked(&items[3].node));
    assert_int_equal(cf_queue_size(&queue), 3);
    static const int left[] = { 1, 2, 4 };
    int n = 0;
    for (cf_queue_node_t *node = cf_queue_front(&queue); node; node = cf_queue_next(&queue, node))
        assert_int_equal(s_item(node)->seq, left[n++]);
    assert_int_equal(n, 3);
    //  Backwards too.
    n = 3;
    for (cf_queue_node_t *node = cf_queue_back(&queue); node; node = cf_queue_prev(&queue, node))
        assert_int_equal(s_item(node)->seq, left[--n]);
    //  Removing while iterating, having fetched the next node first.
    for (cf_queue_node_t *node = cf_queue_front(&queue), *next; node; node = next) {
        next = cf_queue_next(&queue, node);
        cf_queue_remove(&queue, node);
    }
    assert_true(cf_queue_empty(&queue));
    //  A removed node can be queued again.
    cf_queue_push_back(&queue, &items[3].node);
    assert_ptr_equal(s_item(cf_queue_front(&queue)), &items[3]);
}

static void test_rotate_moves_the_front_to_the_back(void **state)
{
    (void)state;
    cf_queue_t queue;
    cf_queue_init(&queue);
    cf_queue_rotate(&queue);    //  empty: nothing happens
    s_item_t items[3];
    s_items_init(items, 3, 0);
    for (int i = 0; i < 3; i++)
        cf_queue_push_back(&queue, &items[i].node);
    cf_queue_rotate(&queue);
    assert_ptr_equal(s_item(cf_queue_front(&queue)), &items[1]);
    assert_ptr_equal(s_item(cf_queue_back(&queue)), &items[0]);
    assert_int_equal(cf_queue_size(&queue), 3);
}

//  One client queues 1000 items, then two more queue 3 each: the small ones
//  are served within the first rounds, not after the big batch.
static void test_round_robin_serves_each_queue_in_turn(void **state)
{
    (void)state;
    cf_queue_rr_t rr;
    cf_queue_rr_init(&rr);
    assert_null(cf_queue_rr_pop(&rr, NULL));

    cf_queue_t queues[3];
    for (int q = 0; q < 3; q++)
        cf_queue_init(&queues[q]);
    static s_item_t big[1000], small1[3], small2[3];
    s_items_init(big, 1000, 0);
    s_items_init(small1, 3, 1);
    s_items_init(small2, 3, 2);
    for (int i = 0; i < 1000; i++)
        cf_queue_rr_push_back(&rr, &queues[0], &big[i].node);
    for (int i = 0; i < 3; i++) {
        cf_queue_rr_push_back(&rr, &queues[1], &small1[i].node);
        cf_queue_rr_push_back(&rr, &queues[2], &small2[i].node);
    }
    assert_int_equal(cf_queue_rr_size(&rr), 1006);
    assert_int_equal(cf_queue_rr_queues(&rr), 3);

    //  Turns go 0,1,2,0,1,2,0,1,2 and then queue 0 alone.
    int next_seq[3] = { 0, 0, 0 };
    for (int turn = 0; turn < 1006; turn++) {
        cf_queue_t *from = NULL;
        s_item_t *item = s_item(cf_queue_rr_pop(&rr, &from));
        assert_non_null(item);
        int expected_owner = turn < 9 ? turn % 3 : 0;
        assert_int_equal(item->owner, expected_owner);
        assert_ptr_equal(from, &queues[item->owner]);
        //  FIFO within each queue.
        assert_int_equal(item->seq, next_seq[item->owner]++);
    }
    assert_int_equal(cf_queue_rr_size(&rr), 0);
    assert_int_equal(cf_queue_rr_queues(&rr), 0);
    assert_null(cf_queue_rr_pop(&rr, NULL));
}

//  Over a long random mix of pushes and pops, no queue with items waits more
//  than one full round of the others.
static void test_round_robin_never_lets_a_queue_wait_more_than_a_round(void **state)
{
    (void)state;
    enum { QUEUES = 7, ITEMS = 20000 };
    cf_queue_rr_t rr;
    cf_queue_rr_init(&rr);
    cf_queue_t queues[QUEUES];
    for (int q = 0; q < QUEUES; q++)
        cf_queue_init(&queues[q]);
    s_item_t *items = calloc(ITEMS, sizeof *items);
    assert_non_null(items);
    int pushed[QUEUES] = { 0 }, popped[QUEUES] = { 0 };
    int waited[QUEUES] = { 0 };    //  pops of others while this queue had items
    unsigned seed = 12345;
    int next = 0;
    while (next < ITEMS || cf_queue_rr_size(&rr) > 0) {
        seed = seed * 1103515245u + 12345u;
        bool push = next < ITEMS && (seed >> 16) % 3 != 0;
        if (push) {
            //  Skewed: queue 0 gets most items.
            int q = (seed >> 20) % 4 == 0 ? (int)((seed >> 8) % QUEUES) : 0;
            items[next].owner = q;
            items[next].seq = pushed[q]++;
            cf_queue_node_init(&items[next].node);
            cf_queue_rr_push_back(&rr, &queues[q], &items[next].node);
            next++;
            continue;
        }
        cf_queue_t *from;
        s_item_t *item = s_item(cf_queue_rr_pop(&rr, &from));
        if (!item)
            continue;
        assert_int_equal(item->seq, popped[item->owner]++);
        waited[item->owner] = 0;
        for (int q = 0; q < QUEUES; q++) {
            if (q != item->owner && !cf_queue_empty(&queues[q])) {
                waited[q]++;
                assert_true(waited[q] < QUEUES);
            }
        }
    }
    for (int q = 0; q < QUEUES; q++)
        assert_int_equal(pushed[q], popped[q]);
    free(items);
}

static void test_round_robin_remove_and_detach_keep_counts(void **state)
{
    (void)state;
    cf_queue_rr_t rr;
    cf_queue_rr_init(&rr);
    cf_queue_t a, b;
    cf_queue_init(&a);
    cf_queue_init(&b);
    s_item_t ia[2], ib[3];
    s_items_init(ia, 2, 0);
    s_items_init(ib, 3, 1);
    cf_queue_rr_push_back(&rr, &a, &ia[0].node);
    cf_queue_rr_push_back(&rr, &a, &ia[1].node);
    for (int i = 0; i < 3; i++)
        cf_queue_rr_push_back(&rr, &b, &ib[i].node);

    //  Cancelling every item of a queue takes it out of the ring.
    cf_queue_rr_remove(&rr, &a, &ia[1].node);
    cf_queue_rr_remove(&rr, &a, &ia[0].node);
    assert_int_equal(cf_queue_rr_size(&rr), 3);
    assert_int_equal(cf_queue_rr_queues(&rr), 1);

    //  A requeue at the front of an empty queue rejoins at the back of the ring.
    cf_queue_rr_push_front(&rr, &a, &ia[0].node);
    assert_int_equal(cf_queue_rr_queues(&rr), 2);
    cf_queue_t *from;
    assert_ptr_equal(s_item(cf_queue_rr_pop(&rr, &from)), &ib[0]);
    assert_ptr_equal(s_item(cf_queue_rr_pop(&rr, &from)), &ia[0]);
    assert_ptr_equal(from, &a);

    //  Requeue at the front of a non-empty queue: served first in its turn.
    cf_queue_rr_push_front(&rr, &b, &ib[0].node);
    assert_ptr_equal(s_item(cf_queue_rr_pop(&rr, &from)), &ib[0]);

    //  A lost client: detach, then drain by hand.
    cf_queue_rr_detach(&rr, &b);
    assert_int_equal(cf_queue_rr_size(&rr), 0);
    assert_int_equal(cf_queue_rr_queues(&rr), 0);
    assert_null(cf_queue_rr_pop(&rr, NULL));
    assert_int_equal(cf_queue_size(&b), 2);
    while (cf_queue_pop_front(&b))
        ;
    cf_queue_rr_detach(&rr, &b);    //  not in the ring: nothing happens
    assert_int_equal(cf_queue_rr_size(&rr), 0);
}

static void test_append_and_prepend_move_a_whole_queue_in_order(void **state)
{
    (void)state;
    cf_queue_t a, b, empty;
    cf_queue_init(&a);
    cf_queue_init(&b);
    cf_queue_init(&empty);
    s_item_t items_a[3], items_b[2];
    s_items_init(items_a, 3, 0);
    s_items_init(items_b, 2, 1);
    for (int i = 0; i < 3; i++)
        cf_queue_push_back(&a, &items_a[i].node);
    for (int i = 0; i < 2; i++)
        cf_queue_push_back(&b, &items_b[i].node);
    cf_queue_append(&a, &empty);
    assert_int_equal(cf_queue_size(&a), 3);
    //  b's items go in front of a's, in b's order; b is left empty and usable.
    cf_queue_prepend(&a, &b);
    assert_true(cf_queue_empty(&b));
    assert_null(cf_queue_front(&b));
    assert_int_equal(cf_queue_size(&a), 5);
    int expected_owner[] = { 1, 1, 0, 0, 0 }, expected_seq[] = { 0, 1, 0, 1, 2 };
    cf_queue_node_t *node = cf_queue_front(&a);
    for (int i = 0; i < 5; i++, node = cf_queue_next(&a, node)) {
        assert_int_equal(s_item(node)->owner, expected_owner[i]);
        assert_int_equal(s_item(node)->seq, expected_seq[i]);
    }
    assert_null(node);
    //  And all of a to the back of the (now empty) b, then back again.
    cf_queue_append(&b, &a);
    assert_true(cf_queue_empty(&a));
    assert_int_equal(cf_queue_size(&b), 5);
    assert_ptr_equal(s_item(cf_queue_back(&b)), &items_a[2]);
    cf_queue_node_t *first = cf_queue_pop_front(&b);
    assert_ptr_equal(s_item(first), &items_b[0]);
    cf_queue_push_back(&a, first);
    cf_queue_append(&a, &b);
    assert_int_equal(cf_queue_size(&a), 5);
    assert_ptr_equal(s_item(cf_queue_front(&a)), &items_b[0]);
    assert_ptr_equal(s_item(cf_queue_back(&a)), &items_a[2]);
    for (int i = 0; i < 5; i++)
        assert_non_null(cf_queue_pop_front(&a));
    assert_true(cf_queue_empty(&a));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue_is_first_in_first_out),
        cmocka_unit_test(test_push_front_puts_an_item_back_at_the_head),
        cmocka_unit_test(test_remove_by_handle_keeps_the_others_in_order),
        cmocka_unit_test(test_rotate_moves_the_front_to_the_back),
        cmocka_unit_test(test_round_robin_serves_each_queue_in_turn),
        cmocka_unit_test(test_round_robin_never_lets_a_queue_wait_more_than_a_round),
        cmocka_unit_test(test_round_robin_remove_and_detach_keep_counts),
        cmocka_unit_test(test_append_and_prepend_move_a_whole_queue_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
