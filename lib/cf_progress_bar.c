//  SPDX-License-Identifier: MIT
//
//  cf_progress_bar: tqdm's text bar for loops over as_completed, map or the
//  executor's progress hook. It lives in the library (not in the examples)
//  because every program that fans out work wants one and it stays small:
//  counts and a clock in, one line of text out; it knows nothing of
//  executors beyond cf_progress_t.
//
//  Design note: the hook runs on the thread that completes each future
//  while the application may update the bar from its own loop, so every
//  call takes the bar's mutex; drawing is one fputs of a line formatted
//  under it, never while anything else is held. Redraws are rate-limited
//  (terminal: 10 a second; lines: one per 10 percent) so a million tiny
//  tasks cost a million counter stores and a few hundred writes.

#include "cf_clock.h"

#include "cfutures.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//  Bar cells between the '|'s.
#define S_BAR_CELLS 20
//  Least time between two in-place redraws.
#define S_REDRAW_US 100000
//  Plain-line mode: one line each time the percent passes a multiple of
//  this (or, with an unknown total, every this many seconds).
#define S_LINE_STEP 10

struct cf_progress_bar {
    pthread_mutex_t lock;
    FILE *out;              //  borrowed
    char label[64];         //  "" when none
    uint64_t total;         //  0: unknown
    uint64_t done;          //  highest count seen
    bool in_place;          //  '\r' redraws, else plain lines
    int64_t start_us;       //  cf_clock_now_us() at creation
    int64_t drawn_us;       //  last redraw (in place)
    uint64_t drawn_step;    //  last step printed (lines)
    uint64_t drawn_done;    //  the count the last drawing showed
    size_t drawn_width;     //  length of the last in-place line, to blank its tail
};

//  "01:02" or "1:02:03": tqdm's time format.
static void s_format_time(char *out, size_t size, double seconds)
{
    if (seconds < 0 || seconds > 359999)
        seconds = 359999;
    unsigned long s = (unsigned long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(out, size, "%lu:%02lu:%02lu", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(out, size, "%02lu:%02lu", s / 60, s % 60);
}

//  Formats the whole line into out.
static void s_render(const cf_progress_bar_t *self, int64_t now_us, char *out, size_t size)
{
    double elapsed = (double)(now_us - self->start_us) / 1e6;
    double rate = elapsed > 0 ? (double)self->done / elapsed : 0;
    char elapsed_text[32], left_text[32], rate_text[48];
    s_format_time(elapsed_text, sizeof elapsed_text, elapsed);
    if (rate >= 1 || rate == 0)
        snprintf(rate_text, sizeof rate_text, "%.2f it/s", rate);
    else
        snprintf(rate_text, sizeof rate_text, "%.2f s/it", 1 / rate);
    const char *sep = self->label[0] ? " " : "";
    if (self->total == 0) {
        snprintf(out, size, "%s%s%llu it [%s, %s]", self->label, sep,
                 (unsigned long long)self->done, elapsed_text, rate_text);
        return;
    }
    uint64_t done = self->done < self->total ? self->done : self->total;
    double fraction = (double)done / (double)self->total;
    //  Eighths of a cell, so a slow bar still moves; '#' full, a digit for
    //  the partial cell (ASCII: no assumption about the terminal's charset).
    unsigned eighths = (unsigned)(fraction * S_BAR_CELLS * 8);
    char cells[S_BAR_CELLS + 1];
    for (unsigned i = 0; i < S_BAR_CELLS; i++) {
        if ((i + 1) * 8 <= eighths)
            cells[i] = '#';
        else if (i * 8 < eighths)
            cells[i] = (char)('0' + (eighths - i * 8));
        else
            cells[i] = ' ';
    }
    cells[S_BAR_CELLS] = '\0';
    if (rate > 0)
        s_format_time(left_text, sizeof left_text, (double)(self->total - done) / rate);
    else
        snprintf(left_text, sizeof left_text, "?");
    snprintf(out, size, "%s%s%3u%%|%s| %llu/%llu [%s<%s, %s]", self->label, sep,
             (unsigned)(fraction * 100), cells, (unsigned long long)done,
             (unsigned long long)self->total, elapsed_text, left_text, rate_text);
}

//  Draws if due (always when final). Called with the lock held.
static void s_draw(cf_progress_bar_t *self, bool final)
{
    int64_t now_us = cf_clock_now_us();
    if (self->in_place) {
        if (!final && self->drawn_us && now_us - self->drawn_us < S_REDRAW_US)
            return;
    }
    else {
        uint64_t step;
        if (self->total)
            step = self->done >= self->total ? 100 / S_LINE_STEP
                                             : self->done * (100 / S_LINE_STEP) / self->total;
        else
            step = (uint64_t)((now_us - self->start_us) / (S_LINE_STEP * 1000000LL));
        //  Step 0 is never printed: the first line comes after some work.
        if (!final && step <= self->drawn_step)
            return;
        if (final && self->drawn_us && self->drawn_done == self->done)
            return;    //  the last line printed is already the final state
        self->drawn_step = step;
    }
    self->drawn_us = now_us;
    self->drawn_done = self->done;
    char line[256];
    s_render(self, now_us, line, sizeof line);
    if (self->in_place) {
        //  Blank what a longer previous line left behind.
        size_t len = strlen(line);
        size_t pad = self->drawn_width > len ? self->drawn_width - len : 0;
        fprintf(self->out, "\r%s%*s%s", line, (int)pad, "", final ? "\n" : "");
        self->drawn_width = len;
    }
    else
        fprintf(self->out, "%s\n", line);
    fflush(self->out);
}

cf_progress_bar_t *cf_progress_bar_new(FILE *out, const char *label, uint64_t total,
                                       cf_progress_bar_mode_t mode)
{
    cf_progress_bar_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    self->out = out ? out : stderr;
    snprintf(self->label, sizeof self->label, "%s", label ? label : "");
    self->total = total;
    self->in_place = mode == CF_PROGRESS_BAR_IN_PLACE
                     || (mode == CF_PROGRESS_BAR_AUTO && isatty(fileno(self->out)));
    self->start_us = cf_clock_now_us();
    if (self->in_place) {
        pthread_mutex_lock(&self->lock);
        s_draw(self, false);
        pthread_mutex_unlock(&self->lock);
    }
    return self;
}

void cf_progress_bar_update(cf_progress_bar_t *self, uint64_t done)
{
    if (!self)
        return;
    pthread_mutex_lock(&self->lock);
    if (done > self->done) {
        self->done = done;
        s_draw(self, false);
    }
    pthread_mutex_unlock(&self->lock);
}

void cf_progress_bar_on_progress(const cf_progress_t *progress, void *bar)
{
    if (progress)
        cf_progress_bar_update(bar, progress->done);
}

void cf_progress_bar_destroy(cf_progress_bar_t **bar)
{
    if (!bar || !*bar)
        return;
    cf_progress_bar_t *self = *bar;
    *bar = NULL;
    pthread_mutex_lock(&self->lock);
    s_draw(self, true);
    pthread_mutex_unlock(&self->lock);
    pthread_mutex_destroy(&self->lock);
    free(self);
}
