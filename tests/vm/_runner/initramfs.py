"""The guest's initramfs: busybox, the modules that reach the host's root over 9p, and the stage-1 init.

Built once per input set and cached under .vm-cache/; the cache key covers every input (init script,
busybox, module files, this builder), so a kernel update or an edit rebuilds it and nothing else does.
The archive is written in Python (cpio "newc") so /dev/console can be a device node without mknod,
and left uncompressed because decompressing under software emulation costs more than reading it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from .kernel import Kernel

# Everything stage 1 needs to mount the host's root (virtio-pci + 9p), make it writable (overlay) and
# give the command its own stdout/stderr channels (virtio-console). Dependencies come from modules.dep.
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_console")

BUSYBOX = Path("/bin/busybox")
GUEST_DIR = Path(__file__).resolve().parent / "guest"
STAGE1_INIT = GUEST_DIR / "stage1-init"


class InitramfsError(RuntimeError):
    """The guest's boot files cannot be found or built (kernel, modules, busybox)."""


def module_load_order(modules_dep: str, wanted: tuple[str, ...]) -> list[str]:
    """Module file paths (relative to /lib/modules/<release>) for `wanted`, each after its dependencies."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        path, sep, rest = line.partition(":")
        if not sep:
            continue
        deps[path] = rest.split()
        by_name[Path(path).name.split(".ko")[0].replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise InitramfsError(f"kernel module {name} is not in modules.dep: not built for this kernel")
        visit(path)
    return order


class _CpioWriter:
    """Writes the SVR4 "newc" format the kernel unpacks: a header per entry, name and data 4-byte aligned."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._inode = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08x" % value for value in fields)
        self._inode += 1
        self._chunks += [header, encoded, b"\0" * (-(len(header) + len(encoded)) % 4),
                         data, b"\0" * (-len(data) % 4)]

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, executable: bool = False) -> None:
        self._entry(name, stat.S_IFREG | (0o755 if executable else 0o644), data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._chunks)


def _cache_key(kernel: Kernel, module_paths: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(STAGE1_INIT.read_bytes())
    for path in [BUSYBOX, *(kernel.modules / m for m in module_paths)]:
        info = path.stat()
        digest.update(f"{path}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build(kernel: Kernel, cache_dir: Path) -> Path:
    """The cached initramfs for `kernel`, built first when its inputs changed."""
    if not BUSYBOX.exists():
        raise InitramfsError(f"{BUSYBOX} missing: install Debian's busybox-static (scripts/setup.sh does)")
    module_paths = module_load_order((kernel.modules / "modules.dep").read_text(), WANTED_MODULES)
    target = cache_dir / f"initramfs-{kernel.release}-{_cache_key(kernel, module_paths)}.cpio"
    if target.exists():
        return target
    if any(m.endswith((".xz", ".zst", ".gz")) for m in module_paths):
        raise InitramfsError(f"compressed modules in {kernel.modules}: busybox insmod needs plain .ko files")
    cpio = _CpioWriter()
    for directory in ("bin", "dev", "proc", "sys", "lower", "rw", "newroot", "modules"):
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), executable=True)
    cpio.file("init", STAGE1_INIT.read_bytes(), executable=True)
    names = []
    for index, module in enumerate(module_paths):
        name = f"{index:02d}-{Path(module).name}"
        cpio.file(f"modules/{name}", (kernel.modules / module).read_bytes())
        names.append(name)
    cpio.file("modules/load-order", ("\n".join(names) + "\n").encode())
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Several runs may build at once: write aside, then rename atomically.
    partial = target.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(cpio.finish())
    partial.replace(target)
    return target
