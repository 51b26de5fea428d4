from __future__ import annotations

import pytest

from hostwarden.bpf.executables import ExecutableList


def test_keeps_first_run_order_without_duplicates():
    executables = ExecutableList(cap=10)
    for path in ["/bin/sh", "/usr/bin/make", "/bin/sh", "/usr/bin/cc", "/usr/bin/make"]:
        executables.add(path)
    assert executables.paths == ("/bin/sh", "/usr/bin/make", "/usr/bin/cc")
    assert executables.omitted == 0


def test_cap_counts_distinct_paths_left_out():
    executables = ExecutableList(cap=2)
    added = [executables.add(path) for path in ["/a", "/b", "/c", "/c", "/d", "/a"]]
    assert added == [True, True, False, False, False, False]
    assert executables.paths == ("/a", "/b")
    assert executables.omitted == 2
    assert len(executables) == 2


def test_empty_path_is_ignored_and_bad_cap_refused():
    executables = ExecutableList()
    assert executables.add("") is False
    with pytest.raises(ValueError, match="at least 1"):
        ExecutableList(cap=0)
