"""The testbed: namespaces, veths, routing, offloads, impairment and crash clean-up."""

import json
import os
import secrets
import statistics
import subprocess
import sys
import time

import pytest

from vtlstack.testbed import Testbed, TestbedError, TestbedExistsError, down_all

pytestmark = pytest.mark.root


def _netns() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _replies(rtts):
    return [r for r in rtts if r is not None]


def _root_links():
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    return sorted(link["ifname"] for link in json.loads(out))


@pytest.mark.parametrize("impair", [{}, {"delay_ms": 1, "loss_pct": 1, "rate_mbit": 100}])
def test_pair_up_down_leaves_nothing(impair):
    tb = Testbed.up(prefix="vtltest", **impair)
    # Compared by name, not as a whole: other runs may add root links meanwhile.
    ours = {"client0", "server0", "w-client", "w-server"}
    namespaces = Testbed.list("vtltest")[tb.name]
    assert len(namespaces) == (3 if impair else 2)
    pids = [p for ns in namespaces for p in subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
    assert len(pids) == (1 if impair else 0)  # the wire forwarder
    assert not ours & set(_root_links())  # veths live only inside the namespaces
    tb.down()
    tb.down()  # idempotent
    assert not any(ns in _netns() for ns in namespaces)
    assert tb.name not in Testbed.list("vtltest")
    assert not [p for p in pids if _running(p)]
    assert not [f for f in os.listdir("/dev/shm") if tb.name in f]
    assert not ours & set(_root_links())


def test_failure_half_way_leaves_nothing(monkeypatch):
    import vtlstack.testbed as testbed_module

    def broken_tbf(self, ifname, mbit):
        raise testbed_module.TestbedError("injected failure")

    # tbf comes last, after namespaces, veths, XDP and the forwarder are all up.
    monkeypatch.setattr(testbed_module._Wire, "_tbf", broken_tbf)
    name = _unique("half")
    with pytest.raises(testbed_module.TestbedError, match="injected failure"):
        Testbed.up(name=name, prefix="vtltest", delay_ms=1, rate_mbit=10)
    assert f"vtltest-{name}-" not in _netns()
    # The forwarder's command line names its counters file, hence the testbed.
    assert not [p for p in _pids_with(f"vtltest-{name}-wire") if _running(p)]
    assert not os.path.exists(f"/dev/shm/vtltest-{name}-wire.stats")


def _unique(base):
    # Concurrent runs of this file (several engineers, one machine) must not collide.
    return f"{base}{secrets.token_hex(3)}"


def test_describe_json(testbed):
    name = _unique("desc")
    tb = testbed(name=name)
    d = json.loads(json.dumps(tb.describe()))
    assert d["name"] == name and d["topology"] == "pair"
    assert set(d["hosts"]) == {"client", "server"}
    client = d["hosts"]["client"]
    assert client["netns"] == f"vtltest-{name}-client"
    (iface,) = client["interfaces"]
    assert set(iface) >= {"name", "mac", "ip", "prefixlen"}
    server_iface = d["hosts"]["server"]["interfaces"][0]
    assert iface["peer_ip"] == server_iface["ip"] and iface["peer_mac"] == server_iface["mac"]
    assert len(d["links"]) == 1 and d["links"][0]["impair"] == {}


def test_name_collision_is_an_error(testbed):
    name = _unique("dup")
    testbed(name=name)
    with pytest.raises(TestbedExistsError, match="already exists"):
        Testbed.up(name=name, prefix="vtltest")


@pytest.mark.parametrize("topology", ["pair", "chain"])
def test_ping(testbed, topology):
    tb = testbed(topology=topology)
    rtts = tb.ping("client", tb.host("server").iface.ip, count=5)
    assert len(_replies(rtts)) == 5


def test_mtu_honoured(testbed):
    tb = testbed(mtu=1300)
    out = tb.exec("client", ["ip", "-j", "link", "show", tb.host("client").iface.name],
                  capture_output=True, text=True, check=True).stdout
    assert json.loads(out)[0]["mtu"] == 1300
    # A datagram larger than the MTU with DF set is refused by the sender.
    send = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            "s.setsockopt(socket.IPPROTO_IP, 10, 2);"  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
            "s.sendto(bytes(int(sys.argv[2])), (sys.argv[1], 9))")
    dst = tb.host("server").iface.ip
    ok = tb.exec("client", ["python3", "-c", send, dst, "1272"], capture_output=True)
    big = tb.exec("client", ["python3", "-c", send, dst, "1273"], capture_output=True, text=True)
    assert ok.returncode == 0
    assert big.returncode != 0 and "Message too long" in big.stderr


def _features(netns, ifname):
    return subprocess.run(["ip", "netns", "exec", netns, "ethtool", "-k", ifname],
                          capture_output=True, text=True, check=True).stdout


def test_offloads_off_by_default(testbed):
    tb = testbed(delay_ms=1)
    wire = tb.describe()["links"][0]["impair"]["wire_netns"]
    ends = [(h.netns, h.iface.name) for h in tb.hosts.values()]
    for netns, ifname in ends + [(wire, "w-client"), (wire, "w-server")]:
        out = _features(netns, ifname)
        assert "rx-checksumming: off" in out and "tx-checksumming: off" in out
        assert "generic-receive-offload: off" in out
        assert "generic-segmentation-offload: off" in out


@pytest.mark.parametrize("impair", [{}, {"delay_ms": 1}])
def test_offloads_on_when_asked(testbed, impair):
    tb = testbed(offloads=True, **impair)
    assert "tx-checksumming: on" in _features(tb.host("client").netns, "client0")
    # Checksum-partial frames cross the wire's forwarder intact: TCP works.
    tb.popen("server", ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    _wait_listening(tb, "server", 5201)
    out = tb.exec("client", ["iperf3", "-c", tb.host("server").iface.ip, "-t", "1", "-J"],
                  capture_output=True, text=True, timeout=20).stdout
    assert json.loads(out)["end"]["sum_received"]["bits_per_second"] > 100e6


def test_two_testbeds_coexist(testbed):
    a, b = testbed(), testbed()
    assert a.name != b.name
    assert not {h.netns for h in a.hosts.values()} & {h.netns for h in b.hosts.values()}
    for tb in (a, b):
        assert len(_replies(tb.ping("client", tb.host("server").iface.ip, count=3))) == 3


# A UDP receiver: prints "ready" once bound, then the sequence numbers it got, once no
# datagram came for 0.5 s (the sender is done) or after 20 s at most.
_UDP_RECV = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: never drop at the socket
s.bind(("0.0.0.0", 9000))
print("ready", flush=True)
got, deadline = [], time.monotonic() + 20
s.settimeout(5)
while time.monotonic() < deadline:
    try:
        got.append(struct.unpack("!I", s.recv(65536)[:4])[0])
    except TimeoutError:
        break
    s.settimeout(0.5)
print(" ".join(map(str, got)))
"""

# A paced UDP sender (5000 datagrams/s, below what a veth with XDP queues without drops).
_UDP_SEND = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
for i in range(n):
    while time.perf_counter() < t0 + i / 5000:
        pass
    s.sendto(struct.pack("!I", i) + bytes(size - 4), (dst, 9000))
"""


def _resolve_arp(tb):
    # While ARP is pending the kernel queues only ~200 KB for the peer, so resolve it first.
    # ARP itself is never dropped, but the echoes may be: retry up to 50 (all lost, even in
    # 4-frame bursts at 10% loss: p < 1e-6).
    dst = tb.host("server").iface.ip
    assert any(_replies(tb.ping("client", dst, count=1, timeout=0.1)) for _ in range(50))


def _udp_seqs(tb, n, size=64):
    """Send n numbered datagrams client -> server; the sequence numbers that arrived."""
    recv = tb.popen("server", ["python3", "-c", _UDP_RECV], stdout=subprocess.PIPE, text=True)
    assert recv.stdout.readline().strip() == "ready"
    tb.exec("client", ["python3", "-c", _UDP_SEND, tb.host("server").iface.ip, str(n),
                       str(size)], check=True)
    out, _ = recv.communicate(timeout=30)
    return [int(x) for x in out.split()]


def _bursts(seqs, n):
    """Lengths of the runs of consecutive missing sequence numbers."""
    got, runs, run = set(seqs), [], 0
    for i in range(n):
        if i in got:
            if run:
                runs.append(run)
            run = 0
        else:
            run += 1
    return runs + ([run] if run else [])


@pytest.mark.parametrize("model", ["random", "bursty"])
def test_loss(testbed, model):
    n = 5000
    tb = testbed(loss_pct=10, loss_model=model)
    _resolve_arp(tb)
    before = tb.link_stats()["client->server"]["dropped"]
    seqs = _udp_seqs(tb, n)
    loss = 1 - len(seqs) / n
    # Random: the binomial sd is 0.4 points, so +-3 points never flakes. Bursty losses are
    # correlated (bursts of ~4 frames): the sd grows to about 1.1 points; allow +-5.
    assert abs(loss - 0.10) < (0.03 if model == "random" else 0.05), loss
    assert tb.link_stats()["client->server"]["dropped"] - before == n - len(seqs)
    runs = _bursts(seqs, n)
    mean_burst = sum(runs) / len(runs)
    if model == "bursty":
        assert mean_burst > 1.5, mean_burst
    else:
        assert mean_burst < 1.5, mean_burst


def test_drop_matching_loses_exactly_the_frames_asked_for(testbed):
    tb = testbed(rate_mbit=100)     # any impairment: the link gets its wire
    _resolve_arp(tb)
    at = 14 + 20 + 8                # Ethernet, IPv4, UDP: the datagram's number
    tb.drop_matching("client->server", at, 7)
    assert set(range(50)) - set(_udp_seqs(tb, 50)) == {7}
    # A mask and a count: the first three numbers of 16-31 go, then nothing more.
    tb.drop_matching("client->server", at, 16, mask=0xFFFFFFF0, count=3)
    assert set(range(50)) - set(_udp_seqs(tb, 50)) == {16, 17, 18}
    stats = tb.link_stats()
    assert stats["client->server"]["targeted"] == 4
    assert stats["server->client"]["targeted"] == 0
    with pytest.raises(TestbedError, match="no direction"):
        tb.drop_matching("server->nowhere", at, 7)
    with pytest.raises(TestbedError, match="offset"):
        tb.drop_matching("client->server", 4096, 7)


def _wait_listening(tb, host, port):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = tb.exec(host, ["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                      text=True).stdout
        if out.strip():
            return
        time.sleep(0.02)  # polling interval
    raise AssertionError(f"nothing listens on {host}:{port}")


@pytest.mark.parametrize("reverse", [False, True])
def test_rate(testbed, reverse):
    tb = testbed(rate_mbit=50)
    tb.popen("server", ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    _wait_listening(tb, "server", 5201)
    argv = ["iperf3", "-c", tb.host("server").iface.ip, "-t", "2", "-J"]
    out = tb.exec("client", argv + (["-R"] if reverse else []), capture_output=True,
                  text=True, check=True).stdout
    mbit = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    # TCP goodput is ~96% of the L2 rate tbf enforces (headers).
    assert 50 * 0.85 < mbit < 50 * 1.15, mbit


@pytest.mark.parametrize("delay_ms", [5, 20])
def test_delay_accuracy(testbed, delay_ms):
    tb = testbed(delay_ms=delay_ms)
    dst = tb.host("server").iface.ip
    # The first echo also waits for ARP (itself delayed both ways): not part of the sample.
    assert _replies(tb.ping("client", dst, count=1))
    rtts = _replies(tb.ping("client", dst, count=40, interval=0.005))
    assert len(rtts) == 40
    # min and median rather than mean: on a shared 2-core machine one descheduled ping
    # would move the mean without saying anything about the wire.
    assert abs(min(rtts) - 2 * delay_ms) <= 1, rtts
    assert abs(statistics.median(rtts) - 2 * delay_ms) <= 1, rtts


def test_delay_changes_live(testbed):
    # The forwarder keeps running: only the delay of frames arriving after the change moves.
    tb = testbed(delay_ms=5)
    dst = tb.host("server").iface.ip
    assert _replies(tb.ping("client", dst, count=1))
    pid = tb._wire.forwarder.pid
    tb.set_delay(20)
    assert abs(min(_replies(tb.ping("client", dst, count=10))) - 40) <= 1
    tb.set_delay(2)
    assert abs(min(_replies(tb.ping("client", dst, count=10))) - 4) <= 1
    assert tb._wire.forwarder.pid == pid and tb._wire.forwarder.poll() is None
    assert tb.describe()["links"][0]["impair"]["delay_ms"] == 2
    # 21 echo requests and replies of 90 bytes on the wire each, and ARP besides.
    assert all(21 * 90 <= n <= 21 * 90 + 2 * 42 for n in tb.link_bytes().values())
    with pytest.raises(TestbedError, match="bad delay"):
        tb.set_delay(-1)


def test_set_delay_needs_a_delayed_link(testbed):
    tb = testbed(loss_pct=1)
    with pytest.raises(TestbedError, match="no delayed link"):
        tb.set_delay(10)
    with pytest.raises(TestbedError, match="no delayed link"):
        tb.link_bytes()


def test_chain_impairs_middle_server_link(testbed):
    tb = testbed(topology="chain", delay_ms=5)
    server, middle = tb.host("server").iface.ip, tb.host("middle").iface.ip
    for dst in (server, middle):
        assert _replies(tb.ping("client", dst, count=1))
    to_middle = min(_replies(tb.ping("client", middle, count=10)))
    to_server = min(_replies(tb.ping("client", server, count=10)))
    assert to_middle < 1 and abs(to_server - 10) <= 1
    assert set(tb.link_stats()) == {"middle->server", "server->middle"}


@pytest.mark.parametrize("impair", [{"rate_mbit": 500}, {"delay_ms": 1}])
def test_big_mtu_through_the_wire(testbed, impair):
    # Both wire paths (kernel redirect, forwarder) carry full 9000-byte frames.
    tb = testbed(mtu=9000, **impair)
    _resolve_arp(tb)
    assert _udp_seqs(tb, 20, size=9000 - 28) == list(range(20))


def test_reordering(testbed):
    n = 2000
    tb = testbed(reorder_pct=10)
    _resolve_arp(tb)
    seqs = _udp_seqs(tb, n)
    assert sorted(seqs) == list(range(n))  # reordered, none lost
    overtaken = sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b < a)
    # ~200 frames held back 2 ms while ~10 later ones pass each: many inversions.
    assert overtaken > 50, overtaken
    assert tb.link_stats()["client->server"]["reordered"] >= overtaken


def _cli(*argv):
    from vtlstack.cli import main

    return main(["testbed", *argv])


def test_cli_up_list_down(capsys):
    prefix = _unique("vtlcli")
    try:
        assert _cli("up", "--name", "c1", "--prefix", prefix, "--topology", "chain",
                    "--delay", "2", "--loss", "1") == 0
        described = json.loads(capsys.readouterr().out)
        assert described["topology"] == "chain"
        assert described["links"][1]["impair"]["delay_ms"] == 2
        assert _cli("list", "--json", "--prefix", prefix) == 0
        assert set(json.loads(capsys.readouterr().out)) == {"c1"}
        # The testbed outlives the command: its wire forwarder still runs.
        wire = f"{prefix}-c1-wire"
        assert subprocess.run(["ip", "netns", "pids", wire], capture_output=True,
                              text=True).stdout.split()
        assert _cli("up", "--name", "c2", "--prefix", prefix, "--json") == 0
        line = capsys.readouterr().out
        assert line.count("\n") == 1 and json.loads(line)["name"] == "c2"
        assert _cli("up", "--name", "c1", "--prefix", prefix) == 1
        assert "already exists" in capsys.readouterr().err
        assert _cli("down", "--name", "c1", "--prefix", prefix) == 0
        assert f"{prefix}-c1-" not in _netns()
        assert _cli("down", "--name", "c1", "--prefix", prefix) == 1
        assert "no testbed" in capsys.readouterr().err
    finally:
        down_all(prefix)  # the API, not the CLI: this must work even if the CLI is broken


@pytest.mark.parametrize("argv, message", [
    (["--loss", "200"], "bad loss"),
    (["--mtu", "20"], "bad MTU"),
    (["--name", "no/slash"], "bad testbed name"),
])
def test_cli_bad_values(capsys, argv, message):
    prefix = _unique("vtlcli")
    assert _cli("up", "--prefix", prefix, *argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert f"{prefix}-" not in _netns()


def test_cli_needs_root(capsys, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert _cli("up", "--prefix", "vtlcli") == 1
    assert "run it as root" in capsys.readouterr().err


# A process that brings a testbed up (with a forwarder and a process of its own in it),
# says its name, and waits to be killed.
_HOLDER = r"""
import sys, time
from vtlstack.testbed import Testbed
tb = Testbed.up(prefix=sys.argv[1], delay_ms=1)
tb.popen("server", ["sleep", "60"])
print(tb.name, flush=True)
time.sleep(60)
"""


def _pids_with(text):
    """Pids whose command line contains text."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(pid)
        except OSError:  # exited meanwhile
            pass
    return pids


def _running(pid):
    """True if pid exists and is not a zombie (exited, waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_down_all_after_sigkill(capsys):
    prefix = _unique("vtlkill")
    # -P: the installed package, not the source tree of the working directory.
    holder = subprocess.Popen([sys.executable, "-P", "-c", _HOLDER, prefix],
                              stdout=subprocess.PIPE, text=True)
    try:
        name = holder.stdout.readline().strip()
        assert name, "the holder process did not bring its testbed up"
        namespaces = Testbed.list(prefix)[name]
        assert len(namespaces) == 3  # client, server, wire
        pids = [p for ns in namespaces for p in subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
        assert len(pids) >= 2  # the forwarder and sleep
        holder.kill()
        holder.wait(timeout=10)
        assert Testbed.list(prefix)[name] == namespaces  # the crash left everything behind
        assert _cli("down", "--all", "--prefix", prefix) == 0
        assert Testbed.list(prefix) == {}
        assert not [p for p in pids if _running(p)]
        assert not os.path.exists(f"/dev/shm/{prefix}-{name}-wire.stats")
    finally:
        holder.kill()
        holder.wait(timeout=10)
        down_all(prefix)  # whatever failed above, leave nothing
