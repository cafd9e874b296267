# cython: language_level=3
"""The delay and reordering forwarder of the testbed's wire namespace.

Two AF_PACKET sockets, one per wire interface; every frame received on one is sent out of
the other once it is due. Per direction there are two FIFO rings of (due time, frame copy):
``main`` (due = arrival + delay) and ``held`` (due = arrival + delay + reorder extra, for
the reordered share). Within a ring due times never decrease, so each ring only ever sends
from its head, and frames in ``main`` overtake older ones sitting in ``held``. A full ring
drops the frame and counts it. The delay may change while frames flow (``control``, read as
frames arrive): a frame gets the delay in force when it arrives, as with netem. A longer delay
keeps the rings in order; after a shorter one, new frames wait behind the older ones still
queued, so the change takes effect as those drain (no frame overtakes another). The loop
runs without the GIL and sleeps in ppoll() until a frame arrives or the next one is due.
The due time is an absolute timerfd deadline rather than a ppoll() timeout: poll timeouts
get a slack of 0.1% of their length (50 us on a 50 ms delay), a timerfd none.
"""

from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, strerror
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.uio cimport iovec


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    short POLLIN
    short POLLERR
    short POLLHUP
    short POLLNVAL
    int ppoll(pollfd *fds, unsigned long nfds, const timespec *tmo, const void *sigmask)

cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr *vec, unsigned int n, int flags, timespec *tmo)
    int sendmmsg(int fd, mmsghdr *vec, unsigned int n, int flags)
    int MSG_DONTWAIT
    int MSG_TRUNC

cdef extern from "<sys/timerfd.h>" nogil:
    struct itimerspec:
        timespec it_interval
        timespec it_value
    int timerfd_create(int clockid, int flags)
    int timerfd_settime(int fd, int flags, const itimerspec *new_value, itimerspec *old)
    int TFD_NONBLOCK
    int TFD_CLOEXEC
    int TFD_TIMER_ABSTIME

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    int close(int fd)

cdef extern from "<sys/prctl.h>" nogil:
    int PR_SET_TIMERSLACK
    int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4,
              unsigned long a5)

# Counters, per direction (direction d uses [d * N_COUNTERS, (d + 1) * N_COUNTERS)).
# queue_full: dropped because the ring was full; send_errors: refused by the egress (mostly
# tbf's queue being full, i.e. the rate limit's own drops); sent_bytes: the bytes of the
# frames sent (what the link carried, for throughput over time).
COUNTERS = ("received", "sent", "reordered", "queue_full", "truncated", "send_errors",
            "sent_bytes")
cdef enum:
    C_RECEIVED = 0
    C_SENT = 1
    C_REORDERED = 2
    C_QUEUE_FULL = 3
    C_TRUNCATED = 4
    C_SEND_ERRORS = 5
    C_SENT_BYTES = 6
    N_COUNTERS = 7
    BATCH = 64

cdef struct Ring:
    uint8_t *data        # nslots * slot bytes
    int64_t *due         # ns, CLOCK_MONOTONIC
    uint32_t *length
    uint32_t nslots
    uint32_t head        # next to send
    uint32_t count


cdef int ring_init(Ring *r, uint32_t nslots, uint32_t slot) noexcept nogil:
    r.nslots = nslots
    r.head = 0
    r.count = 0
    r.data = <uint8_t *>calloc(nslots, slot)
    r.due = <int64_t *>calloc(nslots, sizeof(int64_t))
    r.length = <uint32_t *>calloc(nslots, sizeof(uint32_t))
    return 0 if r.data != NULL and r.due != NULL and r.length != NULL else -1


cdef void ring_free(Ring *r) noexcept nogil:
    free(r.data)
    free(r.due)
    free(r.length)


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline uint64_t xorshift(uint64_t *s) noexcept nogil:
    s[0] ^= s[0] << 13
    s[0] ^= s[0] >> 7
    s[0] ^= s[0] << 17
    return s[0]


cdef int flush(Ring *r, int fd, uint32_t slot, int64_t now, mmsghdr *msgs, iovec *iov,
               uint64_t *cnt, uint32_t skip) noexcept nogil:
    """Send the ring's due frames out of fd. Returns -1 when the socket is full (retry).
    skip: bytes of each frame that are not on the wire (the virtio_net_hdr)."""
    cdef uint32_t n, i, idx
    cdef int sent
    while r.count:
        n = 0
        # A batch of due frames, contiguous in the ring (stop at the wrap).
        while n < BATCH and n < r.count:
            idx = r.head + n
            if idx >= r.nslots or r.due[idx] > now:
                break
            iov[n].iov_base = r.data + <size_t>idx * slot
            iov[n].iov_len = r.length[idx]
            msgs[n].msg_hdr.msg_iov = &iov[n]
            msgs[n].msg_hdr.msg_iovlen = 1
            n += 1
        if n == 0:
            return 0
        sent = sendmmsg(fd, msgs, n, MSG_DONTWAIT)
        if sent < 0:
            if errno == EAGAIN:
                return -1
            if errno == EINTR:
                continue
            # ENOBUFS (tbf queue full) and the like: the link drops this frame.
            sent = 1
            cnt[C_SEND_ERRORS] += 1
        else:
            cnt[C_SENT] += sent
            for i in range(sent):
                cnt[C_SENT_BYTES] += r.length[(r.head + i) % r.nslots] - skip
        r.head = (r.head + sent) % r.nslots
        r.count -= sent
    return 0


cdef int64_t next_due(Ring *r) noexcept nogil:
    return r.due[r.head] if r.count else -1


def run(int fd_a, int fd_b, double delay_ms, double reorder_pct, double reorder_extra_ms,
        uint32_t frame_size, uint32_t queue_frames, uint64_t[::1] counters not None,
        uint64_t seed=0x9E3779B97F4A7C15, uint64_t[::1] control=None,
        uint32_t skip_bytes=0):
    """Forward between the two bound AF_PACKET sockets until one of them fails.

    counters: 2 * len(COUNTERS) uint64 slots (direction a->b first), updated in place.
    control: if given, control[0] is the delay in ns, read as frames arrive (another
    process may change it; it starts as delay_ms). skip_bytes: bytes of each frame that
    never reach the wire (a virtio_net_hdr), left out of sent_bytes.
    """
    if counters.shape[0] < 2 * N_COUNTERS:
        raise ValueError(f"counters needs {2 * N_COUNTERS} slots")
    cdef int fds[2]
    fds[0] = fd_a
    fds[1] = fd_b
    cdef int64_t delay = <int64_t>(delay_ms * 1e6)
    cdef int64_t extra = <int64_t>(reorder_extra_ms * 1e6)
    # 2^64 itself does not fit: 100% (and above) is the largest threshold instead.
    cdef uint64_t reorder_thresh = 0xFFFFFFFFFFFFFFFF if reorder_pct >= 100 else \
        <uint64_t>(reorder_pct / 100.0 * 18446744073709551616.0)
    cdef uint64_t rng = seed or 1
    cdef uint64_t *cnt = &counters[0]
    cdef volatile uint64_t *ctl = NULL
    if control is not None:
        control[0] = <uint64_t>delay
        ctl = &control[0]
    cdef Ring rings[4]          # [dir * 2 + 0] main, [dir * 2 + 1] held; dir 0 = a->b
    cdef mmsghdr msgs[BATCH]
    cdef iovec iov[BATCH]
    cdef uint8_t *staging = <uint8_t *>calloc(BATCH, frame_size)
    cdef pollfd pfd[3]
    cdef itimerspec timer
    cdef uint64_t expirations
    cdef int tfd = -1
    cdef int64_t now, due, wake
    cdef int d, i, k, got, blocked, err = 0
    cdef uint32_t held_slots = queue_frames // 4 if queue_frames >= 64 else 16
    cdef Ring *r
    cdef uint32_t tail, length
    for k in range(4):
        rings[k].data = NULL
        rings[k].due = NULL
        rings[k].length = NULL
    try:
        if staging == NULL:
            raise MemoryError()
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if tfd < 0:
            raise OSError(errno, strerror(errno).decode())
        timer.it_interval.tv_sec = 0
        timer.it_interval.tv_nsec = 0
        for k in range(4):
            if ring_init(&rings[k], held_slots if k % 2 else queue_frames, frame_size) < 0:
                raise MemoryError()
        for i in range(BATCH):
            msgs[i].msg_hdr.msg_name = NULL
            msgs[i].msg_hdr.msg_namelen = 0
            msgs[i].msg_hdr.msg_control = NULL
            msgs[i].msg_hdr.msg_controllen = 0
            msgs[i].msg_hdr.msg_flags = 0
        with nogil:
            # Timer slack 1 ns: the default 50 us would show in the delay.
            prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
            while err == 0:
                now = now_ns()
                # Send what is due; remember if a socket is full so we retry soon.
                blocked = 0
                for k in range(4):
                    if flush(&rings[k], fds[1 - k // 2], frame_size, now, msgs, iov,
                             cnt + (k // 2) * N_COUNTERS, skip_bytes) < 0:
                        blocked = 1
                wake = -1
                for k in range(4):
                    due = next_due(&rings[k])
                    if due >= 0 and (wake < 0 or due < wake):
                        wake = due
                if blocked:
                    wake = now + 100000
                for d in range(2):
                    pfd[d].fd = fds[d]
                    pfd[d].events = POLLIN
                    pfd[d].revents = 0
                # Absolute deadline; all-zero disarms the timer when nothing is queued.
                timer.it_value.tv_sec = wake // 1000000000 if wake > 0 else 0
                timer.it_value.tv_nsec = wake % 1000000000 if wake > 0 else 0
                timerfd_settime(tfd, TFD_TIMER_ABSTIME, &timer, NULL)
                pfd[2].fd = tfd
                pfd[2].events = POLLIN
                pfd[2].revents = 0
                got = ppoll(pfd, 3, NULL, NULL)
                if pfd[2].revents & POLLIN:
                    read(tfd, &expirations, sizeof(expirations))
                if got < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    break
                for d in range(2):
                    if pfd[d].revents & (POLLERR | POLLHUP | POLLNVAL):
                        err = -1
                    if not pfd[d].revents & POLLIN:
                        continue
                    for i in range(BATCH):
                        iov[i].iov_base = staging + <size_t>i * frame_size
                        iov[i].iov_len = frame_size
                        msgs[i].msg_hdr.msg_iov = &iov[i]
                        msgs[i].msg_hdr.msg_iovlen = 1
                        msgs[i].msg_hdr.msg_flags = 0
                    got = recvmmsg(fds[d], msgs, BATCH, MSG_DONTWAIT, NULL)
                    if got < 0:
                        if errno != EAGAIN and errno != EINTR:
                            err = errno
                        continue
                    now = now_ns()
                    if ctl != NULL:     # the delay in force when these frames arrived
                        delay = <int64_t>ctl[0]
                    for i in range(got):
                        cnt[d * N_COUNTERS + C_RECEIVED] += 1
                        if msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                            cnt[d * N_COUNTERS + C_TRUNCATED] += 1
                            continue
                        length = msgs[i].msg_len
                        due = now + delay
                        r = &rings[d * 2]
                        if reorder_thresh and xorshift(&rng) < reorder_thresh:
                            r = &rings[d * 2 + 1]
                            due += extra
                            cnt[d * N_COUNTERS + C_REORDERED] += 1
                        if r.count == r.nslots:
                            cnt[d * N_COUNTERS + C_QUEUE_FULL] += 1
                            continue
                        tail = (r.head + r.count) % r.nslots
                        memcpy(r.data + <size_t>tail * frame_size,
                               staging + <size_t>i * frame_size, length)
                        r.length[tail] = length
                        r.due[tail] = due
                        r.count += 1
    finally:
        if tfd >= 0:
            close(tfd)
        for k in range(4):
            ring_free(&rings[k])
        free(staging)
    if err > 0:
        raise OSError(err, strerror(err).decode())
    if err < 0:
        raise OSError("a wire interface went away")
