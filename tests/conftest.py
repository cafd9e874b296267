"""Shared fixtures. A root test run without root fails, naming what it needs."""

import os

import pytest


@pytest.fixture(autouse=True)
def _root_required(request):
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("needs root (CAP_NET_ADMIN, CAP_BPF) for namespaces, AF_XDP and BPF")


@pytest.fixture
def testbed():
    """Factory: testbed(**kw) builds a Testbed that is torn down after the test, pass or fail."""
    from vtlstack.testbed import Testbed

    built = []

    def make(**kw):
        kw.setdefault("prefix", "vtltest")
        tb = Testbed.up(**kw)
        built.append(tb)
        return tb

    yield make
    for tb in built:
        tb.down()
