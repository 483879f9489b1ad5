//  SPDX-License-Identifier: MIT
//
//  as_completed: results as they finish, failures included, the C version of
//
//      def task(name, delay, fail=False):
//          time.sleep(delay)
//          if fail:
//              raise ValueError(f"{name} failed")
//          return f"{name} done"
//
//      with ThreadPoolExecutor() as executor:
//          futures = {executor.submit(task, "A", 0.2): "A",
//                     executor.submit(task, "B", 0.1, True): "B",
//                     executor.submit(task, "C", 0.3): "C"}
//          for future in as_completed(futures):
//              name = futures[future]
//              try:
//                  print(future.result())
//              except Exception as error:
//                  print(f"{name} raised {error!r}")
//
//  Prints B's error first (it finishes first), then "A done", then "C done".
//  The dict from future to name is the future's tag here. timed_task is in
//  tasks_example.c.
//
//  Usage: as_completed [threads | processes | remote [tcp://HOST:PORT]]

#include "example.h"

int main(int argc, char **argv)
{
    int argi = 1;
    cf_executor_t *executor = example_executor(argc, argv, &argi, CF_THREADS, 3);
    if (!executor)
        return 2;

    static const struct {
        const char *name;
        int delay_ms;
        bool fail;
    } tasks[] = { { "A", 200, false }, { "B", 100, true }, { "C", 300, false } };
    cf_future_t *futures[3] = { NULL };
    cf_as_completed_t *it = NULL;
    int status = 1;
    for (int i = 0; i < 3; i++) {
        futures[i] = cf_submit(executor, "timed_task", "sib", tasks[i].name, tasks[i].delay_ms,
                               tasks[i].fail);
        if (!futures[i]) {
            fprintf(stderr, "submit failed: %s\n", cf_last_error());
            goto done;
        }
        cf_future_set_tag(futures[i], (void *)tasks[i].name);
    }

    it = cf_as_completed_new(futures, 3, -1);
    if (!it) {
        fprintf(stderr, "as_completed failed: %s\n", cf_last_error());
        goto done;
    }
    cf_future_t *future;
    while (cf_as_completed_next(it, &future) == CF_OK) {
        const char *name = cf_future_tag(future);
        const char *text;
        if (cf_future_str(future, -1, &text) == CF_OK)
            printf("%s\n", text);
        else {
            const cf_task_error_t *error = cf_future_error(future);
            if (error)
                printf("%s raised %s('%s')\n", name, error->type, error->message);
            else
                printf("%s was cancelled\n", name);
        }
    }
    status = 0;
done:
    cf_as_completed_destroy(&it);
    for (int i = 0; i < 3; i++)
        cf_future_release(&futures[i]);
    cf_executor_destroy(&executor);
    return status;
}
