"""FramePool accounting without a socket: every transition the port makes, driven by hand."""

import pytest

from vtlstack._port import FramePool
from vtlstack.errors import VtlError

STATES = ("free", "in_fill", "in_rx_processing", "in_tx", "held")


def total_ok(pool):
    s = pool.stats()
    assert s["total"] == sum(s[k] for k in STATES)
    pool.check_frames()
    return s


def test_fresh_pool_is_all_free():
    pool = FramePool(16)
    s = total_ok(pool)
    assert s["free"] == 16 and s["total"] == 16
    pool.check_frames(expect_idle=True)


def test_alloc_until_empty_then_none():
    pool = FramePool(4)
    addrs = [pool.alloc() for _ in range(4)]
    assert sorted(addrs) == [0, 2048, 4096, 6144]
    assert pool.alloc() is None
    assert total_ok(pool)["held"] == 4
    for a in addrs:
        pool.free(a)
    assert total_ok(pool)["free"] == 4


def test_ref_unref_keeps_frame_until_last_holder():
    pool = FramePool(4)
    a = pool.alloc()
    assert pool.incref(a) == 2
    assert pool.decref(a) == 1
    assert pool.state_of(a) == "held"
    assert pool.decref(a) == 0
    assert pool.state_of(a) == "free"
    total_ok(pool)


def test_double_free_is_detected_and_counted():
    pool = FramePool(4)
    a = pool.alloc()
    pool.free(a)
    with pytest.raises(VtlError, match="double free"):
        pool.free(a)
    with pytest.raises(VtlError):
        pool.incref(a)
    assert pool.stats()["bad_ops"] == 2
    total_ok(pool)  # the bad calls changed nothing


def test_unknown_address_is_rejected():
    pool = FramePool(4)
    with pytest.raises(VtlError):
        pool.free(4 * 2048)
    with pytest.raises(ValueError):
        pool.index_of(4 * 2048)


def test_descriptor_addresses_name_their_frame():
    pool = FramePool(8, frame_size=4096)
    # RX descriptors carry base + headroom offsets; any offset inside names the frame.
    assert pool.index_of(3 * 4096 + 256) == 3
    assert pool.base_of(3 * 4096 + 4095) == 3 * 4096
    a = pool.alloc()
    pool.write(a + 256, b"abc")
    assert pool.read(a + 256, 3) == b"abc"
    with pytest.raises(ValueError):
        pool.write(a + 4094, b"abc")  # would cross into the next frame
    assert pool.decref(a + 256) == 0  # unref through an offset address


def test_fill_rx_tx_complete_cycle():
    pool = FramePool(8)
    filled = pool._fill(5)
    assert len(filled) == 5
    assert total_ok(pool)["in_fill"] == 5
    pool._rx(filled[0] + 256)  # the kernel returns base + XDP_PACKET_HEADROOM
    assert pool.refcount(filled[0]) == 1
    pool._tx(filled[0] + 256)
    s = total_ok(pool)
    assert (s["in_fill"], s["in_tx"], s["held"]) == (4, 1, 0)
    pool._complete(filled[0] + 256)
    assert total_ok(pool)["free"] == 4
    with pytest.raises(VtlError):
        pool._complete(filled[0])  # completion of a frame not on the TX ring
    with pytest.raises(VtlError):
        pool._rx(filled[0])  # RX of a frame not on the fill ring


def test_frame_sent_while_held_elsewhere_stays_held_after_completion():
    pool = FramePool(4)
    a = pool.alloc()
    pool.incref(a)  # e.g. a retransmission queue keeps it
    pool._tx(a)  # the TX ring takes the sender's reference
    s = total_ok(pool)
    assert (s["in_tx"], s["held"]) == (1, 0)
    pool._complete(a)
    assert pool.state_of(a) == "held" and pool.refcount(a) == 1
    pool.decref(a)
    total_ok(pool)
    pool.check_frames(expect_idle=True)


def test_cannot_send_a_frame_twice_or_a_free_one():
    pool = FramePool(4)
    a = pool.alloc()
    pool._tx(a)
    with pytest.raises(VtlError):
        pool._tx(a)
    with pytest.raises(VtlError):
        pool._tx(pool.base_of(2048))  # never allocated
    total_ok(pool)


def test_reclaim_returns_kernel_frames_and_leaks_stay_visible():
    pool = FramePool(8)
    pool._fill(3)
    a = pool.alloc()
    pool._tx(a)
    leaked = pool.alloc()
    pool._reclaim()  # the socket is closed: fill and TX frames come back
    s = total_ok(pool)
    assert (s["in_fill"], s["in_tx"], s["held"], s["free"]) == (0, 0, 1, 7)
    with pytest.raises(VtlError, match="leaked"):
        pool.check_frames(expect_idle=True)
    pool.free(leaked)
    pool.check_frames(expect_idle=True)


def test_refcount_saturates_instead_of_wrapping():
    pool = FramePool(1)
    a = pool.alloc()
    for _ in range(0xFFFE):
        pool.incref(a)
    with pytest.raises(VtlError):
        pool.incref(a)
    assert pool.refcount(a) == 0xFFFF


@pytest.mark.parametrize("kw", [
    {"frame_count": 0}, {"frame_size": 1000}, {"frame_size": 3000},
    {"frame_size": 2048, "headroom": 2000},
])
def test_bad_geometry_is_refused(kw):
    with pytest.raises(ValueError):
        FramePool(**kw)


def test_without_root_the_port_and_steering_say_so(monkeypatch):
    import vtlstack.errors
    from vtlstack._port import XskPort
    from vtlstack.errors import PrivilegeError
    from vtlstack.xdp import Steering

    monkeypatch.setattr(vtlstack.errors.os, "geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError, match="root"):
        XskPort("lo")
    with pytest.raises(PrivilegeError, match="root"):
        Steering("lo")


def test_steer_header_is_the_layout_python_uses():
    from vtlstack.xdp import _libs

    ffi, xdp, _ = _libs()
    # struct steer_key is hashed whole by the kernel: 4 bytes, no hidden padding.
    assert ffi.sizeof("struct steer_key") == 4
    assert ffi.offsetof("struct steer_key", "proto") == 2
    assert xdp.STEER_NCOUNTERS == 4
