"""tests/vm/run [--timeout SECS] [--memory MB] [--share DIR]... -- CMD...

Boots Debian's stock kernel under QEMU (software emulation) with swtpm as its TPM and the host's root
as an overlay (writable, changes discarded), runs CMD in the repository root inside the guest, and exits
with CMD's exit status (124: timed out, 125: the guest failed before CMD finished).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from .initramfs import InitramfsError, build
from .kernel import KernelError, boot_files, find_kernel
from .machine import VM_FAILED, VmConfig, VmError, boot

REPO_ROOT = Path(__file__).resolve().parents[3]
CACHE_DIR = REPO_ROOT / ".vm-cache"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tests/vm/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=1800, metavar="SECS",
                        help="stop the guest after SECS seconds, exit 124 (default 1800)")
    parser.add_argument("--memory", type=int, default=3072, metavar="MB", help="guest memory (default 3072)")
    parser.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2)")
    parser.add_argument("--share", type=Path, action="append", default=[], metavar="DIR",
                        help="mount host DIR read-write at the same path in the guest (repeatable)")
    parser.add_argument("--accel", choices=("tcg", "kvm"), default="tcg",
                        help="QEMU accelerator (default tcg: KVM was seen to hang on these hosts)")
    parser.add_argument("--console", action="store_true",
                        help="stream the guest's serial console to stderr and print timings")
    parser.add_argument("command", nargs="+", metavar="CMD", help="the command to run in the guest")
    return parser


def _checked_shares(parser: argparse.ArgumentParser, shares: list[Path]) -> list[Path]:
    checked = []
    for share in shares:
        resolved = share.resolve()
        if not resolved.is_dir():
            parser.error(f"--share {share}: not a directory on this host")
        if "\n" in str(resolved) or resolved == Path("/"):
            parser.error(f"--share {share}: pick a directory below / whose path has no newline")
        checked.append(resolved)
    return checked


def _raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the cleanup in boot() stops QEMU and swtpm.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.memory < 256 or args.cpus < 1:
        parser.error("--timeout must be > 0, --memory >= 256, --cpus >= 1")
    shares = _checked_shares(parser, args.share)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_on_signal)
    try:
        kernel = find_kernel()
        config = VmConfig(boot=boot_files(kernel, CACHE_DIR), initramfs=build(kernel, CACHE_DIR),
                          workdir=REPO_ROOT, command=args.command, shares=shares,
                          memory_mb=args.memory, cpus=args.cpus, timeout_s=args.timeout, accel=args.accel,
                          show_console=args.console)
        result = boot(config)
    except (KernelError, InitramfsError, VmError) as error:
        print(f"tests/vm/run: {error}", file=sys.stderr)
        return VM_FAILED
    except KeyboardInterrupt:
        print("tests/vm/run: interrupted; QEMU and swtpm stopped", file=sys.stderr)
        return 130
    if result.exit_status != 0:
        print(f"--- guest console, last {len(result.console_tail)} lines ---", file=sys.stderr)
        print("\n".join(result.console_tail) or "(the console is empty)", file=sys.stderr)
    if args.console:
        boot_text = "unknown" if result.boot_s is None else f"{result.boot_s:.1f} s"
        print(f"vm: command started after {boot_text}; total {result.total_s:.1f} s; "
              f"exit status {result.exit_status}", file=sys.stderr)
    return result.exit_status
