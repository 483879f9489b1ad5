//  cf_mp: bounded msgpack reading, decoded documents, and writing.
//
//  Reading never trusts a length: s_head decodes one type header and checks
//  that the bytes it announces (a str's payload, an integer's bytes) are
//  present, and that an array or map count could fit in the bytes left (each
//  item takes at least one byte), before anyone allocates or loops on it.
//  Walking nested values (skip, validate, decode) is iterative with a fixed
//  stack of CF_MP_MAX_DEPTH levels, so hostile nesting costs neither
//  recursion nor memory.
//
//  A document is decoded in two passes over the same bytes: the first
//  validates and counts values and string bytes, the second fills one
//  allocation holding the header, every node, and copies of every str (NUL-
//  terminated), bin and ext payload. One malloc per document; freeing it is
//  one free. A borrowed document leaves bin and ext payloads where they are
//  (the payload bytes are the bulk of a task's arguments and results, and
//  both their owners outlive the document); strs are copied still, as the
//  API promises them NUL-terminated.
//
//  Writing goes through msgpack-c's packer into an sbuffer. The format
//  language (cfutures.h, "Argument formats") is checked in full by a pre-scan
//  before a single argument is consumed; the same pre-scan gives the item
//  count of every bracket, so arrays and maps are written with their final
//  headers and nothing is buffered twice.
//
//  cf_value_repr renders like Python's repr() of what msgpack-python would
//  decode, so what a C program prints matches what a Python user expects:
//  None, True, 0.5, 1.0, 'text', b'\x00', [1, 2], {'a': 1}.

#include "cf_mp.h"
#include "cf_error.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------
//  Decoded values

//  A decoded value. 16 bytes: the node array is the bulk of a document.
struct cf_value {
    uint8_t type;        //  cf_type_t
    uint8_t negative;    //  CF_TYPE_INT: as.i holds it (< 0); else as.u
    int8_t ext_type;     //  CF_TYPE_EXT: the application's type code
    uint32_t len;        //  str/bin/ext bytes, array items, map pairs
    union {
        bool b;
        int64_t i;
        uint64_t u;
        double f;                   //  float32 is widened
        const char *str;            //  NUL-terminated copy (len excludes the NUL)
        const uint8_t *bin;         //  bin and ext bytes (copies, or the input's when borrowed)
        const cf_value_t *items;    //  array items; map keys and values interleaved
    } as;
};

// ---------------------------------------------------------------------------
//  Type headers

//  One decoded type header.
typedef struct {
    cf_type_t type;
    bool negative;      //  INT: i holds it
    int8_t ext_type;    //  EXT
    uint64_t u;         //  INT (non-negative)
    int64_t i;          //  INT (negative)
    double f;           //  FLOAT
    bool b;             //  BOOL
    uint32_t len;       //  str/bin/ext bytes, array items, map pairs
    size_t hdr;         //  bytes of the header, scalars' payload included
} s_head_t;

static uint16_t s_be16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static uint32_t s_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t s_be64(const uint8_t *p)
{
    return (uint64_t)s_be32(p) << 32 | s_be32(p + 4);
}

//  Decodes the header at p (left bytes available). CF_EPROTO when the
//  header is truncated, the byte is 0xc1 (never used), a payload is not all
//  present, or a container count cannot fit in what is left.
static cf_err_t s_head(const uint8_t *p, size_t left, s_head_t *h)
{
    if (left == 0)
        return CF_EPROTO;
    memset(h, 0, sizeof *h);
    uint8_t c = p[0];
    size_t need = 1;         //  header bytes
    uint64_t payload = 0;    //  str/bin/ext bytes after the header
    if (c <= 0x7f) {
        h->type = CF_TYPE_INT;
        h->u = c;
    }
    else if (c >= 0xe0) {
        h->type = CF_TYPE_INT;
        h->negative = true;
        h->i = (int8_t)c;
    }
    else if (c >= 0x80 && c <= 0x8f) {
        h->type = CF_TYPE_MAP;
        h->len = c & 0x0f;
    }
    else if (c >= 0x90 && c <= 0x9f) {
        h->type = CF_TYPE_ARRAY;
        h->len = c & 0x0f;
    }
    else if (c >= 0xa0 && c <= 0xbf) {
        h->type = CF_TYPE_STR;
        h->len = c & 0x1f;
    }
    else {
        //  Fixed-size headers first: how many bytes follow the type byte.
        static const uint8_t s_extra[32] = {
            [0x00] = 0,                                        //  c0 nil
            [0x01] = 0,                                        //  c1 never used
            [0x02] = 0, [0x03] = 0,                            //  c2 c3 bool
            [0x04] = 1, [0x05] = 2, [0x06] = 4,                //  c4-c6 bin
            [0x07] = 2, [0x08] = 3, [0x09] = 5,                //  c7-c9 ext (len, type)
            [0x0a] = 4, [0x0b] = 8,                            //  ca cb float
            [0x0c] = 1, [0x0d] = 2, [0x0e] = 4, [0x0f] = 8,    //  cc-cf uint
            [0x10] = 1, [0x11] = 2, [0x12] = 4, [0x13] = 8,    //  d0-d3 int
            [0x14] = 2, [0x15] = 3, [0x16] = 5, [0x17] = 9, [0x18] = 17,    //  fixext
            [0x19] = 1, [0x1a] = 2, [0x1b] = 4,                             //  d9-db str
            [0x1c] = 2, [0x1d] = 4,                                         //  dc dd array
            [0x1e] = 2, [0x1f] = 4,                                         //  de df map
        };
        need = 1 + s_extra[c - 0xc0];
        //  fixext counts its payload in s_extra: only the type byte is header.
        size_t fixext = (c >= 0xd4 && c <= 0xd8) ? need - 2 : 0;
        need -= fixext;
        if (left < need)
            return CF_EPROTO;
        const uint8_t *q = p + 1;
        switch (c) {
        case 0xc0:
            h->type = CF_TYPE_NIL;
            break;
        case 0xc1:
            return CF_EPROTO;
        case 0xc2:
            h->type = CF_TYPE_BOOL;
            h->b = false;
            break;
        case 0xc3:
            h->type = CF_TYPE_BOOL;
            h->b = true;
            break;
        case 0xc4:
            h->type = CF_TYPE_BIN;
            h->len = q[0];
            break;
        case 0xc5:
            h->type = CF_TYPE_BIN;
            h->len = s_be16(q);
            break;
        case 0xc6:
            h->type = CF_TYPE_BIN;
            h->len = s_be32(q);
            break;
        case 0xc7:
            h->type = CF_TYPE_EXT;
            h->len = q[0];
            h->ext_type = (int8_t)q[1];
            break;
        case 0xc8:
            h->type = CF_TYPE_EXT;
            h->len = s_be16(q);
            h->ext_type = (int8_t)q[2];
            break;
        case 0xc9:
            h->type = CF_TYPE_EXT;
            h->len = s_be32(q);
            h->ext_type = (int8_t)q[4];
            break;
        case 0xca: {
            uint32_t bits = s_be32(q);
            float f;
            memcpy(&f, &bits, sizeof f);
            h->type = CF_TYPE_FLOAT;
            h->f = f;
            break;
        }
        case 0xcb: {
            uint64_t bits = s_be64(q);
            memcpy(&h->f, &bits, sizeof h->f);
            h->type = CF_TYPE_FLOAT;
            break;
        }
        case 0xcc:
            h->type = CF_TYPE_INT;
            h->u = q[0];
            break;
        case 0xcd:
            h->type = CF_TYPE_INT;
            h->u = s_be16(q);
            break;
        case 0xce:
            h->type = CF_TYPE_INT;
            h->u = s_be32(q);
            break;
        case 0xcf:
            h->type = CF_TYPE_INT;
            h->u = s_be64(q);
            break;
        case 0xd0:
            h->type = CF_TYPE_INT;
            h->i = (int8_t)q[0];
            break;
        case 0xd1:
            h->type = CF_TYPE_INT;
            h->i = (int16_t)s_be16(q);
            break;
        case 0xd2:
            h->type = CF_TYPE_INT;
            h->i = (int32_t)s_be32(q);
            break;
        case 0xd3:
            h->type = CF_TYPE_INT;
            h->i = (int64_t)s_be64(q);
            break;
        case 0xd4:
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
            h->type = CF_TYPE_EXT;
            h->len = (uint32_t)fixext;
            h->ext_type = (int8_t)q[0];
            break;
        case 0xd9:
            h->type = CF_TYPE_STR;
            h->len = q[0];
            break;
        case 0xda:
            h->type = CF_TYPE_STR;
            h->len = s_be16(q);
            break;
        case 0xdb:
            h->type = CF_TYPE_STR;
            h->len = s_be32(q);
            break;
        case 0xdc:
            h->type = CF_TYPE_ARRAY;
            h->len = s_be16(q);
            break;
        case 0xdd:
            h->type = CF_TYPE_ARRAY;
            h->len = s_be32(q);
            break;
        case 0xde:
            h->type = CF_TYPE_MAP;
            h->len = s_be16(q);
            break;
        case 0xdf:
            h->type = CF_TYPE_MAP;
            h->len = s_be32(q);
            break;
        default:
            return CF_EPROTO;
        }
        //  Signed encodings of non-negative numbers are normal (Python's
        //  msgpack uses them for some values): one INT, two views.
        if (c >= 0xd0 && c <= 0xd3) {
            if (h->i >= 0)
                h->u = (uint64_t)h->i;
            else
                h->negative = true;
        }
    }
    left -= need;
    switch (h->type) {
    case CF_TYPE_STR:
    case CF_TYPE_BIN:
    case CF_TYPE_EXT:
        payload = h->len;
        break;
    case CF_TYPE_ARRAY:
        //  Each item takes at least one byte: a count that cannot fit is
        //  malformed now, not after a 4 GiB reservation.
        if (h->len > left)
            return CF_EPROTO;
        break;
    case CF_TYPE_MAP:
        if ((uint64_t)h->len * 2 > left)
            return CF_EPROTO;
        break;
    default:
        break;
    }
    if (payload > left)
        return CF_EPROTO;
    h->hdr = need;
    return CF_OK;
}

//  Bytes a scalar, str, bin or ext spans; a container's header only.
static size_t s_span(const s_head_t *h)
{
    if (h->type == CF_TYPE_STR || h->type == CF_TYPE_BIN || h->type == CF_TYPE_EXT)
        return h->hdr + h->len;
    return h->hdr;
}

//  Children of a container to walk: items, or keys and values.
static uint64_t s_children(const s_head_t *h)
{
    if (h->type == CF_TYPE_ARRAY)
        return h->len;
    if (h->type == CF_TYPE_MAP)
        return (uint64_t)h->len * 2;
    return 0;
}

// ---------------------------------------------------------------------------
//  Cursor reading

void cf_mp_reader_init(cf_mp_reader_t *r, const void *data, size_t size)
{
    assert(r);
    r->data = data;
    r->size = data ? size : 0;
    r->pos = 0;
}

size_t cf_mp_reader_left(const cf_mp_reader_t *r)
{
    assert(r);
    return r->size - r->pos;
}

static cf_err_t s_read_head(const cf_mp_reader_t *r, cf_type_t type, s_head_t *h)
{
    if (s_head(r->data + r->pos, r->size - r->pos, h) != CF_OK || h->type != type)
        return CF_EPROTO;
    return CF_OK;
}

cf_err_t cf_mp_read_array(cf_mp_reader_t *r, uint32_t max_count, uint32_t *count)
{
    assert(r && count);
    s_head_t h;
    if (s_read_head(r, CF_TYPE_ARRAY, &h) != CF_OK || h.len > max_count)
        return CF_EPROTO;
    r->pos += h.hdr;
    *count = h.len;
    return CF_OK;
}

cf_err_t cf_mp_read_map(cf_mp_reader_t *r, uint32_t max_count, uint32_t *count)
{
    assert(r && count);
    s_head_t h;
    if (s_read_head(r, CF_TYPE_MAP, &h) != CF_OK || h.len > max_count)
        return CF_EPROTO;
    r->pos += h.hdr;
    *count = h.len;
    return CF_OK;
}

cf_err_t cf_mp_read_uint(cf_mp_reader_t *r, uint64_t *out)
{
    assert(r && out);
    s_head_t h;
    if (s_read_head(r, CF_TYPE_INT, &h) != CF_OK || h.negative)
        return CF_EPROTO;
    r->pos += h.hdr;
    *out = h.u;
    return CF_OK;
}

cf_err_t cf_mp_read_int(cf_mp_reader_t *r, int64_t *out)
{
    assert(r && out);
    s_head_t h;
    if (s_read_head(r, CF_TYPE_INT, &h) != CF_OK)
        return CF_EPROTO;
    if (!h.negative && h.u > (uint64_t)INT64_MAX)
        return CF_EPROTO;
    r->pos += h.hdr;
    *out = h.negative ? h.i : (int64_t)h.u;
    return CF_OK;
}

cf_err_t cf_mp_read_bool(cf_mp_reader_t *r, bool *out)
{
    assert(r && out);
    s_head_t h;
    if (s_read_head(r, CF_TYPE_BOOL, &h) != CF_OK)
        return CF_EPROTO;
    r->pos += h.hdr;
    *out = h.b;
    return CF_OK;
}

cf_err_t cf_mp_read_nil(cf_mp_reader_t *r)
{
    assert(r);
    if (r->pos >= r->size || r->data[r->pos] != 0xc0)
        return CF_EPROTO;
    r->pos++;
    return CF_OK;
}

bool cf_mp_peek_nil(const cf_mp_reader_t *r)
{
    assert(r);
    return r->pos < r->size && r->data[r->pos] == 0xc0;
}

cf_err_t cf_mp_read_str(cf_mp_reader_t *r, size_t max_len, const char **ptr, size_t *len)
{
    assert(r && ptr && len);
    s_head_t h;
    if (s_read_head(r, CF_TYPE_STR, &h) != CF_OK || h.len > max_len)
        return CF_EPROTO;
    *ptr = (const char *)r->data + r->pos + h.hdr;
    *len = h.len;
    r->pos += h.hdr + h.len;
    return CF_OK;
}

cf_err_t cf_mp_read_bin(cf_mp_reader_t *r, size_t max_len, const void **ptr, size_t *len)
{
    assert(r && ptr && len);
    s_head_t h;
    if (s_read_head(r, CF_TYPE_BIN, &h) != CF_OK || h.len > max_len)
        return CF_EPROTO;
    *ptr = r->data + r->pos + h.hdr;
    *len = h.len;
    r->pos += h.hdr + h.len;
    return CF_OK;
}

//  What a walk over one value found.
typedef struct {
    size_t values;    //  nodes
    size_t strs;      //  str bytes + 1 each
    size_t bins;      //  bin and ext bytes
} s_tally_t;

//  Walks one whole value from p (left bytes), iteratively: a stack of the
//  children still to walk at each open container. Returns the bytes spanned
//  in *spanned, and counts into tally (may be NULL). CF_EPROTO when
//  malformed or deeper than CF_MP_MAX_DEPTH. The loop consumes at least one
//  byte per value, so it ends within left iterations.
static cf_err_t s_walk(const uint8_t *p, size_t left, size_t *spanned, s_tally_t *tally)
{
    uint64_t left_at_depth[CF_MP_MAX_DEPTH];
    int depth = 0;
    size_t pos = 0;
    uint64_t pending = 1;    //  values to walk at the current level
    while (true) {
        while (pending == 0) {
            if (depth == 0) {
                *spanned = pos;
                return CF_OK;
            }
            pending = left_at_depth[--depth];
        }
        s_head_t h;
        if (s_head(p + pos, left - pos, &h) != CF_OK)
            return CF_EPROTO;
        pos += s_span(&h);
        pending--;
        if (tally) {
            tally->values++;
            if (h.type == CF_TYPE_STR)
                tally->strs += (size_t)h.len + 1;
            else if (h.type == CF_TYPE_BIN || h.type == CF_TYPE_EXT)
                tally->bins += h.len;
        }
        uint64_t children = s_children(&h);
        if (h.type == CF_TYPE_ARRAY || h.type == CF_TYPE_MAP) {
            //  An empty container nests too: depth is structure, not bytes.
            if (depth == CF_MP_MAX_DEPTH)
                return CF_EPROTO;
            left_at_depth[depth++] = pending;
            pending = children;
        }
    }
}

cf_err_t cf_mp_skip(cf_mp_reader_t *r, const uint8_t **start, size_t *len)
{
    assert(r);
    size_t spanned;
    if (s_walk(r->data + r->pos, r->size - r->pos, &spanned, NULL) != CF_OK)
        return CF_EPROTO;
    if (start)
        *start = r->data + r->pos;
    if (len)
        *len = spanned;
    r->pos += spanned;
    return CF_OK;
}

bool cf_mp_valid(const void *data, size_t size)
{
    size_t spanned;
    if (!data || size == 0)
        return false;
    return s_walk(data, size, &spanned, NULL) == CF_OK && spanned == size;
}

bool cf_mp_valid_array(const void *data, size_t size)
{
    s_head_t h;
    return cf_mp_valid(data, size) && s_head(data, size, &h) == CF_OK && h.type == CF_TYPE_ARRAY;
}

// ---------------------------------------------------------------------------
//  Documents

struct cf_mp_doc {
    size_t values;         //  nodes that follow
    cf_value_t nodes[];    //  nodes[0] is the root; bytes follow the nodes
};

static cf_err_t s_decode(const void *data, size_t size, bool borrow, cf_mp_doc_t **doc)
{
    assert(doc);
    *doc = NULL;
    if (!data || size == 0)
        return CF_EPROTO;
    const uint8_t *p = data;
    s_tally_t tally = { 0, 0, 0 };
    size_t spanned;
    if (s_walk(p, size, &spanned, &tally) != CF_OK || spanned != size
        || tally.values > CF_MP_MAX_VALUES)
        return CF_EPROTO;
    //  values <= size and bytes <= 2 * size: no overflow on any size_t that
    //  held the input, but keep the arithmetic honest anyway.
    size_t nodes_bytes = tally.values * sizeof(cf_value_t);
    size_t copied = tally.strs + (borrow ? 0 : tally.bins);
    size_t total = sizeof(cf_mp_doc_t) + nodes_bytes;
    if (total < nodes_bytes || copied < tally.strs || total + copied < total)
        return CF_ENOMEM;
    total += copied;
    cf_mp_doc_t *self = malloc(total);
    if (!self)
        return CF_ENOMEM;
    self->values = tally.values;
    uint8_t *bytes = (uint8_t *)(self->nodes + tally.values);

    //  Second pass: validated input, so s_head cannot fail. Each container
    //  gets a block of child slots at the next free node; the stack keeps
    //  the next slot to fill and how many remain at each open level.
    struct {
        cf_value_t *slot;
        uint64_t left;
    } stack[CF_MP_MAX_DEPTH + 1];
    int depth = 0;
    stack[0].slot = &self->nodes[0];
    stack[0].left = 1;
    size_t next_free = 1;
    size_t pos = 0;
    while (true) {
        while (depth > 0 && stack[depth].left == 0)
            depth--;
        if (stack[depth].left == 0)
            break;
        s_head_t h;
        cf_err_t rc = s_head(p + pos, size - pos, &h);
        assert(rc == CF_OK);
        (void)rc;
        cf_value_t *v = stack[depth].slot++;
        stack[depth].left--;
        memset(v, 0, sizeof *v);
        v->type = (uint8_t)h.type;
        v->len = h.len;
        switch (h.type) {
        case CF_TYPE_NIL:
            break;
        case CF_TYPE_BOOL:
            v->as.b = h.b;
            break;
        case CF_TYPE_INT:
            v->negative = h.negative;
            if (h.negative)
                v->as.i = h.i;
            else
                v->as.u = h.u;
            break;
        case CF_TYPE_FLOAT:
            v->as.f = h.f;
            break;
        case CF_TYPE_STR:
            memcpy(bytes, p + pos + h.hdr, h.len);
            bytes[h.len] = '\0';
            v->as.str = (const char *)bytes;
            bytes += (size_t)h.len + 1;
            break;
        case CF_TYPE_BIN:
        case CF_TYPE_EXT:
            v->ext_type = h.ext_type;
            if (borrow) {
                v->as.bin = p + pos + h.hdr;
                break;
            }
            if (h.len)
                memcpy(bytes, p + pos + h.hdr, h.len);
            v->as.bin = bytes;
            bytes += h.len;
            break;
        case CF_TYPE_ARRAY:
        case CF_TYPE_MAP: {
            uint64_t n = s_children(&h);
            v->as.items = &self->nodes[next_free];
            if (n > 0) {
                depth++;
                assert(depth <= CF_MP_MAX_DEPTH);
                stack[depth].slot = &self->nodes[next_free];
                stack[depth].left = n;
                next_free += n;
            }
            break;
        }
        }
        pos += s_span(&h);
    }
    assert(pos == size && next_free == tally.values);
    *doc = self;
    return CF_OK;
}

cf_err_t cf_mp_doc_decode(const void *data, size_t size, cf_mp_doc_t **doc)
{
    return s_decode(data, size, false, doc);
}

cf_err_t cf_mp_doc_decode_borrowed(const void *data, size_t size, cf_mp_doc_t **doc)
{
    return s_decode(data, size, true, doc);
}

const cf_value_t *cf_mp_doc_root(const cf_mp_doc_t *doc)
{
    return doc ? &doc->nodes[0] : NULL;
}

void cf_mp_doc_destroy(cf_mp_doc_t **doc)
{
    if (doc && *doc) {
        free(*doc);
        *doc = NULL;
    }
}

// ---------------------------------------------------------------------------
//  Writing

void cf_mp_writer_init(cf_mp_writer_t *w)
{
    assert(w);
    msgpack_sbuffer_init(&w->buf);
    msgpack_packer_init(&w->pk, &w->buf, msgpack_sbuffer_write);
}

void cf_mp_writer_fini(cf_mp_writer_t *w)
{
    assert(w);
    msgpack_sbuffer_destroy(&w->buf);
    msgpack_sbuffer_init(&w->buf);
}

void cf_mp_writer_reset(cf_mp_writer_t *w)
{
    assert(w);
    msgpack_sbuffer_clear(&w->buf);
}

uint8_t *cf_mp_writer_take(cf_mp_writer_t *w, size_t *len)
{
    assert(w && len);
    *len = w->buf.size;
    uint8_t *data = (uint8_t *)msgpack_sbuffer_release(&w->buf);
    if (!data)
        data = malloc(1);    //  nothing written: still a buffer to free
    return data;
}

uint8_t *cf_mp_writer_take_fit(cf_mp_writer_t *w, size_t *len)
{
    assert(w && len);
    size_t alloc = w->buf.alloc;
    uint8_t *data = cf_mp_writer_take(w, len);
    if (data && *len > 0 && alloc > *len) {
        uint8_t *fit = realloc(data, *len);
        if (fit)    //  else the bigger block serves as well
            data = fit;
    }
    return data;
}

static cf_err_t s_write_value(cf_mp_writer_t *w, const cf_value_t *v, int depth)
{
    msgpack_packer *pk = &w->pk;
    int rc = 0;
    if (!v)
        return msgpack_pack_nil(pk) == 0 ? CF_OK : CF_ENOMEM;
    if (depth > CF_MP_MAX_DEPTH)
        return CF_EINVAL;    //  values come from documents: cannot happen
    switch ((cf_type_t)v->type) {
    case CF_TYPE_NIL:
        rc = msgpack_pack_nil(pk);
        break;
    case CF_TYPE_BOOL:
        rc = v->as.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        break;
    case CF_TYPE_INT:
        rc = v->negative ? msgpack_pack_int64(pk, v->as.i) : msgpack_pack_uint64(pk, v->as.u);
        break;
    case CF_TYPE_FLOAT:
        rc = msgpack_pack_double(pk, v->as.f);
        break;
    case CF_TYPE_STR:
        rc = msgpack_pack_str_with_body(pk, v->as.str, v->len);
        break;
    case CF_TYPE_BIN:
        rc = msgpack_pack_bin_with_body(pk, v->as.bin, v->len);
        break;
    case CF_TYPE_EXT:
        rc = msgpack_pack_ext_with_body(pk, v->as.bin, v->len, v->ext_type);
        break;
    case CF_TYPE_ARRAY:
    case CF_TYPE_MAP: {
        size_t n = v->len;
        if (v->type == CF_TYPE_ARRAY)
            rc = msgpack_pack_array(pk, n);
        else {
            rc = msgpack_pack_map(pk, n);
            n *= 2;
        }
        for (size_t i = 0; rc == 0 && i < n; i++) {
            cf_err_t err = s_write_value(w, &v->as.items[i], depth + 1);
            if (err != CF_OK)
                return err;
        }
        break;
    }
    default:
        return CF_EINVAL;
    }
    return rc == 0 ? CF_OK : CF_ENOMEM;
}

cf_err_t cf_mp_write_value(cf_mp_writer_t *w, const cf_value_t *v)
{
    assert(w);
    size_t mark = w->buf.size;
    cf_err_t rc = s_write_value(w, v, 1);
    if (rc != CF_OK)
        w->buf.size = mark;
    return rc;
}

//  Format letters that are one value each.
static bool s_is_letter(char c)
{
    return c && strchr("nbilLuUdsyvm", c) != NULL;
}

static bool s_is_blank(char c)
{
    return c == ' ' || c == ',' || c == '\t' || c == '\n';
}

//  The pre-scan: checks the whole format and counts, for each bracket, the
//  items directly inside it. counts[k] is the count of the k-th opening
//  bracket in format order; *top gets the items at the top level. Two
//  passes of the same routine: the first (counts NULL) finds how many
//  brackets there are.
static cf_err_t s_scan_format(const char *fmt, size_t *counts, size_t *brackets, size_t *top)
{
    //  For each open bracket: its kind, its index in counts, its count so far.
    struct {
        char close;
        size_t index;
        size_t items;
    } stack[CF_MP_MAX_DEPTH];
    int depth = 0;
    size_t opened = 0;
    size_t top_items = 0;
    for (size_t i = 0; fmt[i]; i++) {
        char c = fmt[i];
        if (s_is_blank(c))
            continue;
        if (s_is_letter(c) || c == '[' || c == '{') {
            if (depth > 0)
                stack[depth - 1].items++;
            else
                top_items++;
        }
        if (s_is_letter(c))
            continue;
        if (c == '[' || c == '{') {
            if (depth == CF_MP_MAX_DEPTH)
                return cf_error_set(CF_EINVAL,
                                    "format \"%s\": nesting deeper than %d at position %zu", fmt,
                                    CF_MP_MAX_DEPTH, i);
            stack[depth].close = c == '[' ? ']' : '}';
            stack[depth].index = opened++;
            stack[depth].items = 0;
            depth++;
            continue;
        }
        if (c == ']' || c == '}') {
            if (depth == 0)
                return cf_error_set(CF_EINVAL, "format \"%s\": '%c' at position %zu closes nothing",
                                    fmt, c, i);
            depth--;
            if (stack[depth].close != c)
                return cf_error_set(CF_EINVAL,
                                    "format \"%s\": '%c' at position %zu does not match "
                                    "the bracket it closes",
                                    fmt, c, i);
            if (c == '}' && stack[depth].items % 2 != 0)
                return cf_error_set(CF_EINVAL,
                                    "format \"%s\": the map closed at position %zu has "
                                    "%zu items, not key-value pairs",
                                    fmt, i, stack[depth].items);
            if (counts)
                counts[stack[depth].index] = stack[depth].items;
            continue;
        }
        return cf_error_set(CF_EINVAL, "format \"%s\": unknown letter '%c' at position %zu", fmt, c,
                            i);
    }
    if (depth > 0)
        return cf_error_set(CF_EINVAL, "format \"%s\": '%c' missing at the end", fmt,
                            stack[depth - 1].close);
    *brackets = opened;
    *top = top_items;
    return CF_OK;
}

//  Writes the format's values; counts come from the pre-scan.
static cf_err_t s_write_format(cf_mp_writer_t *w, const char *fmt, const size_t *counts,
                               va_list *ap)
{
    msgpack_packer *pk = &w->pk;
    size_t opened = 0;
    for (size_t i = 0; fmt[i]; i++) {
        int rc = 0;
        switch (fmt[i]) {
        case 'n':
            rc = msgpack_pack_nil(pk);
            break;
        case 'b':
            rc = va_arg(*ap, int) ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
            break;
        case 'i':
            rc = msgpack_pack_int64(pk, va_arg(*ap, int));
            break;
        case 'l':
            rc = msgpack_pack_int64(pk, va_arg(*ap, long));
            break;
        case 'L':
            rc = msgpack_pack_int64(pk, va_arg(*ap, int64_t));
            break;
        case 'u':
            rc = msgpack_pack_uint64(pk, va_arg(*ap, unsigned));
            break;
        case 'U':
            rc = msgpack_pack_uint64(pk, va_arg(*ap, uint64_t));
            break;
        case 'd':
            rc = msgpack_pack_double(pk, va_arg(*ap, double));
            break;
        case 's': {
            const char *s = va_arg(*ap, const char *);
            rc = s ? msgpack_pack_str_with_body(pk, s, strlen(s)) : msgpack_pack_nil(pk);
            break;
        }
        case 'y': {
            const void *data = va_arg(*ap, const void *);
            size_t len = va_arg(*ap, size_t);
            if (!data && len > 0)
                return cf_error_set(CF_EINVAL,
                                    "format \"%s\": 'y' at position %zu got "
                                    "NULL with length %zu",
                                    fmt, i, len);
            rc = msgpack_pack_bin_with_body(pk, data, len);
            break;
        }
        case 'v': {
            cf_err_t err = s_write_value(w, va_arg(*ap, const cf_value_t *), 1);
            if (err != CF_OK)
                return err;
            break;
        }
        case 'm': {
            const void *data = va_arg(*ap, const void *);
            size_t len = va_arg(*ap, size_t);
            if (!cf_mp_valid(data, len))
                return cf_error_set(CF_EINVAL,
                                    "format \"%s\": 'm' at position %zu is not "
                                    "one valid msgpack value",
                                    fmt, i);
            rc = msgpack_sbuffer_write(&w->buf, data, len);    //  as is
            break;
        }
        case '[':
            rc = msgpack_pack_array(pk, counts[opened++]);
            break;
        case '{':
            rc = msgpack_pack_map(pk, counts[opened++] / 2);
            break;
        default:
            break;    //  blanks and closing brackets write nothing
        }
        if (rc != 0)
            return CF_ENOMEM;
    }
    return CF_OK;
}

cf_err_t cf_mp_write_format(cf_mp_writer_t *w, bool as_array, const char *fmt, va_list *ap)
{
    assert(w && ap);
    if (!fmt)
        return cf_error_set(CF_EINVAL, "the format is NULL");
    size_t brackets, top;
    cf_err_t rc = s_scan_format(fmt, NULL, &brackets, &top);
    if (rc != CF_OK)
        return rc;
    if (!as_array && top != 1)
        return cf_error_set(CF_EINVAL, "format \"%s\" describes %zu values, not one", fmt, top);
    //  Formats are short: counts live on the stack unless one is unusual.
    size_t local[32];
    size_t *counts = local;
    if (brackets > sizeof local / sizeof local[0]) {
        counts = malloc(brackets * sizeof *counts);
        if (!counts)
            return CF_ENOMEM;
    }
    rc = s_scan_format(fmt, counts, &brackets, &top);
    assert(rc == CF_OK);
    size_t mark = w->buf.size;
    if (as_array && msgpack_pack_array(&w->pk, top) != 0)
        rc = CF_ENOMEM;
    if (rc == CF_OK)
        rc = s_write_format(w, fmt, counts, ap);
    if (rc != CF_OK)
        w->buf.size = mark;
    if (counts != local)
        free(counts);
    return rc;
}

// ---------------------------------------------------------------------------
//  The public value accessors (cfutures.h, "Values"). Every accessor accepts
//  NULL and values of the wrong type, answering NULL, 0 or CF_ETYPE: task
//  code chains them (cf_value_get(cf_value_at(...))) without checking each
//  step.

cf_type_t cf_value_type(const cf_value_t *v)
{
    return v ? (cf_type_t)v->type : CF_TYPE_NIL;
}

const char *cf_type_name(cf_type_t type)
{
    switch (type) {
    case CF_TYPE_NIL:
        return "nil";
    case CF_TYPE_BOOL:
        return "bool";
    case CF_TYPE_INT:
        return "int";
    case CF_TYPE_FLOAT:
        return "float";
    case CF_TYPE_STR:
        return "str";
    case CF_TYPE_BIN:
        return "bin";
    case CF_TYPE_ARRAY:
        return "array";
    case CF_TYPE_MAP:
        return "map";
    case CF_TYPE_EXT:
        return "ext";
    }
    return "unknown";
}

cf_err_t cf_value_get_int(const cf_value_t *v, int64_t *out)
{
    if (!v || v->type != CF_TYPE_INT)
        return CF_ETYPE;
    if (!v->negative && v->as.u > (uint64_t)INT64_MAX)
        return CF_ETYPE;
    if (out)
        *out = v->negative ? v->as.i : (int64_t)v->as.u;
    return CF_OK;
}

cf_err_t cf_value_get_uint(const cf_value_t *v, uint64_t *out)
{
    if (!v || v->type != CF_TYPE_INT || v->negative)
        return CF_ETYPE;
    if (out)
        *out = v->as.u;
    return CF_OK;
}

cf_err_t cf_value_get_double(const cf_value_t *v, double *out)
{
    double d;
    if (!v)
        return CF_ETYPE;
    if (v->type == CF_TYPE_FLOAT)
        d = v->as.f;
    else if (v->type == CF_TYPE_INT)
        d = v->negative ? (double)v->as.i : (double)v->as.u;
    else
        return CF_ETYPE;
    if (out)
        *out = d;
    return CF_OK;
}

cf_err_t cf_value_get_bool(const cf_value_t *v, bool *out)
{
    if (!v || v->type != CF_TYPE_BOOL)
        return CF_ETYPE;
    if (out)
        *out = v->as.b;
    return CF_OK;
}

const char *cf_value_str(const cf_value_t *v, size_t *len)
{
    if (!v || v->type != CF_TYPE_STR)
        return NULL;
    if (len)
        *len = v->len;
    return v->as.str;
}

const void *cf_value_bin(const cf_value_t *v, size_t *len)
{
    if (!v || v->type != CF_TYPE_BIN)
        return NULL;
    if (len)
        *len = v->len;
    return v->as.bin;
}

size_t cf_value_len(const cf_value_t *v)
{
    if (!v)
        return 0;
    switch ((cf_type_t)v->type) {
    case CF_TYPE_STR:
    case CF_TYPE_BIN:
    case CF_TYPE_ARRAY:
    case CF_TYPE_MAP:
        return v->len;
    default:
        return 0;
    }
}

const cf_value_t *cf_value_at(const cf_value_t *v, size_t i)
{
    if (!v || v->type != CF_TYPE_ARRAY || i >= v->len)
        return NULL;
    return &v->as.items[i];
}

const cf_value_t *cf_value_key_at(const cf_value_t *v, size_t i)
{
    if (!v || v->type != CF_TYPE_MAP || i >= v->len)
        return NULL;
    return &v->as.items[2 * i];
}

const cf_value_t *cf_value_val_at(const cf_value_t *v, size_t i)
{
    if (!v || v->type != CF_TYPE_MAP || i >= v->len)
        return NULL;
    return &v->as.items[2 * i + 1];
}

const cf_value_t *cf_value_get(const cf_value_t *v, const char *key)
{
    if (!v || v->type != CF_TYPE_MAP || !key)
        return NULL;
    size_t key_len = strlen(key);
    //  Linear: maps that cross the wire are small records. msgpack allows
    //  duplicate keys; the first wins, as it is the first a reader sees.
    for (size_t i = 0; i < v->len; i++) {
        const cf_value_t *k = &v->as.items[2 * i];
        if (k->type == CF_TYPE_STR && k->len == key_len && memcmp(k->as.str, key, key_len) == 0)
            return &v->as.items[2 * i + 1];
    }
    return NULL;
}

// ---------------------------------------------------------------------------
//  repr

typedef struct {
    char *data;
    size_t len;
    size_t cap;
    bool failed;    //  out of memory: everything after is dropped
} s_text_t;

static void s_put(s_text_t *t, const char *s, size_t n)
{
    if (t->failed)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 64;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *data = realloc(t->data, cap);
        if (!data) {
            t->failed = true;
            return;
        }
        t->data = data;
        t->cap = cap;
    }
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
}

static void s_puts(s_text_t *t, const char *s)
{
    s_put(t, s, strlen(s));
}

static void s_putc(s_text_t *t, char c)
{
    s_put(t, &c, 1);
}

//  Python's float repr: the shortest digits that read back to the same
//  double, in fixed notation when the decimal exponent is in [-4, 16) and
//  with at least one digit after the point ("1.0"), else scientific with a
//  two-digit exponent ("1e+16", "1.5e-05").
static void s_put_double(s_text_t *t, double d)
{
    char buf[64];
    if (isnan(d)) {
        s_puts(t, "nan");
        return;
    }
    if (isinf(d)) {
        s_puts(t, d < 0 ? "-inf" : "inf");
        return;
    }
    int digits = 1;
    for (; digits < 17; digits++) {
        snprintf(buf, sizeof buf, "%.*e", digits - 1, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    snprintf(buf, sizeof buf, "%.*e", digits - 1, d);
    const char *e = strchr(buf, 'e');
    int exponent = e ? atoi(e + 1) : 0;
    if (exponent >= -4 && exponent < 16) {
        int decimals = digits - 1 - exponent;
        if (decimals < 0)
            decimals = 0;
        snprintf(buf, sizeof buf, "%.*f", decimals, d);
        s_puts(t, buf);
        if (decimals == 0)
            s_puts(t, ".0");
    }
    else
        s_puts(t, buf);
}

//  Quoted like Python: single quotes unless the text has a single quote and
//  no double quote; backslash escapes for the quote, backslash, \t \n \r
//  and other control bytes. In a str, bytes >= 0x80 are UTF-8 and printed
//  as they are (Python 3 prints the characters); in a bin they are \xNN.
static void s_put_quoted(s_text_t *t, const uint8_t *p, size_t n, bool is_bytes)
{
    bool has_single = memchr(p, '\'', n) != NULL;
    bool has_double = memchr(p, '"', n) != NULL;
    char quote = has_single && !has_double ? '"' : '\'';
    if (is_bytes)
        s_putc(t, 'b');
    s_putc(t, quote);
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        char esc[8];
        if (c == (uint8_t)quote || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            s_put(t, esc, 2);
        }
        else if (c == '\n')
            s_puts(t, "\\n");
        else if (c == '\r')
            s_puts(t, "\\r");
        else if (c == '\t')
            s_puts(t, "\\t");
        else if (c < 0x20 || c == 0x7f || (is_bytes && c >= 0x80)) {
            snprintf(esc, sizeof esc, "\\x%02x", c);
            s_puts(t, esc);
        }
        else
            s_putc(t, (char)c);
    }
    s_putc(t, quote);
}

//  Values come from documents, whose depth is bounded by CF_MP_MAX_DEPTH,
//  so the recursion is too.
static void s_repr(s_text_t *t, const cf_value_t *v)
{
    char buf[32];
    if (!v) {
        s_puts(t, "None");
        return;
    }
    switch ((cf_type_t)v->type) {
    case CF_TYPE_NIL:
        s_puts(t, "None");
        break;
    case CF_TYPE_BOOL:
        s_puts(t, v->as.b ? "True" : "False");
        break;
    case CF_TYPE_INT:
        if (v->negative)
            snprintf(buf, sizeof buf, "%" PRId64, v->as.i);
        else
            snprintf(buf, sizeof buf, "%" PRIu64, v->as.u);
        s_puts(t, buf);
        break;
    case CF_TYPE_FLOAT:
        s_put_double(t, v->as.f);
        break;
    case CF_TYPE_STR:
        s_put_quoted(t, (const uint8_t *)v->as.str, v->len, false);
        break;
    case CF_TYPE_BIN:
        s_put_quoted(t, v->as.bin, v->len, true);
        break;
    case CF_TYPE_EXT:
        //  msgpack-python's own rendering of an unknown extension.
        snprintf(buf, sizeof buf, "ExtType(code=%d, data=", v->ext_type);
        s_puts(t, buf);
        s_put_quoted(t, v->as.bin, v->len, true);
        s_putc(t, ')');
        break;
    case CF_TYPE_ARRAY:
        s_putc(t, '[');
        for (size_t i = 0; i < v->len; i++) {
            if (i)
                s_puts(t, ", ");
            s_repr(t, &v->as.items[i]);
        }
        s_putc(t, ']');
        break;
    case CF_TYPE_MAP:
        s_putc(t, '{');
        for (size_t i = 0; i < v->len; i++) {
            if (i)
                s_puts(t, ", ");
            s_repr(t, &v->as.items[2 * i]);
            s_puts(t, ": ");
            s_repr(t, &v->as.items[2 * i + 1]);
        }
        s_putc(t, '}');
        break;
    }
}

char *cf_value_repr(const cf_value_t *v)
{
    s_text_t t = { NULL, 0, 0, false };
    s_repr(&t, v);
    if (t.failed) {
        free(t.data);
        return NULL;
    }
    return t.data;
}

// ---------------------------------------------------------------------------
//  Per-thread writers

//  Two per thread: a task's result and a submission made inside that task
//  may be written at once; deeper nesting gets NULL.
#define S_THREAD_WRITERS 2

typedef struct {
    cf_mp_writer_t writer;    //  first: a writer's address is its slot's
    bool in_use;
    size_t keep_bytes;
} s_slot_t;

static pthread_key_t s_slots_key;
static bool s_slots_key_ok;
static pthread_once_t s_slots_once = PTHREAD_ONCE_INIT;
static _Thread_local s_slot_t *s_slots;

static void s_slots_free(void *arg)
{
    s_slot_t *slots = arg;
    for (int i = 0; i < S_THREAD_WRITERS; i++)
        cf_mp_writer_fini(&slots[i].writer);
    free(slots);
}

static void s_slots_key_init(void)
{
    s_slots_key_ok = pthread_key_create(&s_slots_key, s_slots_free) == 0;
}

cf_mp_writer_t *cf_mp_thread_writer(size_t keep_bytes)
{
    if (!s_slots) {
        pthread_once(&s_slots_once, s_slots_key_init);
        if (!s_slots_key_ok)
            return NULL;
        s_slot_t *slots = calloc(S_THREAD_WRITERS, sizeof *slots);
        if (!slots)
            return NULL;
        for (int i = 0; i < S_THREAD_WRITERS; i++)
            cf_mp_writer_init(&slots[i].writer);
        if (pthread_setspecific(s_slots_key, slots) != 0) {
            s_slots_free(slots);
            return NULL;
        }
        s_slots = slots;
    }
    for (int i = 0; i < S_THREAD_WRITERS; i++) {
        if (!s_slots[i].in_use) {
            s_slots[i].in_use = true;
            s_slots[i].keep_bytes = keep_bytes;
            return &s_slots[i].writer;
        }
    }
    return NULL;
}

void cf_mp_thread_writer_release(cf_mp_writer_t *w)
{
    if (!w)
        return;
    s_slot_t *slot = (s_slot_t *)w;
    if (w->buf.alloc > slot->keep_bytes)
        cf_mp_writer_fini(w);    //  frees and leaves it empty and usable
    else
        cf_mp_writer_reset(w);
    slot->in_use = false;
}
