"""The VTL KTFs in the kernel: validation, drop counters, kernel-made ACKs, the pool, cleanup.

KTF hosts run in child processes inside the testbed namespaces (the scripts below);
crafted packets come from the client namespace through a raw socket.
"""

import json
import signal
import subprocess
import sys

import pytest

from vtlstack.vtl import wire
from vtlstack.vtl.wire import C, Header

pytestmark = pytest.mark.root

# Runs in the server namespace: attach, open sessions, print "ready", wait for a line on
# stdin, print the counters and the delivered seqs as JSON, detach.
_SERVER = r"""
import json, sys
from vtlstack.vtl.grafts import load_pool
from vtlstack.vtl.ktf import KtfHost
pool = load_pool()
delivered = []
with KtfHost(sys.argv[1]) as h:
    for name, session in (("sr", 100), ("gbn", 200), ("sr", 300)):
        h.deploy(pool[name])
        h.open_session(session, 1, pool[name], 32)
    h.rings(lambda r: delivered.append((r.session, r.seq, r.len)), None)
    print("ready", flush=True)
    sys.stdin.readline()
    h.poll(0.2)
    print(json.dumps({"counters": h.counters(), "delivered": delivered}), flush=True)
"""

# Runs in the client namespace as a VTL sender would: KTFs attached, sender state for
# sessions 100 (sr) and 200 (gbn); sends each hex packet (IP header by the kernel) to
# argv[2] through a raw socket, then prints the events its KTFs raised from the ACKs
# the server's KTFs sent back, and its counters.
_CLIENT = r"""
import json, socket, sys, time
from vtlstack.vtl.grafts import load_pool
from vtlstack.vtl.ktf import KtfHost
pool = load_pool()
events = []
with KtfHost(sys.argv[1]) as h:
    for name, session in (("sr", 100), ("gbn", 200)):
        h.deploy(pool[name])
        h.open_session(session, 0, pool[name], 32)
    h.rings(None, lambda e: events.append((e.kind, e.session, e.seq)))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
    for pkt in json.loads(sys.stdin.read()):
        s.sendto(bytes.fromhex(pkt), (sys.argv[2], 0))
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline and h.counters()["rx_ack"] < 3:
        h.poll(0.05)
    h.poll(0)
    print(json.dumps({"events": events, "counters": h.counters()}))
"""


# The bpf_links of this process whose program is a VTL KTF, as {prog id: name}. Links are
# the way to see the egress KTF (bpftool 7.1 does not list tcx links under `net show`);
# they are read from this process's own fds, since `bpftool link show` lists every link on
# the machine, other runs' too.
_LINKS = r"""
import json, os, subprocess
def vtl_links():
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:bpf_link":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                info = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError:
            continue
        prog = subprocess.run(["bpftool", "-j", "prog", "show", "id", info["prog_id"]],
                              capture_output=True, text=True)
        name = json.loads(prog.stdout or "{}").get("name", "")
        if name in ("vtl_ingress", "vtl_egress", "vtl_bounce"):
            out[int(info["prog_id"])] = name
    return out
"""


# The same, in UDP to VTL_UDP_PORT (the UDP encapsulation), with no KTFs on this side.
_UDP_CLIENT = r"""
import json, socket, sys
from vtlstack.vtl.wire import UDP_PORT
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for pkt in json.loads(sys.stdin.read()):
    s.sendto(bytes.fromhex(pkt), (sys.argv[1], UDP_PORT))
"""


def _data(session, seq, graft=C.VTL_GRAFT_SR, payload=b"d" * 100):
    return wire.pack(Header(type=C.VTL_DATA, session=session, seq=seq, graft=graft,
                            payload=payload))


def _recompute(raw: bytearray) -> bytes:
    raw[22:24] = b"\0\0"
    raw[22:24] = wire.checksum(raw).to_bytes(2, "big")
    return bytes(raw)


def _xdp_and_tc(tb, host, ifname):
    link = tb.exec(host, ["ip", "-o", "link", "show", ifname], capture_output=True,
                   text=True).stdout
    tc = tb.exec(host, ["tc", "filter", "show", "dev", ifname, "egress"],
                 capture_output=True, text=True).stdout
    qd = tb.exec(host, ["tc", "qdisc", "show", "dev", ifname], capture_output=True,
                 text=True).stdout
    return ("xdp" in link), tc.strip(), ("clsact" in qd)


def _start_server(tb):
    srv = tb.host("server")
    proc = tb.popen("server", [sys.executable, "-P", "-c", _SERVER, srv.iface.name],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return srv, proc


def _report(proc):
    """Tell a waiting host script to report; its JSON line."""
    proc.stdin.write("\n")
    proc.stdin.flush()
    res = json.loads(proc.stdout.readline())
    proc.wait(timeout=10)
    return res


def test_bad_input_is_dropped_and_counted_in_the_kernel(testbed):
    tb = testbed(topology="pair")
    srv, proc = _start_server(tb)
    good = _data(100, 0)
    bad_csum = bytearray(_data(100, 1))
    bad_csum[-1] ^= 0xFF
    version = bytearray(_data(100, 1))
    version[0] = 9
    unknown_type = bytearray(_data(100, 1))
    unknown_type[1] = 99
    short_len = bytearray(_data(100, 1))
    short_len[20:22] = (50).to_bytes(2, "big")   # says 50 payload bytes, carries 100
    cases = {
        "drop_csum": bytes(bad_csum),
        "drop_version": _recompute(version),
        "drop_type": _recompute(unknown_type),
        "drop_truncated": [good[:10].hex(), _recompute(short_len).hex()],
        "drop_session": _data(999, 0),
        "drop_graft": _data(100, 1, graft=C.VTL_GRAFT_GBN),   # not the session's graft
        "drop_window": _data(300, 5000),    # (the client has no state for 300)
        "drop_order": _data(200, 3, graft=C.VTL_GRAFT_GBN),    # Go-Back-N wants seq 0
    }
    pkts = [good.hex()]
    for v in cases.values():
        pkts += v if isinstance(v, list) else [v.hex()]
    pkts.append(good.hex())                                    # replay of seq 0
    pkts.append(_data(100, 40).hex())    # beyond the client's own send window
    out = tb.exec("client", [sys.executable, "-P", "-c", _UDP_CLIENT, srv.iface.ip],
                  input=json.dumps([bytes(bad_csum).hex(), _data(300, 0).hex()]),
                  capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    out = tb.exec("client", [sys.executable, "-P", "-c", _CLIENT, tb.host("client").iface.name,
                             srv.iface.ip],
                  input=json.dumps(pkts), capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    client = json.loads(out.stdout)
    res = _report(proc)
    counters = res["counters"]
    assert counters["drop_truncated"] == 2
    assert counters["drop_csum"] == 2                          # one over IP, one in UDP
    for name in cases:
        if name not in ("drop_truncated", "drop_csum"):
            assert counters[name] == 1, (name, counters)
    assert counters["drop_replay"] == 1
    # Only the good packets were delivered, once each: session 300's seq 0 in UDP (its
    # ACK went back by XDP_TX to a client without KTFs), then session 100's over IP.
    assert res["delivered"] == [[300, 0, 100], [100, 0, 100]]
    assert counters["rx_data"] == 2
    # Every DATA the graft KTF saw was answered from the kernel (XDP_TX): the good one,
    # the replay, the out-of-window and the out-of-order one; no user space sent them.
    # The client's KTFs took the ACKs in its kernel (the one for session 300, which it
    # has no state for, is dropped there); only the one that moved session 100's window
    # (ack 1) became an event for the broker.
    assert counters["tx_ack"] == 5
    assert client["counters"]["rx_ack"] == 3
    assert client["counters"]["drop_session"] == 1
    assert client["events"] == [[C.VTL_EV_ACKED, 100, 1]]
    # The client's egress KTF refused to send seq 40 (window 32 from snd_una 1).
    assert client["counters"]["tx_window_full"] == 1
    assert (False, "", False) == _xdp_and_tc(tb, "server", srv.iface.name)


def test_pool_shares_grafts_and_leaves_nothing(testbed):
    tb = testbed(topology="pair")
    srv = tb.host("server")
    code = _LINKS + r"""
import json, sys, subprocess
from vtlstack.vtl.grafts import load_pool
from vtlstack.vtl.ktf import KtfHost, GraftLoadError
pool = load_pool()
ids = {}
with KtfHost(sys.argv[1]) as h:
    for g in pool.values():
        h.deploy(g)
    h.deploy(pool["sr"])                  # a second session of the same graft
    first = h.deployed
    h.release(pool["sr"])
    second = h.deployed
    h.release(pool["gbn"])
    third = h.deployed
    progs = json.loads(subprocess.run(["bpftool", "-j", "net", "show", "dev", sys.argv[1]],
                                      capture_output=True, text=True).stdout)
    print(json.dumps({"first": first, "second": second, "third": third, "net": progs,
                      "links": vtl_links()}))
"""
    out = tb.exec("server", [sys.executable, "-P", "-c", code, srv.iface.name],
                  capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["first"] == {"1": 1, "2": 2, "3": 1}
    assert res["second"] == {"1": 1, "2": 1, "3": 1}
    assert res["third"] == {"2": 1, "3": 1}
    net = res["net"][0]
    assert [p["mode"] for p in net["xdp"]] == ["driver"]     # native, through a link
    links = res["links"]
    assert sorted(links.values()) == ["vtl_bounce", "vtl_egress", "vtl_ingress"]
    assert (False, "", False) == _xdp_and_tc(tb, "server", srv.iface.name)
    # The programs themselves are gone, not only detached.
    for prog_id in links:
        gone = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)],
                              capture_output=True, text=True)
        assert gone.returncode != 0


def test_unloadable_graft_is_a_clear_error(testbed, tmp_path):
    tb = testbed(topology="pair")
    srv = tb.host("server")
    code = r"""
import sys
from vtlstack.vtl.grafts import Graft
from vtlstack.vtl.ktf import KtfHost, GraftLoadError
bogus = [Graft(name="sr", id=2, version="0", description="", object=obj,
               ktfs={"ingress": "vtl_sr_in", "egress": "vtl_sr_out"}, integrity=True,
               reliable=True, ordered=True, max_loss=0.0) for obj in ("vtl_nothere", "steer")]
with KtfHost(sys.argv[1]) as h:
    for g in bogus:
        try:
            h.deploy(g)
        except GraftLoadError as e:
            print(e)
    print(h.deployed)
"""
    out = tb.exec("server", [sys.executable, "-P", "-c", code, srv.iface.name],
                  capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "no object vtl_nothere and no source" in lines[0]
    assert "cannot share map" in lines[1]
    assert lines[2] == "{}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_host_leaves_nothing_attached(testbed, sig):
    # SIGTERM unwinds through close(); SIGKILL runs no code at all, and the kernel drops
    # the bpf_links (XDP and tcx) with the process's fds.
    tb = testbed(topology="pair")
    srv = tb.host("server")
    code = _LINKS + r"""
import sys, time
from vtlstack.vtl.grafts import load_pool
from vtlstack.vtl.ktf import KtfHost
h = KtfHost(sys.argv[1])
h.deploy(load_pool()["pr"])
print(json.dumps(vtl_links()), flush=True)
time.sleep(60)
"""
    proc = tb.popen("server", [sys.executable, "-P", "-c", code, srv.iface.name],
                    stdout=subprocess.PIPE, text=True)
    links = json.loads(proc.stdout.readline())
    assert sorted(links.values()) == ["vtl_bounce", "vtl_egress", "vtl_ingress"]
    assert _xdp_and_tc(tb, "server", srv.iface.name)[0]
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == (128 + sig if sig == signal.SIGTERM else -sig)
    assert (False, "", False) == _xdp_and_tc(tb, "server", srv.iface.name)
    for prog_id in links:
        gone = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)],
                              capture_output=True, text=True)
        assert gone.returncode != 0


def test_source_grafts_compile_once_into_the_cache(testbed, tmp_path):
    tb = testbed(topology="pair")
    srv = tb.host("server")
    code = r"""
import json, os, sys, time
from vtlstack.vtl.grafts import load_pool
from vtlstack.vtl.ktf import KtfHost
pool = load_pool()
times = []
with KtfHost(sys.argv[1]) as h:
    for _ in range(2):
        t0 = time.monotonic()
        h.deploy(pool["sr"], from_source=True)
        times.append(time.monotonic() - t0)
        h.release(pool["sr"])
print(json.dumps({"times": times, "cache": sorted(os.listdir(sys.argv[2]))}))
"""
    cache = tmp_path / "cache"
    out = tb.exec("server", ["env", f"VTL_GRAFT_CACHE={cache}", sys.executable, "-P", "-c",
                             code, srv.iface.name, str(cache)],
                  capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert len(res["cache"]) == 1 and res["cache"][0].startswith("sr-")
    first, second = res["times"]
    assert second < first          # the second deploy loads the cached object only


# Client and server of one Selective Repeat session with the full 1024-packet window: the
# client sends the hex packets, then polls until its KTF reports `until` delivered, and
# prints its events (kind, seq, bits, answers); the server prints its counters.
_SR_WIDE = r"""
import json, socket, sys, time
from vtlstack.vtl.grafts import load_pool
from vtlstack.vtl.ktf import KtfHost
sr = load_pool()["sr"]
role, ifname = int(sys.argv[1]), sys.argv[2]
events = []
with KtfHost(ifname) as h:
    h.deploy(sr)
    h.open_session(100, role, sr, 1024)
    if role == 1:
        print("ready", flush=True)
        sys.stdin.readline()
        print(json.dumps(h.counters()), flush=True)
        sys.exit()
    h.rings(None, lambda e: events.append((e.kind, e.seq, e.bits, e.answers)))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
    pkts, until = json.loads(sys.stdin.read())
    for pkt in pkts:
        s.sendto(bytes.fromhex(pkt), (sys.argv[3], 0))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (events and events[-1][2] == until):
        h.poll(0.05)
    print(json.dumps(events))
"""


def test_selective_repeat_window_and_delivered_count_in_the_kernel(testbed):
    # Seqs 1..200 and then the hole, 0: the receiver holds 200 packets beyond a hole (more
    # than three 64-bit words of its ring bitmap), NACKs the hole when seq 3 arrives and
    # again VTL_RENACK packets later, and every ACK says how many packets it has.
    tb = testbed(topology="pair")
    srv = tb.host("server")
    server = tb.popen("server", [sys.executable, "-P", "-c", _SR_WIDE, "1", srv.iface.name],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    pkts = [_data(100, seq).hex() for seq in (*range(1, 201), 0)]
    out = tb.exec("client", [sys.executable, "-P", "-c", _SR_WIDE, "0",
                             tb.host("client").iface.name, srv.iface.ip],
                  input=json.dumps([pkts, 201]), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    events = json.loads(out.stdout)
    counters = _report(server)
    assert counters["rx_data"] == 201 and counters["drop_window"] == 0
    assert counters["tx_nack"] == 2 and counters["tx_ack"] == 199
    assert [e for e in events if e[0] == C.VTL_EV_RETX] == \
        [[C.VTL_EV_RETX, 0, 0, 0]] * 2                # the hole, at seq 3 and at 3 + 127
    acked = [e for e in events if e[0] == C.VTL_EV_ACKED]
    counts = [e[2] for e in acked]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert acked[-2] == [C.VTL_EV_ACKED, 0, 200, 200]   # 200 had, the window still at 0
    assert acked[-1] == [C.VTL_EV_ACKED, 201, 201, 0]   # the hole filled: slid over all
