//  The allow-lists (see cf_allowlist.h).
//
//  Design note: the lists are one array of (32-byte key, role) sorted by
//  key, searched with bsearch: a handshake costs one lookup. Files are read
//  and their lines walked by cf_keys, as key files are.

#include "cf_allowlist.h"

#include "cf_error.h"
#include "cf_log.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define S_LOG "auth"

typedef struct {
    uint8_t key[CF_KEY_BIN_LEN];
    uint8_t role;    //  cf_role_t
} s_entry_t;

struct cf_allowlist {
    s_entry_t *entries;    //  sorted by key after s_list_finish
    size_t count;
    size_t capacity;
    size_t clients;    //  entries with CF_ROLE_CLIENT
    size_t workers;    //  entries with CF_ROLE_WORKER
    size_t admins;     //  entries with CF_ROLE_ADMIN
};

void cf_allowlist_destroy(cf_allowlist_t **list_p)
{
    if (!list_p || !*list_p)
        return;
    cf_allowlist_t *list = *list_p;
    free(list->entries);
    free(list);
    *list_p = NULL;
}

static cf_err_t s_list_add(cf_allowlist_t *list, const uint8_t key[CF_KEY_BIN_LEN], cf_role_t role)
{
    if (list->count == list->capacity) {
        if (list->capacity >= CF_ALLOWLIST_MAX_KEYS)
            return cf_error_set(CF_ETOOBIG, "allow-lists hold more than %d keys",
                                CF_ALLOWLIST_MAX_KEYS);
        size_t capacity = list->capacity ? list->capacity * 2 : 64;
        if (capacity > CF_ALLOWLIST_MAX_KEYS)
            capacity = CF_ALLOWLIST_MAX_KEYS;
        s_entry_t *entries = realloc(list->entries, capacity * sizeof *entries);
        if (!entries)
            return cf_error_set(CF_ENOMEM, "out of memory loading allow-lists");
        list->entries = entries;
        list->capacity = capacity;
    }
    memcpy(list->entries[list->count].key, key, CF_KEY_BIN_LEN);
    list->entries[list->count].role = (uint8_t)role;
    list->count++;
    return CF_OK;
}

static int s_entry_compare(const void *a, const void *b)
{
    const s_entry_t *x = a, *y = b;
    int c = memcmp(x->key, y->key, CF_KEY_BIN_LEN);
    return c ? c : (int)x->role - (int)y->role;
}

static const char *s_list_name(cf_role_t role)
{
    return role == CF_ROLE_CLIENT ? "client" : role == CF_ROLE_WORKER ? "worker" : "admin";
}

//  Sorts, drops repeats of a key within one list, refuses a key on two.
static cf_err_t s_list_finish(cf_allowlist_t *list)
{
    if (list->count > 1)
        qsort(list->entries, list->count, sizeof *list->entries, s_entry_compare);
    size_t kept = 0;
    for (size_t i = 0; i < list->count; i++) {
        if (kept > 0
            && memcmp(list->entries[kept - 1].key, list->entries[i].key, CF_KEY_BIN_LEN) == 0) {
            if (list->entries[kept - 1].role == list->entries[i].role)
                continue;
            char z85[CF_KEY_Z85_SIZE], fp[CF_KEY_FP_SIZE];
            cf_keys_encode(list->entries[i].key, z85);
            cf_keys_fingerprint(z85, fp);
            //  Sorted by role too: the first is the lower role.
            return cf_error_set(CF_EINVAL,
                                "key %s is on both the %s and the %s allow-list (a key has one "
                                "role: give each its own key)",
                                fp, s_list_name((cf_role_t)list->entries[kept - 1].role),
                                s_list_name((cf_role_t)list->entries[i].role));
        }
        list->entries[kept++] = list->entries[i];
    }
    list->count = kept;
    list->clients = list->workers = list->admins = 0;
    for (size_t i = 0; i < list->count; i++) {
        if (list->entries[i].role == CF_ROLE_CLIENT)
            list->clients++;
        else if (list->entries[i].role == CF_ROLE_WORKER)
            list->workers++;
        else
            list->admins++;
    }
    return CF_OK;
}

cf_role_t cf_allowlist_role(const cf_allowlist_t *list, const uint8_t key[CF_KEY_BIN_LEN])
{
    size_t low = 0, high = list->count;
    while (low < high) {
        size_t mid = low + (high - low) / 2;
        int c = memcmp(list->entries[mid].key, key, CF_KEY_BIN_LEN);
        if (c == 0)
            return (cf_role_t)list->entries[mid].role;
        if (c < 0)
            low = mid + 1;
        else
            high = mid;
    }
    return CF_ROLE_NONE;
}

//  Anyone who can write an allow-list can let themselves in: refuse lists
//  (and key files in a list directory) that others may write.
static cf_err_t s_check_not_world_writable(const char *path, const struct stat *st)
{
    if (st->st_mode & S_IWOTH)
        return cf_error_set(CF_EAUTH, "allow-list %s is writable by others (mode %04o)", path,
                            (unsigned)(st->st_mode & 07777));
    return CF_OK;
}

static cf_err_t s_add_public_file(cf_allowlist_t *list, const char *path, cf_role_t role)
{
    char z85[CF_KEY_Z85_SIZE];
    cf_err_t rc = cf_keys_read_public(path, z85);
    if (rc != CF_OK)
        return rc;
    uint8_t bin[CF_KEY_BIN_LEN];
    rc = cf_keys_decode(z85, bin);
    if (rc != CF_OK)
        return cf_error_set(CF_EINVAL, "key file %s: not a valid key", path);
    return s_list_add(list, bin, role);
}

static bool s_is_key_file_name(const char *name)
{
    size_t len = strlen(name);
    return name[0] != '.' && len > 4 && strcmp(name + len - 4, ".key") == 0;
}

static cf_err_t s_load_dir(cf_allowlist_t *list, const char *dir_path, cf_role_t role)
{
    DIR *dir = opendir(dir_path);
    if (!dir)
        return cf_error_set(errno == ENOENT ? CF_ENOTFOUND : CF_ESYS,
                            "cannot open %s allow-list %s: %s", s_list_name(role), dir_path,
                            strerror(errno));
    cf_err_t rc = CF_OK;
    struct dirent *entry;
    size_t files = 0;
    while (rc == CF_OK && (errno = 0, entry = readdir(dir)) != NULL) {
        if (!s_is_key_file_name(entry->d_name))
            continue;
        char path[4096];
        int len = snprintf(path, sizeof path, "%s/%s", dir_path, entry->d_name);
        if (len < 0 || (size_t)len >= sizeof path) {
            rc = cf_error_set(CF_EINVAL, "path too long in allow-list %s", dir_path);
            break;
        }
        struct stat st;
        if (stat(path, &st) != 0) {
            rc = cf_error_set(CF_ESYS, "cannot stat %s: %s", path, strerror(errno));
            break;
        }
        if (!S_ISREG(st.st_mode)) {
            cf_log_debug(S_LOG, "allow-list %s: skipping %s (not a regular file)", dir_path,
                         entry->d_name);
            continue;
        }
        if (++files > CF_ALLOWLIST_MAX_KEYS) {
            rc = cf_error_set(CF_ETOOBIG, "allow-list %s holds more than %d key files", dir_path,
                              CF_ALLOWLIST_MAX_KEYS);
            break;
        }
        rc = s_check_not_world_writable(path, &st);
        if (rc == CF_OK)
            rc = s_add_public_file(list, path, role);
    }
    if (rc == CF_OK && errno != 0)
        rc = cf_error_set(CF_ESYS, "cannot read allow-list %s: %s", dir_path, strerror(errno));
    closedir(dir);
    if (rc == CF_OK && files == 0)
        cf_log_warn(S_LOG, "%s allow-list %s holds no *.key files", s_list_name(role), dir_path);
    return rc;
}

typedef struct {
    cf_allowlist_t *list;
    cf_role_t role;
} s_adding_t;

static cf_err_t s_add_line(void *arg, const char *z85, int line)
{
    s_adding_t *adding = arg;
    uint8_t bin[CF_KEY_BIN_LEN];
    (void)line;
    cf_err_t rc = cf_keys_decode(z85, bin);    //  valid: cf_keys_each_line checked
    return rc == CF_OK ? s_list_add(adding->list, bin, adding->role) : rc;
}

//  A file of keys, one per line: the line rules of cf_keys.h, any number of
//  keys; read and walked by cf_keys as key files are.
static cf_err_t s_load_file(cf_allowlist_t *list, const char *path, cf_role_t role)
{
    char *text;
    cf_err_t rc = cf_keys_read_text(path, "allow-list", CF_ALLOWLIST_MAX_BYTES, false, &text);
    if (rc != CF_OK)
        return rc;
    rc = cf_keys_each_line(text, "allow-list", path, s_add_line,
                           &(s_adding_t){ .list = list, .role = role });
    free(text);
    return rc;
}

static cf_err_t s_load_path(cf_allowlist_t *list, const char *path, cf_role_t role)
{
    if (!path)
        return CF_OK;
    struct stat st;
    if (stat(path, &st) != 0)
        return cf_error_set(errno == ENOENT ? CF_ENOTFOUND : CF_ESYS,
                            "cannot open %s allow-list %s: %s", s_list_name(role), path,
                            strerror(errno));
    cf_err_t rc = s_check_not_world_writable(path, &st);
    if (rc != CF_OK)
        return rc;
    if (S_ISDIR(st.st_mode))
        return s_load_dir(list, path, role);
    if (S_ISREG(st.st_mode))
        return s_load_file(list, path, role);
    return cf_error_set(CF_EINVAL, "%s allow-list %s is neither a directory nor a file",
                        s_list_name(role), path);
}

cf_allowlist_t *cf_allowlist_load(const char *client_keys, const char *worker_keys,
                                  const char *admin_keys)
{
    cf_allowlist_t *list = calloc(1, sizeof *list);
    if (!list) {
        cf_error_set(CF_ENOMEM, "out of memory loading allow-lists");
        return NULL;
    }
    cf_err_t rc = s_load_path(list, client_keys, CF_ROLE_CLIENT);
    if (rc == CF_OK)
        rc = s_load_path(list, worker_keys, CF_ROLE_WORKER);
    if (rc == CF_OK)
        rc = s_load_path(list, admin_keys, CF_ROLE_ADMIN);
    if (rc == CF_OK)
        rc = s_list_finish(list);
    if (rc != CF_OK)
        cf_allowlist_destroy(&list);
    return list;
}

size_t cf_allowlist_count(const cf_allowlist_t *list, cf_role_t role)
{
    return role == CF_ROLE_CLIENT   ? list->clients
           : role == CF_ROLE_WORKER ? list->workers
           : role == CF_ROLE_ADMIN  ? list->admins
                                    : list->count;
}

cf_role_t cf_allowlist_entry(const cf_allowlist_t *list, size_t i, uint8_t key[CF_KEY_BIN_LEN])
{
    assert(i < list->count);
    memcpy(key, list->entries[i].key, CF_KEY_BIN_LEN);
    return (cf_role_t)list->entries[i].role;
}
