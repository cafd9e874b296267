"""The VTL sender's packets until the receiver has them, each in its own UMEM frame.

A packet is built once, when it first leaves: the payload is copied from the
application's message into a frame of a ``FramePool`` (the frame layout and accounting
the AF_XDP ports use) behind room for the VTL header, and the header and checksum are
written in front. The frame goes to the raw socket as it is; a retransmission that a KTF
asks for rewrites the header in place (the RETX flag, the graft after a switch) and sends
the same frame again. Frames go back to the pool as the cumulative acknowledgement passes
them, so the sender holds at most a window of packets (1024 frames, 2 MiB), whatever the
message's size.

No AF_XDP socket is bound to this UMEM: DATA must pass the tc egress KTF, which AF_XDP
transmissions skip (see vtlstack.vtl.broker), so the send itself copies into an skb.
"""

from __future__ import annotations

from vtlstack._port import FramePool
from vtlstack.errors import VtlError
from vtlstack.vtl import wire
from vtlstack.vtl.wire import HDR_LEN, Header

__all__ = ["TxStore"]

FRAME_SIZE = 2048


class TxStore:
    """Packets by sequence number, each in a frame of a private UMEM."""

    def __init__(self, frames: int = wire.C.VTL_MAX_WINDOW) -> None:
        self.pool = FramePool(frames, FRAME_SIZE)
        self._mem = memoryview(self.pool)
        self._held: dict[int, tuple[int, int]] = {}   # seq -> (frame address, payload bytes)
        self._below = 0                                # every seq under it went back
        self.peak = 0                                  # most frames held at once

    def __len__(self) -> int:
        return len(self._held)

    def packet(self, seq: int, h: Header, payload: memoryview | bytes) -> memoryview:
        """The packet for seq with header h, ready to send: built in a new frame from
        ``payload`` the first time, the kept frame with its header rewritten after that."""
        got = self._held.get(seq)
        if got is None:
            if seq < self._below:
                raise VtlError(f"packet {seq} was acknowledged and its frame freed")
            addr = self.pool.alloc()
            if addr is None:
                raise VtlError(f"{self.pool.total} packets in flight: the store is full "
                               f"(the window is larger than the store)")
            got = self._held[seq] = (addr, len(payload))
            self._mem[addr + HDR_LEN:addr + HDR_LEN + len(payload)] = payload
            self.peak = max(self.peak, len(self._held))
        addr, length = got
        end = wire.pack_into(self._mem[addr:addr + FRAME_SIZE], h, length)
        return self._mem[addr:addr + end]

    def release_below(self, seq: int) -> None:
        """Give back the frames of every packet below seq (acknowledged, given up, or,
        with no feedback, sent)."""
        for s in range(self._below, seq):
            got = self._held.pop(s, None)
            if got is not None:
                self.pool.free(got[0])
        self._below = max(self._below, seq)

    def close(self) -> None:
        """Give every frame back and unmap the area (after the last send)."""
        self.release_below(max(self._held, default=-1) + 1)
        self.pool.check_frames(expect_idle=True)
        self._mem.release()
