"""The testbed: namespaces, veths, routing, offloads, impairment and crash clean-up."""

import json
import statistics
import subprocess
import time

import pytest

from vtlstack.testbed import Testbed, TestbedExistsError

pytestmark = pytest.mark.root


def _netns() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _replies(rtts):
    return [r for r in rtts if r is not None]


def test_pair_up_down_leaves_nothing():
    tb = Testbed.up(prefix="vtltest")
    namespaces = [h.netns for h in tb.hosts.values()]
    assert all(ns in _netns() for ns in namespaces)
    tb.down()
    tb.down()  # idempotent
    assert not any(ns in _netns() for ns in namespaces)
    assert tb.name not in Testbed.list("vtltest")


def test_describe_json(testbed):
    tb = testbed(name="desc")
    d = json.loads(json.dumps(tb.describe()))
    assert d["name"] == "desc" and d["topology"] == "pair"
    assert set(d["hosts"]) == {"client", "server"}
    client = d["hosts"]["client"]
    assert client["netns"] == "vtltest-desc-client"
    (iface,) = client["interfaces"]
    assert set(iface) >= {"name", "mac", "ip", "prefixlen"}
    server_iface = d["hosts"]["server"]["interfaces"][0]
    assert iface["peer_ip"] == server_iface["ip"] and iface["peer_mac"] == server_iface["mac"]
    assert len(d["links"]) == 1 and d["links"][0]["impair"] == {}


def test_name_collision_is_an_error(testbed):
    testbed(name="dup")
    with pytest.raises(TestbedExistsError, match="already exists"):
        Testbed.up(name="dup", prefix="vtltest")


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


def test_offloads_off_by_default(testbed):
    tb = testbed()
    for host in tb.hosts.values():
        out = tb.exec(host.name, ["ethtool", "-k", host.iface.name],
                      capture_output=True, text=True, check=True).stdout
        assert "rx-checksumming: off" in out and "tx-checksumming: off" in out
        assert "generic-receive-offload: off" in out


def test_offloads_on_when_asked(testbed):
    tb = testbed(offloads=True)
    out = tb.exec("client", ["ethtool", "-k", tb.host("client").iface.name],
                  capture_output=True, text=True, check=True).stdout
    assert "tx-checksumming: on" in out


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
s.bind(("0.0.0.0", 9000))
print("ready", flush=True)
got, deadline = [], time.monotonic() + 20
s.settimeout(5)
while time.monotonic() < deadline:
    try:
        got.append(struct.unpack("!I", s.recv(2048)[:4])[0])
    except TimeoutError:
        break
    s.settimeout(0.5)
print(" ".join(map(str, got)))
"""

# A paced UDP sender (5000 datagrams/s, below what a veth with XDP queues without drops).
_UDP_SEND = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
for i in range(n):
    while time.perf_counter() < t0 + i / 5000:
        pass
    s.sendto(struct.pack("!I", i) + bytes(60), (dst, 9000))
"""


def _udp_seqs(tb, n):
    """Send n numbered datagrams client -> server; the sequence numbers that arrived."""
    recv = tb.popen("server", ["python3", "-c", _UDP_RECV], stdout=subprocess.PIPE, text=True)
    assert recv.stdout.readline().strip() == "ready"
    tb.exec("client", ["python3", "-c", _UDP_SEND, tb.host("server").iface.ip, str(n)],
            check=True)
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
    n = 2000
    tb = testbed(loss_pct=10, loss_model=model)
    seqs = _udp_seqs(tb, n)
    loss = 1 - len(seqs) / n
    # Random: binomial sd is 0.7 points, so +-3 points never flakes. Bursty losses are
    # correlated (bursts of ~4), so its sd is about twice that: allow +-5 points.
    assert abs(loss - 0.10) < (0.03 if model == "random" else 0.05), loss
    stats = tb.link_stats()["client->server"]
    assert stats["dropped"] == n - len(seqs)
    runs = _bursts(seqs, n)
    mean_burst = sum(runs) / len(runs)
    if model == "bursty":
        assert mean_burst > 1.5, mean_burst
    else:
        assert mean_burst < 1.5, mean_burst


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


def test_chain_impairs_middle_server_link(testbed):
    tb = testbed(topology="chain", delay_ms=5)
    server, middle = tb.host("server").iface.ip, tb.host("middle").iface.ip
    for dst in (server, middle):
        assert _replies(tb.ping("client", dst, count=1))
    to_middle = min(_replies(tb.ping("client", middle, count=10)))
    to_server = min(_replies(tb.ping("client", server, count=10)))
    assert to_middle < 1 and abs(to_server - 10) <= 1
    assert set(tb.link_stats()) == {"middle->server", "server->middle"}


def test_reordering(testbed):
    n = 2000
    tb = testbed(reorder_pct=10)
    seqs = _udp_seqs(tb, n)
    assert sorted(seqs) == list(range(n))  # reordered, none lost
    overtaken = sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b < a)
    # ~200 frames held back 2 ms while ~10 later ones pass each: many inversions.
    assert overtaken > 50, overtaken
    assert tb.link_stats()["client->server"]["reordered"] >= overtaken
