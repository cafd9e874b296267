/* Lock-free single-producer/single-consumer ring of fixed-size messages.
 *
 * The producer owns `head`, the consumer owns `tail`; each keeps a cached copy of the
 * other's index so the shared cache line is read only when the cached view runs out
 * (the same trick as the AF_XDP rings). Indices are free-running u32 and wrap; size is
 * a power of two, so `head - tail` is the fill level even across the wrap.
 *
 * Sleeping consumers: before sleeping, the consumer sets `sleeping`, issues a full
 * fence, and re-checks the ring; the producer, after publishing, fences and reads
 * `sleeping`. One of the two always sees the other's write, so a wakeup is never lost
 * and an awake consumer costs the producer no syscall.
 */
#ifndef VTL_SPSC_H
#define VTL_SPSC_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One handoff message: 32 bytes, two per cache line. `kind` says what the rest means. */
struct vtl_msg {
    uint64_t addr;      /* UMEM frame address (data starts at addr) */
    uint32_t len;       /* payload length */
    uint32_t ip;        /* peer IPv4, network byte order */
    uint16_t port;      /* peer port, host byte order */
    uint16_t sock;      /* socket id */
    uint16_t kind;      /* VTL_MSG_* */
    uint16_t lport;     /* local port, host byte order */
    uint64_t arg;       /* kind-specific (e.g. a MAC address) */
};

struct spsc_ring {
    uint32_t size, mask;
    char _pad0[56];
    uint32_t head;          /* written by the producer only */
    uint32_t cached_tail;
    char _pad1[56];
    uint32_t tail;          /* written by the consumer only */
    uint32_t cached_head;
    uint32_t sleeping;      /* consumer is (about to be) asleep on its eventfd */
    char _pad2[52];
    struct vtl_msg slots[];
};

static inline struct spsc_ring *spsc_new(uint32_t size)
{
    struct spsc_ring *r;
    if (size < 2 || (size & (size - 1)))
        return NULL;
    if (posix_memalign((void **)&r, 64, sizeof(*r) + (size_t)size * sizeof(struct vtl_msg)))
        return NULL;
    memset(r, 0, sizeof(*r));
    r->size = size;
    r->mask = size - 1;
    return r;
}

static inline void spsc_free(struct spsc_ring *r) { free(r); }

/* Producer: number of free slots, at most n (reads the consumer's index only if needed). */
static inline uint32_t spsc_free_slots(struct spsc_ring *r, uint32_t n)
{
    uint32_t free_now = r->size - (r->head - r->cached_tail);
    if (free_now >= n)
        return n;
    r->cached_tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    free_now = r->size - (r->head - r->cached_tail);
    return free_now < n ? free_now : n;
}

static inline struct vtl_msg *spsc_slot(struct spsc_ring *r, uint32_t idx)
{
    return &r->slots[idx & r->mask];
}

/* Producer: publish n slots written at head .. head+n-1. */
static inline void spsc_submit(struct spsc_ring *r, uint32_t n)
{
    __atomic_store_n(&r->head, r->head + n, __ATOMIC_RELEASE);
}

/* Producer, after submitting: must the consumer be woken? */
static inline int spsc_consumer_sleeping(struct spsc_ring *r)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(&r->sleeping, __ATOMIC_RELAXED);
}

/* Consumer: number of messages ready, at most n. */
static inline uint32_t spsc_ready(struct spsc_ring *r, uint32_t n)
{
    uint32_t ready = r->cached_head - r->tail;
    if (ready == 0) {
        r->cached_head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        ready = r->cached_head - r->tail;
    }
    return ready < n ? ready : n;
}

/* Consumer: hand n read slots back to the producer. */
static inline void spsc_release(struct spsc_ring *r, uint32_t n)
{
    __atomic_store_n(&r->tail, r->tail + n, __ATOMIC_RELEASE);
}

/* Consumer, before sleeping: returns 1 if it may sleep (ring still empty after the fence). */
static inline int spsc_prepare_sleep(struct spsc_ring *r)
{
    __atomic_store_n(&r->sleeping, 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (spsc_ready(r, 1)) {
        __atomic_store_n(&r->sleeping, 0, __ATOMIC_RELAXED);
        return 0;
    }
    return 1;
}

static inline void spsc_end_sleep(struct spsc_ring *r)
{
    __atomic_store_n(&r->sleeping, 0, __ATOMIC_RELAXED);
}

static inline uint32_t spsc_count(struct spsc_ring *r)
{
    return __atomic_load_n(&r->head, __ATOMIC_ACQUIRE) - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
}

/* Single-message conveniences (batching callers use free_slots/slot/submit directly). */
static inline int spsc_push(struct spsc_ring *r, const struct vtl_msg *m)
{
    if (!spsc_free_slots(r, 1))
        return 0;
    *spsc_slot(r, r->head) = *m;
    spsc_submit(r, 1);
    return 1;
}

static inline int spsc_pop(struct spsc_ring *r, struct vtl_msg *out)
{
    if (!spsc_ready(r, 1))
        return 0;
    *out = *spsc_slot(r, r->tail);
    spsc_release(r, 1);
    return 1;
}

#endif
