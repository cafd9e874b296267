"""The net monitor and its rules (no root)."""

import heapq

import pytest

from vtlstack.vtl.monitor import PAPER_RULE, Monitor, Rule


def test_rules_parse_and_print():
    assert str(PAPER_RULE) == "rtt_ms>=300:gbn->pr"
    r = Rule.parse(" loss > 0.05 : sr -> pr ")
    assert (r.metric, r.op, r.value, r.src, r.dst) == ("loss", ">", 0.05, "sr", "pr")
    for bad in ("rtt>=3:gbn->pr", "rtt_ms=3:gbn->pr", "rtt_ms>=3:gbn", "rtt_ms>=x:a->b"):
        with pytest.raises(ValueError, match="METRIC OP VALUE"):
            Rule.parse(bad)


def test_rtt_follows_karn_and_rfc6298_smoothing():
    m = Monitor([PAPER_RULE], min_samples=1)
    m.on_send(0, False, 0.0)
    m.on_send(1, False, 0.0)
    m.on_send(1, True, 0.5)          # seq 1 resent: its ACK gives no sample
    m.on_acked(1, 0, 1400, 0.1)
    assert m.srtt == pytest.approx(0.1) and m.samples == 1
    m.on_acked(2, 1, 2800, 0.9)
    assert m.samples == 1
    m.on_send(2, False, 1.0)
    m.on_acked(3, 2, 4200, 1.9)         # 0.9 s sample: srtt moves by 1/8 of the difference
    assert m.srtt == pytest.approx(0.1 + (0.9 - 0.1) / 8)
    assert m.metrics()["loss"] == pytest.approx(1 / 3)


def test_decide_applies_the_rule_of_the_current_graft_only():
    m = Monitor([PAPER_RULE, Rule.parse("loss>=0.5:sr->pr")], min_samples=2)
    for seq, rtt in enumerate((0.35, 0.35)):
        m.on_send(seq, False, 0.0)
        assert m.decide("gbn") is None        # not enough samples yet
        m.on_acked(seq + 1, seq, 0, rtt)
    assert m.decide("gbn") == PAPER_RULE
    assert m.decide("sr") is None             # loss is 0
    assert m.decide("pr") is None


def test_inflight_limit_follows_the_path_not_our_own_queue():
    m = Monitor([], min_samples=1)
    rate, clock, seq = 1000.0, 0.0, 0

    def run(rtt, inflight, seconds):
        # One packet a millisecond, each answered rtt later, `inflight` out at the time.
        nonlocal clock, seq
        for _ in range(int(seconds * rate)):
            m.on_send(seq, False, clock, inflight)
            m.on_acked(seq + 1, seq, 0, clock + rtt)
            m.on_delivered(seq + 1, clock + rtt)
            seq, clock = seq + 1, clock + 1 / rate

    run(0.010, 10, 1.0)                 # a 10 ms path, no queue
    assert m.base_rtt() == pytest.approx(0.010)
    assert m.inflight_limit() == pytest.approx(20, abs=1)   # 1000/s x (10 ms + 10 ms)
    run(0.030, 30, 1.5)                 # a queue of our own: 30 ms RTT with 30 out
    assert m.base_rtt() == pytest.approx(0.010)
    run(0.300, 30, 1.5)                 # the path itself now takes 300 ms
    assert m.base_rtt() == pytest.approx(0.270)
    assert m.inflight_limit() == pytest.approx(rate * (0.270 + 0.020), abs=1)
    run(0.300, 300, 1.5)                # the sender fills that path: the estimate holds
    assert m.base_rtt() == pytest.approx(0.270)
    run(0.050, 50, 0.1)                 # and drops at once when the path is shorter again
    assert m.base_rtt() == pytest.approx(0.050)


def _fill(m, rate, base, seconds, dt=0.001):
    """A sender that keeps what the monitor allows in flight, paced as it says, through a
    bottleneck of `rate` packets/s on a path of `base` s (simulated time). Returns the
    packets delivered by each whole second and the most ever in flight."""
    clock, seq, delivered, free_at, tokens, acks = 0.0, 0, 0, 0.0, 0.0, []
    by_second, most = [], 0
    for step in range(int(seconds / dt)):
        clock = step * dt
        while acks and acks[0][0] <= clock:
            at, s = heapq.heappop(acks)
            delivered += 1
            m.on_acked(s + 1, s, 0, at)
            m.on_delivered(delivered, at)
        room = m.inflight_limit() - (seq - delivered)
        pace = m.pacing_rate()
        if pace:
            tokens = min(max(4, pace * 0.002), tokens + pace * dt)
            room = min(room, int(tokens))
            tokens -= max(0, room)
        for _ in range(max(0, room)):
            free_at = max(clock, free_at) + 1 / rate
            heapq.heappush(acks, (free_at + base, seq))
            m.on_send(seq, False, clock, seq - delivered)
            seq += 1
        most = max(most, seq - delivered)
        if step % int(1 / dt) == int(1 / dt) - 1:
            by_second.append(delivered)
    return by_second, most


def test_startup_fills_a_long_path_in_a_few_round_trips():
    rate, base = 1000.0, 0.3        # 300 packets in flight fill it; 32 go out at first
    m = Monitor([])
    by_second, most = _fill(m, rate, base, 8.0)
    # At 10 % more per round trip the third second would carry about 180 packets.
    assert by_second[2] - by_second[1] >= 0.9 * rate
    assert not m.startup            # the rate stopped growing: startup is over
    # and the queue it built has drained: the limit is the path's again
    assert m.inflight_limit() == pytest.approx(rate * (base + 0.020), rel=0.05)
    assert m.srtt < base + 0.05
    assert most <= 2.2 * rate * base


def test_startup_on_a_short_path_stays_within_a_short_buffer():
    rate, base = 1371.0, 0.010      # the bench's 16 Mbit/s, 10 ms path
    m = Monitor([])
    by_second, most = _fill(m, rate, base, 2.0)
    assert by_second[1] - by_second[0] >= 0.95 * rate
    assert not m.startup
    assert most <= rate * (base + 0.050)   # the testbed's tbf holds 50 ms
