"""Synthetic IMA logs and a software TPM for attestation tests and the benchmark.

The template serialisation and TPM structures are written out here independently of hostwarden.attest,
so the tests check the production code against a second implementation of the formats.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hostwarden.attest.tpm import TpmQuote


def _sized(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


@dataclass(frozen=True)
class SyntheticEntry:
    path: str
    digest: bytes  # sha256 of the file's content
    template: str = "ima-ng"
    extra: bytes = b""  # ima-sig signature / ima-buf buffer
    pcr: int = 10
    violation: bool = False  # ToMToU: template hash all zeros

    @property
    def template_data(self) -> bytes:
        data = _sized(b"sha256:\0" + self.digest) + _sized(self.path.encode() + b"\0")
        return data if self.template == "ima-ng" else data + _sized(self.extra)

    @property
    def template_hash(self) -> bytes:
        return bytes(20) if self.violation else hashlib.sha1(self.template_data).digest()

    @property
    def pcr_extend_value(self) -> bytes:
        return b"\xff" * 32 if self.violation else hashlib.sha256(self.template_data).digest()

    def ascii(self) -> str:
        line = f"{self.pcr} {self.template_hash.hex()} {self.template} sha256:{self.digest.hex()} {self.path}"
        return line if self.template == "ima-ng" else f"{line} {self.extra.hex()}"

    def binary(self) -> bytes:
        name = self.template.encode()
        return (struct.pack("<I", self.pcr) + self.template_hash + struct.pack("<I", len(name)) + name
                + _sized(self.template_data))


def entry_for(path: str, content: bytes | None = None, template: str = "ima-ng") -> SyntheticEntry:
    return SyntheticEntry(path, hashlib.sha256(content if content is not None else path.encode()).digest(),
                          template)


@dataclass
class SyntheticLog:
    entries: list[SyntheticEntry] = field(default_factory=list)

    def add(self, entry: SyntheticEntry) -> SyntheticEntry:
        self.entries.append(entry)
        return entry

    def ascii(self, entries: list[SyntheticEntry] | None = None) -> str:
        return "".join(entry.ascii() + "\n" for entry in (self.entries if entries is None else entries))

    def binary(self) -> bytes:
        return b"".join(entry.binary() for entry in self.entries)

    def aggregate(self, count: int | None = None) -> bytes:
        value = bytes(32)
        for entry in self.entries[:count]:
            value = hashlib.sha256(value + entry.pcr_extend_value).digest()
        return value


def runtime_policy(allowed: list[SyntheticEntry], excludes: tuple[str, ...] = ()) -> dict:
    """A keylime runtime policy (format version 1) allowing exactly these files' digests."""
    digests: dict[str, list[str]] = {}
    buffers: dict[str, list[str]] = {}  # keylime checks ima-buf entries against their own section
    for entry in allowed:
        section = buffers if entry.template == "ima-buf" else digests
        section.setdefault(entry.path, []).append(entry.digest.hex())
    return {"meta": {"version": 1, "generator": 0}, "release": 0, "digests": digests,
            "excludes": list(excludes), "keyrings": {}, "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1",
                                                                "dm_policy": None},
            "ima-buf": buffers, "verification-keys": ""}


def write_policy(path, allowed: list[SyntheticEntry], excludes: tuple[str, ...] = ()) -> None:
    path.write_text(json.dumps(runtime_policy(allowed, excludes)))


TPM_ALG_SHA256 = 0x000B
TPM_ALG_RSASSA = 0x0014


def _selection(pcrs: set[int]) -> bytes:
    mask = sum(1 << pcr for pcr in pcrs)
    return mask.to_bytes(3, "little")


class SoftwareTpm:
    """Signs TPM2-format quotes with a software RSA key: the structures tpm2_quote writes, bit for bit."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pcr10 = bytes(32)
        self.quoted_pcr = 10  # the PCR the "TPM" really quotes
        self.reported_pcr = 10  # the PCR the blob claims (differs: a relabelled blob)
        self.unavailable: str | None = None
        self.quotes = 0

    def ak_pem(self) -> str:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def extend(self, value: bytes) -> None:
        self.pcr10 = hashlib.sha256(self.pcr10 + value).digest()

    def extend_log(self, log: SyntheticLog) -> None:
        for entry in log.entries:
            self.extend(entry.pcr_extend_value)

    # QuoteSource protocol
    def unavailable_reason(self) -> str | None:
        return self.unavailable

    def ensure_ak(self) -> str:
        return self.ak_pem()

    def tpm_ak_public(self) -> str | None:
        return self.ak_pem()

    def quote(self, nonce: str) -> TpmQuote:
        self.quotes += 1
        value = self.pcr10
        pcr_select = struct.pack(">IHB", 1, TPM_ALG_SHA256, 3) + _selection({self.quoted_pcr})
        attest = (struct.pack(">IH", 0xFF544347, 0x8018) + struct.pack(">H", 4) + b"name"
                  + struct.pack(">H", len(nonce.encode())) + nonce.encode()
                  + struct.pack(">QIIB", 1000, 0, 0, 1) + struct.pack(">Q", 0)
                  + pcr_select + struct.pack(">H", 32) + hashlib.sha256(value).digest())
        signature = self.key.sign(attest, padding.PKCS1v15(), hashes.SHA256())
        signature_blob = struct.pack(">HHH", TPM_ALG_RSASSA, TPM_ALG_SHA256, len(signature)) + signature
        slots = struct.pack("<HB", TPM_ALG_SHA256, 3) + _selection({self.reported_pcr}) + b"\0\0"
        slots += bytes(8 * 15)
        digests = struct.pack("<H", 32) + value + bytes(32) + bytes(66 * 7)
        pcr_blob = struct.pack("<I", 1) + slots + struct.pack("<I", 1) + struct.pack("<I", 1) + digests
        return TpmQuote(attest, signature_blob, pcr_blob, 0.001)
