"""Boots Debian's stock kernel under QEMU with swtpm and runs one command inside (see tests/vm/run)."""
