//  cf-admin's per-peer lists: the worker_list and client_list of a STATS
//  reply (docs/protocol.md, "STATS"), each a msgpack array of rows, a row
//  an array of strings and integers, printed as a table or as JSON.

#ifndef CF_ADMIN_LIST_H
#define CF_ADMIN_LIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  text as a JSON string: quotes, backslashes and control bytes escaped
//  (what a broker sends is never trusted to be clean).
void cf_admin_list_json_string(const char *text);

//  Prints list (len bytes of msgpack) with the column names given, as an
//  aligned table or, with json, as a JSON array of objects (no newline).
//  Columns a row has beyond names are left out; missing ones are blank.
//  Returns the rows printed, or -1 when list is not such an array (nothing
//  printed then, for a table; for JSON, "null").
int cf_admin_list_print(const uint8_t *list, size_t len, const char *const *names, size_t n_names,
                        bool json);

#endif
