"""Helpers shared by the test tiers."""

from __future__ import annotations

import os

import pytest


def strict() -> bool:
    """In CI (CI=true) or with HOSTWARDEN_STRICT=1 a missing host feature fails the test instead of skipping."""
    return os.environ.get("CI") == "true" or os.environ.get("HOSTWARDEN_STRICT") == "1"


def require(condition: bool, what: str) -> None:
    """Skip (locally) or fail loudly (CI) when the host lacks `what`; never pass silently."""
    if condition:
        return
    if strict():
        pytest.fail(f"host feature missing: {what}", pytrace=False)
    pytest.skip(f"host feature missing: {what}")
