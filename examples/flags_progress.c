//  SPDX-License-Identifier: MIT
//
//  flags_progress: the flags download with error handling, retries and a
//  progress bar, the C version of the classic flags2 example with tqdm:
//
//      with ThreadPoolExecutor(max_workers=concur_req) as executor:
//          to_do_map = {executor.submit(download_one, cc, ...): cc for cc in cc_list}
//          done_iter = tqdm.tqdm(as_completed(to_do_map), total=len(cc_list))
//          for future in done_iter:
//              ...   # counter[status] += 1
//
//  Each code is one get_flag task, submitted with retries that also cover
//  errors the task raised (retry_on_error: a 503 from the server is worth
//  another try, a 404 is an answer and is not retried). The bar is the
//  library's cf_progress_bar, driven by the executor's progress hook (each
//  completed future moves it, on the thread that completed it) while this
//  thread collects the results with as_completed: drawn in place on a
//  terminal, as plain lines in a pipe or a log.
//
//      flags_progress [-u URL] [-o DIR] [-a] [-l N] [-m WORKERS] [-r RETRIES] [-v]
//                     [threads | processes | remote [ENDPOINT]]
//        -a  every two-letter code (676), most of them not found
//        -l  only the first N codes
//        -m  concurrent requests (default 8: threads)
//        -r  retries after an error (default 2)
//        -v  print each error
//  Then the counts, as flags2 prints them:
//      --------------------
//      20 flags downloaded.
//      656 not found.
//      Elapsed time: 1.80s
//  Exit status: 0 when nothing failed (not found is no failure), 1 when
//  some codes ended in an error, 2 for a usage error.

#include "flags.h"

typedef struct {
    int workers, retries, limit;
    bool all, verbose;
} s_options_t;

static int s_usage(bool help)
{
    fprintf(help ? stdout : stderr,
            "usage: flags_progress [-u URL] [-o DIR] [-a] [-l N] [-m WORKERS] [-r RETRIES] "
            "[-v] [threads | processes | remote [ENDPOINT]]\n");
    return help ? 0 : 2;
}

//  The flags in any order, up to the executor kind: -1 to go on (*argi at
//  the kind), or an exit status.
static int s_options(int argc, char **argv, s_options_t *options, flags_job_t *job, int *argi)
{
    *options = (s_options_t){ .workers = 8, .retries = 2 };
    flags_job_init(job);
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *arg = argv[i];
        int *number = !strcmp(arg, "-m")   ? &options->workers
                      : !strcmp(arg, "-r") ? &options->retries
                      : !strcmp(arg, "-l") ? &options->limit
                                           : NULL;
        const char **text = !strcmp(arg, "-u") ? &job->url : !strcmp(arg, "-o") ? &job->dir : NULL;
        if (!strcmp(arg, "-a"))
            options->all = true;
        else if (!strcmp(arg, "-v"))
            options->verbose = true;
        else if (text && i + 1 < argc)
            *text = argv[++i];
        else if (number && i + 1 < argc) {
            char *end;
            long value = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i] || value < 0 || value > 1000) {
                fprintf(stderr, "flags_progress: %s needs a number from 0 to 1000\n", arg);
                return 2;
            }
            *number = (int)value;
        }
        else
            return s_usage(!strcmp(arg, "-h") || !strcmp(arg, "--help"));
    }
    *argi = i;
    return flags_job_ready(job, argv[0]) ? -1 : 1;
}

int main(int argc, char **argv)
{
    s_options_t options;
    static flags_job_t job;
    int argi = 0;
    int status = s_options(argc, argv, &options, &job, &argi);
    if (status >= 0)
        return status;
    if (options.all) {
        char list[FLAGS_MAX_CODES * 3 + 1] = "";
        for (char a = 'A'; a <= 'Z'; a++)
            for (char b = 'A'; b <= 'Z'; b++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%c%c ", a, b);
        flags_codes(&job, list);
    }
    if (options.limit > 0 && (size_t)options.limit < job.count)
        job.count = (size_t)options.limit;
    cf_executor_t *executor = example_executor(argc, argv, &argi, CF_THREADS,
                                               options.workers ? options.workers : 1);
    if (!executor)
        return 2;

    double start = example_seconds();
    cf_task_opts_t task = { .retries = options.retries ? options.retries : -1,
                            .retry_on_error = true };
    static cf_future_t *futures[FLAGS_MAX_CODES];
    size_t submitted = 0;
    cf_progress_bar_t *bar = cf_progress_bar_new(stderr, "flags", job.count, CF_PROGRESS_BAR_AUTO);
    cf_executor_on_progress(executor, cf_progress_bar_on_progress, bar);
    for (size_t i = 0; i < job.count; i++) {
        futures[submitted] = cf_submit_with(executor, &task, "get_flag", "ssi", job.url,
                                            job.codes[i], FLAGS_TIMEOUT_MS);
        if (futures[submitted])
            cf_future_set_tag(futures[submitted++], job.codes[i]);
    }
    size_t ok = 0, not_found = 0, errors = job.count - submitted;
    cf_as_completed_t *it = cf_as_completed_new(futures, submitted, -1);
    cf_future_t *f;
    while (it && cf_as_completed_next(it, &f) == CF_OK) {
        const cf_value_t *value;
        size_t len;
        const void *image = NULL;
        if (cf_future_result(f, -1, &value) != CF_OK) {
            errors++;
            const cf_task_error_t *error = cf_future_error(f);
            if (options.verbose)
                fprintf(stderr, "\n*** Error for %s: %s: %s\n", (char *)cf_future_tag(f),
                        error ? error->type : "Cancelled", error ? error->message : "");
        }
        else if (!(image = cf_value_bin(value, &len)))
            not_found++;
        else if (flags_save(&job, cf_future_tag(f), image, len))
            ok++;
        else
            errors++;
    }
    cf_as_completed_destroy(&it);
    for (size_t i = 0; i < submitted; i++)
        cf_future_release(&futures[i]);
    //  The executor first: once it is destroyed no completion can call the
    //  hook, and the bar can go.
    cf_executor_destroy(&executor);
    cf_progress_bar_destroy(&bar);

    printf("--------------------\n%zu flag%s downloaded.\n", ok, ok == 1 ? "" : "s");
    if (not_found)
        printf("%zu not found.\n", not_found);
    if (errors)
        printf("%zu error%s.\n", errors, errors == 1 ? "" : "s");
    printf("Elapsed time: %.2fs\n", example_seconds() - start);
    return errors ? 1 : 0;
}
