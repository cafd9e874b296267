"""The SPSC handoff channels: ring arithmetic, wraparound, wakeups, and real concurrency."""

import threading

import pytest
from vtlstack._handoff import Channel


def test_size_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        Channel(1000)


def test_fifo_and_full_ring():
    ch = Channel(8)
    assert ch.pop() is None
    for i in range(8):
        assert ch.push(kind=2, addr=i, length=i * 10, ip=0x0A000001, port=9, sock=3, lport=7)
    assert not ch.push(kind=2, addr=99), "a full ring must refuse, not overwrite"
    assert len(ch) == 8
    for i in range(8):
        assert ch.pop() == (2, i, i * 10, 0x0A000001, 9, 3, 7, 0)
    assert ch.pop() is None and len(ch) == 0


def test_wraparound_many_times():
    ch = Channel(4)
    for i in range(10_000):
        assert ch.push(kind=1, addr=i, arg=i * 3)
        if i % 3 == 2:
            assert ch.push(kind=1, addr=-1 & 0xFFFFFFFFFFFFFFFF)
            assert ch.pop()[1] == i
            assert ch.pop()[1] == 0xFFFFFFFFFFFFFFFF
        else:
            assert ch.pop() == (1, i, 0, 0, 0, 0, 0, i * 3)
    assert len(ch) == 0


def test_wait_wakes_on_push_from_another_thread():
    ch = Channel(16)
    assert not ch.wait_ready(0.01), "an empty channel times out"
    pusher = threading.Thread(target=ch.push, kwargs={"kind": 5, "addr": 42})
    ready = {}

    def waiter():
        ready["v"] = ch.wait_ready(10.0)

    t = threading.Thread(target=waiter)
    t.start()
    pusher.start()
    t.join(15)
    pusher.join(15)
    assert ready["v"] is True
    assert ch.pop()[:2] == (5, 42)


def test_concurrent_producer_consumer_without_gil():
    # Both loops run with the GIL released, so this exercises the memory ordering for real.
    n = 2_000_000
    ch = Channel(256)
    got = {}
    consumer = threading.Thread(target=lambda: got.setdefault("n", ch.consume_seq(n)))
    consumer.start()
    produced = ch.produce_seq(n)
    consumer.join(60)
    assert produced == n
    assert got["n"] == n, "every message arrives, in order, exactly once"
    assert len(ch) == 0
