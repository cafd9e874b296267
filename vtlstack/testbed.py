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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from vtlstack.errors import VtlError, require_root

TOPOLOGIES = ("pair", "chain")
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
        self._namespaces: list[str] = []
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
    ) -> Testbed:
        """Build a testbed and return it; on any failure everything built so far is removed.

        Impairments (rate, delay, loss, reorder) apply to the single link of ``pair`` and to
        the middle-server link of ``chain``.
        """
        require_root("vtl testbed")
        name = name or secrets.token_hex(3)
        _check_name("name", name)
        _check_name("prefix", prefix)
        if topology not in TOPOLOGIES:
            raise TestbedError(f"unknown topology {topology!r}: use one of {', '.join(TOPOLOGIES)}")
        if not 68 <= mtu <= 65535:
            raise TestbedError(f"bad MTU {mtu}: use 68..65535")
        if rate_mbit or delay_ms or loss_pct or reorder_pct:
            raise TestbedError("link impairment is not implemented yet: use a bare link")
        taken = [ns for ns in _netns_list() if ns.startswith(f"{prefix}-{name}-")]
        if taken:
            raise TestbedExistsError(
                f"testbed {name!r} already exists ({', '.join(taken)}): "
                f"pick another name or run `vtl testbed down --name {name}`"
            )
        tb = cls(name, topology, prefix)
        try:
            tb._build(mtu, offloads)
        except BaseException:
            tb.down()
            raise
        return tb

    def _ns(self, role: str) -> str:
        return f"{self.prefix}-{self.name}-{role}"

    def _add_host(self, role: str) -> Host:
        ns = self._ns(role)
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self._sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
        self._sysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        host = Host(name=role, netns=ns)
        self.hosts[role] = host
        return host

    @staticmethod
    def _sysctl(ns: str, key: str, value: int) -> None:
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])

    def _build(self, mtu: int, offloads: bool) -> None:
        roles = ["client", "server"] if self.topology == "pair" else ["client", "middle", "server"]
        for role in roles:
            self._add_host(role)
        base = _subnet_base(self.name)
        for i, (a, b) in enumerate(zip(roles, roles[1:], strict=False)):
            self._add_link(self.hosts[a], self.hosts[b], f"10.213.{base + i}", mtu, offloads)
        if self.topology == "chain":
            self._sysctl(self.hosts["middle"].netns, "net.ipv4.ip_forward", 1)
            client, middle, server = (self.hosts[r] for r in roles)
            self._route(client, self.links[1].subnet, middle.ifaces[0].ip)
            self._route(server, self.links[0].subnet, middle.ifaces[1].ip)

    def _add_link(self, ha: Host, hb: Host, net: str, mtu: int, offloads: bool) -> None:
        from pyroute2 import NetNS

        # Interface names: role + index within the host, unique in the testbed (<= 15 chars).
        na, nb = f"{ha.name}{len(ha.ifaces)}", f"{hb.name}{len(hb.ifaces)}"
        with NetNS(ha.netns) as ns:
            ns.link("add", ifname=na, kind="veth",
                    peer={"ifname": nb, "net_ns_fd": hb.netns})
        ends = []
        for host, ifname, octet in ((ha, na, 1), (hb, nb, 2)):
            with NetNS(host.netns) as ns:
                idx = ns.link_lookup(ifname=ifname)[0]
                ns.link("set", index=idx, mtu=mtu)
                ns.addr("add", index=idx, address=f"{net}.{octet}", prefixlen=24)
                ns.link("set", index=idx, state="up")
                mac = ns.get_links(idx)[0].get_attr("IFLA_ADDRESS")
            if not offloads:
                self._offloads_off(host.netns, ifname)
            ends.append(Iface(ifname, mac, f"{net}.{octet}", 24, "", "", host.name))
        ea, eb = ends
        ea.peer_ip, ea.peer_mac, eb.peer_ip, eb.peer_mac = eb.ip, eb.mac, ea.ip, ea.mac
        ha.ifaces.append(ea)
        hb.ifaces.append(eb)
        self.links.append(Link(ha.name, hb.name, f"{net}.0/24", mtu))

    @staticmethod
    def _offloads_off(ns: str, ifname: str) -> None:
        # Checksum offload off matters most: with it on, a kernel peer of an AF_XDP socket
        # (copy mode) sends frames with partial checksums that the stack would reject.
        _run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname,
              "gro", "off", "gso", "off", "tso", "off", "tx", "off", "rx", "off"])

    @staticmethod
    def _route(host: Host, dst: str, gateway: str) -> None:
        from pyroute2 import NetNS

        with NetNS(host.netns) as ns:
            ns.route("add", dst=dst, gateway=gateway)

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
        _remove_namespaces(
            [ns for ns in _netns_list() if ns.startswith(f"{self.prefix}-{self.name}-")]
        )

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- crash recovery -------------------------------------------------------------------

    @staticmethod
    def list(prefix: str = "vtl") -> dict[str, list[str]]:
        """Testbeds present on the machine: name -> its namespaces."""
        return _by_name(prefix)


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
    # The testbed never creates links in the root namespace, but older or foreign runs using
    # the same prefix might have; only links whose name starts with the prefix are touched.
    links = json.loads(_run(["ip", "-d", "-j", "link", "show", "type", "veth"]).stdout or "[]")
    for link in links:
        ifname = link.get("ifname", "")
        if ifname.startswith(prefix):
            _run(["ip", "link", "del", ifname], check=False)
            removed.append(ifname)
    return removed
