from __future__ import annotations

import dataclasses

import pytest

from hostwarden.attest.keylime_compat import keylime
from hostwarden.attest.quote import (
    QuoteVerificationError,
    keylime_quote_string,
    parse_keylime_quote_string,
    verify_quote,
)
from hostwarden.attest.report import ReasonCode
from tests.unit.attest.synthetic import SoftwareTpm


@pytest.fixture
def tpm() -> SoftwareTpm:
    software_tpm = SoftwareTpm()
    software_tpm.extend(b"\x01" * 32)
    return software_tpm


def _failure(ak_pem: str, nonce: str, quote) -> QuoteVerificationError:
    with pytest.raises(QuoteVerificationError) as caught:
        verify_quote(ak_pem, nonce, quote)
    return caught.value


def test_a_good_quote_gives_pcr10(tpm):
    assert verify_quote(tpm.ak_pem(), "nonce1", tpm.quote("nonce1")) == tpm.pcr10


def test_wrong_nonce_is_named(tpm):
    assert _failure(tpm.ak_pem(), "nonce2", tpm.quote("nonce1")).code is ReasonCode.QUOTE_NONCE


def test_wrong_ak_is_a_signature_failure(tpm):
    other = SoftwareTpm()
    assert _failure(other.ak_pem(), "n", tpm.quote("n")).code is ReasonCode.QUOTE_SIGNATURE


def test_altered_pcr_value_does_not_hash_to_the_signed_digest(tpm):
    quote = tpm.quote("n")
    value_at = 4 + 8 * 16 + 4 + 4 + 2
    forged = quote.pcrs[:value_at] + b"\x02" * 32 + quote.pcrs[value_at + 32 :]
    failure = _failure(tpm.ak_pem(), "n", dataclasses.replace(quote, pcrs=forged))
    assert failure.code is ReasonCode.PCR_DIGEST_MISMATCH


def test_relabelled_pcr_selection_is_refused_although_keylime_accepts_it(tpm):
    # The TPM quoted PCR 16 (resettable: an attacker can set it); the blob claims PCR 10.
    tpm.quoted_pcr = 16
    quote = tpm.quote("n")
    pcrs = keylime().tpm_util.checkquote(tpm.ak_pem().encode(), "n", quote.signature, quote.attest, quote.pcrs,
                                         "sha256")
    assert pcrs == {10: tpm.pcr10.hex()}  # the gap: keylime alone takes the relabelled blob
    failure = _failure(tpm.ak_pem(), "n", quote)
    assert failure.code is ReasonCode.PCR_SELECTION_MISMATCH
    assert "sha256:[16]" in failure.message and "sha256:[10]" in failure.message


def test_quote_over_another_pcr_reported_honestly_is_refused(tpm):
    tpm.quoted_pcr = tpm.reported_pcr = 11
    assert _failure(tpm.ak_pem(), "n", tpm.quote("n")).code is ReasonCode.PCR_SELECTION_MISMATCH


@pytest.mark.parametrize("part", ["attest", "pcrs"])
def test_truncated_structures_are_malformed(tpm, part):
    quote = tpm.quote("n")
    broken = dataclasses.replace(quote, **{part: getattr(quote, part)[:20]})
    assert _failure(tpm.ak_pem(), "n", broken).code is ReasonCode.QUOTE_MALFORMED


def test_keylime_quote_string_round_trips(tpm):
    quote = tpm.quote("n")
    text = keylime_quote_string(quote)
    assert text.startswith("r") and text.count(":") == 2
    back = parse_keylime_quote_string(text)
    assert (back.attest, back.signature, back.pcrs) == (quote.attest, quote.signature, quote.pcrs)


@pytest.mark.parametrize("text", ["xAAA:BBB:CCC", "rAAAA:BBBB", "r!!:AAAA:AAAA"])
def test_bad_keylime_quote_strings(text):
    with pytest.raises(QuoteVerificationError) as caught:
        parse_keylime_quote_string(text)
    assert caught.value.code is ReasonCode.QUOTE_MALFORMED
