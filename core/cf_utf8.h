//  UTF-8 as the wire protocol wants it (docs/protocol.md, "Body encoding
//  rules"): every msgpack str cfutures reads must be well-formed UTF-8, and
//  every str it writes is. Well-formed is Unicode's definition (Table 3-7):
//  no overlong forms, no surrogates (U+D800..U+DFFF), nothing above
//  U+10FFFF, no truncated sequence. It is what msgpack-python's default
//  decoder (Python's strict "utf-8") accepts, so what we send it can read.

#ifndef CF_UTF8_H
#define CF_UTF8_H

#include <stdbool.h>
#include <stddef.h>

//  U+FFFD REPLACEMENT CHARACTER, what cf_utf8_sanitize puts in place of
//  bytes that are not UTF-8.
#define CF_UTF8_REPLACEMENT     "\xef\xbf\xbd"
#define CF_UTF8_REPLACEMENT_LEN 3

//  True when the len bytes at text are well-formed UTF-8 (NUL is a valid
//  character here: callers that refuse it check for it themselves).
//  Runs on every function name of every task: ASCII goes 8 bytes a step.
bool cf_utf8_valid(const void *text, size_t len);

//  True when the len bytes at text are well-formed UTF-8 without NUL: what a
//  name (function, error type, host, stat name) must be. One pass over
//  ASCII, which names almost always are.
bool cf_utf8_name_ok(const void *text, size_t len);

//  Copies text into dst (size bytes, > 0) as well-formed UTF-8 and
//  NUL-terminates it: each maximal ill-formed subpart becomes U+FFFD (the
//  substitution Unicode recommends, and Python's errors="replace"), and the
//  output is cut at a character boundary to fit size - 1 bytes. Returns the
//  bytes written, NUL excluded.
size_t cf_utf8_sanitize(char *dst, size_t size, const void *text, size_t len);

#endif
