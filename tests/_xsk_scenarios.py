"""Server-side halves of tests/test_port.py, run inside a testbed namespace.

`ip netns exec NS python tests/_xsk_scenarios.py SCENARIO IFNAME [ARGS...]`: the process
gets the namespace's interfaces and a private mount namespace (so vtlstack.xdp may mount a
bpffs). It prints "ready" once steering and the socket are up, then one JSON line with what
it saw. Every wait is bounded by a deadline.
"""

import json
import select
import socket
import struct
import sys
import time

from vtlstack._port import XskPort
from vtlstack.xdp import Steering, attached_programs

UDP = socket.IPPROTO_UDP
PORT = 9000


def ready() -> None:
    print("ready", flush=True)


def done(**result) -> None:
    print(json.dumps(result), flush=True)


def wait_stdin(timeout: float) -> None:
    """Block until the test writes a line (its client side is finished) or the timeout."""
    select.select([sys.stdin], [], [], timeout)
    sys.stdin.readline()


def udp_dport(frame: bytes) -> int | None:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0x0F) * 4
    return struct.unpack_from("!H", frame, 14 + ihl + 2)[0]


def recv_until(port: XskPort, want, timeout: float) -> list[bytes]:
    """Frames from the port until want(frames) holds or the deadline passes."""
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not want(frames):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        frames += port.recv(min(left, 0.5))
    return frames


def steer_split(ifname: str, count: str) -> None:
    """Owned port -> XSK; another port -> a kernel socket; ping/ARP -> the kernel."""
    n = int(count)
    kernel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    kernel.bind(("0.0.0.0", PORT + 1))
    kernel.settimeout(5)
    with Steering(ifname) as st:
        st.own(UDP, PORT)
        with XskPort(ifname, xsks_map_fd=st.xsks_map_fd) as port:
            ready()
            frames = recv_until(
                port, lambda fs: sum(udp_dport(f) == PORT for f in fs) >= n, 5.0
            )
            try:
                kdata = kernel.recv(2048).decode()
            except TimeoutError:
                kdata = None
            wait_stdin(10)  # the test pings while steering is still attached
            stats = port.stats()
            port.check_frames()
        port.check_frames(expect_idle=True)
        counters = st.counters()
    done(
        xsk_ports=[udp_dport(f) for f in frames],
        payloads=[f[42:].decode(errors="replace") for f in frames],
        kernel=kdata,
        counters=counters,
        stats=stats,
        attach=st.attach_info,
        left=attached_programs(ifname),
    )


def disown(ifname: str) -> None:
    """Owned: the XSK gets the datagram. Disowned: the kernel socket on that port does."""
    kernel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    kernel.bind(("0.0.0.0", PORT))
    kernel.settimeout(5)
    with Steering(ifname) as st:
        st.own(UDP, PORT)
        with XskPort(ifname, xsks_map_fd=st.xsks_map_fd) as port:
            ready()
            frames = recv_until(port, lambda fs: any(udp_dport(f) == PORT for f in fs), 5.0)
            st.disown(UDP, PORT)
            ready()
            try:
                kdata = kernel.recv(2048).decode()
            except TimeoutError:
                kdata = None
            late = port.recv(0.2)
    done(xsk=[f[42:].decode(errors="replace") for f in frames], kernel=kdata,
         late=len(late), owned=sorted(st.owned))


def fill_cap(ifname: str) -> None:
    """A burst arrives while nobody reads; draining it must not hand the kernel more than a
    fill ring's worth of frames, so the rest of the UMEM stays free for TX."""
    with Steering(ifname) as st:
        st.own(UDP, PORT)
        with XskPort(ifname, xsks_map_fd=st.xsks_map_fd, frame_count=4096,
                     fill_size=2048) as port:
            ready()
            wait_stdin(10)  # the client's burst is out
            # The burst used up the fill ring: those frames wait on the RX ring, and a
            # refill now must not hand the kernel the rest of the UMEM as well.
            deadline = time.monotonic() + 5
            while port.stats()["k_fill_empty"] == 0 and time.monotonic() < deadline:
                select.select([port.fd], [], [], 0.01)  # bounded; usually true at once
            refilled = port._refill()
            after_refill = port.stats()
            got, max_fill = 0, after_refill["in_fill"]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                frames = port.recv(0.3)
                max_fill = max(max_fill, port.stats()["in_fill"])
                if not frames:
                    break
                got += len(frames)
            stats = port.stats()
            port.check_frames()
    done(got=got, max_fill=max_fill, refilled=refilled, after_refill=after_refill,
         stats=stats)


def send_frames(ifname: str, frame_hex: str, count: str) -> None:
    """XskPort.send of a given frame, count times; the client's kernel socket reads it."""
    frame = bytes.fromhex(frame_hex)
    with Steering(ifname) as st, XskPort(ifname, xsks_map_fd=st.xsks_map_fd) as port:
        ready()
        sent = port.send([frame] * int(count))
        wait_stdin(10)
        stats = port.stats()
        port.check_frames(expect_idle=True)
        try:
            memoryview(port.pool)
            exported = "yes"
        except BufferError as e:
            exported = str(e)
    done(sent=sent, stats=stats, exported=exported)


def echo(ifname: str, seconds: str) -> None:
    with Steering(ifname) as st:
        st.own(UDP, PORT)
        with XskPort(ifname, xsks_map_fd=st.xsks_map_fd) as port:
            ready()
            n = port.echo_loop(float(seconds))
            stats = port.stats()
            port.check_frames()
        port.check_frames(expect_idle=True)
    done(echoed=n, stats=stats)


def malformed(ifname: str) -> None:
    """The client sends junk, then one good datagram to the owned port as an end marker."""
    with Steering(ifname) as st:
        st.own(UDP, PORT)
        with XskPort(ifname, xsks_map_fd=st.xsks_map_fd) as port:
            ready()
            frames = recv_until(port, lambda fs: any(udp_dport(f) == PORT for f in fs), 5.0)
            counters = st.counters()
            stats = port.stats()
            port.check_frames()
        port.check_frames(expect_idle=True)
    done(frames=len(frames), marker=any(udp_dport(f) == PORT for f in frames),
         counters=counters, stats=stats)


def lifecycle(ifname: str) -> None:
    """Detached after a normal close and after an exception inside the `with`."""
    out = {}
    with Steering(ifname) as st:
        out["during"] = attached_programs(ifname)
        st.own(UDP, PORT)
    out["after_close"] = attached_programs(ifname)
    try:
        with Steering(ifname) as st, XskPort(ifname, xsks_map_fd=st.xsks_map_fd) as port:
            out["during2"] = attached_programs(ifname)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    out["after_exception"] = attached_programs(ifname)
    port.check_frames(expect_idle=True)
    st.close()  # idempotent
    port.close()
    done(**out)


def errors(ifname: str) -> None:
    """Each failure is a VtlError subclass with a one-line message."""
    out = {}
    attempts = {
        "no_iface_port": lambda: XskPort("vtl-nonexistent"),
        "no_iface_steer": lambda: Steering("vtl-nonexistent"),
        "zerocopy": lambda: XskPort(ifname, zerocopy=True),
        "bad_queue": lambda: XskPort(ifname, 63),
    }
    for name, attempt in attempts.items():
        try:
            attempt().close()
            out[name] = None
        except Exception as e:  # noqa: BLE001 - we report what was raised
            out[name] = [type(e).__name__, str(e)]
    done(**out)


def foreign(ifname: str) -> None:
    try:
        Steering(ifname).close()
        done(raised=None)
    except Exception as e:  # noqa: BLE001
        done(raised=[type(e).__name__, str(e)])


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
