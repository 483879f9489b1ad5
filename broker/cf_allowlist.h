//  The allow-lists: the CURVE public keys that may submit (clients), those
//  that may work (workers) and those that may ask for the broker's STATS
//  (admins: cf-admin), read from files or directories of key files
//  (docs/security.md). The ZAP handler (cf_auth) judges handshakes by
//  them; a list is built whole, then only read, so a reload builds a new one.

#ifndef CF_ALLOWLIST_H
#define CF_ALLOWLIST_H

#include "cfutures.h"

#include "cf_keys.h"

#include <stddef.h>
#include <stdint.h>

#define CF_ALLOWLIST_MAX_KEYS  65536                 //  keys on all lists together
#define CF_ALLOWLIST_MAX_BYTES (4u * 1024 * 1024)    //  a list file

typedef enum {
    CF_ROLE_NONE = 0,    //  no authenticated role (plaintext, or an unknown User-Id)
    CF_ROLE_CLIENT,      //  may submit and cancel (with CURVE, not ask for STATS)
    CF_ROLE_WORKER,      //  may take tasks and return results
    CF_ROLE_ADMIN        //  may ask for STATS on the client endpoint, and nothing else
} cf_role_t;

typedef struct cf_allowlist cf_allowlist_t;

//  The three lists, whole: each path (NULL: none) is a file of keys, one per
//  line, or a directory of *.key files. Lists or files others may write are
//  refused (CF_EAUTH); a key on two lists is refused (one key, one role: an
//  operator who also submits makes a second key for cf-admin); a key twice
//  on one is kept once. NULL with cf_last_error() naming the file and line.
cf_allowlist_t *cf_allowlist_load(const char *client_keys, const char *worker_keys,
                                  const char *admin_keys);
//  Safe with NULL and twice.
void cf_allowlist_destroy(cf_allowlist_t **list);

//  The role key has on the lists: CF_ROLE_NONE when on neither.
cf_role_t cf_allowlist_role(const cf_allowlist_t *list, const uint8_t key[CF_KEY_BIN_LEN]);
//  Keys with role (CF_ROLE_NONE: all keys).
size_t cf_allowlist_count(const cf_allowlist_t *list, cf_role_t role);
//  The i-th key (0 .. count - 1, in key order) into key; returns its role.
cf_role_t cf_allowlist_entry(const cf_allowlist_t *list, size_t i, uint8_t key[CF_KEY_BIN_LEN]);

#endif
