"""KTF pool and launcher: load, attach and detach the VTL KTFs through libbpf (cffi).

One ``KtfHost`` per interface. It loads ``vtl_canonical`` (the root KTFs and the canonical
graft), attaches its ``vtl_ingress`` at XDP (native where the driver has it, see _attach_xdp)
and its ``vtl_egress`` on the tc
clsact egress hook, and owns the maps every graft shares (sessions, counters, rings).
``deploy(graft)`` loads a graft's object with those maps reused (``bpf_map__reuse_fd``)
and puts its KTFs into the tail-call arrays at the graft's id; sessions of the same graft
share that one loaded copy (a reference count); the last ``release`` takes it out.

Cleanup: both hooks are bpf_links (XDP link, tcx) where the kernel has them, so the
kernel detaches them when this process's fds close, whatever the way it ends, SIGKILL
included; ``close()`` destroys the links (or removes the netlink XDP attachment and the
tc filter and qdisc of older kernels) and closes every object, which frees programs and
maps. It runs from
``with``, from ``atexit`` and, through a SIGTERM handler installed when none exists, on
SIGTERM; an exception while attaching closes what was made so far.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import signal
import socket
import struct
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vtlstack import xdp as _xdp_helpers
from vtlstack._resources import bpf_path
from vtlstack.errors import KernelFeatureError, VtlError, XdpBusyError, require_root
from vtlstack.vtl import wire
from vtlstack.vtl.build import graft_object
from vtlstack.vtl.grafts import Graft, GraftLoadError

__all__ = ["KtfHost", "GraftLoadError"]

log = logging.getLogger(__name__)

_CDEF = """
struct bpf_object; struct bpf_program; struct bpf_map; struct ring_buffer;
struct bpf_object *bpf_object__open_file(const char *path, const void *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj,
                                                     const char *name);
int bpf_program__fd(const struct bpf_program *prog);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__reuse_fd(struct bpf_map *map, int fd);
int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int libbpf_num_possible_cpus(void);
int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags, const void *opts);
int bpf_xdp_detach(int ifindex, uint32_t flags, const void *opts);
struct bpf_link;
struct bpf_link *bpf_program__attach_xdp(const struct bpf_program *prog, int ifindex);
int bpf_link__destroy(struct bpf_link *link);
int bpf_link_create(int prog_fd, int target_fd, int attach_type, const void *opts);
struct bpf_tc_hook { size_t sz; int ifindex; int attach_point; uint32_t parent; };
struct bpf_tc_opts { size_t sz; int prog_fd; uint32_t flags; uint32_t prog_id;
                     uint32_t handle; uint32_t priority; };
int bpf_tc_hook_create(struct bpf_tc_hook *hook);
int bpf_tc_hook_destroy(struct bpf_tc_hook *hook);
int bpf_tc_attach(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);
int bpf_tc_detach(const struct bpf_tc_hook *hook, const struct bpf_tc_opts *opts);
typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx,
                                     const void *opts);
int ring_buffer__add(struct ring_buffer *rb, int map_fd, ring_buffer_sample_fn sample_cb,
                     void *ctx);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__consume(struct ring_buffer *rb);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);
void ring_buffer__free(struct ring_buffer *rb);
"""

BPF_EXIST = 2
SIOCGIFADDR = 0x8915
# enum bpf_attach_type (kernel 6.6+; newer than libbpf 1.1's headers)
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2
XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
# Maps every graft object shares with the root object (names from vtl.h).
SHARED_MAPS = ("vtl_sessions", "vtl_counters", "vtl_rx", "vtl_ev", "vtl_scratch",
               "vtl_config", "vtl_bounces")

_lib: Any = None
_lock = threading.Lock()


def _libbpf() -> Any:
    global _lib
    with _lock:
        if _lib is None:
            _xdp_helpers._libs()   # routes libbpf's messages to logging (see vtlstack.xdp)
            wire.ffi.cdef(_CDEF)
            try:
                _lib = wire.ffi.dlopen("libbpf.so.1")
            except OSError as e:
                raise KernelFeatureError(f"cannot load libbpf ({e}): apt-get install libbpf1")\
                    from e
    return _lib


_live: weakref.WeakSet = weakref.WeakSet()
_hooks = False


def _install_exit_hooks() -> None:
    global _hooks
    if _hooks:
        return
    _hooks = True
    atexit.register(lambda: [h.close() for h in list(_live)])
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        def _term(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, _term)


class KtfHost:
    """The VTL KTFs attached to one interface, their shared maps and the deployed grafts."""

    def __init__(self, ifname: str, reply: str = "bounce") -> None:
        """reply: how receiver KTFs send their ACK/NACK, "bounce" (works with every
        peer) or "tx" (XDP_TX: faster, but on a veth only to a peer that runs XDP)."""
        require_root("attaching the VTL KTFs")
        if reply not in ("bounce", "tx"):
            raise ValueError(f"reply {reply!r}: use 'bounce' or 'tx'")
        self.ifname = ifname
        self.reply = reply
        self.ifindex = _xdp_helpers._ifindex(ifname)
        self._lib = _libbpf()
        self._ffi = wire.ffi
        self._root: Any = None
        self._xdp_mode = 0
        self._xdp_link: Any = None
        self._tc_links: list[int] = []
        self._tc_filters: list[tuple[Any, Any]] = []
        self.xdp_mode = ""
        self._tc_owns_qdisc = False
        self._grafts: dict[int, tuple[Any, int]] = {}   # id -> (object, refcount)
        self._rb: Any = None
        self._callbacks: list[Any] = []
        others = _xdp_helpers.attached_programs(ifname)
        if others:
            raise XdpBusyError(f"{ifname} already has an XDP program ({', '.join(others)}): "
                               f"remove it with `ip link set dev {ifname} xdp off` if it is "
                               f"a leftover")
        try:
            self._root = self._open_load("vtl_canonical", reuse=False)
            self.maps = {n: self._map_fd(self._root, n)
                         for n in (*SHARED_MAPS, "vtl_xdp_grafts", "vtl_tc_grafts")}
            self._put_graft(0, self._root, "vtl_canonical_in", "vtl_canonical_out")
            self._configure()
            self._attach_xdp(self._prog_fd(self._root, "vtl_ingress"))
            self._attach_tc(self._prog_fd(self._root, "vtl_egress"), BPF_TC_EGRESS)
            self._attach_tc(self._prog_fd(self._root, "vtl_bounce"), BPF_TC_INGRESS)
            self._ncpus = self._lib.libbpf_num_possible_cpus()
        except BaseException:
            self.close()
            raise
        _live.add(self)
        _install_exit_hooks()

    # -- loading ------------------------------------------------------------------------

    def _open_load(self, name: str | Path, reuse: bool) -> Any:
        ffi, lib = self._ffi, self._lib
        if isinstance(name, Path):
            path = str(name)
        else:
            try:
                path = str(bpf_path(name))
            except VtlError as e:
                raise GraftLoadError(f"graft object {name}: {e}") from e
        obj = lib.bpf_object__open_file(path.encode(), ffi.NULL)
        if obj == ffi.NULL:
            raise GraftLoadError(f"cannot open {path} ({os.strerror(ffi.errno)})")
        try:
            if reuse:
                for m in SHARED_MAPS:
                    bm = lib.bpf_object__find_map_by_name(obj, m.encode())
                    if bm == ffi.NULL or lib.bpf_map__reuse_fd(bm, self.maps[m]):
                        raise GraftLoadError(f"{path}: cannot share map {m} with the root "
                                             f"KTFs (is it built from vtl.h?)")
            ret = lib.bpf_object__load(obj)
            if ret:
                raise GraftLoadError(
                    f"{path} was refused by the kernel ({os.strerror(-ret)}); the verifier's "
                    f"log is on the vtlstack.xdp logger")
        except BaseException:
            lib.bpf_object__close(obj)
            raise
        return obj

    def _map_fd(self, obj: Any, name: str) -> int:
        m = self._lib.bpf_object__find_map_by_name(obj, name.encode())
        fd = self._lib.bpf_map__fd(m) if m != self._ffi.NULL else -1
        if fd < 0:
            raise GraftLoadError(f"VTL object has no map {name!r}: rebuild with setup.py")
        return fd

    def _prog_fd(self, obj: Any, name: str) -> int:
        p = self._lib.bpf_object__find_program_by_name(obj, name.encode())
        fd = self._lib.bpf_program__fd(p) if p != self._ffi.NULL else -1
        if fd < 0:
            raise GraftLoadError(f"VTL object has no program {name!r}")
        return fd

    def _put_graft(self, gid: int, obj: Any, ingress: str, egress: str) -> None:
        key = self._ffi.new("uint32_t *", gid)
        for arr, prog in (("vtl_xdp_grafts", ingress), ("vtl_tc_grafts", egress)):
            fd = self._ffi.new("uint32_t *", self._prog_fd(obj, prog))
            if self._lib.bpf_map_update_elem(self.maps[arr], key, fd, 0):
                raise GraftLoadError(f"cannot deploy {prog} ({os.strerror(self._ffi.errno)})")

    def _configure(self) -> None:
        """Tell the root KTF this interface's address: VTL for other hosts passes."""
        cfg = self._ffi.new("struct vtl_cfg *")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                req = struct.pack("256s", self.ifname.encode())
                cfg.local_ip = int.from_bytes(fcntl.ioctl(s, SIOCGIFADDR, req)[20:24],
                                              sys.byteorder)   # kept in network order
            except OSError:
                cfg.local_ip = 0   # no address yet: take every VTL packet
        cfg.reply = wire.C.VTL_REPLY_TX if self.reply == "tx" else wire.C.VTL_REPLY_BOUNCE
        key = self._ffi.new("uint32_t *", 0)
        if self._lib.bpf_map_update_elem(self.maps["vtl_config"], key, cfg, 0):
            raise VtlError(f"cannot configure the VTL KTFs ({os.strerror(self._ffi.errno)})")

    def _attach_xdp(self, fd: int) -> None:
        # A bpf_link first: the kernel detaches a link when its last fd closes, so even a
        # SIGKILL leaves nothing attached. Without flags the kernel picks native mode where
        # the driver has it, which matters: generic XDP skips frames that tc redirected
        # (skb_is_redirected), which is how the testbed's impaired links and many real
        # set-ups forward. veth does native XDP, and XDP_TX there reaches the peer when it
        # runs XDP too (both VTL ends do; so does the testbed's wire).
        ffi, lib = self._ffi, self._lib
        prog = lib.bpf_object__find_program_by_name(self._root, b"vtl_ingress")
        link = lib.bpf_program__attach_xdp(prog, self.ifindex)
        if link != ffi.NULL:
            self._xdp_link = link
            self.xdp_mode = "link"
            return
        err = ffi.errno
        if err in (errno.EEXIST, errno.EBUSY):
            raise XdpBusyError(f"{self.ifname} already has an XDP program")
        # Kernels without XDP links: netlink attach, native then generic.
        ret = 0
        for mode in (XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
            ret = lib.bpf_xdp_attach(self.ifindex, fd, mode | XDP_FLAGS_UPDATE_IF_NOEXIST,
                                     ffi.NULL)
            if ret == 0:
                self._xdp_mode = mode
                self.xdp_mode = "drv" if mode == XDP_FLAGS_DRV_MODE else "skb"
                return
            if -ret in (errno.EEXIST, errno.EBUSY):
                raise XdpBusyError(f"{self.ifname} already has an XDP program")
        raise VtlError(f"cannot attach the VTL ingress KTF to {self.ifname} "
                       f"({os.strerror(-ret)})")

    def _attach_tc(self, fd: int, direction: int) -> None:
        """Attach a tc program to this interface's ingress or egress (BPF_TC_*)."""
        ffi, lib = self._ffi, self._lib
        # tcx (kernel 6.6+) through a bpf_link: no qdisc to add, and gone with our fds.
        tcx = BPF_TCX_INGRESS if direction == BPF_TC_INGRESS else BPF_TCX_EGRESS
        link_fd = lib.bpf_link_create(fd, self.ifindex, tcx, ffi.NULL)
        if link_fd >= 0:
            self._tc_links.append(link_fd)
            return
        # Older kernels: a clsact qdisc and cls_bpf filters, removed by close().
        hook = ffi.new("struct bpf_tc_hook *", {"sz": ffi.sizeof("struct bpf_tc_hook"),
                                                "ifindex": self.ifindex,
                                                "attach_point": direction})
        ret = lib.bpf_tc_hook_create(hook)
        if ret and -ret != errno.EEXIST:
            raise VtlError(f"cannot add a clsact qdisc to {self.ifname} ({os.strerror(-ret)})")
        self._tc_owns_qdisc = self._tc_owns_qdisc or ret == 0
        opts = ffi.new("struct bpf_tc_opts *", {"sz": ffi.sizeof("struct bpf_tc_opts"),
                                                "prog_fd": fd})
        ret = lib.bpf_tc_attach(hook, opts)
        if ret:
            raise VtlError(f"cannot attach a VTL tc KTF to {self.ifname} "
                           f"({os.strerror(-ret)})")
        self._tc_filters.append((hook, opts))

    # -- grafts -------------------------------------------------------------------------

    def deploy(self, graft: Graft, from_source: bool = False) -> None:
        """Make graft's KTFs run on this interface (shared by every session using it):
        the precompiled object, or the source compiled on demand (and cached) when there
        is no object or ``from_source`` asks for it."""
        self._check_open()
        if graft.id == 0:
            return   # the canonical graft is part of the root object
        if graft.id in self._grafts:
            obj, refs = self._grafts[graft.id]
            self._grafts[graft.id] = (obj, refs + 1)
            return
        obj = self._open_load(graft_object(graft, from_source), reuse=True)
        try:
            self._put_graft(graft.id, obj, graft.ktfs["ingress"], graft.ktfs["egress"])
        except BaseException:
            self._lib.bpf_object__close(obj)
            raise
        self._grafts[graft.id] = (obj, 1)

    def release(self, graft: Graft) -> None:
        """Drop one session's use of graft; the last one removes its KTFs."""
        if graft.id == 0 or graft.id not in self._grafts:
            return
        obj, refs = self._grafts[graft.id]
        if refs > 1:
            self._grafts[graft.id] = (obj, refs - 1)
            return
        del self._grafts[graft.id]
        self._remove_graft(graft.id, obj)

    def _remove_graft(self, gid: int, obj: Any) -> None:
        key = self._ffi.new("uint32_t *", gid)
        for arr in ("vtl_xdp_grafts", "vtl_tc_grafts"):
            self._lib.bpf_map_delete_elem(self.maps[arr], key)
        self._lib.bpf_object__close(obj)

    @property
    def deployed(self) -> dict[int, int]:
        """Graft id -> sessions using it (the canonical graft is always there)."""
        return {gid: refs for gid, (_, refs) in self._grafts.items()}

    # -- sessions -----------------------------------------------------------------------

    def _skey(self, session: int, role: int) -> Any:
        return self._ffi.new("struct vtl_skey *", {"session": session, "role": role})

    def open_session(self, session: int, role: int, graft: Graft, window: int,
                     budget_ppm: int = 0) -> None:
        self._check_open()
        val = self._ffi.new("struct vtl_session *", {
            "graft": graft.id, "window": window, "budget_ppm": budget_ppm,
            "block": 0xFFFFFFFF})
        if self._lib.bpf_map_update_elem(self.maps["vtl_sessions"], self._skey(session, role),
                                         val, 0):
            raise VtlError(f"cannot add session {session:#x} ({os.strerror(self._ffi.errno)}):"
                           f" at most {wire.C.VTL_MAX_SESSIONS} sessions per interface")

    def update_session(self, session: int, role: int, graft: Graft, window: int,
                       budget_ppm: int = 0) -> None:
        """Move a session to another graft, keeping its sequence state. The caller makes
        sure nothing is in flight (the KTFs may not run on the session meanwhile)."""
        self._check_open()
        val = self.session(session, role)
        if val is None:
            raise VtlError(f"no session {session:#x} to move to {graft.name}")
        val.graft, val.window, val.budget_ppm = graft.id, window, budget_ppm
        val.dupacks, val.block, val.block_lost, val.prev_lost = 0, 0xFFFFFFFF, 0, 0
        if self._lib.bpf_map_update_elem(self.maps["vtl_sessions"], self._skey(session, role),
                                         val, BPF_EXIST):
            raise VtlError(f"cannot move session {session:#x} ({os.strerror(self._ffi.errno)})")

    def session(self, session: int, role: int) -> Any | None:
        """A copy of the session's kernel state, or None."""
        val = self._ffi.new("struct vtl_session *")
        if self._lib.bpf_map_lookup_elem(self.maps["vtl_sessions"], self._skey(session, role),
                                         val):
            return None
        return val

    def close_session(self, session: int, role: int) -> None:
        if self._root is not None:
            self._lib.bpf_map_delete_elem(self.maps["vtl_sessions"], self._skey(session, role))

    # -- counters and rings -------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The KTF counters of this interface, summed over CPUs."""
        self._check_open()
        ffi = self._ffi
        key = ffi.new("uint32_t *")
        vals = ffi.new("uint64_t[]", self._ncpus)
        out = {}
        for idx, name in wire.COUNTERS.items():
            key[0] = idx
            if self._lib.bpf_map_lookup_elem(self.maps["vtl_counters"], key, vals):
                raise VtlError(f"cannot read the VTL counters ({os.strerror(ffi.errno)})")
            out[name] = sum(vals[i] for i in range(self._ncpus))
        return out

    def rings(self, on_rx: Callable[[Any], None] | None,
              on_event: Callable[[Any], None] | None) -> None:
        """Route vtl_rx records (DATA the KTFs accepted) and vtl_ev events (what the sender
        KTFs ask for) to these callbacks; ``poll`` runs them."""
        self._check_open()
        ffi, lib = self._ffi, self._lib
        if self._rb is not None:
            lib.ring_buffer__free(self._rb)
            self._rb = None
        self._callbacks = []
        for name, fn, ctype in (("vtl_rx", on_rx, "struct vtl_rx_rec *"),
                                ("vtl_ev", on_event, "struct vtl_event *")):
            if fn is None:
                continue

            def cb(ctx: Any, data: Any, size: int, fn: Any = fn, ctype: str = ctype) -> int:
                try:
                    fn(ffi.cast(ctype, data))
                except Exception:   # noqa: BLE001 - libbpf must not unwind through Python
                    log.exception("VTL ring callback failed")
                    return -1
                return 0

            c = ffi.callback("ring_buffer_sample_fn", cb)
            self._callbacks.append(c)
            if self._rb is None:
                self._rb = lib.ring_buffer__new(self.maps[name], c, ffi.NULL, ffi.NULL)
                if self._rb == ffi.NULL:
                    self._rb = None
                    raise VtlError(f"cannot open the {name} ring ({os.strerror(ffi.errno)})")
            elif lib.ring_buffer__add(self._rb, self.maps[name], c, ffi.NULL):
                raise VtlError(f"cannot open the {name} ring ({os.strerror(ffi.errno)})")

    def ring_fd(self) -> int:
        """A file descriptor that turns readable when a ring has records (for select)."""
        if self._rb is None:
            raise VtlError("no ring callbacks: call rings() first")
        return self._lib.ring_buffer__epoll_fd(self._rb)

    def poll(self, timeout: float) -> int:
        """Run ring callbacks for what arrived, waiting up to timeout seconds."""
        if self._rb is None:
            raise VtlError("no ring callbacks: call rings() first")
        n = self._lib.ring_buffer__poll(self._rb, max(0, int(timeout * 1000)))
        if n < 0 and -n != errno.EINTR:
            raise VtlError(f"polling the VTL rings failed ({os.strerror(-n)})")
        return max(n, 0)

    # -- lifecycle ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._root is None:
            raise VtlError(f"the VTL KTFs on {self.ifname} are closed")

    def close(self) -> None:
        """Detach everything and free every program and map (idempotent)."""
        root, self._root = self._root, None
        if root is None:
            return
        _live.discard(self)
        lib = self._lib
        if self._rb is not None:
            lib.ring_buffer__free(self._rb)
            self._rb = None
        for link_fd in self._tc_links:
            os.close(link_fd)
        self._tc_links = []
        if self._xdp_link is not None:
            lib.bpf_link__destroy(self._xdp_link)
            self._xdp_link = None
        for hook, attached in self._tc_filters:
            # detach wants only the handle and priority the attach picked
            opts = self._ffi.new("struct bpf_tc_opts *", {
                "sz": self._ffi.sizeof("struct bpf_tc_opts"),
                "handle": attached.handle, "priority": attached.priority})
            if lib.bpf_tc_detach(hook, opts):
                log.warning("could not detach a VTL tc KTF from %s", self.ifname)
        if self._tc_filters and self._tc_owns_qdisc:
            # The qdisc goes only when the hook names both directions (libbpf's rule).
            hook = self._tc_filters[0][0]
            hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS
            lib.bpf_tc_hook_destroy(hook)
        self._tc_filters = []
        if self._xdp_mode:
            try:
                ifindex = socket.if_nametoindex(self.ifname)
            except OSError:
                ifindex = 0   # the interface is gone, and its hooks with it
            if ifindex and lib.bpf_xdp_detach(ifindex, self._xdp_mode, self._ffi.NULL):
                log.warning("could not detach the VTL ingress KTF from %s", self.ifname)
            self._xdp_mode = 0
        for gid, (obj, _) in list(self._grafts.items()):
            self._remove_graft(gid, obj)
        self._grafts.clear()
        lib.bpf_object__close(root)

    def __enter__(self) -> KtfHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass
