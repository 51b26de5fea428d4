"""The TPM through tpm2-tools: a persistent attestation key (AK) and quotes over PCR 10.

tpm2-tools (not tpm2-pytss) because its `tpm2_quote -m/-s/-o` files are exactly the blobs keylime's
`checkquote` and a Keylime verifier take, and it is a Debian package with no build step (docs/attestation.md).
Without a resource manager (swtpm over TCP) every transient object stays loaded until flushed, so the AK
is made persistent once and transient objects and sessions are flushed after creating it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TCTI = "device:/dev/tpmrm0"
AK_HANDLE = 0x81000110  # owner-hierarchy persistent range; fixed so the daemon finds its AK after restarts
AK_PEM_NAME = "ak.pem"
QUOTE_PCR = 10
QUOTE_HASH_ALG = "sha256"
MAX_NONCE_LEN = 64  # TPM2B_DATA holds at most a SHA-512 digest
# Messages tpm2-tools/tss2 print when the TPM cannot be reached at all (as opposed to a TPM error code).
_UNREACHABLE_MARKERS = ("Could not load tcti", "Failed to instantiate TCTI", "Connection refused",
                        "Cannot connect", "No such file or directory", "Failed to connect")


class TpmUnavailable(RuntimeError):
    """The TPM cannot be reached (no device, swtpm down, timeout) or tpm2-tools are missing."""


class TpmError(RuntimeError):
    """The TPM answered with an error."""


@dataclass(frozen=True)
class TpmQuote:
    attest: bytes  # marshalled TPMS_ATTEST (tpm2_quote -m)
    signature: bytes  # TPMT_SIGNATURE (tpm2_quote -s)
    pcrs: bytes  # tpm2-tools PCR blob (tpm2_quote -o)
    seconds: float


def check_nonce(nonce: str) -> bytes:
    """The qualifying data for a nonce (its UTF-8 bytes, as keylime's checkquote expects); ValueError if bad."""
    data = nonce.encode()
    if not data or len(data) > MAX_NONCE_LEN or not nonce.isascii() or not nonce.isprintable():
        raise ValueError(f"nonce must be 1 to {MAX_NONCE_LEN} printable ASCII characters, got {nonce!r}")
    return data


class Tpm2Tools:
    """One TPM reached through a TCTI string; calls are serialised (swtpm serves one connection at a time)."""

    def __init__(self, tcti: str = DEFAULT_TCTI, state_dir: Path | str = "/var/lib/hostwarden",
                 timeout_s: float = 10.0, ak_handle: int = AK_HANDLE) -> None:
        self.tcti = tcti
        self.state_dir = Path(state_dir)
        self.timeout_s = timeout_s
        self.ak_handle = ak_handle
        self._lock = threading.Lock()

    @property
    def ak_pem_path(self) -> Path:
        return self.state_dir / AK_PEM_NAME

    def unavailable_reason(self) -> str | None:
        """Why no TPM can be used without talking to it (missing device node), or None."""
        kind, _, argument = self.tcti.partition(":")
        if kind == "device":
            device = argument or "/dev/tpmrm0"
            if not os.path.exists(device):
                return f"no TPM device {device} (set [attest] tpm_tcti, e.g. swtpm:host=127.0.0.1,port=2321)"
        return None

    def _run(self, args: list[str], workdir: str) -> str:
        try:
            done = subprocess.run(args, cwd=workdir, env={**os.environ, "TPM2TOOLS_TCTI": self.tcti},
                                  capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except FileNotFoundError as error:
            raise TpmUnavailable(f"{args[0]} not found: install Debian's tpm2-tools") from error
        except subprocess.TimeoutExpired as error:
            raise TpmUnavailable(f"the TPM ({self.tcti}) did not answer {args[0]} within {self.timeout_s} s") \
                from error
        if done.returncode != 0:
            detail = " ".join(done.stderr.split())[-400:]
            if any(marker in done.stderr for marker in _UNREACHABLE_MARKERS):
                raise TpmUnavailable(f"cannot reach the TPM at {self.tcti}: {detail}")
            raise TpmError(f"{args[0]} failed: {detail}")
        return done.stdout

    def _read_ak_public(self, workdir: str) -> str | None:
        try:
            self._run(["tpm2_readpublic", "-c", hex(self.ak_handle), "-f", "pem", "-o", "ak.pem"], workdir)
        except TpmError:
            return None  # no object at the handle yet
        return Path(workdir, "ak.pem").read_text()

    def ensure_ak(self) -> str:
        """Create the AK once (EK-parented, RSA, rsassa-sha256, persistent) and return the trusted PEM.

        The PEM kept in the state directory is the trust anchor: it is written only when absent. If the
        TPM's key differs (TPM cleared or replaced), quotes fail signature checks until an operator removes it.
        """
        with self._lock, tempfile.TemporaryDirectory(prefix="hostwarden-tpm-") as workdir:
            tpm_pem = self._read_ak_public(workdir)
            if tpm_pem is None:
                try:
                    self._run(["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"], workdir)
                    self._run(["tpm2_flushcontext", "-t"], workdir)
                    self._run(["tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256",
                               "-s", "rsassa", "-u", "ak.pem", "-f", "pem", "-n", "ak.name"], workdir)
                    self._run(["tpm2_flushcontext", "-t"], workdir)
                    self._run(["tpm2_flushcontext", "-s"], workdir)
                    self._run(["tpm2_evictcontrol", "-C", "o", "-c", "ak.ctx", hex(self.ak_handle)], workdir)
                finally:
                    self._run(["tpm2_flushcontext", "-t"], workdir)
                tpm_pem = Path(workdir, "ak.pem").read_text()
            if not self.ak_pem_path.exists():
                self.state_dir.mkdir(parents=True, exist_ok=True)
                partial = self.ak_pem_path.with_suffix(".tmp")
                partial.write_text(tpm_pem)
                partial.replace(self.ak_pem_path)
            return self.ak_pem_path.read_text()

    def tpm_ak_public(self) -> str | None:
        """The public key the TPM holds at the AK handle now (to explain a signature mismatch)."""
        with self._lock, tempfile.TemporaryDirectory(prefix="hostwarden-tpm-") as workdir:
            return self._read_ak_public(workdir)

    def quote(self, nonce: str, pcr: int = QUOTE_PCR) -> TpmQuote:
        qualifying_data = check_nonce(nonce)
        with self._lock, tempfile.TemporaryDirectory(prefix="hostwarden-tpm-") as workdir:
            started = time.monotonic()
            self._run(["tpm2_quote", "-c", hex(self.ak_handle), "-l", f"{QUOTE_HASH_ALG}:{pcr}",
                       "-g", QUOTE_HASH_ALG, "-q", qualifying_data.hex(),
                       "-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs"], workdir)
            seconds = time.monotonic() - started
            files = Path(workdir)
            return TpmQuote((files / "quote.msg").read_bytes(), (files / "quote.sig").read_bytes(),
                            (files / "quote.pcrs").read_bytes(), seconds)
