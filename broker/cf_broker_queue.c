//  The broker's queued tasks (see cf_broker_int.h): the functions it knows,
//  each client's lanes, the pick of the next task for a worker, and the
//  end of tasks that no connected worker can run.
//
//  Routing by function. A worker may say which functions it serves (READY,
//  FUNCTIONS); it is then sent only tasks of those. A client's tasks wait
//  in lanes, one per function, priority and wait, each FIFO; the client
//  keeps the lanes that hold tasks in order (priority first, then the age
//  of their front task), so the oldest task of the highest priority comes
//  first, whatever its function, and a worker that cannot run it takes the
//  first lane it can. A lane per function is what keeps this cheap in a
//  mixed cluster: a worker never walks past tasks it cannot run, only past
//  lanes. Clients take turns as before (the ring): one task each, then the
//  client goes to the back.
//
//  Cost of a pick: O(1) when the worker serves the client's first lane
//  (every cluster whose workers serve the same functions), else the lanes
//  walked; putting a lane back in order after a pick walks the lanes of
//  the client it passes (docs/benchmarks.md has the figures).
//
//  A task whose function no connected worker serves waits, since workers
//  may come later, but not forever: once neither it nor its function has
//  had a worker for its wait (SUBMIT's wait_ms, else cf-broker
//  --no-worker-timeout), it fails with NoWorker naming the function.

#include "cf_broker_int.h"

#include "cf_clock.h"
#include "cf_hash.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_LOG "broker"

// ---------------------------------------------------------------------------
//  Functions

static bool s_served(const cf_broker_state_t *self, const cf_broker_fn_t *fn)
{
    return self->serve_all > 0 || fn->servers > 0;
}

//  fn has queued tasks and nobody to run them: its wait starts (if it had
//  not) and the expiry looks at it.
static void s_fn_watch(cf_broker_state_t *self, cf_broker_fn_t *fn, int64_t now)
{
    if (!fn->unserved_since_ms)
        fn->unserved_since_ms = now;
    if (fn->queued > 0 && !cf_queue_linked(&fn->unserved_node)) {
        fn->next_check_ms = 0;
        cf_queue_push_back(&self->unserved, &fn->unserved_node);
    }
}

static void s_fn_unwatch(cf_broker_state_t *self, cf_broker_fn_t *fn)
{
    fn->unserved_since_ms = 0;
    if (cf_queue_linked(&fn->unserved_node))
        cf_queue_remove(&self->unserved, &fn->unserved_node);
}

//  The function named name, or NULL when the broker does not know it.
static cf_broker_fn_t *s_fn_find(cf_broker_state_t *self, const char *name, size_t len,
                                 uint64_t hash)
{
    for (cf_broker_fn_t *fn = cf_idmap_get(self->fn_table, hash); fn; fn = fn->hash_next) {
        if (fn->len == len && memcmp(fn->name, name, len) == 0)
            return fn;
    }
    return NULL;
}

cf_broker_fn_t *cf_broker_fn_get(cf_broker_state_t *self, const char *name, size_t len)
{
    assert(len > 0 && len <= CF_PROTO_MAX_NAME);
    uint64_t hash = cf_hash_bytes(name, len);
    cf_broker_fn_t *found = s_fn_find(self, name, len, hash);
    if (found) {
        found->refs++;
        return found;
    }
    cf_broker_fn_t *first = cf_idmap_get(self->fn_table, hash);
    cf_broker_fn_t *fn = calloc(1, sizeof *fn + len + 1);
    if (!fn)
        return NULL;
    fn->hash = hash;
    fn->id = ++self->next_fn_id;
    fn->refs = 1;
    fn->len = (uint16_t)len;
    memcpy(fn->name, name, len);
    cf_queue_init(&fn->lanes);
    cf_queue_node_init(&fn->unserved_node);
    fn->hash_next = first;
    if (cf_idmap_put(self->fn_table, hash, fn) != CF_OK) {
        free(fn);
        return NULL;
    }
    //  A new function has never had a worker (one with no list serves it).
    if (!s_served(self, fn))
        fn->unserved_since_ms = cf_clock_now_ms();
    return fn;
}

static void s_fn_free(cf_broker_state_t *self, cf_broker_fn_t *fn)
{
    cf_broker_fn_t *first = cf_idmap_get(self->fn_table, fn->hash);
    if (first == fn) {
        if (fn->hash_next)
            cf_idmap_put(self->fn_table, fn->hash, fn->hash_next);    //  replaces: cannot fail
        else
            cf_idmap_remove(self->fn_table, fn->hash);
    }
    else {
        for (cf_broker_fn_t *p = first; p; p = p->hash_next) {
            if (p->hash_next == fn) {
                p->hash_next = fn->hash_next;
                break;
            }
        }
    }
    s_fn_unwatch(self, fn);
    free(fn);
}

void cf_broker_fn_put(cf_broker_state_t *self, cf_broker_fn_t *fn)
{
    assert(fn->refs > 0);
    if (--fn->refs == 0)
        s_fn_free(self, fn);
}

void cf_broker_fn_destroy_all(cf_broker_state_t *self)
{
    if (!self->fn_table)
        return;
    size_t cursor = 0;
    void *value;
    while (cf_idmap_next(self->fn_table, &cursor, NULL, &value)) {
        for (cf_broker_fn_t *fn = value, *next; fn; fn = next) {
            next = fn->hash_next;
            free(fn);
        }
    }
    cf_idmap_destroy(&self->fn_table);
}

// ---------------------------------------------------------------------------
//  Lanes

//  True when lane a's tasks go before lane b's: higher priority, then the
//  older front task (ids grow with arrival).
static bool s_lane_before(const cf_broker_lane_t *a, const cf_broker_lane_t *b)
{
    if (a->priority != b->priority)
        return a->priority > b->priority;
    const cf_broker_task_t *ta = cf_queue_entry(cf_queue_front(&a->tasks), cf_broker_task_t, node);
    const cf_broker_task_t *tb = cf_queue_entry(cf_queue_front(&b->tasks), cf_broker_task_t, node);
    return ta->id < tb->id;
}

static cf_broker_lane_t *s_order_lane(cf_queue_node_t *node)
{
    return node ? cf_queue_entry(node, cf_broker_lane_t, order_node) : NULL;
}

//  Puts lane, whose front changed, where it belongs in client->order (out
//  of it when empty). Lanes move little: a new lane goes in from the back,
//  a picked one moves back, one given a task back moves forward.
static void s_lane_place(cf_broker_client_t *client, cf_broker_lane_t *lane)
{
    cf_queue_t *order = &client->order;
    if (cf_queue_linked(&lane->order_node))
        cf_queue_remove(order, &lane->order_node);
    if (cf_queue_empty(&lane->tasks))
        return;
    //  The last lane that goes before it; it goes right after.
    cf_queue_node_t *at = cf_queue_back(order);
    while (at && s_lane_before(lane, s_order_lane(at)))
        at = cf_queue_prev(order, at);
    if (!at) {
        cf_queue_push_front(order, &lane->order_node);
        return;
    }
    //  Insert after at: take the nodes after it off, push, put them back.
    cf_queue_t after;
    cf_queue_init(&after);
    cf_queue_node_t *node;
    while ((node = cf_queue_back(order)) != at) {
        cf_queue_remove(order, node);
        cf_queue_push_front(&after, node);
    }
    cf_queue_push_back(order, &lane->order_node);
    cf_queue_append(order, &after);
}

static bool s_lane_is(const cf_broker_lane_t *lane, const cf_proto_task_t *item)
{
    return lane->priority == item->priority && lane->wait_ms == item->wait_ms
           && lane->fn->len == item->function.len
           && memcmp(lane->fn->name, item->function.ptr, item->function.len) == 0;
}

//  The client's lane for item, or NULL: one lookup by function, then the
//  (rare) other priorities and waits of that function.
static cf_broker_lane_t *s_lane_find(cf_broker_state_t *self, cf_broker_client_t *client,
                                     const cf_proto_task_t *item)
{
    cf_broker_lane_t *lane = client->last_lane;
    if (lane && s_lane_is(lane, item))
        return lane;
    uint64_t hash = cf_hash_bytes(item->function.ptr, item->function.len);
    cf_broker_fn_t *fn = s_fn_find(self, item->function.ptr, item->function.len, hash);
    lane = fn ? cf_idmap_get(client->lane_map, fn->id) : NULL;
    while (lane && (lane->priority != item->priority || lane->wait_ms != item->wait_ms))
        lane = lane->same_fn;
    return lane;
}

cf_broker_lane_t *cf_broker_queue_lane(cf_broker_state_t *self, cf_broker_client_t *client,
                                       const cf_proto_task_t *item)
{
    cf_broker_lane_t *lane = s_lane_find(self, client, item);
    if (!lane) {
        lane = calloc(1, sizeof *lane);
        if (!lane)
            return NULL;
        lane->fn = cf_broker_fn_get(self, item->function.ptr, item->function.len);
        lane->same_fn = lane->fn ? cf_idmap_get(client->lane_map, lane->fn->id) : NULL;
        if (!lane->fn || cf_idmap_put(client->lane_map, lane->fn->id, lane) != CF_OK) {
            if (lane->fn)
                cf_broker_fn_put(self, lane->fn);
            free(lane);
            return NULL;
        }
        lane->client = client;
        lane->priority = item->priority;
        lane->wait_ms = item->wait_ms;
        cf_queue_init(&lane->tasks);
        cf_queue_node_init(&lane->order_node);
        cf_queue_push_back(&client->lanes, &lane->all_node);
        cf_queue_push_back(&lane->fn->lanes, &lane->fn_node);
    }
    client->last_lane = lane;
    lane->refs++;
    return lane;
}

//  Takes the lane away from its client (the client is lost or the lane
//  unused); it lives on while tasks refer to it.
static void s_lane_detach(cf_broker_client_t *client, cf_broker_lane_t *lane)
{
    cf_broker_lane_t *first = cf_idmap_get(client->lane_map, lane->fn->id);
    if (first == lane) {
        if (lane->same_fn)
            cf_idmap_put(client->lane_map, lane->fn->id, lane->same_fn);    //  replaces: no memory
        else
            cf_idmap_remove(client->lane_map, lane->fn->id);
    }
    else {
        for (cf_broker_lane_t *l = first; l; l = l->same_fn) {
            if (l->same_fn == lane) {
                l->same_fn = lane->same_fn;
                break;
            }
        }
    }
    lane->same_fn = NULL;
    cf_queue_remove(&client->lanes, &lane->all_node);
    if (cf_queue_linked(&lane->order_node))
        cf_queue_remove(&client->order, &lane->order_node);
    if (client->last_lane == lane)
        client->last_lane = NULL;
    lane->client = NULL;
}

void cf_broker_queue_lane_put(cf_broker_state_t *self, cf_broker_lane_t *lane)
{
    assert(lane->refs > 0);
    if (--lane->refs > 0)
        return;
    assert(cf_queue_empty(&lane->tasks));
    if (lane->client)
        s_lane_detach(lane->client, lane);
    cf_queue_remove(&lane->fn->lanes, &lane->fn_node);
    cf_broker_fn_put(self, lane->fn);
    free(lane);
}

// ---------------------------------------------------------------------------
//  Queueing and picking

static uint32_t s_wait_ms(const cf_broker_state_t *self, const cf_broker_lane_t *lane)
{
    return lane->wait_ms ? lane->wait_ms : self->no_worker_wait_ms;
}

void cf_broker_queue_push(cf_broker_state_t *self, cf_broker_task_t *task, bool front, int64_t now)
{
    cf_broker_lane_t *lane = task->lane;
    cf_broker_client_t *client = lane->client;
    assert(client);
    task->deadline_ms = now + s_wait_ms(self, lane);
    if (front)
        cf_queue_push_front(&lane->tasks, &task->node);
    else
        cf_queue_push_back(&lane->tasks, &task->node);
    //  At the back of a lane with tasks the front, and so the order, stay.
    if (front || cf_queue_size(&lane->tasks) == 1)
        s_lane_place(client, lane);
    if (client->queued++ == 0)
        cf_queue_push_back(&self->ring, &client->ring_node);
    self->queued++;
    lane->fn->queued++;
    self->want_due = true;    //  a SHARED worker at credit 0 may want it
    if (!s_served(self, lane->fn))
        s_fn_watch(self, lane->fn, now);
}

//  Bookkeeping of a task taken out of its lane.
static void s_taken(cf_broker_state_t *self, cf_broker_lane_t *lane, bool front)
{
    cf_broker_client_t *client = lane->client;
    if (front)
        s_lane_place(client, lane);
    self->queued--;
    lane->fn->queued--;
    if (lane->fn->queued == 0 && cf_queue_linked(&lane->fn->unserved_node))
        cf_queue_remove(&self->unserved, &lane->fn->unserved_node);
    if (--client->queued == 0)
        cf_queue_remove(&self->ring, &client->ring_node);
}

void cf_broker_queue_remove(cf_broker_state_t *self, cf_broker_task_t *task)
{
    cf_broker_lane_t *lane = task->lane;
    bool front = cf_queue_front(&lane->tasks) == &task->node;
    cf_queue_remove(&lane->tasks, &task->node);
    s_taken(self, lane, front);
}

bool cf_broker_queue_serves(const cf_broker_worker_t *worker, const cf_broker_fn_t *fn)
{
    return !worker->fns || cf_idmap_get(worker->fns, fn->id) != NULL;
}

cf_broker_task_t *cf_broker_queue_pick(cf_broker_state_t *self, cf_broker_worker_t *worker)
{
    size_t turns = cf_queue_size(&self->ring);
    cf_queue_node_t *node = cf_queue_front(&self->ring);
    for (size_t i = 0; i < turns && node; i++) {
        cf_broker_client_t *client = cf_queue_entry(node, cf_broker_client_t, ring_node);
        node = cf_queue_next(&self->ring, node);
        for (cf_queue_node_t *at = cf_queue_front(&client->order); at;
             at = cf_queue_next(&client->order, at)) {
            cf_broker_lane_t *lane = s_order_lane(at);
            if (!cf_broker_queue_serves(worker, lane->fn))
                continue;
            cf_queue_node_t *taken = cf_queue_pop_front(&lane->tasks);
            s_taken(self, lane, true);
            //  Its turn is used: to the back of the ring, if still in it.
            if (cf_queue_linked(&client->ring_node)) {
                cf_queue_remove(&self->ring, &client->ring_node);
                cf_queue_push_back(&self->ring, &client->ring_node);
            }
            return cf_queue_entry(taken, cf_broker_task_t, node);
        }
    }
    return NULL;
}

bool cf_broker_queue_has_for(const cf_broker_state_t *self, const cf_broker_worker_t *worker)
{
    //  Every client has its turn in a pick, so any lane of any client in
    //  the ring that the worker serves is one a pick would reach.
    for (cf_queue_node_t *node = cf_queue_front(&self->ring); node;
         node = cf_queue_next(&self->ring, node)) {
        cf_broker_client_t *client = cf_queue_entry(node, cf_broker_client_t, ring_node);
        for (cf_queue_node_t *at = cf_queue_front(&client->order); at;
             at = cf_queue_next(&client->order, at))
            if (cf_broker_queue_serves(worker, s_order_lane(at)->fn))
                return true;
    }
    return false;
}

size_t cf_broker_queue_drop_client(cf_broker_state_t *self, cf_broker_client_t *client)
{
    size_t dropped = 0;
    cf_queue_node_t *node;
    while ((node = cf_queue_front(&client->lanes))) {
        cf_broker_lane_t *lane = cf_queue_entry(node, cf_broker_lane_t, all_node);
        //  The running tasks' references keep it; the queued ones go now.
        lane->refs++;
        cf_queue_node_t *t;
        while ((t = cf_queue_front(&lane->tasks))) {
            cf_broker_task_t *task = cf_queue_entry(t, cf_broker_task_t, node);
            cf_broker_queue_remove(self, task);
            cf_broker_task_free(self, task);
            dropped++;
        }
        s_lane_detach(client, lane);
        cf_broker_queue_lane_put(self, lane);
    }
    return dropped;
}

// ---------------------------------------------------------------------------
//  What workers serve

//  One more (or one fewer) worker serves fn.
static void s_fn_gained(cf_broker_state_t *self, cf_broker_fn_t *fn)
{
    fn->servers++;
    s_fn_unwatch(self, fn);
}

static void s_fn_lost(cf_broker_state_t *self, cf_broker_fn_t *fn, int64_t now)
{
    fn->servers--;
    if (!s_served(self, fn))
        s_fn_watch(self, fn, now);
}

//  The serve-all workers went from some to none, or back: every function
//  with nobody else starts or ends its wait.
static void s_serve_all_changed(cf_broker_state_t *self, int64_t now)
{
    size_t cursor = 0;
    void *value;
    while (cf_idmap_next(self->fn_table, &cursor, NULL, &value)) {
        for (cf_broker_fn_t *fn = value; fn; fn = fn->hash_next) {
            if (s_served(self, fn))
                s_fn_unwatch(self, fn);
            else
                s_fn_watch(self, fn, now);
        }
    }
}

static void s_release_set(cf_broker_state_t *self, cf_idmap_t **set, int64_t now)
{
    size_t cursor = 0;
    void *value;
    while (cf_idmap_next(*set, &cursor, NULL, &value)) {
        s_fn_lost(self, value, now);
        cf_broker_fn_put(self, value);
    }
    cf_idmap_destroy(set);
}

//  Builds the set of names (references taken); NULL when out of memory.
static cf_idmap_t *s_set_new(cf_broker_state_t *self, const cf_proto_names_t *names)
{
    cf_idmap_t *set = cf_idmap_new_dense(names->count ? names->count : 1);
    if (!set)
        return NULL;
    size_t pos = 0;
    cf_proto_str_t name;
    while (cf_proto_names_next(names, &pos, &name)) {
        cf_broker_fn_t *fn = cf_broker_fn_get(self, name.ptr, name.len);
        if (fn && cf_idmap_get(set, fn->id)) {
            cf_broker_fn_put(self, fn);    //  named twice: once is enough
            continue;
        }
        if (fn && cf_idmap_put(set, fn->id, fn) == CF_OK)
            continue;
        if (fn)
            cf_broker_fn_put(self, fn);
        size_t cursor = 0;
        void *value;
        while (cf_idmap_next(set, &cursor, NULL, &value))
            cf_broker_fn_put(self, value);
        cf_idmap_destroy(&set);
        return NULL;
    }
    return set;
}

//  Counts worker among those serving every function, or takes it out.
static void s_count_all(cf_broker_state_t *self, cf_broker_worker_t *worker, bool all, int64_t now)
{
    if (worker->counted_all == all)
        return;
    worker->counted_all = all;
    if (all ? self->serve_all++ == 0 : --self->serve_all == 0)
        s_serve_all_changed(self, now);
}

cf_err_t cf_broker_queue_set_functions(cf_broker_state_t *self, cf_broker_worker_t *worker,
                                       const cf_proto_names_t *names)
{
    int64_t now = cf_clock_now_ms();
    cf_idmap_t *set = NULL;
    if (names->given && !(set = s_set_new(self, names)))
        return CF_ENOMEM;
    if (set) {
        size_t cursor = 0;
        void *value;
        while (cf_idmap_next(set, &cursor, NULL, &value))
            s_fn_gained(self, value);
    }
    if (worker->fns)
        s_release_set(self, &worker->fns, now);
    worker->fns = set;
    s_count_all(self, worker, set == NULL, now);
    return CF_OK;
}

void cf_broker_queue_clear_functions(cf_broker_state_t *self, cf_broker_worker_t *worker)
{
    int64_t now = cf_clock_now_ms();
    if (worker->fns)
        s_release_set(self, &worker->fns, now);
    s_count_all(self, worker, false, now);
}

// ---------------------------------------------------------------------------
//  NoWorker

//  Fails task, which waited its wait for a worker serving its function.
static void s_no_worker(cf_broker_state_t *self, cf_broker_task_t *task, uint32_t wait_ms)
{
    char message[CF_PROTO_MAX_NAME + 128];
    snprintf(message, sizeof message,
             "no connected worker serves function '%s' (waited %" PRIu32 " ms)",
             cf_broker_task_function(task), wait_ms);
    cf_broker_queue_remove(self, task);
    cf_broker_client_runtime_error(self, task, "NoWorker", message);
    self->stats.failed++;
    self->stats.no_worker++;
    if (cf_broker_log_task(self))
        cf_log_warn(S_LOG, "client %s: task %" PRIu64 " failed: %s", task->client->peer.label,
                    task->client_task_id, message);
    cf_broker_task_finish(self, task);
}

//  Looks over fn's queued tasks: those whose wait ended fail; returns when
//  the next one's can end.
static int64_t s_expire_fn(cf_broker_state_t *self, cf_broker_fn_t *fn, int64_t now)
{
    int64_t next = INT64_MAX;
    cf_queue_node_t *ln = cf_queue_front(&fn->lanes), *ln_next;
    for (; ln; ln = ln_next) {
        cf_broker_lane_t *lane = cf_queue_entry(ln, cf_broker_lane_t, fn_node);
        //  Its last task failing would free it under us: hold it.
        lane->refs++;
        uint32_t wait = s_wait_ms(self, lane);
        int64_t fn_end = fn->unserved_since_ms + wait;
        cf_queue_node_t *node = cf_queue_front(&lane->tasks), *after;
        for (; node; node = after) {
            after = cf_queue_next(&lane->tasks, node);
            cf_broker_task_t *task = cf_queue_entry(node, cf_broker_task_t, node);
            int64_t end = task->deadline_ms > fn_end ? task->deadline_ms : fn_end;
            if (end <= now)
                s_no_worker(self, task, wait);
            else if (end < next)
                next = end;
        }
        ln_next = cf_queue_next(&fn->lanes, ln);
        cf_broker_queue_lane_put(self, lane);
    }
    return next;
}

void cf_broker_queue_expire(cf_broker_state_t *self, int64_t now)
{
    cf_queue_node_t *node = cf_queue_front(&self->unserved), *next;
    for (; node; node = next) {
        next = cf_queue_next(&self->unserved, node);
        cf_broker_fn_t *fn = cf_queue_entry(node, cf_broker_fn_t, unserved_node);
        if (fn->next_check_ms > now)
            continue;
        //  A failed task may free its lane, never fn: fn->unserved_node
        //  keeps no reference, so hold one while its tasks go.
        fn->refs++;
        int64_t due = s_expire_fn(self, fn, now);
        fn->next_check_ms = due > now + CF_BROKER_UNSERVED_CHECK_MS
                                ? due
                                : now + CF_BROKER_UNSERVED_CHECK_MS;
        cf_broker_fn_put(self, fn);
    }
}
