"""IMA verification cost against keylime's process_measurement_list alone, verdict agreement, quote round trip.

1. Full verification of a synthetic 100k-entry log (ima-ng and ima-sig, every file in the runtime policy):
   hostwarden's Attestor.evaluate (read the file, hash, PCR 10 aggregate, keylime policy check per entry,
   attribution of 1000 exec events to 10 sandboxes, quote verification) beside keylime's
   process_measurement_list on the same lines with the same policy and PCR value (the baseline).
2. Incremental: 1000 entries appended (and extended, each with an exec event), one more evaluate; its
   time minus that of a round with nothing new (quote and report, a fixed cost per round), per new entry,
   beside keylime's per-entry cost on the full log.
3. Differential: the same log good and tampered in several ways; verdicts of both side by side.
4. Quote round trip with a real swtpm (tpm2_quote + verification), when swtpm and tpm2-tools are present.
The quotes in 1-3 come from a software TPM signing with a software key (no TPM can extend 100k PCR values
here in reasonable time); the verification code path is the production one.

Usage: .venv/bin/python bench/attest.py [--quick]        Last line of stdout: JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the synthetic-log helpers live in tests/

from hostwarden.attest import AttestConfig, Attestor, IntegrityState, RuntimePolicy
from hostwarden.attest.keylime_compat import keylime
from hostwarden.attest.quote import verify_quote
from hostwarden.attest.tpm import Tpm2Tools
from tests.host.attest.swtpm import Swtpm, tools_present
from tests.unit.attest.synthetic import (
    SoftwareTpm,
    SyntheticEntry,
    SyntheticLog,
    entry_for,
    write_policy,
)

ENTRIES = 100_000
NEW_ENTRIES = 1000
SANDBOXES = 10


def synthetic_log(count: int, start: int = 0) -> list[SyntheticEntry]:
    return [entry_for(f"/usr/lib/pkg{index // 100}/file{index}.so",
                      template="ima-sig" if index % 3 == 0 else "ima-ng") for index in range(start, start + count)]


def keylime_verdict(lines: list[str], policy: dict, pcr10: bytes) -> tuple[bool, float]:
    modules = keylime()
    started = time.perf_counter()
    _, failure = modules.ima.process_measurement_list(None, lines, policy, pcr10.hex(),
                                                      hash_alg=modules.algorithms.Hash.SHA256)
    return not failure, time.perf_counter() - started


def hostwarden_verdict(workdir: Path, log_text: str, tpm: SoftwareTpm, execs: list[SyntheticEntry],
                       ) -> tuple[Attestor, bool, float]:
    (workdir / "log").write_text(log_text)
    attestor = Attestor(AttestConfig(ima_log=workdir / "log", runtime_policy=workdir / "policy.json",
                                     state_dir=workdir), tpm=tpm)
    for position, entry in enumerate(execs):
        attestor.record_exec(f"sandbox-{position % SANDBOXES}", entry.path, entry.digest.hex())
    started = time.perf_counter()
    report = attestor.evaluate("bench")
    elapsed = time.perf_counter() - started
    trusted = report.host.state is IntegrityState.TRUSTED and all(
        scope.state is IntegrityState.TRUSTED for scope in report.sandboxes.values())
    return attestor, trusted, elapsed


def full_and_incremental(workdir: Path, repeats: int) -> dict:
    log = SyntheticLog(synthetic_log(ENTRIES))
    write_policy(workdir / "policy.json", log.entries + synthetic_log(NEW_ENTRIES, ENTRIES))
    policy = RuntimePolicy.load(workdir / "policy.json").document
    tpm = SoftwareTpm()
    tpm.extend_log(log)
    lines = [entry.ascii() for entry in log.entries]
    text = log.ascii()
    execs = log.entries[:: ENTRIES // 1000]
    keylime_times, ours_times, incremental_times = [], [], []
    for _ in range(repeats):
        accepted, seconds = keylime_verdict(lines, policy, tpm.pcr10)
        assert accepted
        keylime_times.append(seconds)
        attestor, trusted, seconds = hostwarden_verdict(workdir, text, tpm, execs)
        assert trusted
        ours_times.append(seconds)
        new = synthetic_log(NEW_ENTRIES, ENTRIES)
        with open(workdir / "log", "a") as appended:
            appended.write("".join(entry.ascii() + "\n" for entry in new))
        round_tpm = attestor.tpm
        for entry in new:
            round_tpm.extend(entry.pcr_extend_value)
            attestor.record_exec("sandbox-new", entry.path, entry.digest.hex())
        started = time.perf_counter()
        report = attestor.evaluate("bench2")
        with_new = time.perf_counter() - started
        assert report.host.state is IntegrityState.TRUSTED and report.log_entries == ENTRIES + NEW_ENTRIES
        started = time.perf_counter()
        attestor.evaluate("bench3")  # nothing new: the fixed cost of a round (quote, report)
        # Marginal cost: what the new entries (and their exec events) added to the round.
        incremental_times.append(with_new - (time.perf_counter() - started))
        tpm.pcr10 = log.aggregate()  # back to the 100k state for the next repeat
    keylime_s, ours_s = min(keylime_times), min(ours_times)
    keylime_per_entry_us = keylime_s / ENTRIES * 1e6
    incremental_per_entry_us = min(incremental_times) / NEW_ENTRIES * 1e6
    return {"entries": ENTRIES, "keylime_s": round(keylime_s, 3), "hostwarden_s": round(ours_s, 3),
            "full_ratio": round(ours_s / keylime_s, 3), "keylime_us_per_entry": round(keylime_per_entry_us, 2),
            "incremental_us_per_new_entry": round(incremental_per_entry_us, 2),
            "incremental_ratio": round(incremental_per_entry_us / keylime_per_entry_us, 3)}


def differential(workdir: Path) -> dict:
    entries = synthetic_log(2000)
    cases: dict[str, tuple[list[str], list[SyntheticEntry], list[SyntheticEntry]]] = {}
    lines = [entry.ascii() for entry in entries]
    cases["good"] = (lines, entries, entries)
    cases["file_not_in_policy"] = (lines, entries[:700] + entries[701:], entries)
    cases["digest_not_allowed"] = (lines, [*entries[:5], entry_for(entries[5].path, b"x"), *entries[6:]],
                                   entries)
    edited = list(lines)
    edited[900] = SyntheticEntry(entries[900].path, b"\x05" * 32, entries[900].template).ascii()
    cases["edited_line"] = (edited, entries, entries)
    cases["truncated"] = (lines[:-10], entries, entries)
    cases["malformed_line"] = ([*lines[:50], "10 junk", *lines[50:]], entries, entries)
    unbacked = entry_for("/usr/lib/unbacked.so")
    cases["appended_unbacked"] = ([*lines, unbacked.ascii()], [*entries, unbacked], entries)
    results = {}
    for name, (case_lines, allowed, extended) in cases.items():
        write_policy(workdir / "policy.json", allowed)
        policy = RuntimePolicy.load(workdir / "policy.json").document
        tpm = SoftwareTpm()
        tpm.extend_log(SyntheticLog(list(extended)))
        keylime_ok, _ = keylime_verdict(case_lines, policy, tpm.pcr10)
        _, ours_ok, _ = hostwarden_verdict(workdir, "".join(line + "\n" for line in case_lines), tpm, [])
        results[name] = {"keylime": "accept" if keylime_ok else "reject",
                         "hostwarden": "accept" if ours_ok else "reject"}
    # keylime accepts a PCR matching any prefix: there hostwarden must (and does) differ.
    deliberate = {"appended_unbacked"}
    agree = all((result["keylime"] == result["hostwarden"]) != (name in deliberate)
                for name, result in results.items())
    return {"cases": results, "identical_except_deliberate": agree}


def quote_round_trip(workdir: Path, count: int) -> dict:
    if not tools_present():
        return {"skipped": "swtpm or tpm2-tools missing"}
    server = Swtpm(workdir / "swtpm")
    server.start()
    try:
        tpm = Tpm2Tools(server.tcti, workdir / "state", 10)
        started = time.perf_counter()
        ak_pem = tpm.ensure_ak()
        enrol_s = time.perf_counter() - started
        times = []
        for index in range(count):
            started = time.perf_counter()
            verify_quote(ak_pem, f"nonce{index}", tpm.quote(f"nonce{index}"))
            times.append(time.perf_counter() - started)
    finally:
        server.stop()
    return {"ak_enrol_ms": round(enrol_s * 1000, 1), "quotes": count,
            "p50_ms": round(statistics.median(times) * 1000, 2), "max_ms": round(max(times) * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, 5 quotes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostwarden-bench-attest-") as tmp:
        workdir = Path(tmp)
        keylime()  # import cost is not part of either side's timing
        full = full_and_incremental(workdir, 1 if args.quick else 3)
        print(f"full verification, {full['entries']} entries: keylime process_measurement_list "
              f"{full['keylime_s']} s (baseline) | hostwarden {full['hostwarden_s']} s "
              f"(ratio {full['full_ratio']}, target <= 1.0)")
        print(f"per new entry: keylime {full['keylime_us_per_entry']} us (baseline, full-log average) | "
              f"hostwarden incremental {full['incremental_us_per_new_entry']} us "
              f"(ratio {full['incremental_ratio']})")
        diff = differential(workdir)
        for name, result in diff["cases"].items():
            print(f"differential {name:20s} keylime {result['keylime']:6s} hostwarden {result['hostwarden']}")
        print(f"verdicts identical except where keylime is knowingly lax: {diff['identical_except_deliberate']}")
        quotes = quote_round_trip(workdir, 5 if args.quick else 30)
        print(f"swtpm quote round trip (tpm2_quote + verification): {quotes}")
    print(json.dumps({"full": full, "differential": diff, "quote": quotes}))


if __name__ == "__main__":
    main()
