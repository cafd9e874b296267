"""Files over VTL between testbed hosts, with `vtl send` / `vtl recv`: every graft keeps
its promise (SHA-256, or PR within its loss budget), negotiation picks, refuses and falls
back, and nothing is left attached afterwards."""

import hashlib
import json
import os
import select
import subprocess
import time

import pytest
from vtlstack.apps._common import vtl_argv

from vtlstack.vtl.wire import MAX_PAYLOAD

pytestmark = pytest.mark.root

SIZE = 2_000_000


def _line(proc, timeout):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from {proc.args} in {timeout} s"
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return json.loads(line)


def _nothing_attached(tb):
    for role in ("client", "server"):
        ifname = tb.host(role).iface.name
        link = tb.exec(role, ["ip", "-o", "link", "show", ifname], capture_output=True,
                       text=True).stdout
        assert "xdp" not in link, link
        tc = tb.exec(role, ["tc", "filter", "show", "dev", ifname, "egress"],
                     capture_output=True, text=True).stdout
        assert tc.strip() == "", tc


def transfer(tb, tmp_path, send_args=(), recv_args=(), size=SIZE, expect_rc=0):
    src = tmp_path / "file.bin"
    src.write_bytes(os.urandom(size))
    outdir = tmp_path / "out"
    outdir.mkdir(exist_ok=True)
    cli, srv = tb.host("client"), tb.host("server")
    recv = tb.popen("server", vtl_argv("recv", "--iface", srv.iface.name, "-o", str(outdir),
                                       "--timeout", "30", *recv_args),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _line(recv, 20)["event"] == "ready"
        sent = tb.exec("client", vtl_argv("send", "--iface", cli.iface.name, "--to",
                                          srv.iface.ip, *send_args, str(src)),
                       capture_output=True, text=True, timeout=90)
        assert sent.returncode == expect_rc, sent.stderr
        if expect_rc:
            return None, None, sent.stderr
        sent_res = json.loads(sent.stdout)
        got = _line(recv, 30)
        assert recv.wait(timeout=15) == 0
    finally:
        if recv.poll() is None:
            recv.terminate()   # SIGTERM: the receiver detaches its KTFs on the way out
            recv.wait(timeout=10)
    _nothing_attached(tb)
    assert got["sha256"] == hashlib.sha256((outdir / "file.bin").read_bytes()).hexdigest()
    return sent_res, got, src.read_bytes()


@pytest.mark.parametrize("graft", ["sr", "gbn"])
def test_reliable_grafts_deliver_intact_over_loss(testbed, tmp_path, graft):
    tb = testbed(topology="pair", loss_pct=3, delay_ms=5)
    sent, got, data = transfer(tb, tmp_path, ["--graft", graft])
    assert sent["graft"] == got["graft"] == graft
    assert got["sha256"] == sent["sha256"] == hashlib.sha256(data).hexdigest()
    assert got["lost_packets"] == 0
    # Losses were repaired: found by the kernel KTFs, resent by the broker.
    assert sent["stats"]["retransmitted"] > 0
    assert sent["counters"]["retx_req"] > 0 or sent["stats"]["timeouts"] > 0
    assert got["counters"]["tx_ack"] > 0 and got["counters"]["rx_data"] >= SIZE // MAX_PAYLOAD
    if graft == "sr":
        assert got["counters"]["tx_nack"] > 0
    else:
        assert got["counters"]["drop_order"] > 0
    # Packets waited for their ACK in UMEM frames, at most a window of them (the store
    # checked at close that every frame went back).
    window = 1024 if graft == "sr" else 32
    assert 0 < sent["stats"]["frames_held_peak"] <= min(window, SIZE // MAX_PAYLOAD)


def _check_partial(data, got_bytes, lost, budget):
    n = -(-len(data) // MAX_PAYLOAD)
    bad = [i for i in range(n)
           if got_bytes[i * MAX_PAYLOAD:(i + 1) * MAX_PAYLOAD]
           != data[i * MAX_PAYLOAD:(i + 1) * MAX_PAYLOAD]]
    assert len(bad) == lost                     # what arrived is intact, holes are counted
    assert lost <= budget * n
    return n, bad


@pytest.mark.parametrize("graft", ["sr", "pr"])
def test_a_lost_last_packet_is_repaired_by_a_tail_loss_probe(testbed, tmp_path, graft):
    # Nothing follows the last DATA packet to reveal its loss: the receiver cannot NACK
    # it, and no later ACK makes it look overdue. A probe after 1.5 SRTT resends it, well
    # before the retransmission timeout would.
    size = 300 * MAX_PAYLOAD - 100
    tb = testbed(topology="pair", delay_ms=5)
    seq_at = 14 + 20 + 8            # Ethernet, IPv4, and the VTL header's seq (vtl.h)
    tb.drop_matching("client->server", seq_at, size // MAX_PAYLOAD)   # its first copy only
    sent, got, data = transfer(tb, tmp_path, ["--graft", graft], size=size)
    assert tb.link_stats()["client->server"]["targeted"] == 1
    assert got["sha256"] == hashlib.sha256(data).hexdigest() and got["lost_packets"] == 0
    assert sent["stats"]["tail_probes"] >= 1
    assert sent["stats"]["timeouts"] == 0
    assert sent["stats"]["retransmitted"] >= 1


def test_partial_reliability_stays_within_budget(testbed, tmp_path):
    # 15 % loss is beyond PR's 10 % budget: it must retransmit some holes, not all.
    tb = testbed(topology="pair", loss_pct=15, delay_ms=2)
    sent, got, data = transfer(tb, tmp_path, ["--max-loss", "0.1"])
    assert sent["graft"] == got["graft"] == "pr"      # services chose PR, not a flag
    out = (tmp_path / "out" / "file.bin").read_bytes()
    n, bad = _check_partial(data, out, got["lost_packets"], 0.1)
    # The budget holds in every window-sized block (64 packets: at most 6 given up).
    per_block = [sum(1 for i in bad if i // 64 == b) for b in range(n // 64 + 1)]
    assert max(per_block) <= 6, per_block
    assert got["counters"]["pr_skipped"] == got["lost_packets"] > 0.05 * n
    assert got["counters"]["tx_nack"] > 0 and sent["stats"]["retransmitted"] > 0


def test_canonical_is_best_effort_with_integrity(testbed, tmp_path):
    tb = testbed(topology="pair", loss_pct=2)
    sent, got, data = transfer(tb, tmp_path, ["--graft", "canonical"])
    assert got["graft"] == "canonical"
    out = (tmp_path / "out" / "file.bin").read_bytes()
    _check_partial(data, out, got["lost_packets"], 0.2)
    assert got["counters"]["tx_ack"] == 0          # no feedback in best effort
    assert sent["stats"]["frames_held_peak"] == 1  # so nothing is kept after it leaves


def test_services_negotiate_selective_repeat(testbed, tmp_path):
    tb = testbed(topology="pair")
    sent, got, data = transfer(tb, tmp_path, ["--reliable", "--ordered"])
    assert sent["graft"] == got["graft"] == "sr"
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    assert sent["negotiation_ms"] < 100 and sent["stats"]["close_acked"] == 1


def test_refusal_falls_back_to_tcp(testbed, tmp_path):
    tb = testbed(topology="pair")
    sent, got, data = transfer(tb, tmp_path, ["--reliable"], ["--grafts", "canonical"])
    assert sent["graft"] == got["graft"] == "tcp"
    assert "refused" in sent["fallback_reason"] and "sr: not in this pool" in \
        sent["fallback_reason"]
    assert got["sha256"] == hashlib.sha256(data).hexdigest()


def test_silent_peer_falls_back_to_tcp(testbed, tmp_path):
    tb = testbed(topology="pair", delay_ms=5)
    sent, got, data = transfer(tb, tmp_path, ["--reliable", "--nego-tries", "2"], ["--no-vtl"])
    assert sent["graft"] == got["graft"] == "tcp"
    assert "did not answer 2 offers" in sent["fallback_reason"]
    assert got["sha256"] == hashlib.sha256(data).hexdigest()


def test_refusal_without_fallback_is_a_clear_error(testbed, tmp_path):
    tb = testbed(topology="pair")
    _, _, err = transfer(tb, tmp_path, ["--graft", "gbn", "--no-fallback"],
                         ["--grafts", "sr", "--no-tcp", "--timeout", "5"], expect_rc=1)
    assert "refused" in err and "gbn: not in this pool" in err
    _nothing_attached(tb)


def test_graft_switch_mid_transfer_loses_nothing(testbed, tmp_path):
    # A rule that holds on any path, so the switch happens early in a short transfer.
    tb = testbed(topology="pair", delay_ms=5, loss_pct=1)
    sent, got, data = transfer(tb, tmp_path, ["--graft", "gbn", "--switch",
                                              "rtt_ms>=1:gbn->sr"])
    assert sent["grafts"] == got["grafts"] == ["gbn", "sr"]
    assert sent["stats"]["switches"] == 1 and sent["stats"]["switch_rule"] == \
        "rtt_ms>=1:gbn->sr"
    assert got["sha256"] == sent["sha256"] == hashlib.sha256(data).hexdigest()
    assert got["lost_packets"] == 0
    # No packet was handled by the wrong graft (the switch waited for an empty pipe).
    assert got["counters"]["drop_graft"] == sent["counters"]["drop_graft"] == 0


def test_a_vanished_sender_times_out_and_its_state_goes(testbed, tmp_path):
    tb = testbed(topology="pair", rate_mbit=2)
    cli, srv = tb.host("client"), tb.host("server")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(SIZE))              # 8 s at 2 Mbit/s: it will not finish
    recv = tb.popen("server", vtl_argv("recv", "--iface", srv.iface.name, "--timeout", "30",
                                       "--idle-timeout", "1"),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _line(recv, 20)["event"] == "ready"
    send = tb.popen("client", vtl_argv("send", "--iface", cli.iface.name, "--to",
                                       srv.iface.ip, "--graft", "sr", str(src)),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Bounded poll: wait until data flows, then the sender vanishes without a word.
    deadline = time.monotonic() + 20
    while _rx_bytes(tb, "server", srv.iface.name) < 200_000:
        assert time.monotonic() < deadline, "no data reached the receiver"
        time.sleep(0.05)
    send.kill()
    send.wait(timeout=10)
    assert recv.wait(timeout=15) == 1
    assert "idle for 1 s: state removed" in recv.stderr.read()
    # Both ends are clean: the receiver detached on its way out, and the killed
    # sender's KTFs went with its bpf_links.
    _nothing_attached(tb)


def _rx_bytes(tb, host, ifname):
    out = tb.exec(host, ["cat", f"/sys/class/net/{ifname}/statistics/rx_bytes"],
                  capture_output=True, text=True).stdout
    return int(out or 0)


# A graft source that is not C, and one that compiles but reads a packet without a bounds
# check (the verifier refuses it).
_BROKEN = '#include "vtl.h"\nthis is not C;\n'
_UNSAFE = """#include "vtl.h"
SEC("xdp") int vtl_sr_in(struct xdp_md *ctx)
{
	return ((char *)(long)ctx->data)[100];
}
SEC("tc") int vtl_sr_out(struct __sk_buff *skb) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.parametrize("source, reason", [(_BROKEN, "does not compile"),
                                            (_UNSAFE, "refused by the kernel")])
def test_a_graft_that_cannot_be_deployed_is_refused_with_the_reason(testbed, tmp_path,
                                                                   monkeypatch, source,
                                                                   reason):
    from vtlstack._resources import data_dir

    monkeypatch.setenv("VTL_GRAFT_CACHE", str(tmp_path / "cache"))   # not the user's
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "canonical.toml").write_text((data_dir("grafts") / "canonical.toml").read_text())
    (pool / "sr.toml").write_text((data_dir("grafts") / "sr.toml").read_text()
                                  .replace('"vtl_sr.bpf.c"', '"bad.bpf.c"')
                                  .replace('object = "vtl_sr"', 'object = "vtl_none"'))
    (pool / "bad.bpf.c").write_text(source)
    tb = testbed(topology="pair")
    _, _, err = transfer(tb, tmp_path, ["--graft", "sr", "--no-fallback"],
                         ["--pool", str(pool), "--no-tcp", "--timeout", "5"], expect_rc=1)
    assert "refused" in err and reason in err, err


def test_udp_encapsulation(testbed, tmp_path):
    tb = testbed(topology="pair", loss_pct=3, delay_ms=2)
    sent, got, data = transfer(tb, tmp_path, ["--reliable", "--udp"])
    assert sent["encap"] == got["encap"] == "udp"
    assert sent["graft"] == got["graft"] == "sr"
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    # The KTFs did the work in UDP too: kernel NACKs, window moved by kernel ACKs.
    assert got["counters"]["tx_nack"] > 0 and sent["counters"]["rx_ack"] > 0


def test_concurrent_sessions_share_one_receiver(testbed, tmp_path):
    # chain: the client's session crosses the middle host, which runs VTL itself (its own
    # session to the server): its KTFs pass the client's packets through (transit).
    # The middle starts first and sends more, over a 50 Mbit/s link (0.6 s), so that the
    # client's session starts while the middle's runs.
    tb = testbed(topology="chain", rate_mbit=50)
    cli, mid, srv = tb.host("client"), tb.host("middle"), tb.host("server")
    files = {}
    for name, size in (("a.bin", SIZE // 2), ("b.bin", 2 * SIZE)):
        files[name] = tmp_path / name
        files[name].write_bytes(os.urandom(size))
    out = tmp_path / "out"
    out.mkdir()
    recv = tb.popen("server", vtl_argv("recv", "--iface", srv.iface.name, "-o", str(out),
                                       "--count", "2", "--timeout", "30"),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _line(recv, 20)["event"] == "ready"
        senders = []
        for host, ifname, name in (("middle", mid.ifaces[1].name, "b.bin"),
                                   ("client", cli.iface.name, "a.bin")):
            senders.append(tb.popen(host, vtl_argv("send", "--iface", ifname, "--to",
                                                   srv.iface.ip, "--graft", "sr",
                                                   str(files[name])),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True))
            deadline = time.monotonic() + 20       # bounded poll: its KTFs are attached
            while "xdp" not in tb.exec(host, ["ip", "-o", "link", "show", ifname],
                                       capture_output=True, text=True).stdout:
                assert senders[-1].poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
        sent = []
        for proc in senders:
            stdout, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, stderr
            sent.append(json.loads(stdout))
        got = [_line(recv, 30), _line(recv, 30)]
        assert recv.wait(timeout=15) == 0
    finally:
        if recv.poll() is None:
            recv.terminate()
            recv.wait(timeout=10)
    assert {g["path"].rsplit("/", 1)[1] for g in got} == {"a.bin", "b.bin"}
    for g in got:
        data = files[g["path"].rsplit("/", 1)[1]].read_bytes()
        assert g["sha256"] == hashlib.sha256(data).hexdigest() and g["graft"] == "sr"
    # The two sessions overlapped on the receiver, sharing its one loaded SR graft.
    assert max(g["stats"].get("peak_sessions", 1) for g in got) == 2
    # The middle host's KTFs let the client's session through untouched.
    assert sent[0]["counters"]["transit"] > 0 and sent[0]["counters"]["drop_session"] == 0


def test_the_papers_rule_moves_gbn_to_pr_at_a_long_rtt(testbed, tmp_path):
    tb = testbed(topology="pair", delay_ms=160)      # RTT 320 ms
    sent, got, data = transfer(tb, tmp_path, ["--graft", "gbn", "--monitor"], size=200_000)
    assert sent["grafts"] == got["grafts"] == ["gbn", "pr"]
    assert sent["stats"]["switch_rule"] == "rtt_ms>=300:gbn->pr"
    assert got["sha256"] == hashlib.sha256(data).hexdigest()   # a clean link: nothing lost
