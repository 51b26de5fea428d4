"""Incremental reader for the IMA measurement list (ascii or binary, templates ima-ng, ima-sig, ima-buf).

Each `read_new()` returns only the entries appended since the previous call. A line or record that cannot
be parsed becomes an `ImaParseError` naming its position and what is wrong; reading goes on after it.
The reader does no verification: hashing and policy checks happen in `hostwarden.attest.verify`.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

DEFAULT_ASCII_LOG = Path("/sys/kernel/security/ima/ascii_runtime_measurements")
TEMPLATES = ("ima-ng", "ima-sig", "ima-buf")
# The kernel's template digest in the binary list is always SHA-1 sized (TPM_DIGEST_SIZE).
_BINARY_TEMPLATE_HASH_LEN = 20
# Bounds that no genuine record exceeds; they keep a corrupt length field from swallowing the file.
_MAX_TEMPLATE_NAME_LEN = 64
_MAX_TEMPLATE_DATA_LEN = 1 << 20


class LogFormat(enum.Enum):
    ASCII = "ascii"
    BINARY = "binary"


class ImaEntry(NamedTuple):
    """One measurement. `template_data` is the exact byte string IMA hashed and extended into the PCR.

    A NamedTuple, not a dataclass: a log has up to 10^5 of them and creation cost is per entry."""

    index: int  # position in the whole log, 0-based
    pcr: int
    template_hash: bytes
    template: str
    digest_alg: str
    digest_hex: str
    path: str
    extra_hex: str  # ima-sig signature or ima-buf buffer, hex; "" for ima-ng
    template_data: bytes
    line: str  # the ascii form, as in ascii_runtime_measurements (what a Keylime verifier takes)


@dataclass(frozen=True, slots=True)
class ImaParseError:
    """A line or record that is not a valid IMA entry. `index` is the log position it would have had."""

    index: int
    where: str  # "line 12" or "byte 4096"
    reason: str
    text: str  # the offending text, shortened


class ImaLogError(Exception):
    """The log as a whole cannot be read (missing, unreadable, rewritten)."""


_u32 = struct.Struct("<I").pack


def template_data_for(template: str, digest_alg: str, digest: bytes, path: str, extra: bytes) -> bytes:
    """Serialise the fields the way the kernel does before hashing (d-ng, n-ng, then sig or buf)."""
    alg = digest_alg.encode()
    name = path.encode()
    data = b"".join((_u32(len(alg) + 2 + len(digest)), alg, b":\0", digest, _u32(len(name) + 1), name, b"\0"))
    return data if template == "ima-ng" else data + _u32(len(extra)) + extra


def parse_ascii_line(index: int, line: str, where: str) -> ImaEntry | ImaParseError:
    """Parse one line of ascii_runtime_measurements; never raises."""

    def bad(reason: str) -> ImaParseError:
        return ImaParseError(index, where, reason, line[:200])

    head = line.split(" ", 3)
    if len(head) != 4:
        return bad("expected 'PCR TEMPLATE-HASH TEMPLATE FIELDS...'")
    pcr_text, template_hash_hex, template, fields_text = head
    if not pcr_text.isdigit():
        return bad(f"PCR index {pcr_text!r} is not a number")
    if template not in TEMPLATES:
        return bad(f"template {template!r} is not supported (supported: {', '.join(TEMPLATES)})")
    fields = fields_text.split(" ", 2 if template != "ima-ng" else 1)
    if len(fields) != (2 if template == "ima-ng" else 3):
        return bad(f"{template} entry has the wrong number of fields")
    digest_alg, colon, digest_hex = fields[0].partition(":")
    if not colon or not digest_alg:
        return bad(f"digest {fields[0][:80]!r} is not of the form ALG:HEX")
    extra_hex = fields[2] if template != "ima-ng" else ""
    try:
        template_hash = bytes.fromhex(template_hash_hex)
        digest = bytes.fromhex(digest_hex)
        extra = bytes.fromhex(extra_hex)
    except ValueError:
        return bad("template hash, digest or signature/buffer is not valid hex")
    path = fields[1]
    data = template_data_for(template, digest_alg, digest, path, extra)
    # The kernel prints lowercase hex; exec events are lowercased when recorded, so the join is exact.
    return ImaEntry(index, int(pcr_text), template_hash, template, digest_alg, digest_hex, path, extra_hex,
                    data, line)


def ascii_line(pcr: int, template_hash: bytes, template: str, digest_alg: str, digest_hex: str, path: str,
               extra_hex: str) -> str:
    """The ascii form of an entry (ima-sig and ima-buf keep the separator even when the last field is empty)."""
    line = f"{pcr} {template_hash.hex()} {template} {digest_alg}:{digest_hex} {path}"
    return line if template == "ima-ng" else f"{line} {extra_hex}"


def _split_fields(data: bytes) -> list[bytes]:
    fields = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise ValueError("template field length runs past the record")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise ValueError("template field runs past the record")
        fields.append(data[offset : offset + length])
        offset += length
    return fields


def parse_binary_record(index: int, pcr: int, template_hash: bytes, template: str, data: bytes,
                        where: str) -> ImaEntry | ImaParseError:
    """Decode one binary record's template data; never raises."""

    def bad(reason: str) -> ImaParseError:
        return ImaParseError(index, where, reason, f"{template} {data[:64].hex()}")

    if template not in TEMPLATES:
        return bad(f"template {template!r} is not supported (supported: {', '.join(TEMPLATES)})")
    try:
        fields = _split_fields(data)
    except ValueError as error:
        return bad(str(error))
    if len(fields) != (2 if template == "ima-ng" else 3):
        return bad(f"{template} record has {len(fields)} fields")
    alg_and_digest, name = fields[0], fields[1]
    alg, sep, digest = alg_and_digest.partition(b":\0")
    if not sep or not name.endswith(b"\0"):
        return bad("digest or file name field is malformed")
    try:
        path = name[:-1].decode()
        digest_alg = alg.decode("ascii")
    except UnicodeDecodeError:
        return bad("file name or digest algorithm is not valid text")
    extra_hex = fields[2].hex() if template != "ima-ng" else ""
    line = ascii_line(pcr, template_hash, template, digest_alg, digest.hex(), path, extra_hex)
    return ImaEntry(index, pcr, template_hash, template, digest_alg, digest.hex(), path, extra_hex, data, line)


class ImaLogReader:
    """Reads a measurement list file from where the last call stopped.

    The file is reopened on every call (securityfs files are seq_files; a test's file may be replaced).
    A log that becomes shorter than what was already read was rewritten: `ImaLogError` says so.
    """

    def __init__(self, path: Path | str = DEFAULT_ASCII_LOG, log_format: LogFormat | None = None) -> None:
        self.path = Path(path)
        self.format = log_format or (LogFormat.BINARY if "binary" in self.path.name else LogFormat.ASCII)
        self._offset = 0  # bytes consumed
        self._line_number = 0
        self.entries_read = 0  # entries and parse errors returned so far

    def available(self) -> bool:
        return os.access(self.path, os.R_OK)

    def growth_marker(self) -> int | None:
        """A number that changes when entries are appended, without reading the list: IMA's
        `runtime_measurements_count` beside a securityfs list (whose size reads as 0), else the file size.
        None when neither can be read."""
        try:
            count = self.path.parent / "runtime_measurements_count"
            if self.path.is_relative_to("/sys") and count.exists():
                return int(count.read_text())
            return os.stat(self.path).st_size
        except (OSError, ValueError):
            return None

    def read_new(self) -> list[ImaEntry | ImaParseError]:
        try:
            with open(self.path, "rb") as log:
                size = os.fstat(log.fileno()).st_size
                log.seek(self._offset)
                chunk = log.read()
        except OSError as error:
            raise ImaLogError(f"cannot read the IMA log {self.path}: {error.strerror}; "
                              "check [attest] ima_log and that securityfs is mounted") from error
        # securityfs reports size 0 for a full list; a regular file smaller than what was read was rewritten.
        pseudo_file = size == 0 and self.path.is_relative_to("/sys")
        if size < self._offset and not pseudo_file:
            raise ImaLogError(f"the IMA log {self.path} is shorter ({size} bytes) than the {self._offset} bytes "
                              "already read: it was truncated or replaced; restart attestation to reread it")
        if self.format is LogFormat.ASCII:
            return self._parse_ascii(chunk)
        return self._parse_binary(chunk)

    def _parse_ascii(self, chunk: bytes) -> list[ImaEntry | ImaParseError]:
        complete, _, _partial = chunk.rpartition(b"\n")
        if not _:
            return []  # no complete line yet: the writer is mid-line
        self._offset += len(complete) + 1
        results: list[ImaEntry | ImaParseError] = []
        try:
            lines: list[str] | list[bytes] = complete.decode().split("\n")
        except UnicodeDecodeError:
            lines = complete.split(b"\n")  # decode line by line to name the bad ones
        for raw in lines:
            self._line_number += 1
            if not raw:
                continue
            index = self.entries_read
            self.entries_read += 1
            where = f"line {self._line_number}"
            if isinstance(raw, bytes):
                try:
                    raw = raw.decode()
                except UnicodeDecodeError:
                    results.append(ImaParseError(index, where, "line is not valid UTF-8", repr(raw[:200])))
                    continue
            results.append(parse_ascii_line(index, raw, where))
        return results

    def _parse_binary(self, chunk: bytes) -> list[ImaEntry | ImaParseError]:
        results: list[ImaEntry | ImaParseError] = []
        offset = 0
        header = struct.Struct(f"<I{_BINARY_TEMPLATE_HASH_LEN}sI")
        while len(chunk) - offset >= header.size:
            pcr, template_hash, name_length = header.unpack_from(chunk, offset)
            where = f"byte {self._offset + offset}"
            if name_length > _MAX_TEMPLATE_NAME_LEN:
                # Nothing after a corrupt length can be framed again: report it and stop for good.
                results.append(ImaParseError(self.entries_read, where,
                                             f"template name length {name_length} is not plausible; "
                                             "the rest of the binary log cannot be framed", ""))
                self.entries_read += 1
                self._offset += len(chunk)
                return results
            name_end = offset + header.size + name_length
            if len(chunk) < name_end + 4:
                break
            template = chunk[offset + header.size : name_end].decode("ascii", "replace")
            (data_length,) = struct.unpack_from("<I", chunk, name_end)
            if data_length > _MAX_TEMPLATE_DATA_LEN:
                results.append(ImaParseError(self.entries_read, where,
                                             f"template data length {data_length} is not plausible; "
                                             "the rest of the binary log cannot be framed", template))
                self.entries_read += 1
                self._offset += len(chunk)
                return results
            data_end = name_end + 4 + data_length
            if len(chunk) < data_end:
                break  # record still being written
            data = chunk[name_end + 4 : data_end]
            results.append(parse_binary_record(self.entries_read, pcr, template_hash, template, data, where))
            self.entries_read += 1
            offset = data_end
        self._offset += offset
        return results
