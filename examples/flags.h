//  SPDX-License-Identifier: MIT
//
//  What the flags examples share: the country codes, the command line, saving
//  an image, and the main that times a download_many function and prints
//  the classic lines:
//
//      BD BR CD CN DE EG ET FR ID IN IR JP MX NG PH PK RU TR US VN
//      20 downloads in 2.04s
//
//  flags.c (one at a time), flags_threadpool.c and flags_processpool.c
//  (a pool, codes printed as they complete) differ only in download_many,
//  as the sequential, thread pool and process pool versions of the
//  concurrent.futures classic do. They fetch from flags_server, started
//  beforehand on this host (the default URL is its default):
//
//      ./build/examples/flags_server &
//      ./build/examples/flags
//      ./build/examples/flags_threadpool
//      ./build/examples/flags_processpool remote tcp://127.0.0.1:5555
//
//  The task, get_flag, is in download_tasks.c (libdownload_tasks.so for a
//  cluster): it returns the image bytes and the program saves them, so a
//  remote worker's download lands on the client's disk.

#ifndef FLAGS_H
#define FLAGS_H

#include "example.h"

#include "download_tasks.c"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define FLAGS_POP20       "CN IN US ID BR PK NG BD RU JP MX PH VN ET EG DE IR TR CD FR"
#define FLAGS_DEFAULT_URL "http://127.0.0.1:8001/flags"
#define FLAGS_DEFAULT_DIR "downloaded"
#define FLAGS_TIMEOUT_MS  10000
#define FLAGS_MAX_CODES   676

typedef struct {
    const char *url;    //  -u: the server's base URL
    const char *dir;    //  -o: where images go
    char codes[FLAGS_MAX_CODES][3];
    size_t count;
} flags_job_t;

//  Saves data as dir/cc.gif; false after printing why.
static inline bool flags_save(const flags_job_t *job, const char *cc, const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.gif", job->dir, cc);
    FILE *file = fopen(path, "wb");
    bool ok = file && fwrite(data, 1, len, file) == len;
    if (file && fclose(file) != 0)
        ok = false;
    if (!ok)
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
    return ok;
}

//  Fills the job with codes from a space-separated list ("CN IN US"), in
//  sorted order (as the classic does).
static inline void flags_codes(flags_job_t *job, const char *list)
{
    job->count = 0;
    for (const char *c = list; c[0] && c[1] && job->count < FLAGS_MAX_CODES;) {
        if (c[0] == ' ') {
            c++;
            continue;
        }
        job->codes[job->count][0] = c[0];
        job->codes[job->count][1] = c[1];
        job->codes[job->count++][2] = '\0';
        c += 2;
    }
    qsort(job->codes, job->count, sizeof job->codes[0],
          (int (*)(const void *, const void *))strcmp);
}

//  The defaults: the server's default URL, ./downloaded, the 20 codes.
static inline void flags_job_init(flags_job_t *job)
{
    job->url = FLAGS_DEFAULT_URL;
    job->dir = FLAGS_DEFAULT_DIR;
    flags_codes(job, FLAGS_POP20);
}

//  Makes the job's directory; false after saying why.
static inline bool flags_job_ready(const flags_job_t *job, const char *program)
{
    if (mkdir(job->dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: cannot make %s: %s\n", program, job->dir, strerror(errno));
        return false;
    }
    return true;
}

//  Parses -u URL and -o DIR (and -h); *argi is where the executor kind
//  begins. Creates DIR. Returns -1 to go on, or an exit status.
static inline int flags_options(int argc, char **argv, flags_job_t *job, int *argi)
{
    flags_job_init(job);
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help") || i + 1 >= argc
            || (strcmp(argv[i], "-u") && strcmp(argv[i], "-o"))) {
            bool help = !strcmp(argv[i], "-h") || !strcmp(argv[i], "--help");
            fprintf(help ? stdout : stderr,
                    "usage: %s [-u URL] [-o DIR] [threads | "
                    "processes | remote [ENDPOINT]]\n  -u  the flags server (default %s)\n"
                    "  -o  where the images go (default ./%s)\n",
                    argv[0], FLAGS_DEFAULT_URL, FLAGS_DEFAULT_DIR);
            return help ? 0 : 2;
        }
        *(argv[i][1] == 'u' ? &job->url : &job->dir) = argv[i + 1];
        i++;
    }
    *argi = i;
    return flags_job_ready(job, argv[0]) ? -1 : 1;
}

//  Times download_many(job, arg) and prints "N downloads in X.XXs".
typedef size_t(flags_download_many_fn)(const flags_job_t *job, void *arg);
static inline int flags_main(const flags_job_t *job, flags_download_many_fn *download_many,
                             void *arg)
{
    double start = example_seconds();
    size_t count = download_many(job, arg);
    printf("\n%zu downloads in %.2fs\n", count, example_seconds() - start);
    return count == job->count ? 0 : 1;
}

//  The pool version: one get_flag task per code, each image saved and its
//  code printed as it completes (as_completed), whatever the executor.
static inline size_t flags_download_pool(const flags_job_t *job, void *executor)
{
    cf_future_t *futures[FLAGS_MAX_CODES] = { 0 };
    size_t submitted = 0, saved = 0;
    for (size_t i = 0; i < job->count; i++) {
        futures[submitted] = cf_submit(executor, "get_flag", "ssi", job->url, job->codes[i],
                                       FLAGS_TIMEOUT_MS);
        if (!futures[submitted]) {
            fprintf(stderr, "%s: not submitted: %s\n", job->codes[i], cf_last_error());
            continue;
        }
        cf_future_set_tag(futures[submitted++], (void *)job->codes[i]);
    }
    cf_as_completed_t *it = cf_as_completed_new(futures, submitted, -1);
    cf_future_t *f;
    while (it && cf_as_completed_next(it, &f) == CF_OK) {
        const char *cc = cf_future_tag(f);
        const cf_value_t *value;
        size_t len;
        if (cf_future_result(f, -1, &value) != CF_OK) {
            const cf_task_error_t *error = cf_future_error(f);
            fprintf(stderr, "\n%s failed: %s: %s\n", cc, error ? error->type : "Cancelled",
                    error ? error->message : "");
            continue;
        }
        const void *image = cf_value_bin(value, &len);
        if (!image) {
            fprintf(stderr, "\n%s: not found\n", cc);
            continue;
        }
        if (flags_save(job, cc, image, len)) {
            printf("%s ", cc);
            fflush(stdout);
            saved++;
        }
    }
    cf_as_completed_destroy(&it);
    for (size_t i = 0; i < submitted; i++)
        cf_future_release(&futures[i]);
    return saved;
}

//  main of the pool versions: default_kind unless the command line names
//  one; up to 20 workers (as many as codes, like the classic's MAX_WORKERS).
static inline int flags_pool_main(int argc, char **argv, cf_kind_t default_kind)
{
    static flags_job_t job;
    int argi = 0;
    int status = flags_options(argc, argv, &job, &argi);
    if (status >= 0)
        return status;
    int workers = default_kind == CF_THREADS ? 20 : 0;
    cf_executor_t *executor = example_executor(argc, argv, &argi, default_kind, workers);
    if (!executor)
        return 2;
    status = flags_main(&job, flags_download_pool, executor);
    cf_executor_destroy(&executor);
    return status;
}

#endif
