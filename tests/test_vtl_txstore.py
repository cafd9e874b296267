"""The VTL sender's packet store (vtlstack.vtl.txstore): packets built once in UMEM
frames, resent from them, freed by the cumulative ACK. No root, no kernel."""

import pytest

from vtlstack._port import FramePool
from vtlstack.errors import VtlError
from vtlstack.vtl.txstore import TxStore
from vtlstack.vtl.wire import C, Header, pack, unpack


def data_header(seq, **kw):
    return Header(type=C.VTL_DATA, session=7, seq=seq, graft=C.VTL_GRAFT_SR, **kw)


def test_a_packet_is_the_wire_format_in_a_frame():
    store = TxStore(8)
    payload = bytes(range(256)) * 5 + b"tail"
    pkt = store.packet(3, data_header(3), payload)
    assert bytes(pkt) == pack(data_header(3, payload=payload))
    assert unpack(pkt).payload == payload
    assert store.pool.stats()["held"] == 1 == len(store)
    store.close()


def test_a_resend_rewrites_the_header_of_the_same_frame():
    store = TxStore(8)
    store.packet(0, data_header(0), b"abc")
    addr = store._held[0][0]
    # A retransmission after a graft switch: new flags and graft, the kept payload (the
    # caller's bytes are not read again).
    again = store.packet(0, Header(type=C.VTL_DATA, session=7, seq=0, graft=C.VTL_GRAFT_PR,
                                   flags=C.VTL_F_RETX), b"ignored")
    assert store._held[0][0] == addr and len(store) == 1
    h = unpack(again)
    assert (h.payload, h.flags, h.graft) == (b"abc", C.VTL_F_RETX, C.VTL_GRAFT_PR)
    store.close()


def test_acknowledged_frames_go_back_and_stay_gone():
    store = TxStore(4)
    for seq in range(4):
        store.packet(seq, data_header(seq), b"x" * 1400)
    with pytest.raises(VtlError, match="store is full"):
        store.packet(4, data_header(4), b"y")
    store.release_below(3)
    assert len(store) == 1 and store.pool.stats()["free"] == 3 and store.peak == 4
    with pytest.raises(VtlError, match="acknowledged"):
        store.packet(1, data_header(1), b"x")
    store.packet(4, data_header(4), b"y")
    store.release_below(2)             # an old ACK changes nothing
    assert len(store) == 2
    store.close()
    assert store.pool.stats()["free"] == 4


def test_an_unbound_pool_exports_its_area_writable():
    # A pool an AF_XDP socket shares refuses (tests/test_port.py).
    view = memoryview(FramePool(2))
    assert len(view) == 4096 and not view.readonly
