//  SPDX-License-Identifier: MIT
//
//  cf-keygen: makes a CurveZMQ key pair for a cfutures broker, worker or
//  client.
//
//      cf-keygen NAME      writes NAME.key (public, 0644) and
//                          NAME.key_secret (secret, 0600)
//
//  It refuses to replace existing files, prints the public key (which is
//  meant to be shared: it goes into the broker's allow-lists, or to clients
//  and workers for the broker's own key) and never prints the secret one.
//  docs/security.md walks through a whole cluster setup.
//
//  Exit status: 0 written, 1 could not (the files exist, a directory is
//  missing, no entropy), 2 usage error: the convention of every cfutures
//  tool.

#include "cf_keys.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static void s_usage(FILE *out)
{
    fprintf(out, "Usage: cf-keygen [OPTIONS] NAME\n"
                 "Makes a CurveZMQ key pair for cfutures:\n"
                 "  NAME.key         public key (mode 0644): share it; put client and worker\n"
                 "                   keys in the broker's --client-keys / --worker-keys\n"
                 "                   directories, give the broker's to clients and workers\n"
                 "  NAME.key_secret  secret key (mode 0600): never copy it off its host\n"
                 "\n"
                 "Existing files are never replaced. The public key is printed; the secret\n"
                 "key is not. See docs/security.md.\n"
                 "\n"
                 "Options:\n"
                 "  -h, --help     show this text and exit\n"
                 "  --version      show the version and exit\n"
                 "\n"
                 "Exit status: 0 written, 1 could not write them (a file exists, no such\n"
                 "directory), 2 usage error.\n");
}

int main(int argc, char **argv)
{
    const char *name = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            s_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("cf-keygen (cfutures) %s\n", cf_version(NULL, NULL, NULL));
            return 0;
        }
        if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "cf-keygen: unknown option %s (try --help)\n", argv[i]);
            return 2;
        }
        if (name) {
            fprintf(stderr, "cf-keygen: one NAME only (try --help)\n");
            return 2;
        }
        name = argv[i];
    }
    if (!name || !*name) {
        fprintf(stderr, "cf-keygen: give the NAME of the key pair (try --help)\n");
        return 2;
    }
    char public_path[4096], secret_path[4096];
    if ((size_t)snprintf(public_path, sizeof public_path, "%s.key", name) >= sizeof public_path
        || (size_t)snprintf(secret_path, sizeof secret_path, "%s.key_secret", name)
               >= sizeof secret_path) {
        fprintf(stderr, "cf-keygen: NAME is too long\n");
        return 2;
    }
    //  The comment names the key in the file; only the last path component,
    //  and only if it is printable (cf_keys_write refuses anything else).
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    char comment[128];
    snprintf(comment, sizeof comment, "cfutures CURVE key: %.80s", base);
    for (char *c = comment; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';

    cf_keypair_t pair;
    if (cf_keys_generate(&pair) != CF_OK) {
        fprintf(stderr, "cf-keygen: %s\n", cf_last_error());
        return 1;
    }
    cf_err_t rc = cf_keys_write(&pair, public_path, secret_path, comment);
    cf_keys_wipe(&pair);
    if (rc != CF_OK) {
        fprintf(stderr, "cf-keygen: %s\n", cf_last_error());
        return 1;
    }
    printf("public key: %s\n", pair.public_z85);
    printf("wrote %s (public, 0644) and %s (secret, 0600)\n", public_path, secret_path);
    return 0;
}
