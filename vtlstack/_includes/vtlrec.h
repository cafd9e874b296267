/* vtlrec.h: a connection's record stream (parsers/README.md, "In the stack").
 *
 * One block holds a generated parser's state and a ring of the events of complete records.
 * The parsing thread (the network thread, or the application thread with parse_in="app")
 * feeds the connection's in-order bytes frame by frame with vr_parse(); the parser reports
 * fields as stream-offset spans, so a field across two frames is one span and no byte is
 * copied. Events reach the ring as they come, but the consumer (the application thread)
 * sees only those up to the last record end (`head`), so it never reads half a record.
 * Beside the ring, `ends` holds where each complete record's events end, so the consumer
 * finds the records of a batch without reading their events.
 *
 * Flow control: when the ring cannot take a feed's events the producer stops (VR_STALL),
 * leaving the rest of the bytes unparsed in the receive queue, and sets `stalled`; the
 * consumer, after taking events, sees it (the same fence pairing as spsc.h) and asks the
 * producer to go on. Unparsed bytes are unconsumed bytes, so the window closes meanwhile.
 *
 * Two holders share the block (the application's socket and the parsing side); the last
 * to let go (vr_put) frees it. Nothing here allocates, locks or calls back into Python.
 */
#ifndef VTLREC_H
#define VTLREC_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vtlparse.h"

typedef int (*vr_feed_fn)(void *st, const uint8_t *buf, size_t n, uint64_t off, vp_out *out);
typedef int (*vr_finish_fn)(void *st, vp_out *out);
typedef const char *(*vr_error_fn)(const void *st, uint64_t *off);

enum { VR_DONE = 0, VR_STALL = 1, VR_FAILED = 2 };     /* vr_parse, vr_finish */
enum { VR_OPEN = 0, VR_ENDED = 1, VR_ERROR = 2 };      /* status */

#define VR_SCRATCH 256  /* the room a feed waits for: it may emit this many events, or more */

/* Reasons of our own (the parser's come from vp_error). */
#define VR_TOO_LONG "record larger than max_record"
#define VR_TOO_MANY "record has more fields than the event ring holds"
#define VR_NO_ROOM "record larger than the receive queue can hold"

typedef struct vr_stream {
    vr_feed_fn feed;
    vr_finish_fn finish;
    vr_error_fn error;
    void *st;               /* the parser state, in this block */
    uint64_t max_record;    /* bytes an unfinished record may hold before it is an error */
    uint32_t cap, mask;     /* ring size (a power of two) */
    /* producer only */
    uint64_t parsed;        /* stream offset of the next byte to parse */
    uint64_t rec_start;     /* where the open record starts (after the last record end) */
    uint64_t consumed;      /* network thread: stream offset of its first unconsumed byte */
    uint32_t write;         /* events written, the open record's included */
    uint8_t fin;            /* network thread: the stream ended in order; finish once parsed */
    /* shared */
    uint32_t head;          /* events of complete records (producer, release) */
    uint32_t tail;          /* events taken (consumer, release) */
    uint32_t stalled;       /* the producer waits for the consumer to take events */
    uint32_t status;        /* VR_*, published after head */
    uint32_t holders;
    const char *why;        /* VR_ERROR: the reason (static text) and the offending offset */
    uint64_t err_off;
    uint64_t records;       /* complete records so far (producer, release, after ends) */
    uint32_t *ends;         /* record k's events end at ring index ends[k & mask] */
    vp_event ring[];
} vr_stream;

/* A block for a parser whose state is state_size bytes and a ring of cap events (a power
 * of two, at least 2 * VR_SCRATCH), and the ends of as many records (each has an event).
 * The caller runs the parser's vp_init on ->st. */
static inline vr_stream *vr_new(uint32_t cap, size_t state_size)
{
    size_t ring = (size_t)cap * (sizeof(vp_event) + sizeof(uint32_t));
    vr_stream *r;
    if (cap < 2 * VR_SCRATCH || (cap & (cap - 1)))
        return NULL;
    r = (vr_stream *)calloc(1, sizeof(*r) + ring + state_size + 16);
    if (r == NULL)
        return NULL;
    r->cap = cap;
    r->mask = cap - 1;
    r->ends = (uint32_t *)&r->ring[cap];
    r->st = (void *)(((uintptr_t)&r->ends[cap] + 15) & ~(uintptr_t)15);
    r->holders = 2;
    return r;
}

static inline void vr_put(vr_stream *r)
{
    if (__atomic_sub_fetch(&r->holders, 1, __ATOMIC_ACQ_REL) == 0)
        free(r);
}

static inline uint32_t vr_room(vr_stream *r)
{
    return r->cap - (r->write - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE));
}

/* Producer: is there room for one feed's events? If not, say so to the consumer. */
static inline int vr_has_room(vr_stream *r)
{
    if (vr_room(r) >= VR_SCRATCH)
        return 1;
    __atomic_store_n(&r->stalled, 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (vr_room(r) >= VR_SCRATCH) {
        __atomic_store_n(&r->stalled, 0, __ATOMIC_RELAXED);
        return 1;
    }
    return 0;
}

static inline int vr_fail(vr_stream *r, const char *why, uint64_t off)
{
    r->why = why;
    r->err_off = off;
    __atomic_store_n(&r->status, VR_ERROR, __ATOMIC_RELEASE);
    return VR_FAILED;
}

/* Producer: take a feed's n events into the ring (they are in it already when the feed
 * wrote into the ring itself, see vr_out); publish up to the last record end among them. */
static inline void vr_append(vr_stream *r, const vp_event *ev, uint32_t n)
{
    uint32_t i, w = r->write, head = r->head, mask = r->mask, *ends = r->ends;
    uint64_t rec_start = r->rec_start, records = r->records;
    if (ev != &r->ring[w & mask])
        for (i = 0; i < n; i++)
            r->ring[(w + i) & mask] = ev[i];
    for (i = 0; i < n; i++) {
        if (ev[i].kind == VP_EV_RECORD) {
            head = w + i + 1;
            rec_start = ev[i].off + ev[i].len;
            ends[records++ & mask] = head;
        }
    }
    r->write = w + n;
    r->rec_start = rec_start;
    if (head != r->head) {
        __atomic_store_n(&r->records, records, __ATOMIC_RELEASE);
        __atomic_store_n(&r->head, head, __ATOMIC_RELEASE);
    }
}

/* Producer: ready `out` for one parser call, if the ring has room for what it may emit;
 * VR_STALL if not, VR_FAILED when the open record alone fills the ring. The parser writes
 * into the ring's free slots themselves when at least VR_SCRATCH of them lie unbroken
 * before the ring's end (no copy), else into `scratch`, copied in by vr_append. */
static inline int vr_out(vr_stream *r, vp_out *out, vp_event *scratch)
{
    uint32_t room, flat;
    if (!vr_has_room(r)) {
        if (r->write - r->head + VR_SCRATCH > r->cap)
            return vr_fail(r, VR_TOO_MANY, r->rec_start);
        return VR_STALL;
    }
    room = vr_room(r);
    flat = r->cap - (r->write & r->mask);
    if (flat >= VR_SCRATCH) {
        out->ev = &r->ring[r->write & r->mask];
        out->cap = room < flat ? room : flat;
    } else {
        out->ev = scratch;
        out->cap = VR_SCRATCH;
    }
    out->n = 0;
    out->consumed = 0;
    return VR_DONE;
}

/* Producer: parse the stream bytes [off, off + len) (buf points at them); what was parsed
 * before (off < parsed) is skipped. VR_DONE: all parsed; VR_STALL: the ring is full, call
 * again with the same bytes once the consumer took events; VR_FAILED: status is VR_ERROR. */
static inline int vr_parse(vr_stream *r, const uint8_t *buf, size_t len, uint64_t off)
{
    vp_event ev[VR_SCRATCH];
    vp_out out;
    uint64_t eoff = 0;
    const char *why;
    size_t done;
    int rc;
    if (r->status != VR_OPEN)
        return r->status == VR_ERROR ? VR_FAILED : VR_DONE;
    if (off + len <= r->parsed)
        return VR_DONE;
    done = (size_t)(r->parsed - off);
    while (done < len) {
        rc = vr_out(r, &out, ev);
        if (rc != VR_DONE)
            return rc;
        rc = r->feed(r->st, buf + done, len - done, off + done, &out);
        done += out.consumed;
        r->parsed += out.consumed;
        vr_append(r, out.ev, out.n);
        if (rc == VP_ERROR) {
            why = r->error(r->st, &eoff);
            return vr_fail(r, why ? why : "parse error", eoff);
        }
        if (r->parsed - r->rec_start > r->max_record)
            return vr_fail(r, VR_TOO_LONG, r->rec_start);
    }
    return VR_DONE;
}

/* Producer: the stream ended after everything was parsed. */
static inline int vr_finish(vr_stream *r)
{
    vp_event ev[VR_SCRATCH];
    vp_out out;
    uint64_t eoff = 0;
    const char *why;
    int rc;
    if (r->status != VR_OPEN)
        return r->status == VR_ERROR ? VR_FAILED : VR_DONE;
    do {
        rc = vr_out(r, &out, ev);
        if (rc != VR_DONE)
            return rc;
        rc = r->finish(r->st, &out);
        vr_append(r, out.ev, out.n);
    } while (rc == VP_FULL);
    if (rc == VP_ERROR) {
        why = r->error(r->st, &eoff);
        return vr_fail(r, why ? why : "parse error", eoff);
    }
    __atomic_store_n(&r->status, VR_ENDED, __ATOMIC_RELEASE);
    return VR_DONE;
}

/* Consumer: events of complete records not taken yet. */
static inline uint32_t vr_ready(vr_stream *r)
{
    return __atomic_load_n(&r->head, __ATOMIC_ACQUIRE) - r->tail;
}

/* Consumer: where complete record k (k < records) ends in the stream. */
static inline uint64_t vr_record_end(const vr_stream *r, uint64_t k)
{
    const vp_event *e = &r->ring[(r->ends[k & r->mask] - 1) & r->mask];
    return e->off + e->len;
}

/* Consumer: how many of the complete records from record k on, whose events start at ring
 * index `from`, to take: at most max_records, within `limit` events, and ending by stream
 * offset `edge` (a binary search over `ends`: their events are not read). *events: their
 * events; *end: where the last ends. */
static inline uint32_t vr_count(const vr_stream *r, uint64_t k, uint32_t from, uint32_t limit,
                                uint32_t max_records, uint64_t edge, uint32_t *events,
                                uint64_t *end)
{
    uint64_t avail = __atomic_load_n(&r->records, __ATOMIC_ACQUIRE) - k;
    uint32_t lo = 0, hi = avail < max_records ? (uint32_t)avail : max_records, mid;
    while (lo < hi) { /* the most records j such that the j-th fits */
        mid = hi - (hi - lo) / 2;
        if (r->ends[(k + mid - 1) & r->mask] - from <= limit &&
            vr_record_end(r, k + mid - 1) <= edge)
            lo = mid;
        else
            hi = mid - 1;
    }
    *events = lo ? r->ends[(k + lo - 1) & r->mask] - from : 0;
    *end = lo ? vr_record_end(r, k + lo - 1) : 0;
    return lo;
}

/* Consumer: status, read after vr_ready() said 0 (so no record is missed before it). */
static inline uint32_t vr_status(vr_stream *r)
{
    return __atomic_load_n(&r->status, __ATOMIC_ACQUIRE);
}

/* Consumer: hand n events back. Returns 1 if the producer stalled and must be told. */
static inline int vr_release(vr_stream *r, uint32_t n)
{
    __atomic_store_n(&r->tail, r->tail + n, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&r->stalled, __ATOMIC_RELAXED))
        return __atomic_exchange_n(&r->stalled, 0, __ATOMIC_RELAXED);
    return 0;
}

#endif
