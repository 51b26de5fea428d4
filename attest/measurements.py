"""The measurement list as verified so far: entries, the PCR 10 aggregate, per-entry log problems, indexes.

The aggregate follows the kernel (and keylime with a sha256 PCR bank): PCR10 = sha256(PCR10 || sha256(template
data)) per entry, and an entry whose template hash is all zeros (a ToMToU / open-writers violation) extends
0xff..ff. When a quote does not match, the chain is replayed from the last verified point to tell a PCR that
matches an earlier point (entries appended that the TPM never saw) from one that matches no point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from hostwarden.attest.imalog import ImaEntry, ImaParseError
from hostwarden.attest.report import Reason, ReasonCode

IMA_PCR = 10
_ZERO_PCR = bytes(32)
_VIOLATION_EXTEND = b"\xff" * 32
_ZERO_TEMPLATE_HASHES = {size: bytes(size) for size in (20, 32, 48, 64)}


class MeasurementLog:
    def __init__(self, template_hash_alg: str = "sha1") -> None:
        self.template_hash_alg = template_hash_alg
        self.entries: list[ImaEntry | None] = []  # None where a line could not be parsed
        self.aggregate = _ZERO_PCR
        self.problems: dict[int, list[Reason]] = {}  # log-level faults by entry index (parse, hash, PCR)
        self.by_path_digest: dict[tuple[str, str], int] = {}  # latest entry for (path, digest hex)
        self.latest_by_path: dict[str, int] = {}
        self.verified_count = 0
        self._verified_aggregate = _ZERO_PCR

    def __len__(self) -> int:
        return len(self.entries)

    def absorb(self, items: Iterable[ImaEntry | ImaParseError]) -> list[int]:
        """Take new entries; return the indexes of those that need a policy check (no log fault)."""
        checkable: list[int] = []
        sha256 = hashlib.sha256
        template_hash = getattr(hashlib, self.template_hash_alg)
        for item in items:
            index = len(self.entries)
            if isinstance(item, ImaParseError):
                self.entries.append(None)
                # keylime also skips an unparsable line in its running hash; the PCR then cannot match.
                self.problems[index] = [Reason(ReasonCode.MALFORMED_ENTRY,
                                               f"IMA log {item.where}: {item.reason}: {item.text!r}")]
                continue
            self.entries.append(item)
            faults: list[Reason] = []
            if item.pcr != IMA_PCR:
                faults.append(Reason(ReasonCode.WRONG_PCR_INDEX,
                                     f"entry {index} ({item.path}) claims PCR {item.pcr}, IMA uses PCR {IMA_PCR}",
                                     path=item.path, expected=(str(IMA_PCR),), actual=str(item.pcr)))
            if item.template_hash == _ZERO_TEMPLATE_HASHES.get(len(item.template_hash)):
                self.aggregate = sha256(self.aggregate + _VIOLATION_EXTEND).digest()
                faults.append(Reason(ReasonCode.IMA_VIOLATION,
                                     f"entry {index} ({item.path}) is an IMA violation (file changed while "
                                     "measured or open for write): its content is unknown", path=item.path))
            else:
                self.aggregate = sha256(self.aggregate + sha256(item.template_data).digest()).digest()
                calculated = template_hash(item.template_data).digest()
                if calculated != item.template_hash:
                    faults.append(Reason(
                        ReasonCode.TEMPLATE_HASH_MISMATCH,
                        f"entry {index} ({item.path}): template hash {item.template_hash.hex()} does not match "
                        f"its fields ({self.template_hash_alg} {calculated.hex()}): the line was edited",
                        path=item.path, expected=(calculated.hex(),), actual=item.template_hash.hex()))
                elif not faults:
                    checkable.append(index)
            if faults:
                self.problems[index] = faults
            self.by_path_digest[(item.path, item.digest_hex)] = index
            self.latest_by_path[item.path] = index
        return checkable

    def mark_verified(self) -> None:
        """The TPM vouched for the whole log as it is now; older points are no longer needed."""
        self.verified_count = len(self.entries)
        self._verified_aggregate = self.aggregate

    def point_matching(self, pcr_value: bytes) -> int | None:
        """How many entries the log had when its aggregate equalled `pcr_value` (since the last verified
        point), if it ever did. Replays the chain: called only when a quote does not match."""
        value = self._verified_aggregate
        if value == pcr_value:
            return self.verified_count
        for index in range(self.verified_count, len(self.entries)):
            entry = self.entries[index]
            if entry is None:
                continue
            extend = _VIOLATION_EXTEND if entry.template_hash == _ZERO_TEMPLATE_HASHES.get(
                len(entry.template_hash)) else hashlib.sha256(entry.template_data).digest()
            value = hashlib.sha256(value + extend).digest()
            if value == pcr_value:
                return index + 1
        return None

    def lines_from(self, offset: int) -> list[str]:
        return [entry.line for entry in self.entries[offset:] if entry is not None]
