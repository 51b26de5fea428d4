from __future__ import annotations

import pytest

from hostwarden.cgroups.errors import InvalidName
from hostwarden.cgroups.names import MAX_NAME_LENGTH, validate_name


@pytest.mark.parametrize("name", ["a", "sandbox-1", "call_2.x", "A" * MAX_NAME_LENGTH, "a..b", "memoryfoo"])
def test_accepts_safe_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "is empty"),
        ("x" * (MAX_NAME_LENGTH + 1), "at most 64"),
        (".", "path component"),
        ("..", "path component"),
        ("a/b", "contains '/'"),
        ("../etc", "contains '/'"),
        ("a\nb", "control character"),
        ("a\x00b", "control character"),
        ("a\x7fb", "control character"),
        ("a b", "contains ' '"),
        ("naïve", "contains 'ï'"),
        ("memory.max", "interface file"),
        ("cgroup.procs", "interface file"),
        (".control", "left to systemd"),
        ("..a", "left to systemd"),
    ],
)
def test_refuses_unsafe_names_saying_why(name, message):
    with pytest.raises(InvalidName, match=message) as raised:
        validate_name(name, "sandbox name")
    assert str(raised.value).startswith("sandbox name")
    assert isinstance(raised.value, ValueError)


def test_refuses_non_strings():
    with pytest.raises(InvalidName, match="must be a string, got int"):
        validate_name(7)  # type: ignore[arg-type]
