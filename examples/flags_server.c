//  SPDX-License-Identifier: MIT
//
//  flags_server: the local HTTP server the flags examples download from, so
//  they run anywhere without the internet (and never touch it). It serves
//  one small made-up GIF per country code at /flags/cc/cc.gif, like the
//  server of the classic concurrent.futures flags examples, with a delay per
//  answer that stands in for a real network (that is what threads overlap)
//  and, on demand, errors to retry.
//
//  Usage: flags_server [-p PORT] [-d DELAY_MS] [-e EVERY] [-f]
//    -p  port on 127.0.0.1 (default 8001; 0 picks a free one)
//    -d  milliseconds before each answer (default 100)
//    -e  answer "503 Service Unavailable" to every EVERYth request (0: never)
//    -f  answer 503 to the first request for each flag (a flaky server that
//        a single retry always gets past: what tests want)
//  Prints "ready url=http://127.0.0.1:PORT/flags" once it listens (scripts
//  and tests read the port from it). Codes it does not know get 404.
//  SIGINT or SIGTERM stop it; it then prints how many requests it served.
//  Loopback only: it is a test fixture, not a web server.

#define _GNU_SOURCE    //  accept4

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

//  The 20 most populous countries (the examples' default list) and some
//  more, so the --all runs of flags_progress find some and miss others.
static const char s_known[] = "cn in us id br pk ng bd ru jp mx ph vn et eg de ir tr cd fr "
                              "th gb it za tz mm kr co ke es ar dz sd ug ua iq ca pl ma sa "
                              "uz pe af my ao gh mz ye np ve";

static volatile sig_atomic_t s_stopping = 0;
static atomic_uint s_requests = 0, s_errors = 0;
static int s_delay_ms = 100;
static unsigned s_error_every = 0;
static bool s_fail_first = false;
static atomic_bool s_asked[26 * 26];    //  -f: codes asked for once already

static void s_on_stop(int sig)
{
    (void)sig;
    s_stopping = 1;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
    while (ms > 0 && nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static bool s_send_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static void s_answer(int fd, int status, const char *reason, const void *body, size_t len)
{
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, reason, status == 200 ? "image/gif" : "text/plain", len);
    if (s_send_all(fd, head, (size_t)n))
        s_send_all(fd, body, len);
}

//  The image for cc: "GIF89a" and bytes that depend on the code, of a size
//  that depends on it too (1-3 KB), so a mixed-up file is noticed.
static size_t s_image(const char *cc, char *out, size_t size)
{
    size_t len = 1000 + (size_t)((cc[0] * 31 + cc[1]) % 2000);
    if (len > size)
        len = size;
    memcpy(out, "GIF89a", 6);
    for (size_t i = 6; i < len; i++)
        out[i] = (char)(cc[i % 2] + i);
    return len;
}

static void *s_serve(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char request[2048] = "";
    size_t got = 0;
    //  Read the request line (and whatever comes with it) up to the blank line.
    while (got + 1 < sizeof request && !strstr(request, "\r\n\r\n")) {
        ssize_t n = recv(fd, request + got, sizeof request - 1 - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        request[got] = '\0';
    }
    request[got] = '\0';
    unsigned number = atomic_fetch_add(&s_requests, 1) + 1;
    s_sleep_ms(s_delay_ms);
    char cc[3] = "";
    //  GET /flags/cc/cc.gif HTTP/1.x
    if (sscanf(request, "GET /flags/%2[a-z]/", cc) != 1 || strlen(cc) != 2) {
        s_answer(fd, 404, "Not Found", "no such page\n", 13);
    }
    else if ((s_error_every && number % s_error_every == 0)
             || (s_fail_first
                 && !atomic_exchange(&s_asked[(cc[0] - 'a') * 26 + cc[1] - 'a'], true))) {
        atomic_fetch_add(&s_errors, 1);
        s_answer(fd, 503, "Service Unavailable", "try again\n", 10);
    }
    else if (!strstr(s_known, cc)) {
        s_answer(fd, 404, "Not Found", "no such flag\n", 13);
    }
    else {
        char image[4096];
        size_t len = s_image(cc, image, sizeof image);
        s_answer(fd, 200, "OK", image, len);
    }
    close(fd);
    return NULL;
}

static int s_listen(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int on = 1;
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0
        || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 128) < 0) {
        fprintf(stderr, "flags_server: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return -1;
    }
    return fd;
}

static bool s_number(const char *text, long max, int *out)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *end || end == text || value < 0 || value > max)
        return false;
    *out = (int)value;
    return true;
}

int main(int argc, char **argv)
{
    int port = 8001, every = 0, opt;
    while ((opt = getopt(argc, argv, "p:d:e:fh")) != -1) {
        bool ok = (opt == 'f' && (s_fail_first = true))
                  || (opt == 'p' && s_number(optarg, 65535, &port))
                  || (opt == 'd' && s_number(optarg, 60000, &s_delay_ms))
                  || (opt == 'e' && s_number(optarg, 1000000, &every));
        if (!ok) {
            fprintf(opt == 'h' ? stdout : stderr,
                    "usage: flags_server [-p PORT] [-d DELAY_MS] [-e EVERY] [-f]\n");
            return opt == 'h' ? 0 : 2;
        }
    }
    s_error_every = (unsigned)every;
    int listen_fd = s_listen(port);
    if (listen_fd < 0)
        return 1;
    struct sockaddr_in addr;
    socklen_t addr_len = sizeof addr;
    getsockname(listen_fd, (struct sockaddr *)&addr, &addr_len);
    //  No SA_RESTART: poll returns at once when asked to stop.
    struct sigaction action = { .sa_handler = s_on_stop };
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    printf("ready url=http://127.0.0.1:%d/flags\n", ntohs(addr.sin_port));
    fflush(stdout);
    while (!s_stopping) {
        struct pollfd item = { .fd = listen_fd, .events = POLLIN };
        if (poll(&item, 1, 1000) <= 0)
            continue;
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&thread, &attr, s_serve, (void *)(intptr_t)fd) != 0)
            close(fd);
        pthread_attr_destroy(&attr);
    }
    close(listen_fd);
    printf("served %u requests (%u errors on purpose)\n", atomic_load(&s_requests),
           atomic_load(&s_errors));
    return 0;
}
