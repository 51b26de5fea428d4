"""The guest kernel: Debian's newest installed amd64 kernel, unpacked once for a faster boot.

Under software emulation, SeaBIOS plus decompressing the xz bzImage costs about 3 s per boot. QEMU can
instead enter an uncompressed vmlinux at its PVH entry point, with qboot as the firmware (with SeaBIOS,
QEMU 7.2 hands a PVH guest a corrupt ACPI table list: one CPU and no TPM). The unpacked image is cached
under .vm-cache/, keyed by the image's name, size and modification time. Where qboot or an xz payload is
missing, the bzImage boots the ordinary way.
"""

from __future__ import annotations

import lzma
import os
import re
from dataclasses import dataclass
from pathlib import Path

QBOOT = Path("/usr/share/qemu/qboot.rom")  # from qemu-system-data, which qemu-system-x86 depends on
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ELF_MAGIC = b"\x7fELF"


class KernelError(RuntimeError):
    """No usable guest kernel is installed."""


@dataclass(frozen=True)
class Kernel:
    release: str
    image: Path
    modules: Path


# Debian's generic flavour only ("6.1.0-56-amd64"), not -cloud-amd64 or -rt-amd64.
_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)-(\d+)-amd64")


def find_kernel(boot: Path = Path("/boot"), lib_modules: Path = Path("/lib/modules")) -> Kernel:
    """The newest Debian amd64 kernel image that has its modules installed."""
    candidates: list[tuple[tuple[int, ...], Kernel]] = []
    for image in boot.glob("vmlinuz-*-amd64"):
        release = image.name.removeprefix("vmlinuz-")
        match = _RELEASE.fullmatch(release)
        if match and (lib_modules / release / "modules.dep").exists():
            version = tuple(int(part) for part in match.groups())
            candidates.append((version, Kernel(release, image, lib_modules / release)))
    if not candidates:
        raise KernelError(f"no {boot}/vmlinuz-X.Y.Z-N-amd64 with modules under {lib_modules}: "
                          "install Debian's linux-image-amd64 (scripts/setup.sh does)")
    return max(candidates, key=lambda candidate: candidate[0])[1]


@dataclass(frozen=True)
class BootFiles:
    image: Path  # the vmlinux for a PVH boot, or the bzImage
    firmware: Path | None  # None: QEMU's default BIOS


def boot_files(kernel: Kernel, cache_dir: Path) -> BootFiles:
    """The fastest way to boot `kernel` that this host supports."""
    if QBOOT.exists():
        unpacked = _unpacked_image(kernel, cache_dir)
        if unpacked is not None:
            return BootFiles(unpacked, QBOOT)
    return BootFiles(kernel.image, None)


def _unpacked_image(kernel: Kernel, cache_dir: Path) -> Path | None:
    """The vmlinux inside the bzImage (cached), or None when its payload is not an xz-packed ELF."""
    info = kernel.image.stat()
    target = cache_dir / f"vmlinux-{kernel.release}-{info.st_size}-{info.st_mtime_ns}"
    if target.exists():
        return target
    packed = kernel.image.read_bytes()
    start = packed.find(_XZ_MAGIC)
    if start < 0:
        return None
    try:
        unpacked = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(packed[start:])
    except lzma.LZMAError:
        return None
    if not unpacked.startswith(_ELF_MAGIC):
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Several runs may unpack at once: write aside, then rename atomically.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    partial.write_bytes(unpacked)
    partial.replace(target)
    return target
