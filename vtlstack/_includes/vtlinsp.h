/* vtlinsp.h: an HTTP inspector on a splice (Stack.splice(..., inspect="http")).
 *
 * The network thread parses both directions of a spliced pair in place, before their
 * frames move on: requests (client side) with the http_request parser, responses (server
 * side) with http_response, told each request's method. A request's bytes go on only once
 * its head has parsed whole (so a malformed or ambiguous one never reaches the server);
 * body bytes then stream. Each exchange (method, target, status, bytes, times) goes into a
 * ring the application thread reads, for an access log; counters sit beside it.
 *
 * Two holders share the block: the application's inspector object and the network thread
 * (vi_put frees it with the last). Nothing here allocates, locks or calls into Python.
 */
#ifndef VTLINSP_H
#define VTLINSP_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vtlrec.h"

#define VI_RING 256     /* exchanges logged and not read yet (a power of two) */
#define VI_PENDING 64   /* requests sent on whose response we wait (pipelining) */
#define VI_METHOD 16
#define VI_TARGET 240

typedef int (*vi_push_fn)(void *st, int64_t v);

typedef struct vi_exchange {
    uint64_t t_req;         /* ns (monotonic): the request line was parsed */
    uint64_t t_done;        /* ns: the response ended; 0 if it never did */
    uint64_t req_bytes;     /* the request, head and body */
    uint64_t resp_bytes;
    int32_t status;         /* 0: no response */
    uint8_t method_len;
    uint8_t target_len;
    uint8_t target_cut;     /* the target was longer than VI_TARGET */
    uint8_t pad;
    char method[VI_METHOD];
    char target[VI_TARGET];
} vi_exchange;

/* One direction: its parser and where its stream offsets sit in sequence space. */
typedef struct vi_side {
    vr_stream *r;
    int32_t cid;
    uint32_t seq0;          /* stream offset off0 is this sequence number */
    uint64_t off0;
    uint32_t seen;          /* events handled so far */
} vi_side;

enum { VI_REQ = 0, VI_RESP = 1 };
enum { VI_OPEN = 0, VI_DONE = 1, VI_FAILED = 2 };

typedef struct vi_block {
    uint32_t holders;
    uint32_t state;         /* VI_OPEN, VI_DONE (both streams ended), VI_FAILED */
    vi_side side[2];
    vi_push_fn push;        /* the response parser's method queue */
    uint16_t id_method, id_target, id_status;
    /* the open request's head: where scanning for its end has got to */
    uint64_t scan_rec;      /* the record being scanned (its start offset) */
    uint64_t scan;          /* next offset to look at */
    uint8_t scan_state;     /* 0 before the request line, 1 in a line, 2 after LF, 3 LF CR */
    uint8_t head_done;      /* the record at scan_rec has its whole head parsed */
    uint8_t status_seen;    /* the open response's status line has parsed */
    uint8_t reject;         /* a bad request: a 400 is owed once the answers before it are */
    /* requests waiting for their response, oldest first */
    uint32_t pend_head, pend_n;
    vi_exchange pend[VI_PENDING];
    vi_exchange cur;        /* the request being parsed */
    uint8_t cur_answered;   /* ... and its final response came already (an early 413...) */
    vi_exchange orphan;     /* a response to no request (a server's 408, say) */
    /* counters: the network thread writes, the application reads (racy, for reports) */
    uint64_t requests, responses, parse_errors, rejected, bad_gateway, log_dropped;
    uint64_t status_class[6];   /* [0]: other, [1..5]: 1xx..5xx */
    uint64_t req_bytes, resp_bytes;
    const char *why;        /* the first parse error's reason (static text) */
    uint64_t err_off;
    /* the log ring: network thread writes, application thread reads */
    uint32_t log_write, log_read;
    vi_exchange log[VI_RING];
} vi_block;

/* What the client gets instead of the server's answer. */
static const char VI_HTTP_400[] =
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request";
static const char VI_HTTP_502[] =
    "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Gateway";

static inline vi_block *vi_new(void)
{
    vi_block *b = (vi_block *)calloc(1, sizeof(vi_block));
    if (b != NULL)
        b->holders = 2;
    return b;
}

static inline void vi_put(vi_block *b)
{
    int i;
    if (__atomic_sub_fetch(&b->holders, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (i = 0; i < 2; i++)
        if (b->side[i].r != NULL)
            vr_put(b->side[i].r);
    free(b);
}

/* Network thread: hand a finished exchange to the application (dropped, counted, when the
 * ring is full: the log is a report, never a reason to stall traffic). */
static inline void vi_log(vi_block *b, const vi_exchange *x)
{
    uint32_t w = b->log_write;
    if (w - __atomic_load_n(&b->log_read, __ATOMIC_ACQUIRE) == VI_RING) {
        b->log_dropped++;
        return;
    }
    b->log[w & (VI_RING - 1)] = *x;
    __atomic_store_n(&b->log_write, w + 1, __ATOMIC_RELEASE);
}

/* Application thread: the next logged exchange, or 0 if none. */
static inline int vi_take(vi_block *b, vi_exchange *x)
{
    uint32_t r = b->log_read;
    if (r == __atomic_load_n(&b->log_write, __ATOMIC_ACQUIRE))
        return 0;
    *x = b->log[r & (VI_RING - 1)];
    __atomic_store_n(&b->log_read, r + 1, __ATOMIC_RELEASE);
    return 1;
}

/* Network thread: scan `n` bytes at stream offset `off` for the end of the open request's
 * head, an empty line (CRLF or a bare LF, as the parser allows), not counting the empty
 * lines allowed before the request line. Returns 1 once found. */
static inline int vi_scan(vi_block *b, const uint8_t *p, uint32_t n, uint64_t off)
{
    uint32_t i = 0;
    uint8_t c;
    if (off + n <= b->scan)
        return b->head_done;
    if (off < b->scan)
        i = (uint32_t)(b->scan - off);
    for (; i < n && !b->head_done; i++) {
        c = p[i];
        switch (b->scan_state) {
        case 0:
            if (c != '\r' && c != '\n')
                b->scan_state = 1;
            break;
        case 1:
            if (c == '\n')
                b->scan_state = 2;
            break;
        case 2:
            b->scan_state = c == '\r' ? 3 : c == '\n' ? 4 : 1;
            break;
        case 3:
            b->scan_state = c == '\n' ? 4 : 1;
            break;
        }
        if (b->scan_state == 4)
            b->head_done = 1;
    }
    b->scan = off + i;
    return b->head_done;
}

#endif
