"""A real swtpm (TPM 2.0 emulator) on 127.0.0.1 for host-tier tests and the benchmark."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def tools_present() -> bool:
    return all(shutil.which(tool) for tool in ("swtpm", "tpm2_quote", "tpm2_pcrextend", "tpm2_createak"))


def _free_port_pair() -> int:
    """A port whose successor is free too (the swtpm TCTI talks to the control channel on port + 1)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as control:
            try:
                control.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of loopback ports for swtpm")


class Swtpm:
    """One swtpm process; its state directory (NVRAM: the persistent AK) survives stop()/start()."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port_pair()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir.resolve()}",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1", "--flags", "startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port + 1)) == 0:
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("swtpm did not start listening")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def tpm2(self, *args: str) -> str:
        done = subprocess.run(list(args), env={"TPM2TOOLS_TCTI": self.tcti, "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, check=True, timeout=30)
        return done.stdout

    def extend(self, pcr: int, sha256_value: bytes) -> None:
        self.tpm2("tpm2_pcrextend", f"{pcr}:sha256={sha256_value.hex()}")
