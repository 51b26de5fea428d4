"""Any TOML document yields a Policy or a PolicyError whose every issue points at a real line."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hostwarden.policy.cli import effective_toml
from hostwarden.policy.schema import PolicyError, parse_policy

KEYS = ["dry_run", "defaults", "limits", "ladder", "auto", "attest", "priorities", "power", "rule", "high",
        "memory_max", "memory_high", "cpu_cores", "timeout", "priority", "freeze_psi", "thaw_psi", "name",
        "match", "labels", "tool", "window", "min_samples", "on_untrusted", "budget_watts", "bogus"]
scalars = st.one_of(st.booleans(), st.integers(-10, 10**10), st.floats(-2, 200, allow_nan=False),
                    st.sampled_from(["2G", "512M", "30s", "high", "low", "kill", "x*", "", "1Q"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=12)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_parse_never_crashes_and_points_at_real_lines(document):
    text = effective_toml(document)
    line_count = text.count("\n") + 1
    try:
        parse_policy(text, "fuzz.toml")
    except PolicyError as error:
        assert error.errors
        assert all(1 <= issue.line <= line_count and issue.key and issue.message for issue in error.errors)
