"""The pure parts of tests/vm/run: module ordering, the cpio archive, kernel choice, the guest's command."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support import require
from tests.vm._runner.initramfs import InitramfsError, _CpioWriter, module_load_order
from tests.vm._runner.kernel import KernelError, find_kernel
from tests.vm._runner.machine import command_script, guest_environment

MODULES_DEP = """\
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/overlayfs/overlay.ko:
"""


def test_module_load_order_puts_every_dependency_first_once():
    order = module_load_order(MODULES_DEP, ("9pnet_virtio", "9p", "overlay"))
    assert sorted(order) == sorted(set(order)), "a module is loaded twice"
    for module, deps in (line.split(":") for line in MODULES_DEP.splitlines()):
        if module in order:
            assert all(order.index(dep) < order.index(module) for dep in deps.split()), module
    assert order[-1] == "kernel/fs/overlayfs/overlay.ko"


def test_module_load_order_names_a_missing_module():
    with pytest.raises(InitramfsError, match="virtio_console"):
        module_load_order(MODULES_DEP, ("virtio_console",))


def test_cpio_archive_unpacks_with_cpio(tmp_path):
    require(shutil.which("cpio") is not None, "cpio (scripts/setup.sh installs it)")
    archive = _CpioWriter()
    archive.directory("bin")
    archive.file("bin/tool", b"#!/bin/sh\n", executable=True)
    archive.file("odd-size", b"12345")
    (tmp_path / "out").mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=archive.finish(),
                   cwd=tmp_path / "out", check=True)
    assert (tmp_path / "out" / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert (tmp_path / "out" / "bin" / "tool").stat().st_mode & stat.S_IXUSR
    assert (tmp_path / "out" / "odd-size").read_bytes() == b"12345"


def test_cpio_entries_are_four_byte_aligned():
    archive = _CpioWriter()
    archive.file("a", b"xyz")
    archive.char_device("dev/console", 5, 1)
    data = archive.finish()
    assert len(data) % 4 == 0
    console = data.index(b"dev/console\0")
    header = data[data.rindex(b"070701", 0, console):console]
    assert int(header[6 + 8:6 + 16], 16) == stat.S_IFCHR | 0o600
    assert (int(header[6 + 8 * 9:6 + 8 * 10], 16), int(header[6 + 8 * 10:6 + 8 * 11], 16)) == (5, 1)


def make_kernel(boot: Path, modules: Path, release: str, with_modules: bool = True) -> None:
    boot.mkdir(exist_ok=True)
    (boot / f"vmlinuz-{release}").write_bytes(b"")
    if with_modules:
        (modules / release).mkdir(parents=True)
        (modules / release / "modules.dep").write_text("")


def test_find_kernel_takes_the_newest_generic_kernel_with_modules(tmp_path):
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    make_kernel(boot, modules, "6.1.0-9-amd64")
    make_kernel(boot, modules, "6.1.0-56-amd64")
    make_kernel(boot, modules, "6.1.0-60-cloud-amd64")
    make_kernel(boot, modules, "6.1.0-70-amd64", with_modules=False)
    assert find_kernel(boot, modules).release == "6.1.0-56-amd64"


def test_find_kernel_says_what_to_install(tmp_path):
    with pytest.raises(KernelError, match="linux-image-amd64"):
        find_kernel(tmp_path, tmp_path)


def test_guest_environment_passes_only_the_listed_variables():
    env = guest_environment({"PATH": "/bin", "CI": "true", "HOSTWARDEN_X": "1", "PYTEST_ADDOPTS": "-x",
                             "HOME": "/home/me", "SECRET": "no", "HOSTWARDEN_IN_VM": "0"})
    assert env == {"PATH": "/bin", "CI": "true", "HOSTWARDEN_X": "1", "PYTEST_ADDOPTS": "-x",
                   "HOME": "/root", "HOSTWARDEN_IN_VM": "1"}


def test_command_script_keeps_arguments_intact(tmp_path):
    require(Path("/bin/busybox").exists(), "busybox-static (scripts/setup.sh installs it)")
    script = command_script(tmp_path, ["sh", "-c", 'printf "%s|" "$0" "$@"; pwd', "a b", "it's", "$HOME"],
                            {"HOSTWARDEN_V": "x y", "PATH": os.environ["PATH"]})
    output = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert output == f"a b|it's|$HOME|{tmp_path}\n"
    assert shlex.quote("HOSTWARDEN_V=x y") in script
