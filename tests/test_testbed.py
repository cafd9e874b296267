"""The testbed: namespaces, veths, routing, offloads, impairment and crash clean-up."""

import json
import subprocess

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
