# The device edge: an AF_XDP socket over a UMEM, and the pool that tracks every frame.
#
# Ownership: every UMEM frame is in exactly one state (free, fill/kernel, TX, held) and the
# pool counts frames per state, so `total == free + in_fill + in_tx + held + in_rx` holds
# after every call and a leaked frame shows up as `held` that never goes down.
#
# The per-packet API (rx_burst, tx_burst, complete, refill, frame_ptr, alloc/free/ref/unref)
# is `cdef ... noexcept nogil`: C only, no Python objects, callable from other extensions
# through _port.pxd. The Python methods (recv, send, stats...) copy and exist for tests
# and the control plane.
cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EAFNOSUPPORT, EAGAIN, EBUSY, EINVAL, ENODEV, ENOMEM, ENOBUFS, ENXIO
from libc.errno cimport EOPNOTSUPP, EPERM, EPROTONOSUPPORT
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, strerror

from vtlstack._includes.posix cimport *
from vtlstack._includes.xsk cimport *
from vtlstack.proto.eth cimport ETH_HLEN, ETHERTYPE_IPV4, eth_swap_addrs, eth_type
from vtlstack.proto.ipv4 cimport (
    IPPROTO_UDP_, IPV4_MIN_HLEN, ipv4_hlen, ipv4_proto, ipv4_swap_addrs,
)
from vtlstack.proto.udp cimport UDP_HLEN, udp_swap_ports

import os

from vtlstack.errors import (
    InterfaceError,
    KernelFeatureError,
    PrivilegeError,
    VtlError,
    XdpBusyError,
    require_root,
)

__all__ = ["FramePool", "XskPort"]

# The largest burst the benchmark loops keep on the stack.
cdef enum:
    MAX_BATCH = 256
    FILL_FLOOR = 64     # frames the kernel keeps to receive into, whatever the pool's state
    TX_RESERVE = 32     # ... except these: free frames only segments going out may take

_STATE_NAMES = ("free", "fill", "rx", "tx", "held")


cdef inline double now_s() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


@cython.final
cdef class FramePool:
    """The frames of one UMEM: a stack of free frame addresses, a refcount and a state per
    frame, and a count per state. Usable alone (no socket) so the accounting is testable.

    Addresses are UMEM offsets; any address inside a frame (base + data offset, as the RX
    and TX descriptors carry) names that frame.
    """

    def __cinit__(self, uint32_t frame_count=4096, uint32_t frame_size=2048,
                  uint32_t headroom=0):
        cdef uint32_t i
        if frame_count == 0:
            raise ValueError("frame_count must be at least 1")
        # Aligned-mode UMEM: the kernel wants a power-of-two chunk of 2048 bytes or more.
        if frame_size < 2048 or frame_size & (frame_size - 1):
            raise ValueError(f"frame_size {frame_size} must be a power of two >= 2048")
        if headroom + XDP_PACKET_HEADROOM + 128 > frame_size:
            raise ValueError(f"headroom {headroom} leaves no room for a packet in a "
                             f"{frame_size}-byte frame")
        self.frame_count = frame_count
        self.frame_size = frame_size
        self.headroom = headroom
        self.area_size = <uint64_t>frame_count * frame_size
        self.area = <uint8_t *>mmap(NULL, self.area_size, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        if <void *>self.area == MAP_FAILED:
            self.area = NULL
            raise VtlError(f"cannot map a UMEM of {self.area_size >> 20} MiB "
                           f"({os.strerror(errno)}): lower frame_count")
        self.free_stack = <uint64_t *>calloc(frame_count, sizeof(uint64_t))
        self.refcnt = <uint16_t *>calloc(frame_count, sizeof(uint16_t))
        self.state = <uint8_t *>calloc(frame_count, sizeof(uint8_t))
        if not self.free_stack or not self.refcnt or not self.state:
            raise MemoryError()
        # Pushed in reverse so the first allocations come from the start of the area.
        for i in range(frame_count):
            self.free_stack[i] = <uint64_t>(frame_count - 1 - i) * frame_size
        self.free_top = frame_count
        self.count[FRAME_FREE] = frame_count

    def __dealloc__(self):
        if self.area != NULL:
            munmap(self.area, self.area_size)
            self.area = NULL
        free(self.free_stack)
        free(self.refcnt)
        free(self.state)
        self.free_stack = NULL
        self.refcnt = NULL
        self.state = NULL

    # -- C API: per-packet, no GIL ------------------------------------------------------

    cdef inline uint32_t frame_index(self, uint64_t addr) noexcept nogil:
        return <uint32_t>(addr // self.frame_size)

    cdef inline uint8_t *frame_ptr(self, uint64_t addr) noexcept nogil:
        return self.area + addr

    cdef inline int valid_addr(self, uint64_t addr) noexcept nogil:
        return addr < self.area_size

    cdef inline void move(self, uint32_t idx, uint8_t to) noexcept nogil:
        self.count[self.state[idx]] -= 1
        self.count[to] += 1
        self.state[idx] = to

    cdef uint64_t alloc_frame(self) noexcept nogil:
        """A free frame, held by the caller with refcount 1; VTL_NO_FRAME if none."""
        cdef uint64_t addr
        cdef uint32_t idx
        if self.free_top == 0:
            return VTL_NO_FRAME
        self.free_top -= 1
        addr = self.free_stack[self.free_top]
        idx = self.frame_index(addr)
        self.move(idx, FRAME_HELD)
        self.refcnt[idx] = 1
        return addr

    cdef int take_free(self, uint64_t *addr) noexcept nogil:
        """Pop a free frame for the fill ring (state FILL, no refcount)."""
        if self.free_top == 0:
            return 0
        self.free_top -= 1
        addr[0] = self.free_stack[self.free_top]
        self.move(self.frame_index(addr[0]), FRAME_FILL)
        return 1

    cdef void put_free(self, uint32_t idx) noexcept nogil:
        self.refcnt[idx] = 0
        self.move(idx, FRAME_FREE)
        self.free_stack[self.free_top] = <uint64_t>idx * self.frame_size
        self.free_top += 1

    cdef int from_fill(self, uint64_t addr) noexcept nogil:
        """The kernel gave a fill frame back on the RX ring: the caller now holds it."""
        cdef uint32_t idx
        if not self.valid_addr(addr):
            self.bad_ops += 1
            return -1
        idx = self.frame_index(addr)
        if self.state[idx] != FRAME_FILL:
            self.bad_ops += 1
            return -1
        self.move(idx, FRAME_HELD)
        self.refcnt[idx] = 1
        return 0

    cdef int ref(self, uint64_t addr) noexcept nogil:
        """One more holder; returns the new refcount, or -1 (counted in bad_ops)."""
        cdef uint32_t idx
        if not self.valid_addr(addr):
            self.bad_ops += 1
            return -1
        idx = self.frame_index(addr)
        if (self.state[idx] != FRAME_HELD and self.state[idx] != FRAME_TX) \
                or self.refcnt[idx] == 0xFFFF:
            self.bad_ops += 1
            return -1
        self.refcnt[idx] += 1
        return self.refcnt[idx]

    cdef int unref(self, uint64_t addr) noexcept nogil:
        """One holder fewer; at 0 the frame is free again. Returns the new refcount, or -1
        for a frame nobody holds (a double free), counted in bad_ops."""
        cdef uint32_t idx
        if not self.valid_addr(addr):
            self.bad_ops += 1
            return -1
        idx = self.frame_index(addr)
        if (self.state[idx] != FRAME_HELD and self.state[idx] != FRAME_TX) \
                or self.refcnt[idx] == 0:
            self.bad_ops += 1
            return -1
        self.refcnt[idx] -= 1
        if self.refcnt[idx] == 0 and self.state[idx] == FRAME_HELD:
            self.put_free(idx)
        return self.refcnt[idx]

    cdef int free_frame(self, uint64_t addr) noexcept nogil:
        """Drop the caller's reference (the frame is free once nobody else holds it)."""
        return self.unref(addr)

    cdef int to_tx(self, uint64_t addr) noexcept nogil:
        """A held frame goes on the TX ring, taking the caller's reference with it; other
        holders keep theirs (a retransmission queue may send a frame it keeps)."""
        cdef uint32_t idx
        if not self.valid_addr(addr):
            self.bad_ops += 1
            return -1
        idx = self.frame_index(addr)
        if self.state[idx] != FRAME_HELD:
            self.bad_ops += 1
            return -1
        self.move(idx, FRAME_TX)
        return 0

    cdef void tx_done(self, uint64_t addr) noexcept nogil:
        """The completion ring returned the frame: drop the TX ring's reference."""
        cdef uint32_t idx
        if not self.valid_addr(addr):
            self.bad_ops += 1
            return
        idx = self.frame_index(addr)
        if self.state[idx] != FRAME_TX:
            self.bad_ops += 1
            return
        self.move(idx, FRAME_HELD)
        if self.refcnt[idx] > 0:
            self.refcnt[idx] -= 1
        if self.refcnt[idx] == 0:
            self.put_free(idx)

    cdef void reclaim_kernel(self) noexcept nogil:
        """The socket is gone, so the kernel holds nothing: fill and TX frames come back."""
        cdef uint32_t i
        for i in range(self.frame_count):
            if self.state[i] == FRAME_FILL or self.state[i] == FRAME_RX:
                self.put_free(i)
            elif self.state[i] == FRAME_TX:
                self.tx_done(<uint64_t>i * self.frame_size)

    # -- Python API: tests and the control plane -------------------------------------------

    @property
    def total(self):
        return self.frame_count

    @property
    def frame_size_(self):
        return self.frame_size

    def index_of(self, uint64_t addr):
        """Frame index of any address inside a frame."""
        if not self.valid_addr(addr):
            raise ValueError(f"address {addr:#x} is outside the UMEM")
        return self.frame_index(addr)

    def base_of(self, uint64_t addr):
        """UMEM address where the frame holding `addr` starts."""
        return self.index_of(addr) * self.frame_size

    def alloc(self):
        """A free frame address (held, refcount 1), or None if the pool is empty."""
        cdef uint64_t a = self.alloc_frame()
        return None if a == VTL_NO_FRAME else a

    def incref(self, uint64_t addr):
        cdef int r = self.ref(addr)
        if r < 0:
            raise VtlError(f"ref of frame {addr:#x}, which nobody holds")
        return r

    def decref(self, uint64_t addr):
        cdef int r = self.unref(addr)
        if r < 0:
            raise VtlError(f"unref of frame {addr:#x}, which nobody holds (double free?)")
        return r

    def free(self, uint64_t addr):
        self.decref(addr)

    def refcount(self, uint64_t addr):
        return self.refcnt[self.index_of(addr)]

    def state_of(self, uint64_t addr):
        return _STATE_NAMES[self.state[self.index_of(addr)]]

    def write(self, uint64_t addr, const uint8_t[:] data):
        if addr + len(data) > self.area_size or \
                self.frame_index(addr + len(data) - 1) != self.index_of(addr):
            raise ValueError("write crosses a frame boundary")
        if len(data):
            memcpy(self.area + addr, &data[0], len(data))

    def __getbuffer__(self, Py_buffer *buf, int flags):
        # The whole area, writable, for a pool no AF_XDP socket uses: the VTL sender builds
        # its packets in frames and sends them through the IP stack. Where a socket shares
        # the UMEM the kernel writes frames too, so it is read through the port instead.
        if self.nsockets:
            raise BufferError("an AF_XDP socket shares this UMEM: its frames are not "
                              "exported")
        PyBuffer_FillInfo(buf, self, self.area, self.area_size, 0, flags)

    def read(self, uint64_t addr, uint32_t n):
        if n and self.index_of(addr) != self.index_of(addr + n - 1):
            raise ValueError("read crosses a frame boundary")
        return PyBytes_FromStringAndSize(<char *>self.area + addr, n)

    # The transitions the port makes, reachable without a socket so tests can drive them.
    def _fill(self, uint32_t n):
        """Move up to n free frames to the (pretend) fill ring; returns their addresses."""
        cdef uint64_t a
        out = []
        while n and self.take_free(&a):
            out.append(a)
            n -= 1
        return out

    def _rx(self, uint64_t addr):
        if self.from_fill(addr) < 0:
            raise VtlError(f"frame {addr:#x} was not on the fill ring")

    def _tx(self, uint64_t addr):
        if self.to_tx(addr) < 0:
            raise VtlError(f"frame {addr:#x} is not held, so it cannot be sent")

    def _complete(self, uint64_t addr):
        cdef uint64_t before = self.bad_ops
        self.tx_done(addr)
        if self.bad_ops != before:
            raise VtlError(f"completion of frame {addr:#x}, which was not on the TX ring")

    def _reclaim(self):
        self.reclaim_kernel()

    def stats(self):
        return {
            "total": self.frame_count,
            "free": self.count[FRAME_FREE],
            "in_fill": self.count[FRAME_FILL],
            "in_rx_processing": self.count[FRAME_RX],
            "in_tx": self.count[FRAME_TX],
            "held": self.count[FRAME_HELD],
            "bad_ops": self.bad_ops,
        }

    def check_frames(self, bint expect_idle=False):
        """Recount every frame from its state and raise VtlError if the counters, the free
        stack or the total disagree (a frame is unaccounted). With expect_idle, also raise
        if any frame is still held or on the TX ring (a leak once the user is done)."""
        cdef uint64_t seen[FRAME_NSTATES]
        cdef uint32_t i
        cdef int s
        for s in range(FRAME_NSTATES):
            seen[s] = 0
        for i in range(self.frame_count):
            if self.state[i] >= FRAME_NSTATES:
                raise VtlError(f"frame {i} has an unknown state {self.state[i]}")
            seen[self.state[i]] += 1
            if (self.state[i] == FRAME_HELD) != (self.refcnt[i] > 0) \
                    and self.state[i] != FRAME_TX:
                raise VtlError(f"frame {i} is {_STATE_NAMES[self.state[i]]} with "
                               f"refcount {self.refcnt[i]}")
        problems = []
        for s in range(FRAME_NSTATES):
            if seen[s] != self.count[s]:
                problems.append(f"{_STATE_NAMES[s]}: counted {self.count[s]}, found {seen[s]}")
        if self.free_top != self.count[FRAME_FREE]:
            problems.append(f"free stack has {self.free_top}, free count {self.count[FRAME_FREE]}")
        total = sum(self.count[s] for s in range(FRAME_NSTATES))
        if total != self.frame_count:
            problems.append(f"states add up to {total} of {self.frame_count} frames")
        if problems:
            raise VtlError("frame accounting broken: " + "; ".join(problems))
        if expect_idle and (self.count[FRAME_HELD] or self.count[FRAME_TX]
                            or self.count[FRAME_RX]):
            raise VtlError(f"frames leaked: {self.count[FRAME_HELD]} held, "
                           f"{self.count[FRAME_TX]} on TX, {self.count[FRAME_RX]} in RX")


_MODES = {"auto": 0, "skb": XDP_FLAGS_SKB_MODE, "drv": XDP_FLAGS_DRV_MODE}


def _err(int ret):
    return os.strerror(-ret) if ret < 0 else os.strerror(ret)


@cython.final
cdef class XskPort:
    """One AF_XDP socket bound to (ifname, queue_id), with its own UMEM and FramePool.

    The steering program (vtlstack.xdp.Steering) decides what reaches this socket: pass its
    `xsks_map_fd` so the socket is inserted into the XSKMAP at `queue_id`. The socket binds
    in copy mode (XDP_COPY) unless zerocopy=True; `mode` is handed to libxdp as the XDP
    attach flags, which only matter if libxdp loads a program, and it never does here
    (INHIBIT_PROG_LOAD): the attach mode that counts is Steering's.

    `share_umem=port` joins that port's UMEM instead (XDP_SHARED_UMEM, any interface and
    queue): this socket gets its own fill and completion rings (sized as the owner's) but
    uses the same frames and the same FramePool, so a frame received on one port can be
    sent on the other without a copy. The UMEM geometry and the bind mode are the
    owner's; the frame_* and fill/comp sizes given here are ignored. All of a pool's
    ports are driven by one thread. The kernel gives fill and TX frames back to the pool
    when the last of its ports closes. The fill ring is filled at once unless fill=False:
    a port that others will join waits for them (refill() splits the budget evenly only
    between the sockets that exist, and frames on a fill ring are not taken back).

    One thread drives a port (the network thread): nothing here is locked.
    """

    def __cinit__(self, str ifname, uint32_t queue_id=0, *, int xsks_map_fd=-1,
                  uint32_t frame_count=4096, uint32_t frame_size=2048, uint32_t headroom=0,
                  uint32_t fill_size=2048, uint32_t comp_size=2048, uint32_t rx_size=2048,
                  uint32_t tx_size=2048, uint32_t batch=64, str mode="auto",
                  bint zerocopy=False, XskPort share_umem=None, bint fill=True):
        cdef xsk_umem_config ucfg
        cdef xsk_socket_config scfg
        cdef int ret
        self.closed = True  # until everything exists, close() has nothing to undo
        if share_umem is not None and (share_umem.closed or share_umem.umem_owner is not None):
            raise ValueError("share_umem must be an open port that owns its UMEM")
        if mode not in _MODES:
            raise ValueError(f"mode {mode!r}: use 'auto', 'skb' or 'drv'")
        if batch == 0 or batch > MAX_BATCH:
            raise ValueError(f"batch {batch} must be between 1 and {MAX_BATCH}")
        for name, size in (("fill_size", fill_size), ("comp_size", comp_size),
                           ("rx_size", rx_size), ("tx_size", tx_size)):
            if size == 0 or size & (size - 1):
                raise ValueError(f"{name} {size} must be a power of two")
        require_root("an AF_XDP socket")
        bname = ifname.encode()
        if if_nametoindex(bname) == 0:
            raise InterfaceError(f"no interface {ifname!r} in this network namespace: check "
                                 f"the name with `ip link` and run inside the right netns")
        self.ifname = ifname
        self.batch = batch
        if share_umem is not None:
            self._join(share_umem, bname, queue_id, rx_size, tx_size)
        else:
            self._create(bname, queue_id, frame_count, frame_size, headroom, fill_size,
                         comp_size, rx_size, tx_size, mode, zerocopy)
        self.q.fd = xsk_socket__fd(self.q.xsk)
        self.q.queue_id = queue_id
        self.closed = False
        self.pool.nsockets += 1
        if share_umem is not None:
            share_umem.sharers += 1
        if xsks_map_fd >= 0:
            ret = xsk_socket__update_xskmap(self.q.xsk, xsks_map_fd)
            if ret:
                self.close()
                raise VtlError(f"cannot insert the socket into the XSKMAP at queue {queue_id}"
                               f" ({_err(ret)}): is the map from vtlstack.xdp.Steering?")
        if fill:
            self.refill()

    cdef void _create(self, bytes bname, uint32_t queue_id, uint32_t frame_count,
                      uint32_t frame_size, uint32_t headroom, uint32_t fill_size,
                      uint32_t comp_size, uint32_t rx_size, uint32_t tx_size, str mode,
                      bint zerocopy) except *:
        cdef xsk_umem_config ucfg
        cdef xsk_socket_config scfg
        cdef int ret
        ifname = self.ifname
        self.pool = FramePool(frame_count, frame_size, headroom)

        ucfg.fill_size = fill_size
        ucfg.comp_size = comp_size
        ucfg.frame_size = frame_size
        ucfg.frame_headroom = headroom
        ucfg.flags = 0
        ret = xsk_umem__create(&self.umem, self.pool.area, self.pool.area_size,
                               &self.q.fill, &self.q.comp, &ucfg)
        if ret:
            self.umem = NULL
            if -ret == EAFNOSUPPORT:
                raise KernelFeatureError("this kernel has no AF_XDP sockets: build it with "
                                         "CONFIG_XDP_SOCKETS=y")
            if -ret == EPERM:
                raise PrivilegeError("registering a UMEM needs CAP_NET_RAW and CAP_IPC_LOCK: "
                                     "run as root")
            if -ret in (ENOMEM, ENOBUFS):
                raise VtlError(f"cannot register a {self.pool.area_size >> 20} MiB UMEM "
                               f"({_err(ret)}): lower frame_count or raise `ulimit -l`")
            raise VtlError(f"cannot create the UMEM ({_err(ret)}): frame_size must be 2048 or "
                           f"4096 (at most a page), rings powers of two")

        scfg.rx_size = rx_size
        scfg.tx_size = tx_size
        # We load and attach the steering program ourselves (vtlstack.xdp), never libxdp's
        # default program: it would take the whole interface.
        scfg.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD
        scfg.xdp_flags = _MODES[mode]
        scfg.bind_flags = XDP_USE_NEED_WAKEUP | (XDP_ZEROCOPY if zerocopy else XDP_COPY)
        self.bind_mode = "zerocopy" if zerocopy else "copy"
        ret = xsk_socket__create(&self.q.xsk, bname, queue_id, self.umem, &self.q.rx,
                                 &self.q.tx, &scfg)
        if ret:
            self.q.xsk = NULL
            xsk_umem__delete(self.umem)
            self.umem = NULL
            err = -ret
            if zerocopy and err in (EOPNOTSUPP, EPROTONOSUPPORT, EINVAL):
                raise KernelFeatureError(
                    f"the driver of {ifname} has no AF_XDP zero-copy ({_err(ret)}); veth "
                    f"offers copy mode only: use zerocopy=False")
            if err == EBUSY:
                raise XdpBusyError(f"queue {queue_id} of {ifname} already has an AF_XDP "
                                   f"socket bound: close the other socket first")
            if err in (EINVAL, ENXIO):
                raise InterfaceError(f"cannot bind to queue {queue_id} of {ifname} "
                                     f"({_err(ret)}): use a queue id below its RX queue count "
                                     f"(ethtool -l {ifname})")
            if err == ENODEV:
                raise InterfaceError(f"{ifname} went away or is down ({_err(ret)})")
            if err == EAFNOSUPPORT:
                raise KernelFeatureError("this kernel has no AF_XDP sockets: build it with "
                                         "CONFIG_XDP_SOCKETS=y")
            raise VtlError(f"cannot bind an AF_XDP socket to {ifname} queue {queue_id} "
                           f"({_err(ret)})")

    cdef void _join(self, XskPort owner, bytes bname, uint32_t queue_id, uint32_t rx_size,
                    uint32_t tx_size) except *:
        cdef xsk_socket_config scfg
        cdef int ret
        self.pool = owner.pool
        self.bind_mode = owner.bind_mode
        scfg.rx_size = rx_size
        scfg.tx_size = tx_size
        scfg.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD
        scfg.xdp_flags = 0
        # The kernel takes the bind flags (copy mode, need_wakeup) from the owner's socket:
        # a shared bind may not name any.
        scfg.bind_flags = 0
        ret = xsk_socket__create_shared(&self.q.xsk, bname, queue_id, owner.umem, &self.q.rx,
                                        &self.q.tx, &self.q.fill, &self.q.comp, &scfg)
        if ret:
            self.q.xsk = NULL
            err = -ret
            if err == EBUSY:
                raise XdpBusyError(f"queue {queue_id} of {self.ifname} already has an AF_XDP "
                                   f"socket bound: close the other socket first")
            if err == ENODEV:
                raise InterfaceError(f"{self.ifname} went away or is down ({_err(ret)})")
            raise VtlError(f"cannot bind an AF_XDP socket to {self.ifname} queue {queue_id} "
                           f"over the UMEM of {owner.ifname} ({_err(ret)})")
        # held from here: the UMEM (and the pool) must outlive every socket that uses it
        self.umem_owner = owner

    def __dealloc__(self):
        self._release()

    cdef void _release(self):
        cdef XskPort owner = self.umem_owner
        if self.closed:
            return
        self.closed = True
        # Socket first: once it is gone the kernel touches no frame through it, then the
        # UMEM, once no socket uses it (libxdp refuses to delete it before: EBUSY).
        if self.q.xsk != NULL:
            xsk_socket__delete(self.q.xsk)
            self.q.xsk = NULL
        self.q.fd = -1
        if owner is not None:
            owner.sharers -= 1
            if owner.closed:
                owner._delete_umem()
        else:
            self._delete_umem()
        if self.pool is not None:
            self.pool.nsockets -= 1
            # The fill and TX frames of the pool's other sockets are not known apart from
            # this one's: they all come back when the last socket is gone.
            if self.pool.nsockets == 0:
                self.pool.reclaim_kernel()

    cdef void _delete_umem(self):
        if self.umem != NULL and self.sharers == 0:
            xsk_umem__delete(self.umem)
            self.umem = NULL

    def close(self):
        """Delete the socket and the UMEM registration (idempotent). Frames the kernel had
        (fill, TX) return to the pool; frames still held stay counted as held."""
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- C API: per-packet, no GIL ------------------------------------------------------

    cdef uint32_t rx_burst(self, vtl_desc *out, uint32_t max_n) noexcept nogil:
        """Up to max_n received frames; each is held by the caller (refcount 1), who must
        free_frame() it or pass it to tx_burst()."""
        cdef uint32_t idx = 0, i, n
        cdef const xdp_desc *d
        if self.closed:
            return 0
        n = xsk_ring_cons__peek(&self.q.rx, max_n, &idx)
        for i in range(n):
            d = xsk_ring_cons__rx_desc(&self.q.rx, idx + i)
            out[i].addr = d.addr
            out[i].len = d.len
            if self.pool.from_fill(d.addr) == 0 and self.q.in_fill:
                self.q.in_fill -= 1
        if n:
            xsk_ring_cons__release(&self.q.rx, n)
            self.q.rx_packets += n
        return n

    cdef uint32_t tx_burst(self, const vtl_desc *descs, uint32_t n) noexcept nogil:
        """Put the caller's frames on the TX ring. Returns how many of descs[0..n) were
        consumed; the rest (TX ring full) stay the caller's. A consumed descriptor naming a
        frame the caller does not hold is dropped and counted in pool.bad_ops."""
        cdef uint32_t idx = 0, i, m, sent = 0
        cdef xdp_desc *d
        if self.closed or n == 0:
            return 0
        m = xsk_prod_nb_free(&self.q.tx, n)
        if m < n:
            self.complete()
            m = xsk_prod_nb_free(&self.q.tx, n)
        if m > n:
            m = n
        if m < n:
            self.q.tx_ring_full += 1
        if m == 0:
            return 0
        xsk_ring_prod__reserve(&self.q.tx, m, &idx)
        for i in range(m):
            if self.pool.to_tx(descs[i].addr) < 0:
                continue
            d = xsk_ring_prod__tx_desc(&self.q.tx, idx + sent)
            d.addr = descs[i].addr
            d.len = descs[i].len
            d.options = 0
            sent += 1
        # Slots reserved for rejected descriptors were never submitted: hand them back.
        self.q.tx.cached_prod -= m - sent
        if sent:
            xsk_ring_prod__submit(&self.q.tx, sent)
            self.q.tx_packets += sent
            self.kick_tx()
        return m

    cdef void kick_tx(self) noexcept nogil:
        # Copy mode always asks for a wakeup: sendto() is what transmits (a bounded number
        # of frames per call), so complete() kicks again while descriptors wait.
        if xsk_ring_prod__needs_wakeup(&self.q.tx):
            sendto(self.q.fd, NULL, 0, MSG_DONTWAIT, NULL, 0)
            self.q.tx_kicks += 1

    cdef uint32_t complete(self) noexcept nogil:
        """Completion ring -> pool. Returns how many TX frames completed."""
        cdef uint32_t idx = 0, i, n
        if self.closed:
            return 0
        n = xsk_ring_cons__peek(&self.q.comp, self.q.comp.size, &idx)
        for i in range(n):
            self.pool.tx_done(xsk_ring_cons__comp_addr(&self.q.comp, idx + i)[0])
        if n:
            xsk_ring_cons__release(&self.q.comp, n)
        # Kick again only while the kernel has not taken every descriptor yet (sendto()
        # takes a bounded number per call); frames it took complete without one.
        if self.pool.count[FRAME_TX] and \
                xsk_prod_nb_free(&self.q.tx, self.q.tx.size) < self.q.tx.size:
            self.kick_tx()
        return n

    cdef uint32_t refill(self) noexcept nogil:
        """Free frames -> fill ring. The kernel's share (fill ring plus RX ring not yet
        read) is capped at the fill ring size and at half the pool, so the other frames stay
        free for TX and for frames the stack holds: RX bursts can never starve
        alloc_frame(). Also never more than the ring size at once: libxdp's reserve fails
        outright beyond that. Sockets sharing the pool split that half evenly: frames on
        an idle link's fill ring cannot be taken back, so a first come, first served split
        could leave a busy link only its floor."""
        cdef uint32_t idx = 0, i, n, budget, avail
        cdef uint64_t addr = 0
        # An eighth of the pool is never given to receiving: the stack's own sends (and so
        # the ACKs that free its memory) must go on when received data is not consumed.
        cdef uint32_t reserve = self.pool.frame_count // 8
        # ... but the kernel always has a few frames to receive into: with sends holding
        # the rest of the pool, the ACKs that would free them could not arrive otherwise
        # (a frame that carries only an ACK comes back at once).
        cdef uint32_t floor = FILL_FLOOR if FILL_FLOOR < self.q.fill.size else self.q.fill.size
        # (with one socket, the pool's count is this socket's, test hooks' frames included)
        cdef uint32_t have = <uint32_t>self.pool.count[FRAME_FILL] if self.pool.nsockets <= 1 \
            else self.q.in_fill
        # and never more than half the pool with what receive queues hold: the other half
        # is for sending, so an app that cannot send (and so does not read) never waits on
        # frames that only its reading would free
        cdef uint32_t cap = self.pool.frame_count // 2
        cap = cap - <uint32_t>self.pool.rx_held if cap > self.pool.rx_held else 0
        if self.pool.nsockets > 1:
            cap //= self.pool.nsockets
        if cap > self.q.fill.size:
            cap = self.q.fill.size
        if self.closed or have >= cap:
            return 0
        budget = cap - have
        avail = self.pool.free_top - reserve if self.pool.free_top > reserve else 0
        if have + avail < floor:
            avail = floor - have
            # Not the last free frames, though: with the send queues holding the rest and
            # nothing in flight, the segments that would bring ACKs back need them.
            if avail + TX_RESERVE > self.pool.free_top:
                avail = self.pool.free_top - TX_RESERVE if self.pool.free_top > TX_RESERVE else 0
        if budget > avail:
            budget = avail
        n = xsk_prod_nb_free(&self.q.fill, budget)
        if n > budget:
            n = budget
        if n == 0 or xsk_ring_prod__reserve(&self.q.fill, n, &idx) != n:
            return 0
        for i in range(n):
            self.pool.take_free(&addr)
            xsk_ring_prod__fill_addr(&self.q.fill, idx + i)[0] = addr
        xsk_ring_prod__submit(&self.q.fill, n)
        self.q.in_fill += n
        if xsk_ring_prod__needs_wakeup(&self.q.fill):
            recvfrom(self.q.fd, NULL, 0, MSG_DONTWAIT, NULL, NULL)
            self.q.fill_wakeups += 1
        return n

    cdef int wait(self, int timeout_ms, short events) noexcept nogil:
        """Sleep in poll() until the socket is readable (or writable) or the timeout."""
        cdef pollfd p
        if self.closed:
            return -1
        p.fd = self.q.fd
        p.events = events
        p.revents = 0
        return poll(&p, 1, timeout_ms)

    cdef uint8_t *frame_ptr(self, uint64_t addr) noexcept nogil:
        return self.pool.frame_ptr(addr)

    cdef uint64_t alloc_frame(self) noexcept nogil:
        return self.pool.alloc_frame()

    cdef int free_frame(self, uint64_t addr) noexcept nogil:
        return self.pool.free_frame(addr)

    cdef int ref(self, uint64_t addr) noexcept nogil:
        return self.pool.ref(addr)

    cdef int unref(self, uint64_t addr) noexcept nogil:
        return self.pool.unref(addr)

    # -- benchmark loops (nogil) --------------------------------------------------------

    cdef uint64_t _rxdrop(self, double seconds) noexcept nogil:
        cdef vtl_desc descs[MAX_BATCH]
        cdef double deadline = now_s() + seconds, left
        cdef uint64_t total = 0
        cdef uint32_t n, i
        while True:
            self.refill()
            n = self.rx_burst(descs, self.batch)
            for i in range(n):
                self.pool.free_frame(descs[i].addr)
            total += n
            left = deadline - now_s()
            if left <= 0:
                break
            if n == 0:
                # Idle: sleep until a frame arrives, but wake for the deadline.
                self.wait(<int>(left * 1000) + 1 if left < 0.1 else 100, POLLIN)
        return total

    cdef uint64_t _echo(self, double seconds) noexcept nogil:
        cdef vtl_desc descs[MAX_BATCH]
        cdef vtl_desc out[MAX_BATCH]
        cdef double deadline = now_s() + seconds, left
        cdef uint64_t total = 0
        cdef uint32_t n, m, i, acc
        cdef uint8_t *f
        while True:
            self.complete()
            self.refill()
            n = self.rx_burst(descs, self.batch)
            m = 0
            for i in range(n):
                f = self.pool.frame_ptr(descs[i].addr)
                if udp_echo_in_place(f, descs[i].len):
                    out[m] = descs[i]
                    m += 1
                else:
                    self.pool.free_frame(descs[i].addr)
            acc = self.tx_burst(out, m)
            for i in range(acc, m):
                self.pool.free_frame(out[i].addr)
            self.rx_dropped_app += m - acc
            total += acc
            left = deadline - now_s()
            if left <= 0:
                break
            if n == 0:
                # Frames still on the TX ring need more kicks: wake soon for those.
                if self.pool.count[FRAME_TX]:
                    self.wait(1, POLLIN)
                else:
                    self.wait(<int>(left * 1000) + 1 if left < 0.1 else 100, POLLIN)
        self.complete()
        return total

    # -- Python API ---------------------------------------------------------------------

    def rxdrop_loop(self, double seconds):
        """Receive and drop for `seconds` without the GIL; returns the packet count."""
        cdef uint64_t n
        self._check_open()
        with nogil:
            n = self._rxdrop(seconds)
        return n

    def echo_loop(self, double seconds):
        """Answer IPv4 UDP datagrams in place (addresses and ports swapped) for `seconds`
        without the GIL; returns the number of packets sent back."""
        cdef uint64_t n
        self._check_open()
        with nogil:
            n = self._echo(seconds)
        return n

    def _refill(self):
        """Test hook: one refill() pass; returns how many frames went to the fill ring."""
        cdef uint32_t n
        self._check_open()
        with nogil:
            n = self.refill()
        return n

    def _check_open(self):
        if self.closed:
            raise VtlError(f"the AF_XDP port on {self.ifname} is closed")

    @property
    def fd(self):
        return self.q.fd

    @property
    def queue_id(self):
        return self.q.queue_id

    def recv(self, double timeout=1.0):
        """Copies of the frames received within `timeout` seconds (at least one, unless the
        timeout passes); for tests and the control plane, not the data path."""
        cdef vtl_desc descs[MAX_BATCH]
        cdef uint32_t n = 0, i
        cdef double deadline = now_s() + timeout, left
        self._check_open()
        out = []
        while True:
            with nogil:
                self.refill()
                n = self.rx_burst(descs, self.batch)
            for i in range(n):
                out.append(PyBytes_FromStringAndSize(
                    <char *>self.pool.frame_ptr(descs[i].addr), descs[i].len))
                self.pool.free_frame(descs[i].addr)
            if n:
                continue  # drain what is already there
            left = deadline - now_s()
            if out or left <= 0:
                return out
            with nogil:
                self.wait(<int>(left * 1000) + 1, POLLIN)

    def send(self, frames, double timeout=1.0):
        """Copy each frame (whole Ethernet frames, as bytes) into the UMEM and transmit it;
        waits (up to `timeout`) until the kernel has completed them. Returns the count."""
        cdef vtl_desc d
        cdef uint64_t addr
        cdef const uint8_t[:] buf
        cdef double deadline = now_s() + timeout
        cdef uint32_t room = self.pool.frame_size - self.pool.headroom
        self._check_open()
        sent = 0
        for frame in frames:
            buf = frame
            if len(buf) > room or len(buf) == 0:
                raise ValueError(f"frame of {len(buf)} bytes: must be 1..{room}")
            addr = self.alloc_frame()
            while addr == VTL_NO_FRAME and now_s() < deadline:
                self.complete()
                self.wait(1, POLLOUT)
                addr = self.alloc_frame()
            if addr == VTL_NO_FRAME:
                raise VtlError("frame pool exhausted: frames are held and not freed")
            d.addr = addr + self.pool.headroom
            d.len = len(buf)
            memcpy(self.pool.frame_ptr(d.addr), &buf[0], d.len)
            while self.tx_burst(&d, 1) == 0:
                if now_s() >= deadline:
                    self.free_frame(addr)
                    raise VtlError(f"TX ring of {self.ifname} stayed full for {timeout} s")
                self.complete()
                self.wait(1, POLLOUT)
            sent += 1
        while self.pool.count[FRAME_TX] and now_s() < deadline:
            with nogil:
                self.complete()
                if self.pool.count[FRAME_TX]:
                    self.wait(1, POLLOUT)
        return sent

    def stats(self):
        """Frame pool counters, ring counters and the kernel's XDP_STATISTICS."""
        cdef xdp_statistics ks
        cdef socklen_t optlen = sizeof(ks)
        out = self.pool.stats()
        out.update(rx_packets=self.q.rx_packets, tx_packets=self.q.tx_packets,
                   tx_kicks=self.q.tx_kicks, fill_wakeups=self.q.fill_wakeups,
                   tx_ring_full=self.q.tx_ring_full, app_dropped=self.rx_dropped_app,
                   socket_in_fill=self.q.in_fill)
        if not self.closed and getsockopt(self.q.fd, SOL_XDP, XDP_STATISTICS, &ks,
                                          &optlen) == 0:
            out.update(k_rx_dropped=ks.rx_dropped, k_rx_invalid=ks.rx_invalid_descs,
                       k_tx_invalid=ks.tx_invalid_descs, k_rx_ring_full=ks.rx_ring_full,
                       k_fill_empty=ks.rx_fill_ring_empty_descs,
                       k_tx_empty=ks.tx_ring_empty_descs)
        return out

    def check_frames(self, bint expect_idle=False):
        self.pool.check_frames(expect_idle)


cdef inline bint udp_echo_in_place(uint8_t *f, uint32_t length) noexcept nogil:
    """Turn an IPv4/UDP frame around: swap MACs, IPs and ports. Swapping leaves both the
    IPv4 header checksum and the UDP checksum (pseudo-header sums are order-free) valid.
    Checks only what the swap needs, as the C reference does (this is the bench loop)."""
    cdef uint8_t *ip = f + ETH_HLEN
    cdef uint32_t ihl
    if length < ETH_HLEN + IPV4_MIN_HLEN + UDP_HLEN or eth_type(f) != ETHERTYPE_IPV4:
        return False
    if ip[0] >> 4 != 4 or ipv4_proto(ip) != IPPROTO_UDP_:
        return False
    ihl = ipv4_hlen(ip)
    if ihl < IPV4_MIN_HLEN or length < ETH_HLEN + ihl + UDP_HLEN:
        return False
    eth_swap_addrs(f)
    ipv4_swap_addrs(ip)
    udp_swap_ports(ip + ihl)
    return True
