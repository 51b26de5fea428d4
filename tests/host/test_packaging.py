"""`pip install .` builds a wheel holding the one `hostwarden` package (no top-level daemon/cgroups modules),
with the bpf programs and generated gRPC code inside; `pip install -e .` is what the venv itself uses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_holds_one_package_with_its_data(tmp_path):
    # Build from a copy of the tracked files: setuptools writes build/ into the source tree.
    source = tmp_path / "src"
    for name in subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("hostwarden-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.startswith("hostwarden-")}
    assert top == {"hostwarden"}, top
    for expected in ("hostwarden/cli.py", "hostwarden/cgroups/tree.py", "hostwarden/attest/__init__.py",
                     "hostwarden/proto/warden_pb2_grpc.py", "hostwarden/policy/schema.py"):
        assert expected in names, expected
    assert any(n.startswith("hostwarden/bpf/") and n.endswith(".bpf.c") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "hostwarden = hostwarden.cli:main" in entry_points
    # Installed into a plain directory, it imports and runs without the source tree.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, timeout=300)
    probe = subprocess.run([sys.executable, "-c", "import hostwarden.bpf, json, importlib.resources as r; "
                            "print(json.dumps([hostwarden.bpf.__file__, "
                            "sorted(p.name for p in r.files('hostwarden.bpf').iterdir())]))"],
                           cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True,
                           check=True)
    module_file, files = json.loads(probe.stdout)
    assert module_file.startswith(str(target))
    assert any(name.endswith(".bpf.c") for name in files)


def test_the_venv_uses_an_editable_install():
    import hostwarden

    assert Path(hostwarden.__file__).resolve().parent == REPO / "daemon"
