"""A testbed of network namespaces (hosts) joined by veth pairs (links).

Topologies:

- ``pair``: ``client`` <-> ``server`` on one link.
- ``chain``: ``client`` <-> ``middle`` <-> ``server``; ``middle`` routes (ip_forward=1) and
  the end hosts route the far link's subnet through it.

Namespaces are named ``{prefix}-{name}-{role}``, so two runs with different names never
collide and everything a crashed run left can be found by prefix (:func:`down_all`). Veths
are created directly inside the namespaces, never in the root namespace, so the machine's
own interfaces are never touched. Hosts are IPv4 only (IPv6 is disabled so that no router
solicitations or DAD frames show up on the links while AF_XDP code is being tested).

Impairment (this kernel has no netem): an impaired link gets a hidden ``wire`` namespace
between its two hosts, which still share one L2 segment (ARP crosses it). In the wire,
bpf/impair.bpf.c drops frames at XDP (random or Gilbert-Elliott bursts; never ARP), tbf
limits the rate on both egresses, and frames are moved across either by a tc redirect
program or, with delay or reordering, by the forwarder of vtlstack._wire (started as
``python -m vtlstack.wire`` in the wire namespace). See :meth:`Testbed.link_stats`. A link
built with a delay can change it while traffic flows (:meth:`Testbed.set_delay`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from vtlstack.errors import VtlError, require_root

TOPOLOGIES = ("pair", "chain")
LOSS_MODELS = ("random", "bursty")
_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,24}$")
_NETNS_DIR = "/var/run/netns"


class TestbedError(VtlError):
    """The testbed could not be built or torn down as asked."""

    __test__ = False  # not a pytest class, despite the name


class TestbedExistsError(TestbedError):
    pass


@dataclass
class Iface:
    """One end of a link, inside a host."""

    name: str
    mac: str
    ip: str
    prefixlen: int
    peer_ip: str
    peer_mac: str
    host: str


@dataclass
class Host:
    """A host: one network namespace."""

    name: str
    netns: str
    ifaces: list[Iface] = field(default_factory=list)

    @property
    def iface(self) -> Iface:
        """The first interface (the only one except on chain's middle host)."""
        return self.ifaces[0]


@dataclass
class Link:
    """A link between two hosts; ``impair`` lists what is applied to it (empty: a bare veth)."""

    a: str
    b: str
    subnet: str
    mtu: int
    impair: dict[str, Any] = field(default_factory=dict)


# Links, addresses and routes are made with `ip -n`, not pyroute2: pyroute2 reaches a
# namespace by forking the calling process and stopping the child with SIGTERM, and under the
# vtl CLI (whose SIGTERM handler raises SystemExit) that child would unwind through our
# clean-up code and delete the testbed being built.


def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int) -> None:
    # Created directly in the namespaces: never visible in the root namespace.
    _run(["ip", "-n", ns_a, "link", "add", name_a, "mtu", str(mtu), "type", "veth",
          "peer", "name", name_b, "mtu", str(mtu), "netns", ns_b])


def _offloads_off(ns: str, ifname: str) -> None:
    # Checksum offload off matters most: with it on, a kernel peer of an AF_XDP socket
    # (copy mode) sends frames with partial checksums that the stack would reject.
    _run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname,
          "gro", "off", "gso", "off", "tso", "off", "tx", "off", "rx", "off"])


def _impairment(rate_mbit: float | None, delay_ms: float, loss_pct: float, loss_model: str,
                reorder_pct: float, reorder_extra_ms: float) -> dict[str, Any]:
    """Validate the impairment arguments; the non-default ones, or {} for a bare link."""
    if rate_mbit is not None and not 0.01 <= rate_mbit <= 100_000:
        raise TestbedError(f"bad rate {rate_mbit} Mbit/s: use 0.01..100000")
    if not 0 <= delay_ms <= 10_000:
        raise TestbedError(f"bad delay {delay_ms} ms: use 0..10000")
    if not 0 <= loss_pct <= 100:
        raise TestbedError(f"bad loss {loss_pct}%: use 0..100")
    if loss_model not in LOSS_MODELS:
        raise TestbedError(f"unknown loss model {loss_model!r}: use one of "
                           f"{', '.join(LOSS_MODELS)}")
    if not 0 <= reorder_pct <= 100:
        raise TestbedError(f"bad reorder {reorder_pct}%: use 0..100")
    if not 0 < reorder_extra_ms <= 10_000:
        raise TestbedError(f"bad reorder hold {reorder_extra_ms} ms: use 0..10000, not 0")
    impair: dict[str, Any] = {}
    if rate_mbit is not None:
        impair["rate_mbit"] = rate_mbit
    if delay_ms:
        impair["delay_ms"] = delay_ms
    if loss_pct:
        impair["loss_pct"] = loss_pct
        impair["loss_model"] = loss_model
    if reorder_pct:
        impair["reorder_pct"] = reorder_pct
        impair["reorder_extra_ms"] = reorder_extra_ms
    return impair


_ffi = None


def _impair_ffi() -> Any:
    """cffi view of bpf/include/impair.h, the one definition of the impairment maps."""
    global _ffi
    if _ffi is None:
        import cffi

        from vtlstack._resources import bpf_path

        text = bpf_path("impair.h").read_text()
        decls = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        ffi = cffi.FFI()
        ffi.cdef("typedef uint32_t __u32; typedef uint64_t __u64;\n" + decls)
        # No library: dlopen(None) only gives access to the enum constants as ffi.lib.X.
        ffi.lib = ffi.dlopen(None)
        _ffi = ffi
    return _ffi


def _bpftool(*args: str) -> Any:
    return json.loads(_run(["bpftool", "-j", *args]).stdout or "null")


class _Wire:
    """The hidden namespace in the middle of an impaired link, and what runs in it.

    Frames entering ``a`` leave by ``b`` and vice versa. Loss: impair_xdp (XDP, native) on
    both interfaces. Rate: tbf on both interfaces' egress (AF_XDP senders skip their own
    qdisc, so the rate must be imposed here). Forwarding: the impair_fwd tc program.
    """

    _KEY = ["key", "hex", "00", "00", "00", "00"]

    def __init__(self, netns: str, a: str, b: str, mtu: int, impair: dict[str, Any]) -> None:
        self.netns, self.a, self.b, self.mtu, self.impair = netns, a, b, mtu, impair
        # Ethernet header and a VLAN tag. Even with offloads on no frame is bigger: a veth
        # whose peer runs XDP (our loss program) turns TSO off on the host side.
        self.frame_size = mtu + 18
        self.delayed = bool(impair.get("delay_ms") or impair.get("reorder_pct"))
        self.stats_path = f"/dev/shm/{netns}.stats"
        self.control_path = f"/dev/shm/{netns}.ctl"
        self.forwarder: subprocess.Popen | None = None

    def setup(self) -> None:
        from vtlstack._resources import bpf_path

        obj = str(bpf_path("impair"))
        ns = self.netns
        for ifname in (self.a, self.b):
            # Promiscuous: the frames are addressed to the hosts, not to the wire.
            _run(["ip", "-n", ns, "link", "set", ifname, "promisc", "on", "up"])
            _offloads_off(ns, ifname)
            _run(["ip", "-n", ns, "link", "set", "dev", ifname, "xdpdrv", "obj", obj,
                  "sec", "xdp.frags"])
            self._set_cfg(self._xdp_maps(ifname)["impair_cfg"], self._loss_cfg())
        if self.delayed:
            self._start_forwarder()
        for src, dst in ((self.a, self.b), (self.b, self.a)) if not self.delayed else ():
            _run(["tc", "-n", ns, "qdisc", "add", "dev", src, "clsact"])
            _run(["tc", "-n", ns, "filter", "add", "dev", src, "ingress", "bpf",
                  "direct-action", "obj", obj, "sec", "tc"])
            cfg = _impair_ffi().new("struct impair_cfg *")
            cfg.redirect_ifindex = self._ifindex(dst)
            self._set_cfg(self._tc_maps(src)["impair_cfg"], cfg)
        if "rate_mbit" in self.impair:
            for ifname in (self.a, self.b):
                self._tbf(ifname, self.impair["rate_mbit"])

    def _start_forwarder(self) -> None:
        # The wire has no addresses and ip_forward=0, so only the forwarder moves frames.
        # Enough slots for ~400 kpps over the delay (more than the forwarder moves), within
        # 256 MiB; calloc'd memory costs nothing until a backlog actually fills it.
        hold_ms = self.impair.get("delay_ms", 0) + self.impair.get("reorder_extra_ms", 0)
        queue = max(1024, min(int(hold_ms * 400), 65536, (256 << 20) // self.frame_size))
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-P", "-m", "vtlstack.wire",
                "--a", self.a, "--b", self.b,
                "--delay-ms", str(self.impair.get("delay_ms", 0)),
                "--reorder-pct", str(self.impair.get("reorder_pct", 0)),
                "--reorder-extra-ms", str(self.impair.get("reorder_extra_ms", 0)),
                "--frame-size", str(self.frame_size), "--queue-frames", str(queue),
                "--stats", self.stats_path, "--control", self.control_path]
        # Own session: a Ctrl-C meant for `vtl testbed up` must not take the wire down.
        self.forwarder = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True)
        ready, _, _ = select.select([self.forwarder.stdout], [], [], 10)
        line = self.forwarder.stdout.readline() if ready else ""
        if line.strip() != "ready":
            _stop(self.forwarder)
            err = self.forwarder.stderr.read().strip()
            raise TestbedError(f"the wire forwarder did not start: {err or 'no answer in 10 s'}")
        # Nothing more is read from it; closing our ends keeps no pipe buffers pending.
        self.forwarder.stdout.close()
        self.forwarder.stderr.close()

    def set_delay(self, delay_ms: float) -> None:
        from vtlstack.wire import control_view

        control_view(self.control_path)[0] = int(delay_ms * 1e6)
        self.impair["delay_ms"] = delay_ms

    def _tbf(self, ifname: str, mbit: float) -> None:
        bytes_per_s = mbit * 1e6 / 8
        # Bucket: a couple of milliseconds of traffic but at least two full frames, so the
        # rate holds over short measurements; queue: 50 ms of traffic, so TCP is not starved.
        burst = max(int(bytes_per_s * 0.002), 2 * (self.mtu + 14))
        limit = max(int(bytes_per_s * 0.05), 4 * (self.mtu + 14))
        _run(["tc", "-n", self.netns, "qdisc", "add", "dev", ifname, "root", "tbf",
              "rate", f"{int(mbit * 1000)}kbit", "burst", str(burst), "limit", str(limit)])

    def _loss_cfg(self) -> Any:
        cfg = _impair_ffi().new("struct impair_cfg *")
        loss = self.impair.get("loss_pct", 0) / 100
        if self.impair.get("loss_model") == "bursty":
            # Gilbert-Elliott with every frame lost in the bad state: long-run loss is
            # g2b / (g2b + b2g) and a burst lasts 1 / b2g frames on average. Bursts average
            # 4 frames unless the loss is so high that they must be longer.
            b2g = min(0.25, (1 - loss) / loss) if loss < 1 else 0.0
            g2b = loss * b2g / (1 - loss) if loss < 1 else 1.0
            cfg.model = _impair_ffi().lib.IMPAIR_BURSTY
            cfg.good_to_bad_ppm = round(g2b * 1e6)
            cfg.bad_to_good_ppm = round(b2g * 1e6)
        else:
            cfg.model = _impair_ffi().lib.IMPAIR_RANDOM
            cfg.loss_ppm = round(loss * 1e6)
        return cfg

    def drop_matching(self, direction: str, offset: int, value: int, mask: int,
                      count: int) -> None:
        src = {f"{self.a[2:]}->{self.b[2:]}": self.a, f"{self.b[2:]}->{self.a[2:]}": self.b}.get(
            direction)
        if src is None:
            raise TestbedError(f"no direction {direction!r} on this link: "
                               f"{self.a[2:]}->{self.b[2:]} or {self.b[2:]}->{self.a[2:]}")
        maps = self._xdp_maps(src)
        cfg = self._loss_cfg()
        cfg.match_off, cfg.match_mask, cfg.match_value = offset, mask, value & mask
        # The program counts its targeted drops since the link came up and stops at
        # match_drops, so this asks for count more than it has dropped so far.
        cfg.match_drops = self._read_stats(maps["impair_stats"]).targeted + count
        self._set_cfg(maps["impair_cfg"], cfg)

    def _ifindex(self, ifname: str) -> int:
        return json.loads(_run(["ip", "-n", self.netns, "-j", "link", "show", ifname]).stdout)[0][
            "ifindex"]

    def _xdp_maps(self, ifname: str) -> dict[str, int]:
        link = json.loads(_run(["ip", "-n", self.netns, "-j", "-d", "link", "show", ifname]).stdout)
        return self._maps_of(link[0]["xdp"]["prog"]["id"])

    def _tc_maps(self, ifname: str) -> dict[str, int]:
        filters = json.loads(_run(["tc", "-n", self.netns, "-j", "filter", "show", "dev",
                                   ifname, "ingress"]).stdout)
        prog = next(f["options"]["prog"]["id"] for f in filters if "options" in f)
        return self._maps_of(prog)

    @staticmethod
    def _maps_of(prog_id: int) -> dict[str, int]:
        # Map ids are global, so the maps can be read and written from any namespace.
        ids = _bpftool("prog", "show", "id", str(prog_id))["map_ids"]
        return {_bpftool("map", "show", "id", str(m))["name"]: m for m in ids}

    def _set_cfg(self, map_id: int, cfg: Any) -> None:
        value = [f"{b:02x}" for b in bytes(_impair_ffi().buffer(cfg))]
        _run(["bpftool", "map", "update", "id", str(map_id), *self._KEY, "value", "hex", *value])

    def _read_stats(self, map_id: int) -> Any:
        raw = bytes(int(b, 16) for b in _bpftool("map", "lookup", "id", str(map_id),
                                                 *self._KEY)["value"])
        ffi = _impair_ffi()
        return ffi.new("struct impair_stats *", ffi.from_buffer("struct impair_stats *", raw)[0])

    def forwarded(self) -> list[int]:
        """The forwarder's counters, both directions (a->b first), read from shared memory."""
        from vtlstack.wire import counters_view

        return [int(v) for v in counters_view(self.stats_path)]

    def stats(self) -> dict[str, dict[str, int]]:
        out = {}
        if self.delayed:
            from vtlstack._wire import COUNTERS

            fwd = self.forwarded()
        for d, (src, dst) in enumerate(((self.a, self.b), (self.b, self.a))):
            xdp = self._read_stats(self._xdp_maps(src)["impair_stats"])
            row = {"passed": xdp.passed, "dropped": xdp.dropped, "targeted": xdp.targeted}
            if self.delayed:
                row.update(zip(COUNTERS, fwd[d * len(COUNTERS):(d + 1) * len(COUNTERS)],
                               strict=True))
                row["forwarded"] = row["sent"]
            else:
                row["forwarded"] = self._read_stats(self._tc_maps(src)["impair_stats"]).redirected
            out[f"{src[2:]}->{dst[2:]}"] = row
        return out


# A raw-socket ICMP echo client (run as a child inside a namespace by Testbed.ping). It
# prints one RTT in ms per request, or "-" when no reply came within the timeout.
_PING = r"""
import os, select, socket, struct, sys, time
dst, count = sys.argv[1], int(sys.argv[2])
interval, timeout = float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
out = []
for seq in range(count):
    body = struct.pack("!HH", ident, seq) + bytes(48)
    pkt = struct.pack("!BBH", 8, 0, csum(b"\x08\x00\x00\x00" + body)) + body
    sent = time.perf_counter_ns()
    s.sendto(pkt, (dst, 0))
    deadline = sent + int(timeout * 1e9)
    rtt = "-"
    while (now := time.perf_counter_ns()) < deadline:
        if not select.select([s], [], [], (deadline - now) / 1e9)[0]:
            break
        data = s.recv(2048)
        hl = (data[0] & 0x0F) * 4
        typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[hl:hl + 8])
        if typ == 0 and rid == ident and rseq == seq:
            rtt = "%.4f" % ((time.perf_counter_ns() - sent) / 1e6)
            break
    out.append(rtt)
    time.sleep(interval)
print(" ".join(out))
"""


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise TestbedError(
            f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}"
        )
    return proc


def _check_name(kind: str, value: str) -> None:
    if not _NAME_RE.match(value):
        raise TestbedError(
            f"bad testbed {kind} {value!r}: use 1-24 letters, digits or '_'"
        )


def _netns_list() -> list[str]:
    try:
        return sorted(os.listdir(_NETNS_DIR))
    except FileNotFoundError:
        return []


def _subnet_base(name: str) -> int:
    # Third octet of 10.213.x.0/24 for the first link. Derived from the name so two testbeds
    # rarely share subnets (they are isolated anyway; this only keeps captures unambiguous).
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:2], "big") % 120 * 2


class Testbed:
    """A running testbed. Build it with :meth:`up`; use as a context manager or call down()."""

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, name: str, topology: str, prefix: str) -> None:
        self.name = name
        self.topology = topology
        self.prefix = prefix
        self.hosts: dict[str, Host] = {}
        self.links: list[Link] = []
        self._wire: _Wire | None = None
        self._namespaces: list[str] = []  # only these are ours to delete
        self._procs: list[subprocess.Popen] = []
        self._down = False

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        name: str | None = None,
        topology: str = "pair",
        mtu: int = 1500,
        offloads: bool = False,
        rate_mbit: float | None = None,
        delay_ms: float = 0,
        loss_pct: float = 0,
        loss_model: str = "random",
        reorder_pct: float = 0,
        prefix: str = "vtl",
        reorder_extra_ms: float = 2.0,
    ) -> Testbed:
        """Build a testbed and return it; on any failure everything built so far is removed.

        Impairments (rate, delay, loss, reorder) apply to the single link of ``pair`` and to
        the middle-server link of ``chain``. ``delay_ms`` is added one way, in each direction.
        A reordered frame is held ``reorder_extra_ms`` longer than the others, so the frames
        that arrive in that time overtake it.
        """
        require_root("vtl testbed")
        name = name or secrets.token_hex(3)
        _check_name("name", name)
        _check_name("prefix", prefix)
        if topology not in TOPOLOGIES:
            raise TestbedError(f"unknown topology {topology!r}: use one of {', '.join(TOPOLOGIES)}")
        if not 68 <= mtu <= 65535:
            raise TestbedError(f"bad MTU {mtu}: use 68..65535")
        impair = _impairment(rate_mbit, delay_ms, loss_pct, loss_model, reorder_pct,
                             reorder_extra_ms)
        taken = [ns for ns in _netns_list() if ns.startswith(f"{prefix}-{name}-")]
        if taken:
            raise TestbedExistsError(
                f"testbed {name!r} already exists ({', '.join(taken)}): "
                f"pick another name or run `vtl testbed down --name {name}`"
            )
        tb = cls(name, topology, prefix)
        try:
            tb._build(mtu, offloads, impair)
        except BaseException:
            tb.down()
            raise
        return tb

    def _ns(self, role: str) -> str:
        return f"{self.prefix}-{self.name}-{role}"

    def _add_netns(self, role: str) -> str:
        ns = self._ns(role)
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self._sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
        self._sysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def _add_host(self, role: str) -> Host:
        host = Host(name=role, netns=self._add_netns(role))
        self.hosts[role] = host
        return host

    @staticmethod
    def _sysctl(ns: str, key: str, value: int) -> None:
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])

    def _build(self, mtu: int, offloads: bool, impair: dict[str, Any]) -> None:
        roles = ["client", "server"] if self.topology == "pair" else ["client", "middle", "server"]
        for role in roles:
            self._add_host(role)
        base = _subnet_base(self.name)
        pairs = list(zip(roles, roles[1:], strict=False))
        for i, (a, b) in enumerate(pairs):
            # Impairments go on the last link: the only one of pair, middle-server of chain.
            link_impair = impair if i == len(pairs) - 1 else {}
            self._add_link(self.hosts[a], self.hosts[b], f"10.213.{base + i}", mtu, offloads,
                           link_impair)
        if self.topology == "chain":
            self._sysctl(self.hosts["middle"].netns, "net.ipv4.ip_forward", 1)
            client, middle, server = (self.hosts[r] for r in roles)
            self._route(client, self.links[1].subnet, middle.ifaces[0].ip)
            self._route(server, self.links[0].subnet, middle.ifaces[1].ip)

    def _add_link(self, ha: Host, hb: Host, net: str, mtu: int, offloads: bool,
                  impair: dict[str, Any]) -> None:
        # Interface names: role + index within the host, unique in the testbed (<= 15 chars).
        na, nb = f"{ha.name}{len(ha.ifaces)}", f"{hb.name}{len(hb.ifaces)}"
        if impair:
            # A hidden wire namespace in the middle: the hosts still share one L2 segment.
            # It must never route: only the tc redirect or the forwarder moves frames.
            wire_ns = self._add_netns("wire")
            self._sysctl(wire_ns, "net.ipv4.ip_forward", 0)
            wa, wb = f"w-{ha.name}", f"w-{hb.name}"
            _veth(ha.netns, na, wire_ns, wa, mtu)
            _veth(wire_ns, wb, hb.netns, nb, mtu)
            self._wire = _Wire(wire_ns, wa, wb, mtu, impair)
            try:
                self._wire.setup()
            finally:
                if self._wire.forwarder is not None:
                    self._procs.append(self._wire.forwarder)
        else:
            _veth(ha.netns, na, hb.netns, nb, mtu)
        ends = []
        for host, ifname, octet in ((ha, na, 1), (hb, nb, 2)):
            _run(["ip", "-n", host.netns, "addr", "add", f"{net}.{octet}/24", "dev", ifname])
            _run(["ip", "-n", host.netns, "link", "set", ifname, "up"])
            mac = json.loads(_run(["ip", "-n", host.netns, "-j", "link", "show", ifname])
                             .stdout)[0]["address"]
            if not offloads:
                _offloads_off(host.netns, ifname)
            ends.append(Iface(ifname, mac, f"{net}.{octet}", 24, "", "", host.name))
        ea, eb = ends
        ea.peer_ip, ea.peer_mac, eb.peer_ip, eb.peer_mac = eb.ip, eb.mac, ea.ip, ea.mac
        ha.ifaces.append(ea)
        hb.ifaces.append(eb)
        shown = dict(impair, wire_netns=self._wire.netns) if impair else {}
        self.links.append(Link(ha.name, hb.name, f"{net}.0/24", mtu, shown))

    @staticmethod
    def _route(host: Host, dst: str, gateway: str) -> None:
        _run(["ip", "-n", host.netns, "route", "add", dst, "via", gateway])

    # -- use ------------------------------------------------------------------------------

    def host(self, role: str) -> Host:
        """The host with that role ("client", "server", "middle")."""
        try:
            return self.hosts[role]
        except KeyError:
            raise TestbedError(
                f"testbed {self.name!r} has no host {role!r}: it has {', '.join(self.hosts)}"
            ) from None

    def _argv(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.host(host).netns, *argv]

    def exec(self, host: str, argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
        """Run argv inside a host and wait for it (keyword arguments go to subprocess.run)."""
        kw.setdefault("timeout", 60)
        return subprocess.run(self._argv(host, argv), **kw)

    def popen(self, host: str, argv: list[str], **kw: Any) -> subprocess.Popen:
        """Start argv inside a host; down() kills it if it is still running."""
        proc = subprocess.Popen(self._argv(host, argv), **kw)
        self._procs.append(proc)
        return proc

    def ping(
        self, host: str, dst: str, count: int = 10, interval: float = 0.01, timeout: float = 1.0
    ) -> list[float | None]:
        """ICMP echo from a host to dst; RTT in ms per request (None: no reply in time).

        Built in because the machines need not have iputils-ping; the loop runs in a child
        process inside the host's namespace, bounded by count * (interval + timeout).
        """
        proc = self.exec(
            host,
            [sys.executable, "-c", _PING, dst, str(count), str(interval), str(timeout)],
            capture_output=True, text=True, timeout=10 + count * (interval + timeout),
        )
        if proc.returncode != 0:
            raise TestbedError(f"ping from {host} to {dst} failed: {proc.stderr.strip()}")
        return [None if v == "-" else float(v) for v in proc.stdout.split()]

    def set_delay(self, delay_ms: float) -> None:
        """Change the impaired link's one-way delay (each direction) while traffic flows.

        Only a link built with a delay has the forwarder that applies it. Frames already
        queued keep the delay they arrived with; after a shorter delay new frames wait
        behind them (nothing is reordered), so a decrease takes effect as the queue drains.
        The queue was sized at build time for the delay then: at high rates a much longer
        delay can overflow it (``queue_full`` in :meth:`link_stats`).
        """
        if self._wire is None or self._wire.forwarder is None:
            raise TestbedError(f"testbed {self.name!r} has no delayed link: build it with "
                               f"delay_ms > 0 to change the delay later")
        _impairment(None, delay_ms, 0, "random", 0, 1.0)   # the same bounds as up()
        self._wire.set_delay(delay_ms)
        self.links[-1].impair["delay_ms"] = delay_ms

    def drop_matching(self, direction: str, offset: int, value: int,
                      mask: int = 0xFFFFFFFF, count: int = 1) -> None:
        """Lose the next ``count`` frames in ``direction`` ("client->server", ...) whose
        32-bit big-endian word at byte ``offset`` of the frame, masked, equals ``value``.

        For tests that need one given frame lost (the last packet of a transfer, say),
        which random loss cannot promise. The link's random or bursty loss goes on as
        before; the drops are counted in :meth:`link_stats` (``targeted``).
        """
        if self._wire is None:
            raise TestbedError(f"testbed {self.name!r} has no impaired link: build it with "
                               f"loss_pct, delay_ms or rate_mbit to drop frames on it")
        top = _impair_ffi().lib.IMPAIR_MATCH_OFF_MAX
        if not 0 <= offset <= top or count < 1 or not 0 <= value <= 0xFFFFFFFF \
                or not 0 <= mask <= 0xFFFFFFFF:
            raise TestbedError(f"drop_matching: offset 0-{top}, 32-bit value and mask, "
                               f"count >= 1 (got {offset}, {value:#x}, {mask:#x}, {count})")
        self._wire.drop_matching(direction, offset, value, mask, count)

    def link_stats(self) -> dict[str, dict[str, int]]:
        """Counters of the impaired link per direction ("client->server", ...).

        ``passed``/``dropped``: the loss program (``targeted``: the drops asked for with
        :meth:`drop_matching`, counted in ``dropped`` too); ``forwarded``: frames sent on, by the
        kernel redirect or, with delay or reordering, by the forwarder (whose own counters,
        vtlstack._wire.COUNTERS, are included then).
        """
        if self._wire is None:
            raise TestbedError(f"testbed {self.name!r} has no impaired link: nothing to count")
        return self._wire.stats()

    def link_bytes(self) -> dict[str, int]:
        """Bytes the delayed link has carried per direction ("client->server", ...): cheap
        enough to sample while traffic flows (throughput over time)."""
        if self._wire is None or self._wire.forwarder is None:
            raise TestbedError(f"testbed {self.name!r} has no delayed link: only its "
                               f"forwarder counts bytes")
        from vtlstack._wire import COUNTERS

        fwd, n, w = self._wire.forwarded(), len(COUNTERS), self._wire
        at = COUNTERS.index("sent_bytes")
        return {f"{w.a[2:]}->{w.b[2:]}": fwd[at], f"{w.b[2:]}->{w.a[2:]}": fwd[n + at]}

    def describe(self) -> dict[str, Any]:
        """Everything a user needs to address the testbed, as JSON-able data."""
        return {
            "name": self.name,
            "prefix": self.prefix,
            "topology": self.topology,
            "hosts": {
                role: {
                    "netns": h.netns,
                    "interfaces": [
                        {"name": i.name, "mac": i.mac, "ip": i.ip, "prefixlen": i.prefixlen,
                         "peer_ip": i.peer_ip, "peer_mac": i.peer_mac}
                        for i in h.ifaces
                    ],
                }
                for role, h in self.hosts.items()
            },
            "links": [
                {"a": lk.a, "b": lk.b, "subnet": lk.subnet, "mtu": lk.mtu, "impair": lk.impair}
                for lk in self.links
            ],
        }

    # -- teardown -------------------------------------------------------------------------

    def down(self) -> None:
        """Kill what this testbed started and delete its namespaces. Safe to call twice."""
        if self._down:
            return
        self._down = True
        for proc in self._procs:
            _stop(proc)
        _remove_namespaces(self._namespaces)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- crash recovery -------------------------------------------------------------------

    @staticmethod
    def list(prefix: str = "vtl") -> dict[str, list[str]]:
        """Testbeds present on the machine: name -> its namespaces."""
        return _by_name(prefix)

    @staticmethod
    def down_all(prefix: str = "vtl") -> list[str]:
        """Remove everything runs with this prefix left (see the module's down_all)."""
        return down_all(prefix)


def _by_name(prefix: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for ns in _netns_list():
        if not ns.startswith(f"{prefix}-"):
            continue
        rest = ns[len(prefix) + 1:]
        name, sep, _role = rest.rpartition("-")
        if sep and _NAME_RE.match(name):
            found.setdefault(name, []).append(ns)
    return found


def _stop(proc: subprocess.Popen, grace: float = 2.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


def _kill_pids(ns: str, grace: float = 2.0) -> None:
    """Kill every process inside ns: SIGTERM, then SIGKILL after a bounded grace period."""
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    for _ in range(100):
        out = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
        pids = [int(p) for p in out if p.isdigit() and int(p) != os.getpid()]
        if not pids:
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.02)  # polling interval while processes exit, not synchronisation
    raise TestbedError(f"processes in namespace {ns} would not die: kill them by hand")


def _remove_namespaces(namespaces: list[str]) -> None:
    errors = []
    for ns in namespaces:
        # The forwarder's counters and control files, if this was a wire namespace.
        if ns.endswith("-wire"):
            for suffix in (".stats", ".ctl"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"/dev/shm/{ns}{suffix}")
        try:
            _kill_pids(ns)
        except TestbedError as exc:
            errors.append(str(exc))
        # Deleting the namespace deletes its veths (and so their peers), qdiscs and programs.
        proc = _run(["ip", "netns", "del", ns], check=False)
        if proc.returncode != 0 and os.path.exists(os.path.join(_NETNS_DIR, ns)):
            errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
    if errors:
        raise TestbedError("; ".join(errors))


def down(name: str, prefix: str = "vtl") -> list[str]:
    """Remove testbed `name` (e.g. one left up by `vtl testbed up`); returns its namespaces."""
    require_root("vtl testbed down")
    _check_name("name", name)
    namespaces = _by_name(prefix).get(name, [])
    _remove_namespaces(namespaces)
    return namespaces


def down_all(prefix: str = "vtl") -> list[str]:
    """Remove everything any run with this prefix left: namespaces, their processes, and
    stray root-namespace links named with the prefix. Returns what was removed."""
    require_root("vtl testbed down --all")
    _check_name("prefix", prefix)
    namespaces = [ns for names in _by_name(prefix).values() for ns in names]
    removed = list(namespaces)
    _remove_namespaces(namespaces)
    # Counters and control files of wire forwarders whose namespace is already gone.
    for entry in os.listdir("/dev/shm"):
        ns = entry.removesuffix(".stats").removesuffix(".ctl")
        if ns != entry and ns.startswith(f"{prefix}-") and ns.endswith("-wire") \
                and not os.path.exists(os.path.join(_NETNS_DIR, ns)):
            os.unlink(f"/dev/shm/{entry}")
            removed.append(f"/dev/shm/{entry}")
    # The testbed never creates links in the root namespace, but older or foreign runs using
    # the same prefix might have; only links whose name starts with the prefix are touched.
    links = json.loads(_run(["ip", "-d", "-j", "link", "show", "type", "veth"]).stdout or "[]")
    for link in links:
        ifname = link.get("ifname", "")
        if ifname.startswith(prefix):
            _run(["ip", "link", "del", ifname], check=False)
            removed.append(ifname)
    return removed
