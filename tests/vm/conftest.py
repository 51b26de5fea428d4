"""The vm tier runs only inside the guest that tests/vm/run boots; anywhere else each test fails, loudly.

A vm test that ran on the host would test the wrong kernel (and could pass by accident), so the guest is
recognised by two marks the host cannot have by chance: the kernel command line the runner boots with
and the variable it sets (HOSTWARDEN_* variables pass through, so the variable alone would not do).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GUEST_CMDLINE_MARK = "hostwarden.vm=1"


def in_guest() -> bool:
    cmdline = Path("/proc/cmdline").read_text().split()
    return GUEST_CMDLINE_MARK in cmdline and os.environ.get("HOSTWARDEN_IN_VM") == "1"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if not in_guest():
        pytest.fail(f"{item.nodeid} is a vm-tier test: run it inside the guest, e.g. "
                    "`tests/vm/run -- .venv/bin/python -m pytest tests/vm`", pytrace=False)
