//  SPDX-License-Identifier: MIT
//
//  cf_progress_bar: what it writes in each mode, read back from a file.

#include "cfutures.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Everything written to file so far, malloc'd.
static char *s_contents(FILE *file)
{
    fflush(file);
    long size = ftell(file);
    char *text = calloc(1, (size_t)size + 1);
    assert_non_null(text);
    rewind(file);
    assert_int_equal(fread(text, 1, (size_t)size, file), (size_t)size);
    return text;
}

static size_t s_count(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void test_lines_mode_prints_one_line_per_tenth_and_the_end(void **state)
{
    (void)state;
    FILE *file = tmpfile();
    assert_non_null(file);
    cf_progress_bar_t *bar = cf_progress_bar_new(file, "primes", 100, CF_PROGRESS_BAR_LINES);
    assert_non_null(bar);
    for (uint64_t done = 1; done <= 100; done++)
        cf_progress_bar_update(bar, done);
    cf_progress_bar_destroy(&bar);
    assert_null(bar);
    char *text = s_contents(file);
    assert_int_equal(s_count(text, "\n"), 10);
    assert_int_equal(s_count(text, "\r"), 0);
    assert_non_null(strstr(text, "primes  10%|##                  | 10/100 ["));
    assert_non_null(strstr(text, "primes  50%|##########          | 50/100 ["));
    assert_non_null(strstr(text, "primes 100%|####################| 100/100 ["));
    //  Elapsed<left, rate: "[00:00<00:00, 123.45 it/s]"
    assert_non_null(strstr(text, " it/s]\n"));
    free(text);
    fclose(file);
}

static void test_counts_never_go_back_and_partial_cells_show_eighths(void **state)
{
    (void)state;
    FILE *file = tmpfile();
    cf_progress_bar_t *bar = cf_progress_bar_new(file, NULL, 160, CF_PROGRESS_BAR_LINES);
    cf_progress_bar_update(bar, 17);    //  10.6 %: two cells and an eighth
    cf_progress_bar_update(bar, 3);     //  ignored
    cf_progress_bar_destroy(&bar);
    char *text = s_contents(file);
    //  The 10 % line, then the final one (same count, so no repeat).
    assert_int_equal(s_count(text, "\n"), 1);
    assert_non_null(strstr(text, " 10%|##1                 | 17/160 ["));
    free(text);
    fclose(file);
}

static void test_in_place_mode_redraws_with_carriage_returns_and_ends_the_line(void **state)
{
    (void)state;
    FILE *file = tmpfile();
    cf_progress_bar_t *bar = cf_progress_bar_new(file, "io", 4, CF_PROGRESS_BAR_IN_PLACE);
    for (uint64_t done = 1; done <= 4; done++)
        cf_progress_bar_update(bar, done);
    cf_progress_bar_destroy(&bar);
    char *text = s_contents(file);
    assert_true(text[0] == '\r');    //  drawn at once, at 0
    assert_int_equal(s_count(text, "\n"), 1);
    assert_true(text[strlen(text) - 1] == '\n');
    assert_non_null(strstr(text, "\rio 100%|####################| 4/4 ["));
    free(text);
    fclose(file);
}

static void test_unknown_total_shows_count_and_rate(void **state)
{
    (void)state;
    FILE *file = tmpfile();
    cf_progress_bar_t *bar = cf_progress_bar_new(file, "tasks", 0, CF_PROGRESS_BAR_LINES);
    cf_progress_bar_update(bar, 42);
    cf_progress_bar_destroy(&bar);
    char *text = s_contents(file);
    assert_non_null(strstr(text, "tasks 42 it [00:00, "));
    assert_null(strstr(text, "%"));
    free(text);
    fclose(file);
}

static void test_the_progress_hook_drives_the_bar(void **state)
{
    (void)state;
    FILE *file = tmpfile();
    cf_progress_bar_t *bar = cf_progress_bar_new(file, "hook", 2, CF_PROGRESS_BAR_LINES);
    cf_progress_t progress = { .submitted = 2, .done = 2 };
    cf_progress_bar_on_progress(&progress, bar);
    cf_progress_bar_destroy(&bar);
    cf_progress_bar_destroy(&bar);      //  twice: harmless
    cf_progress_bar_update(NULL, 1);    //  NULL: harmless
    char *text = s_contents(file);
    assert_non_null(strstr(text, "hook 100%|####################| 2/2 ["));
    assert_int_equal(s_count(text, "\n"), 1);
    free(text);
    fclose(file);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_mode_prints_one_line_per_tenth_and_the_end),
        cmocka_unit_test(test_counts_never_go_back_and_partial_cells_show_eighths),
        cmocka_unit_test(test_in_place_mode_redraws_with_carriage_returns_and_ends_the_line),
        cmocka_unit_test(test_unknown_total_shows_count_and_rate),
        cmocka_unit_test(test_the_progress_hook_drives_the_bar),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
