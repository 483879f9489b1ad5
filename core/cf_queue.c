//  Intrusive FIFO queues (circular doubly linked lists with a sentinel) and
//  the round-robin ring the broker dispatches from. See cf_queue.h.

#include "cf_queue.h"

#include <assert.h>

void cf_queue_init(cf_queue_t *self)
{
    assert(self);
    self->head.prev = self->head.next = &self->head;
    self->size = 0;
    cf_queue_node_init(&self->ring);
}

void cf_queue_node_init(cf_queue_node_t *node)
{
    node->prev = node->next = NULL;
}

bool cf_queue_linked(const cf_queue_node_t *node)
{
    return node->prev != NULL;
}

size_t cf_queue_size(const cf_queue_t *self)
{
    return self->size;
}

bool cf_queue_empty(const cf_queue_t *self)
{
    return self->size == 0;
}

static void s_link_between(cf_queue_node_t *node, cf_queue_node_t *prev, cf_queue_node_t *next)
{
    node->prev = prev;
    node->next = next;
    prev->next = node;
    next->prev = node;
}

void cf_queue_push_back(cf_queue_t *self, cf_queue_node_t *node)
{
    assert(!cf_queue_linked(node));
    s_link_between(node, self->head.prev, &self->head);
    self->size++;
}

void cf_queue_push_front(cf_queue_t *self, cf_queue_node_t *node)
{
    assert(!cf_queue_linked(node));
    s_link_between(node, &self->head, self->head.next);
    self->size++;
}

cf_queue_node_t *cf_queue_front(const cf_queue_t *self)
{
    return self->size ? self->head.next : NULL;
}

cf_queue_node_t *cf_queue_back(const cf_queue_t *self)
{
    return self->size ? self->head.prev : NULL;
}

void cf_queue_remove(cf_queue_t *self, cf_queue_node_t *node)
{
    assert(cf_queue_linked(node));
    assert(self->size > 0);
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->prev = node->next = NULL;
    self->size--;
}

cf_queue_node_t *cf_queue_pop_front(cf_queue_t *self)
{
    cf_queue_node_t *node = cf_queue_front(self);
    if (node)
        cf_queue_remove(self, node);
    return node;
}

cf_queue_node_t *cf_queue_next(const cf_queue_t *self, const cf_queue_node_t *node)
{
    return node->next == &self->head ? NULL : node->next;
}

cf_queue_node_t *cf_queue_prev(const cf_queue_t *self, const cf_queue_node_t *node)
{
    return node->prev == &self->head ? NULL : node->prev;
}

void cf_queue_rotate(cf_queue_t *self)
{
    if (self->size < 2)
        return;
    cf_queue_node_t *node = cf_queue_pop_front(self);
    cf_queue_push_back(self, node);
}

// ---------------------------------------------------------------------------

void cf_queue_rr_init(cf_queue_rr_t *self)
{
    assert(self);
    cf_queue_init(&self->ring);
    self->items = 0;
}

size_t cf_queue_rr_size(const cf_queue_rr_t *self)
{
    return self->items;
}

size_t cf_queue_rr_queues(const cf_queue_rr_t *self)
{
    return cf_queue_size(&self->ring);
}

void cf_queue_rr_push_back(cf_queue_rr_t *self, cf_queue_t *queue, cf_queue_node_t *node)
{
    cf_queue_push_back(queue, node);
    if (!cf_queue_linked(&queue->ring))
        cf_queue_push_back(&self->ring, &queue->ring);
    self->items++;
}

void cf_queue_rr_push_front(cf_queue_rr_t *self, cf_queue_t *queue, cf_queue_node_t *node)
{
    cf_queue_push_front(queue, node);
    if (!cf_queue_linked(&queue->ring))
        cf_queue_push_back(&self->ring, &queue->ring);
    self->items++;
}

cf_queue_node_t *cf_queue_rr_pop(cf_queue_rr_t *self, cf_queue_t **from)
{
    cf_queue_node_t *link = cf_queue_front(&self->ring);
    if (!link)
        return NULL;
    cf_queue_t *queue = cf_queue_entry(link, cf_queue_t, ring);
    cf_queue_node_t *node = cf_queue_pop_front(queue);
    assert(node);    //  only non-empty queues are in the ring
    self->items--;
    cf_queue_remove(&self->ring, link);
    if (!cf_queue_empty(queue))
        cf_queue_push_back(&self->ring, link);
    if (from)
        *from = queue;
    return node;
}

void cf_queue_rr_remove(cf_queue_rr_t *self, cf_queue_t *queue, cf_queue_node_t *node)
{
    cf_queue_remove(queue, node);
    self->items--;
    if (cf_queue_empty(queue) && cf_queue_linked(&queue->ring))
        cf_queue_remove(&self->ring, &queue->ring);
}

void cf_queue_rr_detach(cf_queue_rr_t *self, cf_queue_t *queue)
{
    if (!cf_queue_linked(&queue->ring))
        return;
    cf_queue_remove(&self->ring, &queue->ring);
    self->items -= cf_queue_size(queue);
}

//  Links the whole chain of from between prev and next, and empties from.
static void s_splice(cf_queue_t *to, cf_queue_t *from, cf_queue_node_t *prev, cf_queue_node_t *next)
{
    assert(!cf_queue_linked(&to->ring) && !cf_queue_linked(&from->ring));
    if (from->size == 0)
        return;
    cf_queue_node_t *first = from->head.next, *last = from->head.prev;
    first->prev = prev;
    prev->next = first;
    last->next = next;
    next->prev = last;
    to->size += from->size;
    from->head.prev = from->head.next = &from->head;
    from->size = 0;
}

void cf_queue_append(cf_queue_t *to, cf_queue_t *from)
{
    s_splice(to, from, to->head.prev, &to->head);
}

void cf_queue_prepend(cf_queue_t *to, cf_queue_t *from)
{
    s_splice(to, from, &to->head, to->head.next);
}
