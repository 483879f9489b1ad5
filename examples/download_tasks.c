//  SPDX-License-Identifier: MIT
//
//  The network task library: download (a URL with retries and backoff) and
//  get_flag (one flag image for the flags examples), with libcurl.
//
//  Like tasks_example.c it is built twice: as libdownload_tasks.so, which a
//  cluster loads (cf-worker --tasks ./libdownload_tasks.so), and #included
//  by the programs that use it (download.c, flags*.c), so the same
//  functions are registered in the program for CF_THREADS and
//  CF_PROCESSES. That is what lets `download remote` and `flags_processpool
//  remote` work like the local kinds: the task travels by name.
//
//  curl_global_init is not thread-safe in every libcurl, and a task library
//  has no main: a constructor calls it once when the library (or the
//  program including this file) is loaded, before any worker thread runs.
//  Results never carry a pointer: bodies travel as bytes, so a remote
//  worker's download reaches the client intact.

#include "cfutures.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__attribute__((constructor)) static void s_net_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

//  Sleeps ms milliseconds, resuming after signals.
static void s_net_sleep_ms(int64_t ms)
{
    struct timespec ts = { .tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L };
    while (ms > 0 && nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

// ---------------------------------------------------------------------------
//  The task: download(url, timeout_ms, retries, dir or nil) ->
//  {"bytes": n, "attempts": k, "status": http status}

typedef struct {
    size_t bytes;    //  body bytes received in this attempt
    FILE *file;      //  where they go, or NULL to count only
} sink_t;

static size_t s_on_body(char *data, size_t size, size_t count, void *arg)
{
    sink_t *sink = arg;
    size_t len = size * count;
    if (sink->file && fwrite(data, 1, len, sink->file) != len)
        return 0;    //  makes curl fail with CURLE_WRITE_ERROR
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
                                     || (*c >= '0' && *c <= '9') || *c == '.' || *c == '-'
                                     || *c == '_'
                                 ? *c
                                 : '_');
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
           || code == CURLE_SEND_ERROR || code == CURLE_GOT_NOTHING || code == CURLE_PARTIAL_FILE;
}

static void download(cf_call_t *call)
{
    const char *url = cf_arg_str(call, 0);
    int64_t timeout_ms = cf_arg_int(call, 1);
    int64_t retries = cf_arg_int(call, 2);
    const cf_value_t *dir_value = cf_arg(call, 3);
    if (cf_failed(call))
        return;
    const char *dir = cf_value_str(dir_value, NULL);    //  NULL when nil

    CURL *curl = curl_easy_init();
    if (!curl) {
        cf_raise(call, "RuntimeError", "curl_easy_init failed");
        return;
    }
    char error_text[CURL_ERROR_SIZE];
    char path[4096];
    sink_t sink = { 0 };
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);    //  threads: no SIGALRM
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
                         error_text[0] ? error_text : curl_easy_strerror(code), (long long)attempt,
                         tries);
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
        s_net_sleep_ms(backoff_ms < 5000 ? backoff_ms : 5000);
    }
    curl_easy_cleanup(curl);
}
CF_TASK(download);

// ---------------------------------------------------------------------------
//  The task: get_flag(base_url, cc, timeout_ms) -> the image bytes of
//  BASE_URL/cc/cc.gif (cc in lower case), or nil when the server answers
//  404 (a country without a flag is an answer, not an error). Any other
//  HTTP status raises HTTPError, a network failure URLError or
//  TimeoutError: errors a caller may retry (cf_task_opts_t.retry_on_error).

//  Caps a flag's size: a server sending an endless body fails the task.
#define S_FLAG_MAX_BYTES (4 * 1024 * 1024)

typedef struct {
    char *data;
    size_t len;
} s_body_t;

static size_t s_on_flag_body(char *data, size_t size, size_t count, void *arg)
{
    s_body_t *body = arg;
    size_t len = size * count;
    if (body->len + len > S_FLAG_MAX_BYTES)
        return 0;
    char *bigger = realloc(body->data, body->len + len);
    if (!bigger)
        return 0;
    memcpy(bigger + body->len, data, len);
    body->data = bigger;
    body->len += len;
    return len;
}

static void get_flag(cf_call_t *call)
{
    const char *base_url = cf_arg_str(call, 0);
    const char *cc = cf_arg_str(call, 1);
    int64_t timeout_ms = cf_arg_int(call, 2);
    if (cf_failed(call))
        return;
    char lower[8];
    size_t n = 0;
    for (; cc[n] && n + 1 < sizeof lower; n++)
        lower[n] = (char)(cc[n] >= 'A' && cc[n] <= 'Z' ? cc[n] - 'A' + 'a' : cc[n]);
    lower[n] = '\0';
    if (n != 2 || lower[0] < 'a' || lower[0] > 'z' || lower[1] < 'a' || lower[1] > 'z') {
        cf_raise(call, "ValueError", "not a country code: '%s'", cc);
        return;
    }
    char url[2048];
    snprintf(url, sizeof url, "%s/%s/%s.gif", base_url, lower, lower);
    CURL *curl = curl_easy_init();
    if (!curl) {
        cf_raise(call, "RuntimeError", "curl_easy_init failed");
        return;
    }
    char error_text[CURL_ERROR_SIZE] = "";
    s_body_t body = { 0 };
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_text);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, s_on_flag_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    CURLcode code = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(curl);
    if (code == CURLE_OPERATION_TIMEDOUT)
        cf_raise(call, "TimeoutError", "%s: no answer within %lld ms", url, (long long)timeout_ms);
    else if (code != CURLE_OK)
        cf_raise(call, "URLError", "%s: %s", url,
                 error_text[0] ? error_text : curl_easy_strerror(code));
    else if (status == 404)
        cf_return_nil(call);
    else if (status != 200)
        cf_raise(call, "HTTPError", "%s: HTTP %ld", url, status);
    else
        cf_return_bytes(call, body.data ? body.data : "", body.len);
    free(body.data);
}
CF_TASK(get_flag);
