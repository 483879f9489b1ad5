//  SPDX-License-Identifier: MIT
//
//  flags: the sequential version of the classic flags download, the
//  baseline the pool versions are measured against:
//
//      def download_many(cc_list):
//          for cc in sorted(cc_list):
//              image = get_flag(cc)
//              save_flag(image, f'{cc}.gif')
//              print(cc, end=' ', flush=True)
//          return len(cc_list)
//
//  One request at a time: about 20 x the server's delay. It calls the same
//  get_flag task function the pools run, directly, through a CF_THREADS
//  executor of one worker (a task is only ever run through an executor);
//  waiting for each result before the next is what makes it sequential.
//
//  Usage: flags [-u URL] [-o DIR]   (see flags.h; start flags_server first)

#include "flags.h"

static size_t s_download_many(const flags_job_t *job, void *executor)
{
    size_t saved = 0;
    for (size_t i = 0; i < job->count; i++) {
        const char *cc = job->codes[i];
        cf_future_t *f = cf_submit(executor, "get_flag", "ssi", job->url, cc, FLAGS_TIMEOUT_MS);
        const cf_value_t *value = NULL;
        size_t len = 0;
        const void *image = NULL;
        if (f && cf_future_result(f, -1, &value) == CF_OK)
            image = cf_value_bin(value, &len);
        if (!image) {
            const cf_task_error_t *error = f ? cf_future_error(f) : NULL;
            fprintf(stderr, "\n%s failed: %s\n", cc, error ? error->message : "not found");
        }
        else if (flags_save(job, cc, image, len)) {
            printf("%s ", cc);
            fflush(stdout);
            saved++;
        }
        cf_future_release(&f);
    }
    return saved;
}

int main(int argc, char **argv)
{
    static flags_job_t job;
    int argi = 0;
    int status = flags_options(argc, argv, &job, &argi);
    if (status >= 0)
        return status;
    if (argi < argc) {
        fprintf(stderr, "usage: flags [-u URL] [-o DIR]   (sequential: no executor kind)\n");
        return 2;
    }
    cf_executor_t *executor = cf_executor_new(CF_THREADS, &(cf_options_t){ .max_workers = 1 });
    if (!executor) {
        fprintf(stderr, "flags: %s\n", cf_last_error());
        return 2;
    }
    status = flags_main(&job, s_download_many, executor);
    cf_executor_destroy(&executor);
    return status;
}
