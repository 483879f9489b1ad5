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
//  Downloading is I/O-bound: threads wait on the network, so CF_THREADS.
//  Each URL has its own time limit, gets a bounded number of retries with
//  exponential backoff (on timeouts, connection errors and 5xx/429 answers,
//  never on other 4xx), and fails alone: one dead URL never stops the batch.
//  Progress is printed as each URL finishes.
//
//  Usage: download [-t TIMEOUT_MS] [-r RETRIES] [-w WORKERS] [-o DIR]
//                  [-f FILE] [URL ...]
//    -t  time limit of one attempt (default 10000 ms)
//    -r  retries after a failed attempt (default 2)
//    -w  worker threads (default 8)
//    -o  save each body in DIR (named after the URL's last path segment)
//    -f  read URLs from FILE, one a line ('#' starts a comment)
//  Exit status: 0 when every URL was downloaded, 1 when some failed, 2 for
//  a usage or setup error.

#include "example.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

// ---------------------------------------------------------------------------
//  The task: download(url, timeout_ms, retries, dir or nil) ->
//  {"bytes": n, "attempts": k, "status": http status}

typedef struct {
    size_t bytes;       //  body bytes received in this attempt
    FILE *file;         //  where they go, or NULL to count only
} sink_t;

static size_t s_on_body(char *data, size_t size, size_t count, void *arg)
{
    sink_t *sink = arg;
    size_t len = size * count;
    if (sink->file && fwrite(data, 1, len, sink->file) != len)
        return 0;       //  makes curl fail with CURLE_WRITE_ERROR
    sink->bytes += len;
    return len;
}

//  The file name for url in dir: its last path segment, made safe.
static void s_file_name(const char *url, const char *dir, char *path, size_t size)
{
    const char *start = strstr(url, "://");
    start = start ? start + 3 : url;
    const char *end = start + strcspn(start, "?#");
    const char *name = end;
    while (name > start && name[-1] != '/')
        name--;
    char safe[128];
    size_t len = 0;
    for (const char *c = name; c < end && len + 1 < sizeof safe; c++)
        safe[len++] = (char)((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z')
                             || (*c >= '0' && *c <= '9') || *c == '.' || *c == '-' || *c == '_'
                             ? *c : '_');
    safe[len] = '\0';
    if (len == 0 || !strcmp(safe, ".") || !strcmp(safe, ".."))
        snprintf(safe, sizeof safe, "index.html");
    snprintf(path, size, "%s/%s", dir, safe);
}

static bool s_worth_retrying(CURLcode code, long status)
{
    if (code == CURLE_OK)
        return status >= 500 || status == 429;
    return code == CURLE_OPERATION_TIMEDOUT || code == CURLE_COULDNT_CONNECT
        || code == CURLE_COULDNT_RESOLVE_HOST || code == CURLE_RECV_ERROR
        || code == CURLE_SEND_ERROR || code == CURLE_GOT_NOTHING
        || code == CURLE_PARTIAL_FILE;
}

static void download(cf_call_t *call)
{
    const char *url = cf_arg_str(call, 0);
    int64_t timeout_ms = cf_arg_int(call, 1);
    int64_t retries = cf_arg_int(call, 2);
    const cf_value_t *dir_value = cf_arg(call, 3);
    if (cf_failed(call))
        return;
    const char *dir = cf_value_str(dir_value, NULL);     //  NULL when nil

    CURL *curl = curl_easy_init();
    if (!curl) {
        cf_raise(call, "RuntimeError", "curl_easy_init failed");
        return;
    }
    char error_text[CURL_ERROR_SIZE];
    char path[4096];
    sink_t sink = {0};
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);       //  threads: no SIGALRM
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_text);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, s_on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "cfutures-download-example/0.1");

    CURLcode code = CURLE_OK;
    long status = 0;
    int64_t attempt = 0;
    for (;;) {
        attempt++;
        sink.bytes = 0;
        sink.file = NULL;
        error_text[0] = '\0';
        if (dir) {
            s_file_name(url, dir, path, sizeof path);
            sink.file = fopen(path, "wb");
            if (!sink.file) {
                cf_raise(call, "OSError", "cannot write %s: %s", path, strerror(errno));
                break;
            }
        }
        code = curl_easy_perform(curl);
        status = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (sink.file && fclose(sink.file) != 0 && code == CURLE_OK) {
            cf_raise(call, "OSError", "cannot write %s: %s", path, strerror(errno));
            break;
        }
        if (code == CURLE_OK && status < 400) {
            cf_returnf(call, "{sUsLsl}", "bytes", (uint64_t)sink.bytes, "attempts", attempt,
                       "status", status);
            break;
        }
        if (attempt > retries || !s_worth_retrying(code, status)) {
            const char *tries = attempt == 1 ? "attempt" : "attempts";
            if (code == CURLE_OPERATION_TIMEDOUT)
                cf_raise(call, "TimeoutError", "no answer within %lld ms (%lld %s)",
                         (long long)timeout_ms, (long long)attempt, tries);
            else if (code != CURLE_OK)
                cf_raise(call, "URLError", "%s (%lld %s)",
                         error_text[0] ? error_text : curl_easy_strerror(code),
                         (long long)attempt, tries);
            else
                cf_raise(call, "HTTPError", "HTTP %ld (%lld %s)", status, (long long)attempt,
                         tries);
            if (dir)
                unlink(path);
            break;
        }
        //  Exponential backoff: 100 ms, 200 ms, 400 ms ... at most 5 s, so a
        //  struggling server is not hammered by every thread at once.
        int64_t backoff_ms = 100LL << (attempt - 1 < 6 ? attempt - 1 : 6);
        s_example_sleep_ms(backoff_ms < 5000 ? backoff_ms : 5000);
    }
    curl_easy_cleanup(curl);
}
CF_TASK(download);

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
                    "[-f FILE] [URL ...]\n");
}

int main(int argc, char **argv)
{
    int timeout_ms = 10000, retries = 2, workers = 8;
    const char *dir = NULL;
    url_list_t list = {0};
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
    for (int i = optind; i < argc; i++) {
        if (!s_add_url(&list, argv[i])) {
            fprintf(stderr, "download: out of memory\n");
            goto done;
        }
    }
    if (list.count == 0) {
        s_usage();
        goto done;
    }
    //  Once, before any thread: curl's global state is not thread-safe.
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "download: curl_global_init failed\n");
        goto done;
    }
    status = 0;

    cf_executor_t *executor = cf_executor_new(CF_THREADS, &(cf_options_t){.max_workers = workers});
    if (!executor) {
        fprintf(stderr, "download: %s\n", cf_last_error());
        status = 2;
        goto cleanup;
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
cleanup:
    curl_global_cleanup();
done:
    for (size_t i = 0; i < list.count; i++)
        free(list.urls[i]);
    free(list.urls);
    return status;
}
