/* vtlparse.h: the ABI of generated record parsers and the resumable matchers they share.
 *
 * A spec (parsers/README.md) compiles to one C file that includes this header and exports
 * vp_abi, vp_meta, vp_state_size, vp_init, vp_push, vp_feed, vp_finish and vp_error. The
 * parser never copies or buffers payload: it reports fields as spans in stream offsets, so
 * a field that straddles two calls of vp_feed (two UMEM frames, two recv() buffers) is one
 * span, and the caller keeps the bytes. Every matcher is resumable at any byte boundary:
 * what it has seen so far lives in vp_base, never on the C stack. No function here takes a
 * lock, allocates or calls back into Python, so the network thread can run them nogil.
 */
#ifndef VTLPARSE_H
#define VTLPARSE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define VP_ABI 1

/* Results of vp_feed / vp_finish. */
enum { VP_OK = 0, VP_FULL = 1, VP_ERROR = 2 };

/* Event kinds. A record is the events since the previous VP_EV_RECORD, then its own. */
enum {
    VP_EV_SPAN = 1,   /* field bytes [off, off+len) of the stream */
    VP_EV_VALUE = 2,  /* a decoded integer in val */
    VP_EV_NULL = 3,   /* an explicit null */
    VP_EV_BEGIN = 4,  /* a group (nested list) opens */
    VP_EV_END = 5,    /* the innermost group closes */
    VP_EV_RECORD = 6, /* a record of type id ends; it spans [off, off+len) */
};

/* Span flag: the bytes hold escapes; val = quote byte << 8 | escape byte. */
#define VP_F_UNESCAPE 1

typedef struct vp_event {
    uint64_t off;
    int64_t val;
    uint32_t len;
    uint16_t id; /* field id, or record type id for VP_EV_RECORD (see vp_meta) */
    uint8_t kind;
    uint8_t flags;
} vp_event; /* 24 bytes */

typedef struct vp_out {
    vp_event *ev;      /* the caller's array */
    uint32_t cap;      /* its size, at least VP_MIN_EVENTS */
    uint32_t n;        /* events written by this call */
    uint64_t consumed; /* bytes of buf consumed by this call */
} vp_out;

#define VP_MIN_EVENTS 8
#define VP_QCAP 256        /* input queue (vp_push), e.g. methods of pipelined requests */
#define VP_SPIN_MAX 65536  /* loop iterations allowed without consuming a byte */

/* Internal results of a matcher. */
enum { VP_DONE = 0, VP_MORE = 1, VP_FAIL = 2, VP_ROOM = 3 };

/* Header-block rules: what to do with a header field of a given name. */
enum { VP_HA_NONE = 0, VP_HA_LENGTH = 1, VP_HA_CODING = 2, VP_HA_COUNT = 3 };

typedef struct vp_hdr_rule {
    const char *name;  /* lower case */
    const char *dup;   /* reason when unique and seen twice, or NULL */
    uint32_t len;
    uint16_t var;
    uint8_t action;
} vp_hdr_rule;

typedef struct vp_hdr_cfg {
    const vp_hdr_rule *rules;
    uint32_t nrules; /* <= 32 */
    uint32_t max_count, max_line;
    uint64_t max_size;
    uint16_t name_id, value_id; /* field ids of the two spans of each line */
} vp_hdr_cfg;

typedef struct vp_hdrs {
    uint32_t sub, count, cand, seen, tok_len, te_chunked;
    int32_t rule;
    uint8_t tok_match, tok_ws, num_ws, _pad;
    uint64_t block_start, line_start, name_start, name_end, val_start, val_end;
    int64_t acc, digits;
} vp_hdrs;

typedef struct vp_chunk {
    uint32_t sub, ext_len, digits, _pad;
    uint64_t size, remaining, total, data_start;
} vp_chunk;

/* The first member of every generated state. */
typedef struct vp_base {
    uint32_t node;     /* where vp_feed resumes */
    uint32_t depth;    /* call depth (frames in use - 1) */
    uint8_t eof, in_record, dead, closed;
    uint32_t spin;
    uint64_t pos;      /* stream offset of the next byte expected */
    uint64_t rec_start;
    uint64_t spin_pos;
    const char *err;
    uint64_t err_off;
    /* the active matcher (one at a time) */
    uint64_t m_start, m_end;
    int64_t m_val, m_cnt;
    uint32_t m_sub, m_i;
    uint8_t m_flags, m_neg;
    vp_hdrs h;
    vp_chunk c;
    int64_t q[VP_QCAP];
    uint32_t qhead, qlen;
} vp_base;

#define VP_OFF(q) (base + (uint64_t)((q) - buf))
#define VP_IS_CTL(c) ((c) < 0x20 || (c) == 0x7f)

static inline int vp_fail(vp_base *b, const char *reason, uint64_t off) {
    b->err = reason;
    b->err_off = off;
    return VP_FAIL;
}

static inline void vp_emit(vp_out *out, uint8_t kind, uint16_t id, uint64_t off, uint64_t len,
                           int64_t val, uint8_t flags) {
    vp_event *e = &out->ev[out->n++];
    e->off = off;
    e->val = val;
    e->len = (uint32_t)len;
    e->id = id;
    e->kind = kind;
    e->flags = flags;
}

static inline uint8_t vp_lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

static inline int vp_hexval(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = vp_lower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* RFC 9110 5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 * "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static const uint8_t vp_tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

/* Bytes of a header value (RFC 9110 5.5): 1 visible (VCHAR, obs-text), 2 SP or HTAB,
 * 0 the rest (CR, LF, other controls end the value or are errors) */
static const uint8_t vp_vbyte[256] = {
    [' '] = 2, ['\t'] = 2, [0x21 ... 0x7e] = 1, [0x80 ... 0xff] = 1,
};

static inline void vp_begin(vp_base *b, uint64_t pos) {
    b->m_start = b->m_end = pos;
    b->m_val = b->m_cnt = 0;
    b->m_sub = b->m_i = 0;
    b->m_flags = b->m_neg = 0;
}

/* ---- literal: the exact bytes lit[0..n), ASCII case folded when ci (lit is lower case) */
static inline int vp_expect(vp_base *b, const uint8_t *lit, uint32_t n, int ci,
                            const uint8_t *buf, const uint8_t **pp, const uint8_t *end,
                            uint64_t base, const char *reason) {
    const uint8_t *p = *pp;
    while (b->m_i < n) {
        if (p == end) { *pp = p; return VP_MORE; }
        uint8_t c = ci ? vp_lower(*p) : *p;
        if (c != lit[b->m_i]) return vp_fail(b, reason, VP_OFF(p));
        p++;
        b->m_i++;
    }
    *pp = p;
    return VP_DONE;
}

/* ---- until: content bytes (allowed by cls, any byte if cls is NULL) up to the literal
 * lit[0..n); kmp is its failure table, so an overlapping partial match resumes right.
 * Bytes of a partial match that turn out to be content are checked against cls too. */
static inline int vp_until(vp_base *b, const uint8_t *lit, const uint8_t *kmp, uint32_t n,
                           const uint8_t *cls, const uint8_t *buf, const uint8_t **pp,
                           const uint8_t *end, uint64_t base) {
    const uint8_t *p = *pp;
    uint8_t first = lit[0];
    while (p < end) {
        if (b->m_i == 0) {
            if (cls) {
                while (p < end && *p != first && cls[*p]) p++;
            } else {
                const uint8_t *q = memchr(p, first, (size_t)(end - p));
                p = q ? q : end;
            }
            if (p == end) break;
            if (*p != first) return vp_fail(b, "invalid byte", VP_OFF(p));
            p++;
            b->m_i = 1;
        } else {
            uint8_t c = *p;
            uint32_t i = b->m_i;
            while (i > 0 && c != lit[i]) {
                uint32_t j = kmp[i - 1];
                if (cls) /* lit[0..i-j) fell out of the match: they are content */
                    for (uint32_t k = 0; k < i - j; k++)
                        if (!cls[lit[k]]) return vp_fail(b, "invalid byte", VP_OFF(p) - i + k);
                i = j;
            }
            if (c == lit[i]) {
                i++;
            } else if (cls && !cls[c]) {
                return vp_fail(b, "invalid byte", VP_OFF(p));
            }
            b->m_i = i;
            p++;
        }
        if (b->m_i == n) {
            b->m_end = VP_OFF(p) - n;
            *pp = p;
            return VP_DONE;
        }
    }
    *pp = p;
    return VP_MORE;
}

/* ---- line: content allowed by cls up to CRLF or LF (RFC 9112 2.2); a CR not followed by
 * LF is rejected, since recipients that disagree on bare CR can be made to split messages
 * differently. With cls NULL the line must be empty. */
static inline int vp_line(vp_base *b, const uint8_t *cls, const uint8_t *buf,
                          const uint8_t **pp, const uint8_t *end, uint64_t base) {
    const uint8_t *p = *pp;
    if (b->m_sub == 0) {
        if (cls)
            while (p < end && cls[*p]) p++;
        if (p == end) { *pp = p; return VP_MORE; }
        b->m_end = VP_OFF(p);
        if (*p == '\n') { *pp = p + 1; return VP_DONE; }
        if (*p != '\r') return vp_fail(b, cls ? "invalid byte" : "expected end of line", VP_OFF(p));
        p++;
        b->m_sub = 1;
    }
    if (p == end) { *pp = p; return VP_MORE; }
    if (*p != '\n') return vp_fail(b, "bare CR", VP_OFF(p) - 1);
    *pp = p + 1;
    return VP_DONE;
}

/* ---- fixed: exactly m_cnt more bytes */
static inline int vp_fixed(vp_base *b, const uint8_t *buf, const uint8_t **pp,
                           const uint8_t *end, uint64_t base) {
    const uint8_t *p = *pp;
    uint64_t avail = (uint64_t)(end - p);
    uint64_t take = (uint64_t)b->m_cnt < avail ? (uint64_t)b->m_cnt : avail;
    p += take;
    b->m_cnt -= (int64_t)take;
    *pp = p;
    if (b->m_cnt) return VP_MORE;
    b->m_end = VP_OFF(p);
    return VP_DONE;
}

/* ---- int: decimal digits (a leading '-' when sign), then the literal lit[0..n) */
static inline int vp_int(vp_base *b, int sign, const uint8_t *lit, uint32_t n,
                         const uint8_t *buf, const uint8_t **pp, const uint8_t *end,
                         uint64_t base) {
    const uint8_t *p = *pp;
    while (p < end) {
        uint8_t c = *p;
        if (b->m_sub == 0) { /* digits */
            if (c >= '0' && c <= '9') {
                if (b->m_val > (INT64_MAX - (c - '0')) / 10)
                    return vp_fail(b, "number too large", VP_OFF(p));
                b->m_val = b->m_val * 10 + (c - '0');
                b->m_cnt++;
                p++;
                continue;
            }
            if (c == '-' && sign && b->m_cnt == 0 && !b->m_neg && VP_OFF(p) == b->m_start) {
                b->m_neg = 1;
                p++;
                continue;
            }
            if (b->m_cnt == 0) return vp_fail(b, "expected a number", VP_OFF(p));
            b->m_sub = 1;
        }
        if (c != lit[b->m_i]) return vp_fail(b, "invalid byte after a number", VP_OFF(p));
        p++;
        if (++b->m_i == n) {
            if (b->m_neg) b->m_val = -b->m_val;
            *pp = p;
            return VP_DONE;
        }
    }
    *pp = p;
    return VP_MORE;
}

/* ---- digits: exactly n decimal digits */
static inline int vp_digits(vp_base *b, uint32_t n, const uint8_t *buf, const uint8_t **pp,
                            const uint8_t *end, uint64_t base) {
    const uint8_t *p = *pp;
    while (b->m_cnt < n) {
        if (p == end) { *pp = p; return VP_MORE; }
        if (*p < '0' || *p > '9') return vp_fail(b, "expected a digit", VP_OFF(p));
        b->m_val = b->m_val * 10 + (*p - '0');
        b->m_cnt++;
        p++;
    }
    *pp = p;
    return VP_DONE;
}

/* ---- binary unsigned integer of n bytes, big endian (be) or little endian */
static inline int vp_uint(vp_base *b, uint32_t n, int be, const uint8_t **pp,
                          const uint8_t *end) {
    const uint8_t *p = *pp;
    while (b->m_cnt < n) {
        if (p == end) { *pp = p; return VP_MORE; }
        uint64_t v = (uint64_t)b->m_val;
        if (be)
            v = (v << 8) | *p;
        else
            v |= (uint64_t)*p << (8 * b->m_cnt);
        b->m_val = (int64_t)v;
        b->m_cnt++;
        p++;
    }
    *pp = p;
    return VP_DONE;
}

/* ---- delimited: one field of a delimited record (CSV, RFC 4180 2). It ends at sep
 * (*term = 0), at the end of the line or of the stream (*term = 1). A field that opens with
 * quote runs to the closing quote and may hold sep, CR and LF; inside it a doubled quote
 * (esc == quote) or esc + byte (esc != quote) stands for a byte, and VP_F_UNESCAPE marks
 * the span. cls marks sep, quote, esc, CR and LF. A quote inside an unquoted field and a
 * bare CR are errors (RFC 4180 2.5, 2.6). */
enum { VD_START, VD_PLAIN, VD_QUOTED, VD_QUOTE, VD_CR, VD_ESC_PLAIN, VD_ESC_QUOTED };

/* The field's bytes seen so far, up to pos (after a quote or a CR it ended at m_end): the
 * limit is checked against these, so a field is too long, or not, however the input is
 * cut, and that error comes before any later in the field. */
static inline uint64_t vp_delimited_len(const vp_base *b, uint64_t pos) {
    return (b->m_sub == VD_QUOTE || b->m_sub == VD_CR ? b->m_end : pos) - b->m_start;
}

static inline int vd_fail(vp_base *b, uint64_t max, uint64_t pos, const char *reason,
                          uint64_t off) {
    if (vp_delimited_len(b, pos) > max)
        return vp_fail(b, "field too long", b->m_start + max);
    return vp_fail(b, reason, off);
}

static inline int vp_delimited(vp_base *b, const uint8_t *cls, uint8_t sep, uint8_t quote,
                               uint8_t esc, uint64_t max, int64_t *term, const uint8_t *buf,
                               const uint8_t **pp, const uint8_t *end, uint64_t base) {
    const uint8_t *p = *pp;
    uint8_t c;
    for (;;) {
        if (p == end) goto more;
        switch (b->m_sub) {
        case VD_START:
            if (*p == quote) {
                p++;
                b->m_start = VP_OFF(p);
                b->m_sub = VD_QUOTED;
                continue;
            }
            b->m_sub = VD_PLAIN;
            /* fall through */
        case VD_PLAIN:
            while (p < end && !cls[*p]) p++;
            if (p == end) goto more;
            c = *p;
            if (c == esc && esc != quote) {
                b->m_flags |= VP_F_UNESCAPE;
                b->m_sub = VD_ESC_PLAIN;
                p++;
                continue;
            }
            b->m_end = VP_OFF(p);
            p++;
            if (c == sep) { *term = 0; goto done; }
            if (c == '\n') { *term = 1; goto done; }
            if (c == '\r') { b->m_sub = VD_CR; continue; }
            return vd_fail(b, max, VP_OFF(p) - 1, "quote inside an unquoted field", VP_OFF(p) - 1);
        case VD_ESC_PLAIN:
        case VD_ESC_QUOTED:
            p++;
            b->m_sub = b->m_sub == VD_ESC_PLAIN ? VD_PLAIN : VD_QUOTED;
            continue;
        case VD_QUOTED:
            if (esc == quote) {
                const uint8_t *q = memchr(p, quote, (size_t)(end - p));
                p = q ? q : end;
            } else {
                while (p < end && *p != quote && *p != esc) p++;
            }
            if (p == end) goto more;
            if (*p == esc && esc != quote) {
                b->m_flags |= VP_F_UNESCAPE;
                b->m_sub = VD_ESC_QUOTED;
                p++;
                continue;
            }
            b->m_end = VP_OFF(p);
            p++;
            b->m_sub = VD_QUOTE;
            continue;
        case VD_QUOTE: /* after a quote inside a quoted field: doubled, or the closing one */
            c = *p;
            if (c == quote && esc == quote) {
                b->m_flags |= VP_F_UNESCAPE;
                b->m_sub = VD_QUOTED;
                p++;
                continue;
            }
            p++;
            if (c == sep) { *term = 0; goto done; }
            if (c == '\n') { *term = 1; goto done; }
            if (c == '\r') { b->m_sub = VD_CR; continue; }
            return vd_fail(b, max, VP_OFF(p) - 1, "unexpected byte after a closing quote", VP_OFF(p) - 1);
        case VD_CR:
            if (*p != '\n') return vd_fail(b, max, VP_OFF(p) - 1, "bare CR", VP_OFF(p) - 1);
            p++;
            *term = 1;
            goto done;
        }
    }
more:
    *pp = p;
    if (!b->eof) return VP_MORE;
    switch (b->m_sub) { /* the end of the stream ends the field and the line */
    case VD_START: case VD_PLAIN: b->m_end = VP_OFF(p); /* fall through */
    case VD_QUOTE: *term = 1; return VP_DONE;
    case VD_CR: return vd_fail(b, max, VP_OFF(p) - 1, "bare CR", VP_OFF(p) - 1);
    case VD_QUOTED: case VD_ESC_QUOTED:
        return vd_fail(b, max, VP_OFF(p), "unterminated quoted field", b->m_start - 1);
    default: return vd_fail(b, max, VP_OFF(p), "escape at the end of the stream", VP_OFF(p) - 1);
    }
done:
    *pp = p;
    return VP_DONE;
}

/* ---- rows: whole records of delimited fields (CSV rows) in one pass, for a spec whose
 * stream is nothing but `record { repeat field delimited while $term == 0 }`. Fields are
 * scanned and their events written with everything in registers; vp_delimited's per-byte
 * state is never touched, because a row is taken only when it lies whole in the buffer,
 * with room for its events, and holds nothing unusual. At the first row that does not
 * (it is cut by the end of the buffer, has an escape, a bare CR, a quote out of place, a
 * field or record over its limit, or is an error), the events and bytes of that row are
 * given back and the generated per-byte code takes it from its first byte, so the two
 * paths cannot disagree. Returns the rows taken; *pp and out->n move past them.
 *
 * The bytes that can end an unquoted field (sep, quote, esc, CR, LF) are found with a
 * bitmask: one bit per byte of the next 64 (SSE2 compares), so a row of short fields
 * costs a few shifts, not a table lookup per byte. Without SSE2, and in a buffer's last
 * 64 bytes, they are found with the byte table. */
typedef struct vp_scan {
    uintptr_t at;      /* the address of the 64 bytes that the bits describe */
    uint64_t bits;     /* bit i: at[i] is one of the five */
#ifdef __SSE2__
    __m128i c[5];
#endif
} vp_scan;

#ifdef __SSE2__
static inline uint64_t vp_scan16(const vp_scan *s, const uint8_t *q) {
    __m128i v = _mm_loadu_si128((const __m128i *)q);
    __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, s->c[0]), _mm_cmpeq_epi8(v, s->c[1])),
                             _mm_or_si128(_mm_cmpeq_epi8(v, s->c[2]), _mm_cmpeq_epi8(v, s->c[3])));
    return (uint32_t)_mm_movemask_epi8(_mm_or_si128(m, _mm_cmpeq_epi8(v, s->c[4])));
}
#endif

/* The first of the five at or after p, or end if there is none. */
static inline const uint8_t *vp_scan_next(vp_scan *s, const uint8_t *cls, const uint8_t *p,
                                          const uint8_t *end) {
    for (;;) {
        uintptr_t d = (uintptr_t)p - s->at;
        if (d < 64) {
            uint64_t m = s->bits >> d;
            if (m)
                return p + __builtin_ctzll(m);
            p += 64 - d;
        }
#ifdef __SSE2__
        if (end - p >= 64) {
            s->bits = vp_scan16(s, p) | vp_scan16(s, p + 16) << 16 |
                      vp_scan16(s, p + 32) << 32 | vp_scan16(s, p + 48) << 48;
            s->at = (uintptr_t)p;
            continue;
        }
#endif
        while (p < end && !cls[*p]) p++; /* the last bytes of the buffer */
        return p;
    }
}

static inline void vp_put(vp_event *e, uint64_t off, int64_t val, uint32_t len, uint16_t id,
                          uint8_t kind, uint8_t flags) {
    e->off = off;
    e->val = val;
    e->len = len;
    e->id = id;
    e->kind = kind;
    e->flags = flags;
}

static inline uint32_t vp_rows(const uint8_t *cls, uint8_t sep, uint8_t quote, uint8_t esc,
                               uint64_t max_field, uint64_t max_record, uint16_t fid,
                               uint16_t tid, const uint8_t *buf, const uint8_t **pp,
                               const uint8_t *end, uint64_t base, vp_out *out) {
    const uint8_t *p = *pp, *row = p, *q, *f;
    vp_event *e = out->ev + out->n, *row_e = e;
    vp_event *last = out->ev + out->cap - 1; /* the last slot is kept for a record's end */
    uint64_t obase = base - (uint64_t)(uintptr_t)buf; /* + a pointer: its stream offset */
    int64_t qval = (int64_t)quote << 8 | esc;
    uint32_t rows = 0;
    uint8_t c, flags;
    vp_scan s = {.at = (uintptr_t)p - 64, .bits = 0}; /* describes nothing yet */
#ifdef __SSE2__
    s.c[0] = _mm_set1_epi8((char)sep);
    s.c[1] = _mm_set1_epi8((char)quote);
    s.c[2] = _mm_set1_epi8((char)esc);
    s.c[3] = _mm_set1_epi8('\r');
    s.c[4] = _mm_set1_epi8('\n');
#endif
    for (;;) { /* one field at p */
        if (e >= last)
            goto bail;
        q = vp_scan_next(&s, cls, p, end);
        if (q == end)
            goto bail;
        c = *q;
        if (c == quote && q == p && esc == quote) { /* a quoted field: up to its closing quote */
            f = ++q;
            flags = 0;
            for (;;) {
                q = memchr(q, quote, (size_t)(end - q));
                if (q == NULL || q + 1 == end)
                    goto bail;
                if (q[1] != quote)
                    break;
                flags = VP_F_UNESCAPE; /* a doubled quote */
                q += 2;
            }
            if ((uint64_t)(q - f) > max_field)
                goto bail;
            vp_put(e++, obase + (uintptr_t)f, qval, (uint32_t)(q - f), fid, VP_EV_SPAN, flags);
            c = *++q;
        } else {
            if ((uint64_t)(q - p) > max_field)
                goto bail;
            vp_put(e++, obase + (uintptr_t)p, qval, (uint32_t)(q - p), fid, VP_EV_SPAN, 0);
        }
        p = q + 1;
        if (c == sep)
            continue;
        if (c == '\r' && p < end && *p == '\n')
            p++;
        else if (c != '\n')
            goto bail;
        if ((uint64_t)(p - row) > max_record)
            goto bail;
        vp_put(e++, obase + (uintptr_t)row, 0, (uint32_t)(p - row), tid, VP_EV_RECORD, 0);
        rows++;
        row = p;
        row_e = e;
    }
bail:
    *pp = row;
    out->n = (uint32_t)(row_e - out->ev);
    return rows;
}

/* ---- header block (RFC 9112 5, RFC 9110 5.5): field lines up to an empty line. Each line
 * emits two spans, the name and the value without surrounding whitespace. Rules act on
 * named fields while their value streams by, so nothing is buffered:
 *   VP_HA_LENGTH  1*DIGIT and nothing else (RFC 9112 6.3.5: invalid is unrecoverable)
 *   VP_HA_CODING  a transfer-coding list: var = 1 if chunked is the final coding, 2 if the
 *                 field is present otherwise; chunked twice is an error (RFC 9112 6.1)
 *   VP_HA_COUNT   var += 1 */
enum { HS_LINE, HS_NAME, HS_OWS, HS_VALUE, HS_LF, HS_END_LF };

static inline void vp_hdrs_begin(vp_hdrs *h, uint64_t pos) {
    memset(h, 0, sizeof *h);
    h->block_start = pos;
}

static inline int vp_coding_token_end(vp_base *b, vp_hdrs *h, int64_t *var, uint64_t off) {
    if (h->tok_len == 0) return VP_DONE; /* empty list elements are ignored (RFC 9110 5.6.1) */
    if (h->tok_match && h->tok_len == 7) {
        if (h->te_chunked++) return vp_fail(b, "chunked applied more than once", off);
        *var = 1;
    } else {
        *var = 2;
    }
    h->tok_len = 0;
    h->tok_match = 1;
    h->tok_ws = 0;
    return VP_DONE;
}

static inline int vp_hdr_value_byte(vp_base *b, vp_hdrs *h, const vp_hdr_rule *r,
                                    int64_t *vars, uint8_t c, uint64_t off) {
    int ws = c == ' ' || c == '\t';
    if (r->action == VP_HA_LENGTH) {
        if (ws) {
            h->num_ws = h->digits > 0;
            return VP_DONE;
        }
        if (c < '0' || c > '9' || h->num_ws) return vp_fail(b, "invalid Content-Length", off);
        if (h->acc > (INT64_MAX / 4 - 9) / 10) return vp_fail(b, "Content-Length too large", off);
        h->acc = h->acc * 10 + (c - '0');
        h->digits++;
    } else if (r->action == VP_HA_CODING) {
        static const char chunked[] = "chunked";
        if (c == ',') return vp_coding_token_end(b, h, &vars[r->var], off);
        if (ws) {
            if (h->tok_len) h->tok_ws = 1;
            return VP_DONE;
        }
        if (h->tok_ws || h->tok_len >= 7 || vp_lower(c) != (uint8_t)chunked[h->tok_len])
            h->tok_match = 0;
        h->tok_len++;
    }
    return VP_DONE;
}

static inline int vp_hdr_line_end(vp_base *b, vp_hdrs *h, const vp_hdr_cfg *cfg,
                                  int64_t *vars, vp_out *out, uint64_t off) {
    if (off - h->line_start > cfg->max_line)
        return vp_fail(b, "header line too long", h->line_start + cfg->max_line);
    if (off - h->block_start > cfg->max_size)
        return vp_fail(b, "header section too long", h->block_start + cfg->max_size);
    if (h->rule >= 0) {
        const vp_hdr_rule *r = &cfg->rules[h->rule];
        if (r->action == VP_HA_LENGTH) {
            if (h->digits == 0) return vp_fail(b, "invalid Content-Length", h->val_start);
            vars[r->var] = h->acc;
        } else if (r->action == VP_HA_CODING) {
            if (vp_coding_token_end(b, h, &vars[r->var], off) != VP_DONE) return VP_FAIL;
        } else if (r->action == VP_HA_COUNT) {
            vars[r->var]++;
        }
    }
    vp_emit(out, VP_EV_SPAN, cfg->name_id, h->name_start, h->name_end - h->name_start, 0, 0);
    vp_emit(out, VP_EV_SPAN, cfg->value_id, h->val_start, h->val_end - h->val_start, 0, 0);
    h->sub = HS_LINE;
    return VP_DONE;
}

static inline int vp_headers(vp_base *b, const vp_hdr_cfg *cfg, int64_t *vars, vp_out *out,
                             const uint8_t *buf, const uint8_t **pp, const uint8_t *end,
                             uint64_t base) {
    vp_hdrs *h = &b->h;
    const uint8_t *p = *pp;
    uint8_t c;
    while (p < end) {
        c = *p;
        switch (h->sub) {
        case HS_LINE:
            if (out->cap - out->n < 2) { *pp = p; return VP_ROOM; }
            if (c == '\r') { h->sub = HS_END_LF; p++; continue; }
            if (c == '\n') { *pp = p + 1; return VP_DONE; }
            if (c == ' ' || c == '\t') /* RFC 9112 5.2 obs-fold, 2.2 whitespace before a field */
                return vp_fail(b, "obsolete line folding", VP_OFF(p));
            if (!vp_tchar[c]) return vp_fail(b, "invalid byte in a header name", VP_OFF(p));
            if (++h->count > cfg->max_count) return vp_fail(b, "too many header fields", VP_OFF(p));
            h->line_start = h->name_start = VP_OFF(p);
            h->cand = cfg->nrules >= 32 ? 0xffffffffu : (1u << cfg->nrules) - 1;
            h->rule = -1;
            h->sub = HS_NAME;
            /* fall through */
        case HS_NAME: {
            const uint8_t *s = p;
            while (p < end && vp_tchar[*p]) p++;
            uint32_t i0 = (uint32_t)(VP_OFF(s) - h->name_start);
            if (i0 == 0 && p < end) {
                /* the whole name is here (the usual case): only rules of its length can
                 * match, compared once, not byte by byte against every rule */
                uint32_t nlen = (uint32_t)(p - s);
                for (uint32_t k = 0; k < cfg->nrules; k++) {
                    const vp_hdr_rule *r = &cfg->rules[k];
                    uint32_t i = 0;
                    if (r->len == nlen)
                        while (i < nlen && vp_lower(s[i]) == (uint8_t)r->name[i]) i++;
                    if (r->len != nlen || i < nlen) h->cand &= ~(1u << k);
                }
            }
            for (uint32_t k = 0; h->cand && k < cfg->nrules; k++) {
                if (!(h->cand & (1u << k))) continue;
                const vp_hdr_rule *r = &cfg->rules[k];
                for (const uint8_t *q = s; q < p; q++) {
                    uint32_t i = i0 + (uint32_t)(q - s);
                    if (i >= r->len || vp_lower(*q) != (uint8_t)r->name[i]) {
                        h->cand &= ~(1u << k);
                        break;
                    }
                }
            }
            if (p == end) break;
            if (*p == ' ' || *p == '\t') /* RFC 9112 5.1 */
                return vp_fail(b, "whitespace between a header name and the colon", VP_OFF(p));
            if (*p != ':' || VP_OFF(p) == h->name_start)
                return vp_fail(b, "invalid byte in a header name", VP_OFF(p));
            h->name_end = VP_OFF(p);
            uint32_t nlen = (uint32_t)(h->name_end - h->name_start);
            for (uint32_t k = 0; k < cfg->nrules; k++)
                if ((h->cand & (1u << k)) && cfg->rules[k].len == nlen) h->rule = (int32_t)k;
            if (h->rule >= 0) {
                const vp_hdr_rule *r = &cfg->rules[h->rule];
                if (r->dup && (h->seen & (1u << h->rule))) return vp_fail(b, r->dup, h->name_start);
                h->seen |= 1u << h->rule;
                h->acc = h->digits = 0;
                h->num_ws = 0;
                h->tok_len = h->tok_ws = 0;
                h->tok_match = 1;
                if (r->action == VP_HA_CODING && vars[r->var] == 0) vars[r->var] = 2;
            }
            p++;
            h->sub = HS_OWS;
            continue;
        }
        case HS_OWS:
            if (c == ' ' || c == '\t') { p++; continue; }
            h->val_start = h->val_end = VP_OFF(p);
            h->sub = HS_VALUE;
            /* fall through */
        case HS_VALUE:
            if (h->rule < 0) {
                /* a field no rule reads: find the value's end, and its last visible byte */
                const uint8_t *last = NULL;
                while (p < end && vp_vbyte[*p]) {
                    if (vp_vbyte[*p] == 1) last = p;
                    p++;
                }
                if (last) h->val_end = VP_OFF(last) + 1;
                if (p < end) c = *p;
            }
            while (p < end) {
                c = *p;
                if (c > 0x20 && c != 0x7f) {
                    if (h->rule >= 0 &&
                        vp_hdr_value_byte(b, h, &cfg->rules[h->rule], vars, c, VP_OFF(p)) != VP_DONE)
                        return VP_FAIL;
                    p++;
                    h->val_end = VP_OFF(p);
                } else if (c == ' ' || c == '\t') {
                    if (h->rule >= 0) vp_hdr_value_byte(b, h, &cfg->rules[h->rule], vars, c, VP_OFF(p));
                    p++;
                } else {
                    break;
                }
            }
            if (p == end) break;
            if (c == '\n') {
                p++;
                if (vp_hdr_line_end(b, h, cfg, vars, out, VP_OFF(p)) != VP_DONE) return VP_FAIL;
                continue;
            }
            if (c != '\r') return vp_fail(b, "invalid byte in a header value", VP_OFF(p));
            p++;
            h->sub = HS_LF;
            continue;
        case HS_LF:
            if (c != '\n') return vp_fail(b, "bare CR", VP_OFF(p) - 1);
            p++;
            if (vp_hdr_line_end(b, h, cfg, vars, out, VP_OFF(p)) != VP_DONE) return VP_FAIL;
            continue;
        case HS_END_LF:
            if (c != '\n') return vp_fail(b, "bare CR", VP_OFF(p) - 1);
            *pp = p + 1;
            return VP_DONE;
        }
    }
    *pp = p;
    if (h->sub != HS_LINE && h->sub != HS_END_LF && VP_OFF(p) - h->line_start > cfg->max_line)
        return vp_fail(b, "header line too long", h->line_start + cfg->max_line);
    if (VP_OFF(p) - h->block_start > cfg->max_size)
        return vp_fail(b, "header section too long", h->block_start + cfg->max_size);
    return VP_MORE;
}

/* ---- chunked body (RFC 9112 7.1): one span per chunk's data, then the trailer section
 * through vp_headers. Chunk lines end in CRLF exactly: the "MAY accept LF" of RFC 9112 2.2
 * covers the start line and fields, and lenience here is how request smuggling begins. */
enum { CS_SIZE, CS_SIZE_MORE, CS_BWS, CS_EXT, CS_EXT_QUOTED, CS_EXT_QPAIR, CS_SIZE_LF,
       CS_DATA, CS_DATA_CR, CS_DATA_LF, CS_TRAILERS };

#define VP_CHUNK_EXT_MAX 4096

static inline void vp_chunk_begin(vp_chunk *c) { memset(c, 0, sizeof *c); }

static inline int vp_chunked(vp_base *b, uint16_t data_id, uint64_t max_total,
                             const vp_hdr_cfg *trailers, int64_t *vars, vp_out *out,
                             const uint8_t *buf, const uint8_t **pp, const uint8_t *end,
                             uint64_t base) {
    vp_chunk *k = &b->c;
    const uint8_t *p = *pp;
    while (p < end || k->sub == CS_TRAILERS) {
        uint8_t c = p < end ? *p : 0;
        int h;
        switch (k->sub) {
        case CS_SIZE:
            if (out->cap - out->n < 1) { *pp = p; return VP_ROOM; }
            if ((h = vp_hexval(c)) < 0) return vp_fail(b, "invalid chunk size", VP_OFF(p));
            k->size = (uint64_t)h;
            k->digits = 1;
            k->ext_len = 0;
            k->sub = CS_SIZE_MORE;
            p++;
            continue;
        case CS_SIZE_MORE:
            if ((h = vp_hexval(c)) >= 0) {
                if (++k->digits > 15) return vp_fail(b, "chunk size too large", VP_OFF(p));
                k->size = k->size * 16 + (uint64_t)h;
                p++;
                continue;
            }
            if (c == '\r') { k->sub = CS_SIZE_LF; p++; continue; }
            if (c == ';') { k->sub = CS_EXT; p++; continue; }
            if (c == ' ' || c == '\t') { k->sub = CS_BWS; p++; continue; }
            if (c == '\n') return vp_fail(b, "bare LF in a chunk size line", VP_OFF(p));
            return vp_fail(b, "invalid chunk size", VP_OFF(p));
        case CS_BWS: /* chunk-ext = *( BWS ";" ... ): whitespace must lead to an extension */
            if (c == ' ' || c == '\t') { p++; continue; }
            if (c == ';') { k->sub = CS_EXT; p++; continue; }
            return vp_fail(b, "invalid chunk size", VP_OFF(p));
        case CS_EXT:
        case CS_EXT_QUOTED:
        case CS_EXT_QPAIR:
            if (++k->ext_len > VP_CHUNK_EXT_MAX)
                return vp_fail(b, "chunk extension too long", VP_OFF(p));
            if (k->sub == CS_EXT_QPAIR) {
                if (VP_IS_CTL(c) && c != '\t') return vp_fail(b, "invalid chunk extension", VP_OFF(p));
                k->sub = CS_EXT_QUOTED;
            } else if (k->sub == CS_EXT_QUOTED) {
                if (c == '"') k->sub = CS_EXT;
                else if (c == '\\') k->sub = CS_EXT_QPAIR;
                else if (VP_IS_CTL(c) && c != '\t')
                    return vp_fail(b, "invalid chunk extension", VP_OFF(p));
            } else if (c == '\r') {
                k->sub = CS_SIZE_LF;
            } else if (c == '"') {
                k->sub = CS_EXT_QUOTED;
            } else if (!(vp_tchar[c] || c == ';' || c == '=' || c == ' ' || c == '\t')) {
                return vp_fail(b, "invalid chunk extension", VP_OFF(p));
            }
            p++;
            continue;
        case CS_SIZE_LF:
            if (c != '\n') return vp_fail(b, "bare CR", VP_OFF(p) - 1);
            p++;
            if (k->size == 0) {
                vp_hdrs_begin(&b->h, VP_OFF(p));
                k->sub = CS_TRAILERS;
                continue;
            }
            k->total += k->size;
            if (k->total > max_total) return vp_fail(b, "body too long", VP_OFF(p));
            k->remaining = k->size;
            k->data_start = VP_OFF(p);
            k->sub = CS_DATA;
            continue;
        case CS_DATA: {
            uint64_t avail = (uint64_t)(end - p);
            uint64_t take = k->remaining < avail ? k->remaining : avail;
            p += take;
            k->remaining -= take;
            if (k->remaining) continue;
            /* room was reserved in CS_SIZE */
            vp_emit(out, VP_EV_SPAN, data_id, k->data_start, k->size, 0, 0);
            k->sub = CS_DATA_CR;
            continue;
        }
        case CS_DATA_CR:
            if (c != '\r') return vp_fail(b, "chunk data not followed by CRLF", VP_OFF(p));
            k->sub = CS_DATA_LF;
            p++;
            continue;
        case CS_DATA_LF:
            if (c != '\n') return vp_fail(b, "chunk data not followed by CRLF", VP_OFF(p));
            k->sub = CS_SIZE;
            p++;
            continue;
        case CS_TRAILERS: {
            int r = vp_headers(b, trailers, vars, out, buf, &p, end, base);
            *pp = p;
            return r;
        }
        }
    }
    *pp = p;
    return VP_MORE;
}

#endif /* VTLPARSE_H */
