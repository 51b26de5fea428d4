"""Key line numbers in TOML that tomllib accepted, including the constructs that could mislead a scanner."""

from __future__ import annotations

import tomllib

from hostwarden.policy.locate import KeyLines, format_path

TRICKY = '''# [not.a.table] in a comment
title = """
[fake]
memory_max = "no"
"""
literal = \'\'\'
[[also.fake]]\'\'\'
escaped = "quote \\" and ] and # inside"
list = [
  1, # a comment ]
  { inner = 2 },
]

[ defaults ]
memory_max = "2G"  # trailing comment
"quoted.key" = 1
'single' = 2

[[rule]]
name = "a"
match = { labels = { team = "x" }, tool = "t" }

[[ rule ]]
name = "b"
[rule.limits]
memory_max = "1G"
'''


def test_lines_of_keys_headers_and_inline_tables():
    tomllib.loads(TRICKY)  # the scanner only ever sees text tomllib accepted
    lines = KeyLines(TRICKY)
    assert lines.line_of(("title",)) == 2
    assert lines.line_of(("literal",)) == 6
    assert lines.line_of(("escaped",)) == 8
    assert lines.line_of(("list",)) == 9
    assert lines.line_of(("defaults",)) == 14
    assert lines.line_of(("defaults", "memory_max")) == 15
    assert lines.line_of(("defaults", "quoted.key")) == 16
    assert lines.line_of(("defaults", "single")) == 17
    assert lines.line_of(("rule", 0)) == 19
    assert lines.line_of(("rule", 0, "match", "labels", "team")) == 21
    assert lines.line_of(("rule", 1, "name")) == 24
    assert lines.line_of(("rule", 1, "limits", "memory_max")) == 26
    assert lines.line_of(("fake",)) == 1  # a "table" inside a string is not one: nothing found, line 1


def test_unknown_paths_fall_back_to_the_nearest_enclosing_key():
    lines = KeyLines(TRICKY)
    assert lines.line_of(("rule", 1, "limits", "cpu_cores")) == 25
    assert lines.line_of(("rule", 0, "defaults")) == 19
    assert lines.line_of(()) == 1


def test_format_path_counts_rules_from_one():
    assert format_path(("rule", 0, "limits", "memory_max")) == "rule[1].limits.memory_max"
    assert format_path(("defaults",)) == "defaults"
