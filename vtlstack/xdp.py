"""Load the XDP steering program (bpf/steer.bpf.c) and attach it through a bpf_link.

``Steering`` mirrors a libbpf skeleton's lifecycle (open, attach, configure, one cleanup
path) as a context manager. The map key/value layout comes from ``steer.h``, the same
header the eBPF side is compiled with, read here through cffi (ABI mode, no compiler).

The program is opened with libxdp (which reads its metadata) and attached as a bpf_link
(Linux 5.9+): the kernel detaches a link when its last fd closes, so a process that dies
any way at all, SIGKILL included, leaves nothing attached to block the next run. An
interface that already has an XDP program is refused with XdpBusyError, never replaced
or joined.

libxdp/libbpf messages go to the ``vtlstack.xdp`` logger (see _route_logs).
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import signal
import socket
import threading
import weakref

from cffi import FFI

from vtlstack._resources import bpf_path
from vtlstack.errors import (
    InterfaceError,
    KernelFeatureError,
    PrivilegeError,
    VtlError,
    XdpBusyError,
    require_root,
)

__all__ = ["Steering", "attached_programs", "dry_run"]

log = logging.getLogger(__name__)

# Map and program names in steer.bpf.c (the layout of their keys and values is steer.h's).
PROG_NAME = "vtl_steer"
MAP_XSKS = "xsks_map"
MAP_OWNED = "owned_ports"
MAP_RANGES = "owned_ranges"
MAP_COUNTERS = "steer_counters"

_MODES = {"auto": 0, "drv": 4, "skb": 2}  # XDP_FLAGS_{DRV,SKB}_MODE; none: the kernel picks
_MODE_NAMES = {0: "none", 1: "drv", 2: "skb", 3: "hw"}   # enum xdp_attach_mode
BPF_XDP = 37                                # enum bpf_attach_type

_CDEF = """
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;

struct xdp_program;
struct xdp_multiprog;
struct bpf_object;
struct bpf_map;
struct bpf_program;

long libxdp_get_error(const void *ptr);
int libxdp_strerror(int err, char *buf, size_t size);
struct xdp_program *xdp_program__open_file(const char *filename, const char *section_name,
                                           void *opts);
void xdp_program__close(struct xdp_program *xdp_prog);
const char *xdp_program__name(const struct xdp_program *xdp_prog);
uint32_t xdp_program__id(const struct xdp_program *xdp_prog);
struct bpf_object *xdp_program__bpf_obj(struct xdp_program *xdp_prog);
struct xdp_multiprog *xdp_multiprog__get_from_ifindex(int ifindex);
struct xdp_program *xdp_multiprog__next_prog(const struct xdp_program *prog,
                                             const struct xdp_multiprog *mp);
void xdp_multiprog__close(struct xdp_multiprog *mp);
int xdp_multiprog__attach_mode(const struct xdp_multiprog *mp);
struct xdp_program *xdp_multiprog__main_prog(const struct xdp_multiprog *mp);
bool xdp_multiprog__is_legacy(const struct xdp_multiprog *mp);

struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int libbpf_num_possible_cpus(void);
int bpf_object__load(struct bpf_object *obj);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj,
                                                     const char *name);
int bpf_program__fd(const struct bpf_program *prog);
struct bpf_link_create_opts { size_t sz; __u32 flags; };   /* the leading fields */
int bpf_link_create(int prog_fd, int target_fd, int attach_type,
                    const struct bpf_link_create_opts *opts);

struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    uint32_t data_size_in;
    uint32_t data_size_out;
    const void *ctx_in;
    void *ctx_out;
    uint32_t ctx_size_in;
    uint32_t ctx_size_out;
    uint32_t retval;
    int repeat;
    uint32_t duration;
    uint32_t flags;
    uint32_t cpu;
    uint32_t batch_size;
};
int xdp_program__test_run(struct xdp_program *xdp_prog, struct bpf_test_run_opts *opts,
                          unsigned int flags);

/* Print hooks. va_list is declared as a pointer: on x86-64 it is an array type and is passed
 * as a pointer, so the callback can hand it on to vsnprintf (_route_logs checks the arch). */
typedef int (*vtl_print_fn)(int level, const char *fmt, void *ap);
vtl_print_fn libxdp_set_print(vtl_print_fn fn);
vtl_print_fn libbpf_set_print(vtl_print_fn fn);
"""

_LIBC_CDEF = "int vsnprintf(char *buf, size_t size, const char *fmt, void *ap);"


_ffi = None
_xdp = None
_bpf = None
_lib_lock = threading.Lock()


def _steer_cdef() -> str:
    """steer.h without its preprocessor lines: the layout, as cffi can parse it."""
    text = bpf_path("steer.h").read_text()
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _libs():
    global _ffi, _xdp, _bpf
    with _lib_lock:
        if _ffi is None:
            ffi = FFI()
            ffi.cdef(_CDEF)
            ffi.cdef(_steer_cdef())
            try:
                xdp = ffi.dlopen("libxdp.so.1")
                bpf = ffi.dlopen("libbpf.so.1")
            except OSError as e:
                raise KernelFeatureError(
                    f"cannot load libxdp/libbpf ({e}): apt-get install libxdp1 libbpf1"
                ) from e
            _ffi, _xdp, _bpf = ffi, xdp, bpf
            _route_logs(ffi, xdp, bpf)
    return _ffi, _xdp, _bpf


# Warnings that are normal on these machines (libxdp looks for its multiprog dispatcher
# and its bpffs whenever it reads an interface's programs): logged at INFO only.
_EXPECTED = (
    "skipping unrecognized data section",
    "No bpffs found",
    "dispatcher",
    "xdp-dispatcher.o",
    "Falling back to loading single prog",
    "prog 'xdp_pass'",
    "permission error while running as root",
)

_print_cb = None  # keeps the cffi callback alive for as long as the libraries may call it


def _route_logs(ffi, xdp, bpf) -> None:
    """Send libxdp/libbpf messages to the `vtlstack.xdp` logger instead of stderr: the
    expected ones (see _EXPECTED) go to INFO, other warnings stay visible at WARNING,
    chatter goes to DEBUG."""
    global _print_cb
    if os.uname().machine != "x86_64":
        return  # va_list is not a plain pointer elsewhere: keep the libraries' printing
    ffi.cdef(_LIBC_CDEF)
    libc = ffi.dlopen(None)
    levels = {0: logging.WARNING, 1: logging.DEBUG, 2: logging.DEBUG}  # WARN, INFO, DEBUG

    @ffi.callback("vtl_print_fn")
    def _print(level, fmt, ap):
        buf = ffi.new("char[]", 1024)
        libc.vsnprintf(buf, 1024, fmt, ap)
        msg = ffi.string(buf).decode(errors="replace").rstrip()
        lvl = levels.get(level, logging.DEBUG)
        if lvl == logging.WARNING and any(e in msg for e in _EXPECTED):
            lvl = logging.INFO
        log.log(lvl, "%s", msg)
        return 0

    _print_cb = _print
    xdp.libxdp_set_print(_print)
    bpf.libbpf_set_print(_print)


def _strerror(err: int) -> str:
    ffi, xdp, _ = _libs()
    buf = ffi.new("char[]", 256)
    xdp.libxdp_strerror(err, buf, 256)
    return ffi.string(buf).decode(errors="replace")


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError as e:
        raise InterfaceError(
            f"no interface {ifname!r} in this network namespace: check the name with "
            f"`ip link` and run inside the right netns"
        ) from e


def attached_programs(ifname: str) -> list[str]:
    """Names of the XDP programs attached to ifname (empty if none)."""
    ffi, xdp, _ = _libs()
    mp = xdp.xdp_multiprog__get_from_ifindex(_ifindex(ifname))
    if mp == ffi.NULL or xdp.libxdp_get_error(mp):
        return []
    try:
        names = []
        if xdp.xdp_multiprog__is_legacy(mp):
            main = xdp.xdp_multiprog__main_prog(mp)
            if main != ffi.NULL:
                names.append(ffi.string(xdp.xdp_program__name(main)).decode())
        else:
            prog = xdp.xdp_multiprog__next_prog(ffi.NULL, mp)
            while prog != ffi.NULL:
                names.append(ffi.string(xdp.xdp_program__name(prog)).decode())
                prog = xdp.xdp_multiprog__next_prog(prog, mp)
            names = names or ["xdp_dispatcher"]
        return names
    finally:
        xdp.xdp_multiprog__close(mp)


def _attach_mode(ifindex: int) -> str:
    """How the XDP program on ifindex runs: drv (native), skb (generic), hw, or none."""
    ffi, xdp, _ = _libs()
    mp = xdp.xdp_multiprog__get_from_ifindex(ifindex)
    if mp == ffi.NULL or xdp.libxdp_get_error(mp):
        return "none"
    try:
        return _MODE_NAMES.get(xdp.xdp_multiprog__attach_mode(mp), "?")
    finally:
        xdp.xdp_multiprog__close(mp)


_COUNTER_NAMES = ("redirected", "passed", "malformed", "no_socket")


def _key(proto: int, port: int):
    ffi, xdp, _ = _libs()
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1..65535")
    if proto not in (xdp.STEER_PROTO_TCP, xdp.STEER_PROTO_UDP, xdp.STEER_PROTO_VTL):
        raise ValueError(f"protocol {proto}: steering handles TCP (6), UDP (17) and VTL (253)")
    key = ffi.new("struct steer_key *")  # zeroed: the whole key is hashed
    key.port = port
    key.proto = proto
    return key


def _own(owned_fd: int, proto: int, port: int, source: bool = False) -> None:
    ffi, xdp, bpf = _libs()
    val = ffi.new("struct steer_val *", {"flags": 1})
    key = _key(proto, port)
    key.dir = xdp.STEER_DIR_SRC if source else xdp.STEER_DIR_DST
    if bpf.bpf_map_update_elem(owned_fd, key, val, 0):
        raise VtlError(f"cannot own {proto}/{port} ({os.strerror(ffi.errno)}): at most "
                       f"STEER_MAX_PORTS entries")


def _read_counters(counters_fd: int, ncpus: int) -> dict[str, int]:
    ffi, xdp, bpf = _libs()
    key = ffi.new("uint32_t *")
    vals = ffi.new("uint64_t[]", ncpus)  # per-CPU values are 8-byte slots
    out = {}
    for name in _COUNTER_NAMES:
        key[0] = getattr(xdp, f"STEER_{name.upper()}")
        if bpf.bpf_map_lookup_elem(counters_fd, key, vals):
            raise VtlError(f"cannot read steering counters ({os.strerror(ffi.errno)})")
        out[name] = sum(vals[i] for i in range(ncpus))
    return out


def dry_run(frames: list[bytes], owned: set[tuple[int, int]],
            sources: set[tuple[int, int]] = frozenset()) -> list[str]:
    """Run the steering program, unattached, on each frame (BPF_PROG_TEST_RUN) with
    `owned` as its (proto, dst port) set and `sources` its (proto, src port) set; return
    for each frame the counter it bumped: "no_socket" for a frame it would redirect (no
    socket exists here), "passed", "malformed". For tests of the program itself and for
    checking a rule set."""
    require_root("running an XDP program")
    ffi, xdp, bpf = _libs()
    path = str(bpf_path("steer"))
    prog = xdp.xdp_program__open_file(path.encode(), b"xdp", ffi.NULL)
    err = xdp.libxdp_get_error(prog)
    if err or prog == ffi.NULL:
        raise VtlError(f"cannot open {path} ({_strerror(err)}): rebuild with setup.py")
    try:
        def run(frame: bytes) -> None:
            # Fresh options each time: the kernel writes sizes back into them.
            opts = ffi.new("struct bpf_test_run_opts *")
            opts.sz = ffi.sizeof("struct bpf_test_run_opts")
            buf = ffi.new("char[]", frame or b"\0")
            opts.data_in = buf
            opts.data_size_in = len(frame)
            ret = xdp.xdp_program__test_run(prog, opts, 0)
            if ret:
                raise VtlError(f"BPF_PROG_TEST_RUN failed ({_strerror(ret)})")

        run(bytes(64))  # the first run loads the program and creates its maps
        obj = xdp.xdp_program__bpf_obj(prog)
        maps = {}
        for name in (MAP_OWNED, MAP_COUNTERS):
            m = bpf.bpf_object__find_map_by_name(obj, name.encode())
            maps[name] = bpf.bpf_map__fd(m) if m != ffi.NULL else -1
            if maps[name] < 0:
                raise VtlError(f"steering object has no map {name!r}: rebuild with setup.py")
        for proto, port in owned:
            _own(maps[MAP_OWNED], proto, port)
        for proto, port in sources:
            _own(maps[MAP_OWNED], proto, port, source=True)
        ncpus = bpf.libbpf_num_possible_cpus()
        out = []
        for frame in frames:
            before = _read_counters(maps[MAP_COUNTERS], ncpus)
            run(frame)
            after = _read_counters(maps[MAP_COUNTERS], ncpus)
            bumped = [n for n in _COUNTER_NAMES if after[n] != before[n]]
            out.append(bumped[0] if len(bumped) == 1 else ",".join(bumped) or "none")
        return out
    finally:
        xdp.xdp_program__close(prog)


_live: weakref.WeakSet = weakref.WeakSet()
_hooks_installed = False


def _close_all() -> None:
    for steering in list(_live):
        steering.close()


def _install_exit_hooks() -> None:
    """Detach on interpreter exit, and turn a default SIGTERM into SystemExit so `with`
    blocks and atexit run (only if nobody installed a SIGTERM handler of their own)."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            def _term(signum, frame):
                raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, _term)


class Steering:
    """The steering program attached to one interface, with its maps.

    >>> with Steering("veth0") as st:
    ...     st.own(socket.IPPROTO_UDP, 9000)
    ...     port = XskPort("veth0", xsks_map_fd=st.xsks_map_fd)
    """

    def __init__(self, ifname: str, mode: str = "auto") -> None:
        if mode not in _MODES:
            raise ValueError(f"mode {mode!r}: use 'auto', 'skb' or 'drv'")
        require_root("attaching an XDP program")
        self.ifname = ifname
        self.mode = mode
        self._prog = None
        self._link_fd = -1
        self._ifindex = _ifindex(ifname)
        ffi, xdp, bpf = _libs()
        self._ffi, self._xdp, self._bpf = ffi, xdp, bpf

        # Never clobber: an XDP program someone else attached stays, and we say so.
        others = attached_programs(ifname)
        if others:
            raise XdpBusyError(
                f"{ifname} already has an XDP program ({', '.join(others)}): remove it with "
                f"`ip link set dev {ifname} xdp off` or `xdp-loader unload {ifname} --all` "
                f"if it is a leftover"
            )

        path = str(bpf_path("steer"))
        prog = xdp.xdp_program__open_file(path.encode(), b"xdp", ffi.NULL)
        err = xdp.libxdp_get_error(prog)
        if err or prog == ffi.NULL:
            raise VtlError(f"cannot open {path} ({_strerror(err)}): rebuild with setup.py")
        self._prog = prog
        try:
            obj = xdp.xdp_program__bpf_obj(prog)
            ret = bpf.bpf_object__load(obj)
            if ret:
                raise VtlError(f"the kernel refused the steering program ({_strerror(ret)}; "
                               f"the vtlstack.xdp logger has the verifier's log)")
            fd = bpf.bpf_program__fd(bpf.bpf_object__find_program_by_name(obj, b"vtl_steer"))
            opts = ffi.new("struct bpf_link_create_opts *",
                           {"sz": ffi.sizeof("struct bpf_link_create_opts"),
                            "flags": _MODES[mode]})
            link = bpf.bpf_link_create(fd, self._ifindex, BPF_XDP, opts)
            if link < 0:
                raise self._attach_error(link)
            self._link_fd = link
            self.xsks_map_fd = self._map_fd(obj, MAP_XSKS)
            self._owned_fd = self._map_fd(obj, MAP_OWNED)
            self._ranges_fd = self._map_fd(obj, MAP_RANGES)
            self._counters_fd = self._map_fd(obj, MAP_COUNTERS)
            self._ncpus = bpf.libbpf_num_possible_cpus()
        except BaseException:
            self.close()  # whatever failed after the attach, nothing stays attached
            raise
        self.attached_mode = _attach_mode(self._ifindex)
        self.attach_info = "bpf_link (detached by the kernel when its last fd closes)"
        self._owned: set[tuple[int, int]] = set()
        _live.add(self)
        _install_exit_hooks()
        log.info("steering on %s: %s, mode %s", ifname, self.attach_info, self.attached_mode)

    def _attach_error(self, ret: int) -> VtlError:
        err = -ret
        why = _strerror(ret)
        if err in (errno.EEXIST, errno.EBUSY):
            return XdpBusyError(
                f"{self.ifname} already has an XDP program ({why}): remove it with "
                f"`ip link set dev {self.ifname} xdp off` or `xdp-loader unload "
                f"{self.ifname} --all` if it is a leftover"
            )
        if err == errno.EOPNOTSUPP and self.mode != "auto":
            return KernelFeatureError(
                f"{self.ifname} cannot attach XDP in mode {self.mode!r} ({why}): "
                f"use mode='skb' (generic XDP works on every driver)"
            )
        if err in (errno.EINVAL, errno.EOPNOTSUPP):
            return KernelFeatureError(
                f"cannot attach XDP to {self.ifname} as a bpf_link ({why}): XDP links "
                f"need Linux 5.9 or later"
            )
        if err == errno.EPERM:
            return PrivilegeError(f"attaching XDP to {self.ifname} was refused ({why}): "
                                  f"run as root with CAP_BPF and CAP_NET_ADMIN")
        return VtlError(f"cannot attach the steering program to {self.ifname} ({why})")

    def _map_fd(self, obj, name: str) -> int:
        m = self._bpf.bpf_object__find_map_by_name(obj, name.encode())
        fd = self._bpf.bpf_map__fd(m) if m != self._ffi.NULL else -1
        if fd < 0:
            raise VtlError(f"steering object has no map {name!r}: rebuild with setup.py")
        return fd

    def _check_open(self) -> None:
        if self._prog is None:
            raise VtlError(f"steering on {self.ifname} is closed")

    def own(self, proto: int, port: int) -> None:
        """Send (proto, dst port) to the AF_XDP sockets from now on."""
        self._check_open()
        _own(self._owned_fd, proto, port)
        self._owned.add((proto, port))

    def own_source(self, proto: int, port: int) -> None:
        """Send (proto, src port) to the AF_XDP sockets from now on: the answers of
        servers on `port` to connections made from other hosts' addresses (a transparent
        proxy's upstream side). For good: the stack's lifetime."""
        self._check_open()
        _own(self._owned_fd, proto, port, source=True)

    def own_range(self, proto: int, lo: int, hi: int) -> None:
        """Send (proto, every dst port in lo..hi) to the AF_XDP sockets from now on."""
        self._check_open()
        if not 0 < lo <= hi < 65536:
            raise ValueError(f"port range {lo}..{hi} out of 1..65535")
        ffi, _, bpf = _libs()
        key = ffi.new("__u32 *", _key(proto, lo).proto)
        value = ffi.new("struct steer_range *", {"lo": lo, "hi": hi})
        if bpf.bpf_map_update_elem(self._ranges_fd, key, value, 0) != 0:
            raise VtlError(f"cannot own ports {lo}..{hi}: {os.strerror(ffi.errno)}")

    def disown(self, proto: int, port: int) -> None:
        """Give (proto, dst port) back to the kernel (no error if it was not owned)."""
        self._check_open()
        self._bpf.bpf_map_delete_elem(self._owned_fd, _key(proto, port))
        self._owned.discard((proto, port))

    @property
    def owned(self) -> set[tuple[int, int]]:
        return set(self._owned)

    def counters(self) -> dict[str, int]:
        """The steering counters summed over CPUs."""
        self._check_open()
        return _read_counters(self._counters_fd, self._ncpus)

    def close(self) -> None:
        """Detach and release the program (idempotent; called on every exit path)."""
        prog, self._prog = self._prog, None
        if prog is None:
            return
        _live.discard(self)
        try:
            if self._link_fd >= 0:
                os.close(self._link_fd)     # the last reference: the kernel detaches
                self._link_fd = -1
        finally:
            self._xdp.xdp_program__close(prog)

    def __enter__(self) -> Steering:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass
