//  Tasks as the executor front makes them and the back ends take them.

#include "cf_task.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

//  A task as the front makes it: inside its future's allocation. Small
//  arguments are kept inline (they then live as long as the future, so the
//  limit keeps that cheap); larger ones get their own allocation, freed with
//  the task: a copy, or the caller's block itself (cf_task_new_taking).
//  A client holds one per outstanding task: every byte here counts
//  (bench: client.mem.bookkeeping).
typedef struct {
    cf_task_t pub;
    _Alignas(8) uint8_t data[];
} s_task_t;

//  taken: args is a malloc'd block the task adopts (not copied, not inline).
static cf_task_t *s_new(const char *function, size_t function_len, const void *args,
                        size_t args_len, bool taken, size_t backend_size)
{
    bool inline_args = !taken && args_len <= CF_TASK_INLINE_ARGS_MAX;
    backend_size = (backend_size + 7) & ~(size_t)7;
    if (backend_size > UINT16_MAX || args_len > UINT32_MAX)
        return NULL;
    s_task_t *task;
    cf_future_t *f = cf_future_new_with(function, function_len,
                                        sizeof *task + backend_size + (inline_args ? args_len : 0),
                                        (void **)&task);
    if (!f)
        return NULL;
    task->pub.backend_size_ = (uint16_t)backend_size;
    memset(task->data, 0, backend_size);
    task->pub.args_owned_ = !inline_args;
    uint8_t *copy = (uint8_t *)args;
    if (!taken) {
        copy = inline_args ? task->data + backend_size : malloc(args_len ? args_len : 1);
        if (!copy) {
            cf_future_release(&f);
            return NULL;
        }
        if (args_len)
            memcpy(copy, args, args_len);
    }
    task->pub.future = f;
    task->pub.args = copy;
    task->pub.args_len = (uint32_t)args_len;
    task->pub.retries = -1;
    task->pub.timeout_ms = 0;
    task->pub.flags = 0;
    task->pub.priority = 0;
    task->pub.wait_ms = 0;
    return &task->pub;
}

cf_task_t *cf_task_new(const char *function, size_t function_len, const void *args, size_t args_len,
                       size_t backend_size)
{
    return s_new(function, function_len, args, args_len, false, backend_size);
}

cf_task_t *cf_task_new_taking(const char *function, size_t function_len, uint8_t **args,
                              size_t args_len, size_t backend_size)
{
    cf_task_t *task = s_new(function, function_len, *args, args_len, true, backend_size);
    if (!task)
        free(*args);
    *args = NULL;
    return task;
}

void *cf_task_backend(cf_task_t *task)
{
    s_task_t *t = (s_task_t *)task;
    return t && t->pub.backend_size_ ? t->data : NULL;
}

cf_task_t *cf_task_of_backend(void *backend)
{
    return &((s_task_t *)((uint8_t *)backend - offsetof(s_task_t, data)))->pub;
}

cf_task_t *cf_task_of(cf_future_t *f)
{
    return cf_future_extra(f);
}

void cf_task_destroy(cf_task_t **ptask)
{
    if (!ptask || !*ptask)
        return;
    s_task_t *task = (s_task_t *)*ptask;
    *ptask = NULL;
    if (task->pub.args_owned_)
        free((void *)task->pub.args);
    //  Last: the task lives in the future's memory.
    cf_future_t *f = task->pub.future;
    cf_future_release(&f);
}
