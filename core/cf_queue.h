//  Intrusive FIFO queues, and a round-robin set of them for the broker.
//
//  A queue links nodes embedded in the caller's structs, so queueing costs
//  no allocation and no memory beyond two pointers per item, removal by
//  handle (cancel, a lost client) is O(1), and an item can move between
//  queues (a client's queue, a worker's running list) without being copied.
//
//  The round-robin set (cf_queue_rr_t) serves many queues fairly: each pop
//  takes one item from the queue at the front of its ring and moves that
//  queue to the back, so a client that queued a million tasks gets one
//  dispatch per turn like a client that queued one. Only non-empty queues are
//  in the ring, so a pop is O(1) however many idle queues exist.
//
//  Not thread-safe: whoever owns a queue guards it (the broker actor owns
//  its queues; the client's inbox is under its shared mutex).

#ifndef CF_QUEUE_H
#define CF_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct cf_queue_node {
    struct cf_queue_node *prev;    //  NULL while not in a queue
    struct cf_queue_node *next;
} cf_queue_node_t;

//  The struct holding a node: cf_queue_entry(node, task_t, node).
#define cf_queue_entry(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

typedef struct {
    cf_queue_node_t head;    //  sentinel of a circular list
    size_t size;             //  nodes linked
    cf_queue_node_t ring;    //  link in a cf_queue_rr_t while non-empty there
} cf_queue_t;

//  An embedded queue starts empty. There is no _fini: the queue owns no
//  memory; empty it with cf_queue_pop_front before freeing the items.
void cf_queue_init(cf_queue_t *queue);
//  A node that is in no queue (so cf_queue_linked says false).
void cf_queue_node_init(cf_queue_node_t *node);
bool cf_queue_linked(const cf_queue_node_t *node);

size_t cf_queue_size(const cf_queue_t *queue);
bool cf_queue_empty(const cf_queue_t *queue);
//  node must not be in a queue.
void cf_queue_push_back(cf_queue_t *queue, cf_queue_node_t *node);
void cf_queue_push_front(cf_queue_t *queue, cf_queue_node_t *node);
//  The first / last node, or NULL when empty; the node stays queued.
cf_queue_node_t *cf_queue_front(const cf_queue_t *queue);
cf_queue_node_t *cf_queue_back(const cf_queue_t *queue);
//  Unlinks and returns the first node, or NULL when empty.
cf_queue_node_t *cf_queue_pop_front(cf_queue_t *queue);
//  Unlinks node, which must be in queue.
void cf_queue_remove(cf_queue_t *queue, cf_queue_node_t *node);
//  The node after / before node, or NULL at the end. Removing the current
//  node while iterating is allowed when the next one was fetched first.
cf_queue_node_t *cf_queue_next(const cf_queue_t *queue, const cf_queue_node_t *node);
cf_queue_node_t *cf_queue_prev(const cf_queue_t *queue, const cf_queue_node_t *node);
//  Moves the first node to the back (rotates a ring of peers).
void cf_queue_rotate(cf_queue_t *queue);
//  Moves every node of from to the back (append) or the front (prepend)
//  of to, in order, in O(1); from is left empty. Neither may be in a ring.
void cf_queue_append(cf_queue_t *to, cf_queue_t *from);
void cf_queue_prepend(cf_queue_t *to, cf_queue_t *from);

// ---------------------------------------------------------------------------
//  Round-robin over queues. A queue joins the ring when an item is pushed
//  into it through cf_queue_rr_* and leaves when it becomes empty, so use
//  the cf_queue_rr_* calls (not the plain ones) on queues served by a ring.

typedef struct {
    cf_queue_t ring;    //  non-empty member queues, in turn order
    size_t items;       //  items in all member queues
} cf_queue_rr_t;

void cf_queue_rr_init(cf_queue_rr_t *rr);
//  Items in all queues of the ring.
size_t cf_queue_rr_size(const cf_queue_rr_t *rr);
//  Queues in the ring (those with items).
size_t cf_queue_rr_queues(const cf_queue_rr_t *rr);
//  Appends node to queue; a queue that was empty joins the back of the ring.
void cf_queue_rr_push_back(cf_queue_rr_t *rr, cf_queue_t *queue, cf_queue_node_t *node);
//  Prepends node (a task going back where it was); an empty queue joins the
//  back of the ring, so a requeue never jumps other clients' turns.
void cf_queue_rr_push_front(cf_queue_rr_t *rr, cf_queue_t *queue, cf_queue_node_t *node);
//  Takes the first node of the queue whose turn it is and moves that queue
//  to the back of the ring (or out of it, once empty). NULL when no queue
//  has items. *from (may be NULL) gets the queue it came from.
cf_queue_node_t *cf_queue_rr_pop(cf_queue_rr_t *rr, cf_queue_t **from);
//  Unlinks node from queue (a cancel); an emptied queue leaves the ring.
void cf_queue_rr_remove(cf_queue_rr_t *rr, cf_queue_t *queue, cf_queue_node_t *node);
//  Takes queue out of the ring with its items still in it (a lost client:
//  the caller then pops and frees them with cf_queue_pop_front).
void cf_queue_rr_detach(cf_queue_rr_t *rr, cf_queue_t *queue);

#endif
