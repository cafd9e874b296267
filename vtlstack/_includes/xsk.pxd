# C externs of the device edge, all in one place: libxdp's xsk.h (AF_XDP rings and UMEM),
# the if_xdp.h constants and structs, and the libc calls the port needs (poll, sendto,
# recvfrom, getsockopt, mmap, if_nametoindex). Declared nogil: the hot path runs without
# the GIL and calls only these.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "<linux/if_xdp.h>" nogil:
    enum:
        XDP_SHARED_UMEM
        XDP_COPY
        XDP_ZEROCOPY
        XDP_USE_NEED_WAKEUP
        XDP_RING_NEED_WAKEUP
        XDP_STATISTICS
        XDP_OPTIONS
        XDP_OPTIONS_ZEROCOPY

    struct xdp_desc:
        uint64_t addr
        uint32_t len
        uint32_t options

    struct xdp_statistics:
        uint64_t rx_dropped
        uint64_t rx_invalid_descs
        uint64_t tx_invalid_descs
        uint64_t rx_ring_full
        uint64_t rx_fill_ring_empty_descs
        uint64_t tx_ring_empty_descs

    struct xdp_options:
        uint32_t flags


cdef extern from "<linux/bpf.h>" nogil:
    # XDP_PACKET_HEADROOM lives here in the uapi headers.
    enum:
        XDP_PACKET_HEADROOM


cdef extern from "<linux/if_link.h>" nogil:
    enum:
        XDP_FLAGS_SKB_MODE
        XDP_FLAGS_DRV_MODE
        XDP_FLAGS_UPDATE_IF_NOEXIST


cdef extern from "<xdp/xsk.h>" nogil:
    struct xsk_ring_prod:
        uint32_t cached_prod
        uint32_t cached_cons
        uint32_t mask
        uint32_t size

    struct xsk_ring_cons:
        uint32_t cached_prod
        uint32_t cached_cons
        uint32_t mask
        uint32_t size

    struct xsk_umem:
        pass

    struct xsk_socket:
        pass

    struct xsk_umem_config:
        uint32_t fill_size
        uint32_t comp_size
        uint32_t frame_size
        uint32_t frame_headroom
        uint32_t flags

    struct xsk_socket_config:
        uint32_t rx_size
        uint32_t tx_size
        uint32_t libxdp_flags
        uint32_t xdp_flags
        uint16_t bind_flags

    enum:
        XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD

    uint64_t *xsk_ring_prod__fill_addr(xsk_ring_prod *fill, uint32_t idx)
    const uint64_t *xsk_ring_cons__comp_addr(const xsk_ring_cons *comp, uint32_t idx)
    xdp_desc *xsk_ring_prod__tx_desc(xsk_ring_prod *tx, uint32_t idx)
    const xdp_desc *xsk_ring_cons__rx_desc(const xsk_ring_cons *rx, uint32_t idx)
    int xsk_ring_prod__needs_wakeup(const xsk_ring_prod *r)
    uint32_t xsk_prod_nb_free(xsk_ring_prod *r, uint32_t nb)
    uint32_t xsk_cons_nb_avail(xsk_ring_cons *r, uint32_t nb)
    uint32_t xsk_ring_prod__reserve(xsk_ring_prod *prod, uint32_t nb, uint32_t *idx)
    void xsk_ring_prod__submit(xsk_ring_prod *prod, uint32_t nb)
    uint32_t xsk_ring_cons__peek(xsk_ring_cons *cons, uint32_t nb, uint32_t *idx)
    void xsk_ring_cons__cancel(xsk_ring_cons *cons, uint32_t nb)
    void xsk_ring_cons__release(xsk_ring_cons *cons, uint32_t nb)
    void *xsk_umem__get_data(void *umem_area, uint64_t addr)
    uint64_t xsk_umem__extract_addr(uint64_t addr)

    int xsk_umem__fd(const xsk_umem *umem)
    int xsk_socket__fd(const xsk_socket *xsk)
    int xsk_umem__create(xsk_umem **umem, void *umem_area, uint64_t size,
                         xsk_ring_prod *fill, xsk_ring_cons *comp,
                         const xsk_umem_config *config)
    int xsk_socket__create(xsk_socket **xsk, const char *ifname, uint32_t queue_id,
                           xsk_umem *umem, xsk_ring_cons *rx, xsk_ring_prod *tx,
                           const xsk_socket_config *config)
    int xsk_socket__create_shared(xsk_socket **xsk, const char *ifname, uint32_t queue_id,
                                  xsk_umem *umem, xsk_ring_cons *rx, xsk_ring_prod *tx,
                                  xsk_ring_prod *fill, xsk_ring_cons *comp,
                                  const xsk_socket_config *config)
    int xsk_socket__update_xskmap(xsk_socket *xsk, int xsks_map_fd)
    int xsk_umem__delete(xsk_umem *umem)
    void xsk_socket__delete(xsk_socket *xsk)


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    enum:
        MSG_DONTWAIT
        SOL_XDP
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const void *addr,
                   socklen_t addr_len)
    ssize_t recvfrom(int fd, void *buf, size_t n, int flags, void *addr, socklen_t *addr_len)
    int getsockopt(int fd, int level, int optname, void *optval, socklen_t *optlen)


cdef extern from "<sys/mman.h>" nogil:
    enum:
        PROT_READ
        PROT_WRITE
        MAP_PRIVATE
        MAP_ANONYMOUS
        MAP_POPULATE
    void *MAP_FAILED
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)


cdef extern from "<net/if.h>" nogil:
    unsigned int if_nametoindex(const char *ifname)


cdef extern from "<errno.h>" nogil:
    int errno
