# The device edge: one AF_XDP socket (per RX queue) over a UMEM whose frames are tracked by
# a FramePool. Other extensions cimport this to drive the rings without the GIL.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from vtlstack._includes.xsk cimport xsk_ring_cons, xsk_ring_prod, xsk_socket, xsk_umem


cdef extern from *:
    """
    #define VTL_NO_FRAME ((uint64_t)-1)
    """
    # What alloc_frame() returns when the pool is empty.
    const uint64_t VTL_NO_FRAME


# A frame handed across the port API: UMEM address (frame base + data offset) and length.
ctypedef struct vtl_desc:
    uint64_t addr
    uint32_t len


# Where a frame is. Every frame is in exactly one state; the pool counts them per state.
cdef enum:
    FRAME_FREE = 0      # on the free stack
    FRAME_FILL = 1      # on the fill ring or in the kernel (includes RX ring not yet read)
    FRAME_RX = 2        # read from the RX ring, not handed over yet. rx_burst hands frames
                        # over in the same call, so this is 0 between calls today
    FRAME_TX = 3        # on the TX ring, waiting for its completion
    FRAME_HELD = 4      # owned by the stack/app: refcount >= 1
    FRAME_NSTATES = 5


# Per-queue state, kept together so that several queues become an array and a loop.
ctypedef struct vtl_queue:
    xsk_ring_prod fill
    xsk_ring_cons comp
    xsk_ring_cons rx
    xsk_ring_prod tx
    xsk_socket *xsk
    int fd
    uint32_t queue_id
    uint64_t rx_packets
    uint64_t tx_packets
    uint64_t tx_kicks
    uint64_t fill_wakeups
    uint64_t tx_ring_full
    uint32_t in_fill        # frames on this socket's fill ring or in the kernel for it


cdef class FramePool:
    cdef uint8_t *area
    cdef uint64_t area_size
    cdef uint32_t frame_count
    cdef uint32_t frame_size
    cdef uint32_t headroom
    cdef uint64_t *free_stack
    cdef uint32_t free_top
    cdef uint16_t *refcnt
    cdef uint8_t *state
    cdef uint64_t count[FRAME_NSTATES]
    cdef uint64_t bad_ops       # double free, unknown address, ref on a free frame...
    # Frame references held by receive queues (kept by the TCP engine). The fill ring and
    # these together get at most half the pool, so sends always have the other half.
    cdef uint64_t rx_held
    # Open AF_XDP sockets over this pool's UMEM: they split the fill budget, and the kernel
    # gives fill and TX frames back only once the last of them is gone.
    cdef uint32_t nsockets

    cdef inline uint32_t frame_index(self, uint64_t addr) noexcept nogil
    cdef inline uint8_t *frame_ptr(self, uint64_t addr) noexcept nogil
    cdef inline int valid_addr(self, uint64_t addr) noexcept nogil
    cdef inline void move(self, uint32_t idx, uint8_t to) noexcept nogil
    cdef uint64_t alloc_frame(self) noexcept nogil
    cdef int take_free(self, uint64_t *addr) noexcept nogil
    cdef void put_free(self, uint32_t idx) noexcept nogil
    cdef int from_fill(self, uint64_t addr) noexcept nogil
    cdef int ref(self, uint64_t addr) noexcept nogil
    cdef int unref(self, uint64_t addr) noexcept nogil
    cdef int free_frame(self, uint64_t addr) noexcept nogil
    cdef int to_tx(self, uint64_t addr) noexcept nogil
    cdef void tx_done(self, uint64_t addr) noexcept nogil
    cdef void reclaim_kernel(self) noexcept nogil


cdef class XskPort:
    cdef readonly FramePool pool
    cdef xsk_umem *umem
    cdef vtl_queue q
    cdef readonly str ifname
    cdef readonly uint32_t batch
    cdef readonly str bind_mode
    cdef bint closed
    cdef XskPort umem_owner     # the port whose UMEM this one joined (None: its own)
    cdef uint32_t sharers       # open ports that joined this one's UMEM
    cdef uint64_t rx_dropped_app   # frames the benchmark loops had to drop (TX ring full)

    cdef void _release(self)
    cdef void _create(self, bytes bname, uint32_t queue_id, uint32_t frame_count,
                      uint32_t frame_size, uint32_t headroom, uint32_t fill_size,
                      uint32_t comp_size, uint32_t rx_size, uint32_t tx_size, str mode,
                      bint zerocopy) except *
    cdef void _join(self, XskPort owner, bytes bname, uint32_t queue_id, uint32_t rx_size,
                    uint32_t tx_size) except *
    cdef void _delete_umem(self)
    cdef uint32_t rx_burst(self, vtl_desc *out, uint32_t max_n) noexcept nogil
    cdef uint32_t tx_burst(self, const vtl_desc *descs, uint32_t n) noexcept nogil
    cdef void kick_tx(self) noexcept nogil
    cdef uint32_t complete(self) noexcept nogil
    cdef uint32_t refill(self) noexcept nogil
    cdef int wait(self, int timeout_ms, short events) noexcept nogil
    cdef uint8_t *frame_ptr(self, uint64_t addr) noexcept nogil
    cdef uint64_t alloc_frame(self) noexcept nogil
    cdef int free_frame(self, uint64_t addr) noexcept nogil
    cdef int ref(self, uint64_t addr) noexcept nogil
    cdef int unref(self, uint64_t addr) noexcept nogil
    cdef uint64_t _rxdrop(self, double seconds) noexcept nogil
    cdef uint64_t _echo(self, double seconds) noexcept nogil
