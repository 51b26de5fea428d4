"""The committed generated code (proto/gen) must match what proto/generate.py makes from the .proto now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path):
    spec = importlib.util.spec_from_file_location("generate", REPO / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    committed = REPO / "proto" / "gen"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
    stale = [n for n in names if (tmp_path / n).read_text() != (committed / n).read_text()]
    assert not stale, f"proto/gen is stale ({stale}): run `make proto` and commit the result"
