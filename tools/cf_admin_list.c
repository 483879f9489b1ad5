//  cf-admin's per-peer lists (see cf_admin_list.h). The rows are read
//  twice: once to size the columns, once to print.

#include "cf_admin_list.h"

#include "cf_mp.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

//  Fields a row may have, and the bytes shown of each.
#define S_MAX_FIELDS 16
#define S_MAX_TEXT   64

typedef struct {
    char text[S_MAX_FIELDS][S_MAX_TEXT];
    bool is_text[S_MAX_FIELDS];
    size_t count;
} s_row_t;

void cf_admin_list_json_string(const char *text)
{
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\')
            printf("\\%c", *c);
        else if (*c < 0x20 || *c == 0x7f)
            printf("\\u%04x", *c);
        else
            putchar(*c);
    }
    putchar('"');
}

//  One field as text: a str (printable ASCII kept, anything else '?'),
//  an integer, or '?' for any other type.
static cf_err_t s_read_field(cf_mp_reader_t *r, char *out, bool *is_text)
{
    uint8_t b = r->pos < r->size ? r->data[r->pos] : 0xc1;
    *is_text = false;
    if ((b >= 0xa0 && b <= 0xbf) || (b >= 0xd9 && b <= 0xdb)) {
        const char *ptr;
        size_t len;
        if (cf_mp_read_str(r, 4096, &ptr, &len) != CF_OK)
            return CF_EPROTO;
        size_t n = len < S_MAX_TEXT - 1 ? len : S_MAX_TEXT - 1;
        for (size_t i = 0; i < n; i++)
            out[i] = ptr[i] >= 0x20 && ptr[i] < 0x7f ? ptr[i] : '?';
        out[n] = '\0';
        *is_text = true;
        return CF_OK;
    }
    if (b <= 0x7f || (b >= 0xcc && b <= 0xcf)) {
        uint64_t v;
        if (cf_mp_read_uint(r, &v) != CF_OK)
            return CF_EPROTO;
        snprintf(out, S_MAX_TEXT, "%" PRIu64, v);
        return CF_OK;
    }
    if (b >= 0xe0 || (b >= 0xd0 && b <= 0xd3)) {
        int64_t v;
        if (cf_mp_read_int(r, &v) != CF_OK)
            return CF_EPROTO;
        snprintf(out, S_MAX_TEXT, "%" PRId64, v);
        return CF_OK;
    }
    const uint8_t *start;
    size_t len;
    if (cf_mp_skip(r, &start, &len) != CF_OK)
        return CF_EPROTO;
    snprintf(out, S_MAX_TEXT, "?");
    return CF_OK;
}

static cf_err_t s_read_row(cf_mp_reader_t *r, s_row_t *row)
{
    uint32_t fields;
    if (cf_mp_read_array(r, 1024, &fields) != CF_OK)
        return CF_EPROTO;
    row->count = 0;
    for (uint32_t i = 0; i < fields; i++) {
        char spare[S_MAX_TEXT];
        bool spare_text;
        bool keep = row->count < S_MAX_FIELDS;
        if (s_read_field(r, keep ? row->text[row->count] : spare,
                         keep ? &row->is_text[row->count] : &spare_text)
            != CF_OK)
            return CF_EPROTO;
        row->count += keep;
    }
    return CF_OK;
}

//  A table cell: padded to width, two blanks between columns; the last
//  one is not padded (no trailing blanks) and ends the line.
static void s_print_cell(const char *text, int width, bool last)
{
    if (last)
        printf("%s\n", text);
    else
        printf("%-*s  ", width, text);
}

int cf_admin_list_print(const uint8_t *list, size_t len, const char *const *names, size_t n_names,
                        bool json)
{
    size_t columns = n_names < S_MAX_FIELDS ? n_names : S_MAX_FIELDS;
    int width[S_MAX_FIELDS];
    for (size_t c = 0; c < columns; c++)
        width[c] = (int)strlen(names[c]);
    cf_mp_reader_t r;
    cf_mp_reader_init(&r, list, len);
    uint32_t rows;
    if (!list || cf_mp_read_array(&r, UINT32_MAX, &rows) != CF_OK) {
        if (json)
            printf("null");
        return -1;
    }
    size_t first = r.pos;
    s_row_t row;
    for (uint32_t i = 0; i < rows; i++) {
        if (s_read_row(&r, &row) != CF_OK) {
            if (json)
                printf("null");
            return -1;
        }
        for (size_t c = 0; c < columns && c < row.count; c++)
            if ((int)strlen(row.text[c]) > width[c])
                width[c] = (int)strlen(row.text[c]);
    }
    if (!json) {
        for (size_t c = 0; c < columns; c++)
            s_print_cell(names[c], width[c], c + 1 == columns);
    }
    else
        printf("[");
    r.pos = first;
    for (uint32_t i = 0; i < rows; i++) {
        (void)s_read_row(&r, &row);
        if (json) {
            printf("%s{", i ? ", " : "");
            for (size_t c = 0; c < columns && c < row.count; c++) {
                printf("%s", c ? ", " : "");
                cf_admin_list_json_string(names[c]);
                printf(": ");
                if (row.is_text[c])
                    cf_admin_list_json_string(row.text[c]);
                else
                    printf("%s", row.text[c]);
            }
            printf("}");
            continue;
        }
        for (size_t c = 0; c < columns; c++)
            s_print_cell(c < row.count ? row.text[c] : "", width[c], c + 1 == columns);
    }
    if (json)
        printf("]");
    return (int)rows;
}
