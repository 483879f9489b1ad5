//  msgpack, bounded. msgpack-c's unpacker has no size limits (5 bytes
//  "dd 05 f5 e1 00" make it reserve 4 GiB), accepts trailing bytes and says
//  CONTINUE on truncation, so network input never reaches it: this module
//  reads msgpack with a cursor that checks every length and count against the
//  bytes actually present before anything is allocated, and decodes values
//  into one arena allocation. Writing uses msgpack-c's packer.
//
//  Everything else in cfutures reads msgpack only through this module.

#ifndef CF_MP_H
#define CF_MP_H

#include "cfutures.h"

#include <msgpack.h>

//  Nesting deeper than this is malformed (also bounds recursion).
#define CF_MP_MAX_DEPTH  64
//  Values in one decoded document at most. A decoded value takes 16 bytes
//  while it can take 1 byte on the wire (a nil), so without this a 64 MiB
//  body of nils would cost 1 GiB; with it a document costs at most 256 MiB
//  of nodes plus its own size in bytes.
#define CF_MP_MAX_VALUES (16u * 1024 * 1024)

// ---------------------------------------------------------------------------
//  Cursor reading: each call checks the type and that the bytes are present,
//  advances on success and returns CF_OK, else CF_EPROTO (wrong type,
//  truncated) and leaves the cursor where it was.

typedef struct {
    const uint8_t *data;
    size_t size;
    size_t pos;
} cf_mp_reader_t;

void cf_mp_reader_init(cf_mp_reader_t *r, const void *data, size_t size);
size_t cf_mp_reader_left(const cf_mp_reader_t *r);
//  An array header; *count is checked against the bytes left (each item takes
//  at least one byte) and against max_count.
cf_err_t cf_mp_read_array(cf_mp_reader_t *r, uint32_t max_count, uint32_t *count);
cf_err_t cf_mp_read_map(cf_mp_reader_t *r, uint32_t max_count, uint32_t *count);
cf_err_t cf_mp_read_uint(cf_mp_reader_t *r, uint64_t *out);    //  non-negative ints
cf_err_t cf_mp_read_int(cf_mp_reader_t *r, int64_t *out);
cf_err_t cf_mp_read_bool(cf_mp_reader_t *r, bool *out);
cf_err_t cf_mp_read_nil(cf_mp_reader_t *r);
bool cf_mp_peek_nil(const cf_mp_reader_t *r);
//  A str: *ptr points into the input (not NUL-terminated), at most max_len.
cf_err_t cf_mp_read_str(cf_mp_reader_t *r, size_t max_len, const char **ptr, size_t *len);
cf_err_t cf_mp_read_bin(cf_mp_reader_t *r, size_t max_len, const void **ptr, size_t *len);
//  Skips one whole value of any type (bounded depth). *start/*len (may be
//  NULL) get the bytes it spanned, so a nested value can be kept raw.
cf_err_t cf_mp_skip(cf_mp_reader_t *r, const uint8_t **start, size_t *len);

//  True when data holds exactly one well-formed value, nothing after it.
bool cf_mp_valid(const void *data, size_t size);
//  True when data holds exactly one well-formed array.
bool cf_mp_valid_array(const void *data, size_t size);

// ---------------------------------------------------------------------------
//  Decoded values (cf_value_t of the public API). One malloc holds the whole
//  tree and NUL-terminated copies of every str (and of every bin and ext
//  payload, unless borrowed).

typedef struct cf_mp_doc cf_mp_doc_t;

//  Decodes exactly one value (trailing bytes are malformed). CF_EPROTO
//  (malformed, deeper than CF_MP_MAX_DEPTH, more than CF_MP_MAX_VALUES
//  values) or CF_ENOMEM; *doc is NULL on error. The document copies
//  everything it needs: data may be freed right after.
cf_err_t cf_mp_doc_decode(const void *data, size_t size, cf_mp_doc_t **doc);
//  The same, but bin and ext values point into data instead of copies: for
//  a caller whose data outlives the document and stays unchanged while it
//  lives. strs are copied still (they are NUL-terminated).
cf_err_t cf_mp_doc_decode_borrowed(const void *data, size_t size, cf_mp_doc_t **doc);
const cf_value_t *cf_mp_doc_root(const cf_mp_doc_t *doc);
void cf_mp_doc_destroy(cf_mp_doc_t **doc);

// ---------------------------------------------------------------------------
//  Writing.

//  A growable buffer with a packer writing into it. The packer points at
//  buf: a writer must not be moved (copied by value) after init.
typedef struct {
    msgpack_sbuffer buf;
    msgpack_packer pk;
} cf_mp_writer_t;

void cf_mp_writer_init(cf_mp_writer_t *w);
void cf_mp_writer_fini(cf_mp_writer_t *w);
void cf_mp_writer_reset(cf_mp_writer_t *w);    //  keeps capacity
//  One of this thread's own writers, empty, kept between uses so that
//  encoding allocates nothing once warm; freed when the thread exits. NULL
//  when all of the thread's writers are in use (nested uses: a task that
//  submits while its result is being written) or out of memory: use a
//  writer of your own then. keep_bytes: on release, a buffer grown past
//  this is freed, so one huge value does not pin memory in every thread.
cf_mp_writer_t *cf_mp_thread_writer(size_t keep_bytes);
//  Gives a writer from cf_mp_thread_writer back. Safe with NULL.
void cf_mp_thread_writer_release(cf_mp_writer_t *w);
//  Hands the bytes over (yours to free() ) and resets the writer. Never NULL
//  unless out of memory, even when nothing was written (len 0).
uint8_t *cf_mp_writer_take(cf_mp_writer_t *w, size_t *len);
//  From this size on, bytes that must outlive their writer (a result, a
//  task's arguments) are taken (cf_mp_writer_take_fit) rather than copied:
//  below it, a copy costs less than the fresh buffer the writer then needs.
#define CF_MP_TAKE_MIN (4u * 1024)
//  cf_mp_writer_take with the buffer shrunk to the bytes: a writer grows by
//  doubling, and what is taken may be kept long (a task's arguments until
//  its result), so its slack would be memory held for nothing. Shrinking
//  moves no bytes (glibc splits the block, or mremaps a mapped one).
uint8_t *cf_mp_writer_take_fit(cf_mp_writer_t *w, size_t *len);
//  Appends one copy of v (NULL appends nil). CF_ENOMEM; the writer is back
//  at its previous size on error.
cf_err_t cf_mp_write_value(cf_mp_writer_t *w, const cf_value_t *v);
//  Appends what fmt describes (see "Argument formats" in cfutures.h).
//  as_array: wrap everything in one array (argument lists); otherwise fmt
//  must describe exactly one value. The whole format is checked before any
//  argument is consumed: CF_EINVAL on a bad format (unknown letter,
//  unbalanced or mismatched brackets, a map with an odd number of items,
//  nesting deeper than CF_MP_MAX_DEPTH, not exactly one value when
//  !as_array), on an invalid `m` value or a NULL `y` pointer with a non-zero
//  length, with cf_error_set naming the position; CF_ENOMEM. `v` with NULL
//  packs nil. On error the writer is back at its previous size (arguments
//  may have been consumed from ap).
cf_err_t cf_mp_write_format(cf_mp_writer_t *w, bool as_array, const char *fmt, va_list *ap);

#endif
