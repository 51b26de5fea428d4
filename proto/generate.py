"""Generate hostwarden.proto (proto/gen/) from proto/hostwarden/v1/*.proto.

The generated code is committed; tests/unit/test_proto_fresh.py fails when it is stale.
Usage: python proto/generate.py [OUTDIR]   (default: proto/gen)
"""

import re
import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
SOURCES = sorted((HERE / "hostwarden" / "v1").glob("*.proto"))


def generate(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = outdir / "_build"
    tmp.mkdir(exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}", *map(str, SOURCES)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes hostwarden/v1/x_pb2.py importing "hostwarden.v1"; flatten into hostwarden.proto. A proto
    # without a service gets no x_pb2_grpc.py (the plugin would write one with nothing in it).
    serviceless = {f"{source.stem}_pb2_grpc.py" for source in SOURCES
                   if not re.search(r"^service ", source.read_text(), re.MULTILINE)}
    for f in sorted((tmp / "hostwarden" / "v1").iterdir()):
        if f.name in serviceless:
            continue
        text = re.sub(r"from hostwarden\.v1 import (\w+)", r"from hostwarden.proto import \1", f.read_text())
        (outdir / f.name).write_text(text)
    for f in sorted(tmp.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    tmp.rmdir()
    (outdir / "__init__.py").write_text('"""Generated gRPC code for hostwarden.v1 (see proto/generate.py)."""\n')


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "gen")
