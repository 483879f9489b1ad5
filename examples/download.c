//  SPDX-License-Identifier: MIT
//
//  download: many URLs at once with libcurl on threads, the C version of the
//  classic ThreadPoolExecutor downloader:
//
//      with ThreadPoolExecutor(max_workers=8) as executor:
//          futures = {executor.submit(download, url): url for url in urls}
//          for done, future in enumerate(as_completed(futures), 1):
//              url = futures[future]
//              try:
//                  size = future.result()
//                  print(f"[{done}/{len(urls)}] ok {url} {size} bytes")
//              except Exception as error:
//                  print(f"[{done}/{len(urls)}] FAILED {url}: {error!r}")
//
//  Downloading is I/O-bound: threads wait on the network, so CF_THREADS by
//  default; `processes` and `remote [ENDPOINT]` (workers loaded with
//  libdownload_tasks.so, where the download task lives) work the same, as
//  in every example.
//  Each URL has its own time limit, gets a bounded number of retries with
//  exponential backoff (on timeouts, connection errors and 5xx/429 answers,
//  never on other 4xx), and fails alone: one dead URL never stops the batch.
//  Progress is printed as each URL finishes.
//
//  Usage: download [-t TIMEOUT_MS] [-r RETRIES] [-w WORKERS] [-o DIR]
//                  [-f FILE] [threads | processes | remote [ENDPOINT]] [URL ...]
//    -t  time limit of one attempt (default 10000 ms)
//    -r  retries after a failed attempt (default 2)
//    -w  worker threads (default 8)
//    -o  save each body in DIR (named after the URL's last path segment)
//    -f  read URLs from FILE, one a line ('#' starts a comment)
//  With -o and remote workers, DIR is on the workers' hosts.
//  Exit status: 0 when every URL was downloaded, 1 when some failed, 2 for
//  a usage or setup error.

#include "example.h"

#include "download_tasks.c"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

// ---------------------------------------------------------------------------
//  The program

typedef struct {
    char **urls;
    size_t count, cap;
} url_list_t;

static bool s_add_url(url_list_t *list, const char *url)
{
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 16;
        char **bigger = realloc(list->urls, cap * sizeof *bigger);
        if (!bigger)
            return false;
        list->urls = bigger;
        list->cap = cap;
    }
    list->urls[list->count] = strdup(url);
    return list->urls[list->count++] != NULL;
}

static bool s_read_urls(url_list_t *list, const char *path)
{
    FILE *file = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!file) {
        fprintf(stderr, "download: cannot read %s: %s\n", path, strerror(errno));
        return false;
    }
    char line[8192];
    bool ok = true;
    while (ok && fgets(line, sizeof line, file)) {
        char *comment = strchr(line, '#');
        if (comment)
            *comment = '\0';
        char *start = line + strspn(line, " \t\r\n");
        size_t len = strcspn(start, " \t\r\n");
        start[len] = '\0';
        if (len > 0)
            ok = s_add_url(list, start);
    }
    if (file != stdin)
        fclose(file);
    return ok;
}

static bool s_parse_int(const char *text, int min, int *out)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *end || end == text || value < min || value > 1000000000L)
        return false;
    *out = (int)value;
    return true;
}

static void s_usage(void)
{
    fprintf(stderr, "usage: download [-t TIMEOUT_MS] [-r RETRIES] [-w WORKERS] [-o DIR] "
                    "[-f FILE] [threads | processes | remote [ENDPOINT]] [URL ...]\n");
}

int main(int argc, char **argv)
{
    int timeout_ms = 10000, retries = 2, workers = 8;
    const char *dir = NULL;
    url_list_t list = { 0 };
    int status = 2;
    int opt;
    while ((opt = getopt(argc, argv, "t:r:w:o:f:h")) != -1) {
        switch (opt) {
        case 't':
            if (!s_parse_int(optarg, 1, &timeout_ms)) {
                s_usage();
                goto done;
            }
            break;
        case 'r':
            if (!s_parse_int(optarg, 0, &retries)) {
                s_usage();
                goto done;
            }
            break;
        case 'w':
            if (!s_parse_int(optarg, 1, &workers)) {
                s_usage();
                goto done;
            }
            break;
        case 'o':
            dir = optarg;
            break;
        case 'f':
            if (!s_read_urls(&list, optarg))
                goto done;
            break;
        default:
            s_usage();
            goto done;
        }
    }
    //  The executor kind, as the other examples take it, before the URLs.
    int argi = optind;
    bool has_kind = argi < argc
                    && (!strcmp(argv[argi], "threads") || !strcmp(argv[argi], "processes")
                        || !strcmp(argv[argi], "remote"));
    int kind_argi = argi;
    if (has_kind) {
        argi++;
        if (!strcmp(argv[kind_argi], "remote") && argi < argc && strstr(argv[argi], "://")
            && strncmp(argv[argi], "http", 4) != 0)
            argi++;    //  remote's endpoint (tcp://, ipc://), not a URL
    }
    for (int i = argi; i < argc; i++) {
        if (!s_add_url(&list, argv[i])) {
            fprintf(stderr, "download: out of memory\n");
            goto done;
        }
    }
    if (list.count == 0) {
        s_usage();
        goto done;
    }
    status = 0;
    //  curl_global_init ran before main (download_tasks.c), before any
    //  thread or worker process.
    cf_executor_t *executor = has_kind
                                  ? example_executor(argc, argv, &kind_argi, CF_THREADS, workers)
                                  : cf_executor_new(CF_THREADS,
                                                    &(cf_options_t){ .max_workers = workers });
    if (!executor) {
        if (!has_kind)
            fprintf(stderr, "download: %s\n", cf_last_error());
        status = 2;
        goto done;
    }
    double start = example_seconds();
    cf_future_t **futures = calloc(list.count, sizeof *futures);
    size_t submitted = 0;
    for (size_t i = 0; futures && i < list.count; i++) {
        futures[submitted] = cf_submit(executor, "download", "siis", list.urls[i], timeout_ms,
                                       retries, dir);
        if (!futures[submitted]) {
            printf("FAILED %s: not submitted: %s\n", list.urls[i], cf_last_error());
            status = 1;
            continue;
        }
        cf_future_set_tag(futures[submitted++], list.urls[i]);
    }
    cf_as_completed_t *it = futures ? cf_as_completed_new(futures, submitted, -1) : NULL;
    if (!it) {
        fprintf(stderr, "download: %s\n", cf_last_error());
        status = 2;
    }
    cf_future_t *future;
    size_t finished = 0, failed = 0;
    uint64_t total_bytes = 0;
    while (it && cf_as_completed_next(it, &future) == CF_OK) {
        const char *url = cf_future_tag(future);
        const cf_value_t *result;
        finished++;
        if (cf_future_result(future, -1, &result) == CF_OK) {
            uint64_t bytes = 0;
            int64_t attempts = 0;
            cf_value_get_uint(cf_value_get(result, "bytes"), &bytes);
            cf_value_get_int(cf_value_get(result, "attempts"), &attempts);
            total_bytes += bytes;
            printf("[%zu/%zu] ok %s %llu bytes (%lld %s)\n", finished, submitted, url,
                   (unsigned long long)bytes, (long long)attempts,
                   attempts == 1 ? "attempt" : "attempts");
        }
        else {
            failed++;
            printf("[%zu/%zu] FAILED %s: ", finished, submitted, url);
            example_print_error(cf_future_error(future));
            printf("\n");
        }
        fflush(stdout);
    }
    cf_as_completed_destroy(&it);
    printf("%zu downloaded (%llu bytes), %zu failed, in %.2f s\n", finished - failed,
           (unsigned long long)total_bytes, failed, example_seconds() - start);
    if (failed && status == 0)
        status = 1;
    for (size_t i = 0; futures && i < submitted; i++)
        cf_future_release(&futures[i]);
    free(futures);
    cf_executor_destroy(&executor);
done:
    for (size_t i = 0; i < list.count; i++)
        free(list.urls[i]);
    free(list.urls);
    return status;
}
