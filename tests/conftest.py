"""Shared fixtures. A root test run without root fails, naming what it needs."""

import os

import pytest


@pytest.fixture(autouse=True)
def _root_required(request):
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("needs root (CAP_NET_ADMIN, CAP_BPF) for namespaces, AF_XDP and BPF")
