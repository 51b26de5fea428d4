"""Tier markers come from the folder a test lives in: tests/unit -> unit, tests/host -> host, tests/vm -> vm."""

from __future__ import annotations

import pytest

_TIERS = ("unit", "host", "vm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(config.rootpath).parts
        if len(parts) > 1 and parts[0] == "tests" and parts[1] in _TIERS:
            item.add_marker(getattr(pytest.mark, parts[1]))
