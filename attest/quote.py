"""Quote verification: keylime's `checkquote` plus the check it leaves out.

keylime's checkquote verifies the AK signature over TPMS_ATTEST, the nonce, and that the digest signed
equals the hash of the PCR values reported, but not WHICH PCRs the TPM quoted: a PCR blob relabelled from,
say, PCR 16 (resettable, so an attacker can set it) to PCR 10 passes. Here the selection signed inside
TPMS_ATTEST must equal the selection the PCR blob reports, and must be exactly sha256:{10}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from hostwarden.attest.keylime_compat import keylime
from hostwarden.attest.report import ReasonCode
from hostwarden.attest.tpm import QUOTE_HASH_ALG, QUOTE_PCR, TpmQuote

TPM_ALG_SHA256 = 0x000B
_TPM_GENERATED_VALUE = 0xFF544347
_TPM_ST_ATTEST_QUOTE = 0x8018
# tpm2-tools writes the PCR blob from memory: TPML_PCR_SELECTION with 16 fixed 8-byte slots, a count, then
# TPML_DIGEST structures of 8 fixed 66-byte TPM2B_DIGEST slots, all little endian.
_BLOB_SELECTION_SLOTS = 16
_BLOB_DIGEST_SLOTS = 8
_BLOB_DIGEST_SLOT_SIZE = 2 + 64

Selection = dict[int, frozenset[int]]  # hash algorithm id -> PCR indices


class QuoteVerificationError(Exception):
    def __init__(self, code: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class AttestInfo:
    extra_data: bytes
    selection: Selection
    pcr_digest: bytes


def keylime_quote_string(quote: TpmQuote) -> str:
    """keylime's quote form: "r" + base64 of TPMS_ATTEST, TPMT_SIGNATURE and the PCR blob, joined by ':'."""
    parts = (quote.attest, quote.signature, quote.pcrs)
    return "r" + ":".join(base64.b64encode(part).decode() for part in parts)


def parse_keylime_quote_string(text: str) -> TpmQuote:
    if not text.startswith("r") or text.count(":") != 2:
        raise QuoteVerificationError(ReasonCode.QUOTE_MALFORMED,
                                     "quote is not of keylime's form r<attest>:<signature>:<pcrs>")
    try:
        attest, signature, pcrs = (base64.b64decode(part, validate=True) for part in text[1:].split(":"))
    except binascii.Error as error:
        raise QuoteVerificationError(ReasonCode.QUOTE_MALFORMED, f"quote part is not base64: {error}") from error
    return TpmQuote(attest, signature, pcrs, 0.0)


def _selection_bits(select: bytes) -> frozenset[int]:
    return frozenset(8 * byte_index + bit for byte_index, byte in enumerate(select)
                     for bit in range(8) if byte & (1 << bit))


def parse_attest(attest: bytes) -> AttestInfo:
    """The fields of a marshalled (big endian) TPMS_ATTEST of type quote that matter here."""
    try:
        magic, kind = struct.unpack_from(">IH", attest, 0)
        if magic != _TPM_GENERATED_VALUE or kind != _TPM_ST_ATTEST_QUOTE:
            raise ValueError("not a TPM-generated quote structure")
        offset = 6
        (signer_name_size,) = struct.unpack_from(">H", attest, offset)
        offset += 2 + signer_name_size
        (extra_size,) = struct.unpack_from(">H", attest, offset)
        extra_data = attest[offset + 2 : offset + 2 + extra_size]
        offset += 2 + extra_size + 17 + 8  # TPMS_CLOCK_INFO, firmwareVersion
        (count,) = struct.unpack_from(">I", attest, offset)
        offset += 4
        selection: Selection = {}
        for _ in range(count):
            algorithm, size = struct.unpack_from(">HB", attest, offset)
            bits = _selection_bits(attest[offset + 3 : offset + 3 + size])
            if bits:
                selection[algorithm] = selection.get(algorithm, frozenset()) | bits
            offset += 3 + size
        (digest_size,) = struct.unpack_from(">H", attest, offset)
        pcr_digest = attest[offset + 2 : offset + 2 + digest_size]
        if len(pcr_digest) != digest_size:
            raise ValueError("PCR digest runs past the end")
    except (struct.error, ValueError) as error:
        raise QuoteVerificationError(ReasonCode.QUOTE_MALFORMED, f"TPMS_ATTEST is malformed: {error}") from error
    return AttestInfo(extra_data, selection, pcr_digest)


def parse_pcr_blob(blob: bytes) -> tuple[Selection, dict[int, dict[int, bytes]]]:
    """The selection a tpm2-tools PCR blob claims and its values: {alg: {pcr: value}}."""
    try:
        (count,) = struct.unpack_from("<I", blob, 0)
        if count > _BLOB_SELECTION_SLOTS:
            raise ValueError(f"{count} PCR selections")
        order: list[tuple[int, list[int]]] = []
        for slot in range(count):
            algorithm, size = struct.unpack_from("<HB", blob, 4 + 8 * slot)
            select = blob[4 + 8 * slot + 3 : 4 + 8 * slot + 3 + min(size, 4)]
            order.append((algorithm, sorted(_selection_bits(select))))
        offset = 4 + 8 * _BLOB_SELECTION_SLOTS
        (digest_lists,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        digests: list[bytes] = []
        for _ in range(digest_lists):
            offset += 4  # TPML_DIGEST.count; the fixed slots are walked regardless
            for _slot in range(_BLOB_DIGEST_SLOTS):
                (size,) = struct.unpack_from("<H", blob, offset)
                if size:
                    digests.append(blob[offset + 2 : offset + 2 + size])
                offset += _BLOB_DIGEST_SLOT_SIZE
        if offset != len(blob):
            raise ValueError("trailing or missing bytes")
    except (struct.error, ValueError) as error:
        raise QuoteVerificationError(ReasonCode.QUOTE_MALFORMED, f"PCR blob is malformed: {error}") from error
    selection: Selection = {}
    values: dict[int, dict[int, bytes]] = {}
    remaining = iter(digests)
    for algorithm, pcrs in order:
        if pcrs:
            selection[algorithm] = selection.get(algorithm, frozenset()) | frozenset(pcrs)
        for pcr in pcrs:
            value = next(remaining, None)
            if value is None:
                raise QuoteVerificationError(ReasonCode.QUOTE_MALFORMED, "PCR blob has fewer values than PCRs")
            values.setdefault(algorithm, {})[pcr] = value
    return selection, values


def _describe(selection: Selection) -> str:
    names = {TPM_ALG_SHA256: "sha256", 0x0004: "sha1", 0x000C: "sha384", 0x000D: "sha512"}
    return ", ".join(f"{names.get(alg, hex(alg))}:{sorted(pcrs)}" for alg, pcrs in sorted(selection.items())) \
        or "nothing"


def verify_quote(ak_pem: str, nonce: str, quote: TpmQuote) -> bytes:
    """Verify `quote` and return the PCR 10 (sha256 bank) value it attests; raise QuoteVerificationError."""
    attest = parse_attest(quote.attest)
    blob_selection, values = parse_pcr_blob(quote.pcrs)
    try:
        keylime().tpm_util.checkquote(ak_pem.encode(), nonce, quote.signature, quote.attest, quote.pcrs,
                                      QUOTE_HASH_ALG)
    except InvalidSignature as error:
        raise QuoteVerificationError(ReasonCode.QUOTE_SIGNATURE,
                                     "the quote's signature does not verify with the AK") from error
    except Exception as error:  # keylime raises bare Exception for each failed check: name the one that failed
        if attest.extra_data != nonce.encode():
            raise QuoteVerificationError(
                ReasonCode.QUOTE_NONCE, f"the quote carries nonce {attest.extra_data!r}, expected "
                f"{nonce.encode()!r}: it is a replayed or foreign quote") from error
        signed_values = b"".join(values[alg][pcr] for alg in values for pcr in sorted(values[alg]))
        if hashlib.sha256(signed_values).digest() != attest.pcr_digest:
            raise QuoteVerificationError(ReasonCode.PCR_DIGEST_MISMATCH,
                                         "the PCR values reported do not hash to the digest the TPM signed") \
                from error
        raise QuoteVerificationError(ReasonCode.QUOTE_REJECTED_BY_KEYLIME,
                                     f"keylime's checkquote rejected the quote: {error}") from error
    expected = {TPM_ALG_SHA256: frozenset({QUOTE_PCR})}
    if attest.selection != blob_selection or attest.selection != expected:
        raise QuoteVerificationError(
            ReasonCode.PCR_SELECTION_MISMATCH,
            f"the TPM signed a quote over {_describe(attest.selection)} but the PCR blob reports "
            f"{_describe(blob_selection)} (expected sha256:[{QUOTE_PCR}])")
    return values[TPM_ALG_SHA256][QUOTE_PCR]
