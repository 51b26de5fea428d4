from __future__ import annotations

import pytest

from hostwarden.attest.imalog import ImaEntry, ImaLogError, ImaLogReader, ImaParseError, LogFormat
from tests.unit.attest.synthetic import SyntheticEntry, SyntheticLog, entry_for


def _three_templates() -> SyntheticLog:
    log = SyntheticLog()
    log.add(entry_for("/usr/bin/ls"))
    log.add(SyntheticEntry("/usr/bin/signed", entry_for("/x").digest, "ima-sig", extra=b""))
    log.add(SyntheticEntry("kernel_version", entry_for("/y").digest, "ima-buf", extra=b"6.1.0"))
    return log


@pytest.mark.parametrize("log_format", [LogFormat.ASCII, LogFormat.BINARY])
def test_both_formats_give_the_same_entries_with_the_exact_template_data(tmp_path, log_format):
    log = _three_templates()
    path = tmp_path / "measurements"
    if log_format is LogFormat.ASCII:
        path.write_text(log.ascii())
    else:
        path.write_bytes(log.binary())
    entries = ImaLogReader(path, log_format).read_new()
    assert all(isinstance(entry, ImaEntry) for entry in entries)
    assert [entry.line for entry in entries] == [synthetic.ascii() for synthetic in log.entries]
    assert [entry.template_data for entry in entries] == [synthetic.template_data for synthetic in log.entries]
    assert [entry.template for entry in entries] == ["ima-ng", "ima-sig", "ima-buf"]
    assert entries[2].extra_hex == b"6.1.0".hex()
    assert entries[1].line.endswith(" ")  # ima-sig keeps the separator before an empty signature


def test_format_is_taken_from_the_file_name():
    assert ImaLogReader("/x/binary_runtime_measurements").format is LogFormat.BINARY
    assert ImaLogReader("/x/ascii_runtime_measurements").format is LogFormat.ASCII


def test_only_new_entries_each_round_and_a_partial_line_waits(tmp_path):
    log = SyntheticLog([entry_for(f"/bin/{name}") for name in "abc"])
    path = tmp_path / "log"
    text = log.ascii()
    cut = text.index("/bin/c") + 3
    path.write_text(text[:cut])
    reader = ImaLogReader(path)
    assert [entry.path for entry in reader.read_new()] == ["/bin/a", "/bin/b"]
    assert reader.read_new() == []
    path.write_text(text)
    third = reader.read_new()
    assert [(entry.index, entry.path) for entry in third] == [(2, "/bin/c")]


def test_binary_record_split_across_reads_waits_for_the_rest(tmp_path):
    log = SyntheticLog([entry_for("/bin/a"), entry_for("/bin/b")])
    data = log.binary()
    path = tmp_path / "binary_runtime_measurements"
    path.write_bytes(data[:-5])
    reader = ImaLogReader(path)
    assert [entry.path for entry in reader.read_new()] == ["/bin/a"]
    path.write_bytes(data)
    assert [entry.path for entry in reader.read_new()] == ["/bin/b"]


@pytest.mark.parametrize(("line", "reason"), [
    ("10 zz ima-ng sha256:00 /bin/x", "not valid hex"),
    ("10 " + "0" * 40 + " ima-foo sha256:00 /bin/x", "template 'ima-foo' is not supported"),
    ("10 " + "0" * 40 + " ima-ng", "expected 'PCR TEMPLATE-HASH TEMPLATE FIELDS...'"),
    ("ten " + "0" * 40 + " ima-ng sha256:00 /bin/x", "is not a number"),
    ("10 " + "0" * 40 + " ima-ng 00ff /bin/x", "is not of the form ALG:HEX"),
    ("10 " + "0" * 40 + " ima-sig sha256:00", "wrong number of fields"),
])
def test_bad_lines_are_reported_with_their_position_and_reading_goes_on(tmp_path, line, reason):
    good = entry_for("/bin/good")
    path = tmp_path / "log"
    path.write_text(line + "\n" + good.ascii() + "\n")
    first, second = ImaLogReader(path).read_new()
    assert isinstance(first, ImaParseError)
    assert reason in first.reason
    assert first.where == "line 1"
    assert isinstance(second, ImaEntry) and second.index == 1 and second.path == "/bin/good"


def test_non_utf8_line_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"10 \xff\xfe ima-ng\n")
    (error,) = ImaLogReader(path).read_new()
    assert isinstance(error, ImaParseError) and "UTF-8" in error.reason


def test_binary_with_an_implausible_length_stops_framing_with_a_clear_error(tmp_path):
    path = tmp_path / "binary_runtime_measurements"
    path.write_bytes(entry_for("/bin/a").binary() + b"\x0a\0\0\0" + bytes(20) + b"\xff\xff\xff\x00" + bytes(40))
    reader = ImaLogReader(path)
    good, bad = reader.read_new()
    assert isinstance(good, ImaEntry)
    assert isinstance(bad, ImaParseError) and "cannot be framed" in bad.reason
    assert reader.read_new() == []


def test_binary_record_with_broken_fields_is_an_error(tmp_path):
    broken = SyntheticEntry("/bin/a", bytes(32))
    record = broken.binary()
    path = tmp_path / "binary_runtime_measurements"
    name_length_at = 4 + 20 + 4 + len(b"ima-ng") + 4 + 4 + len(b"sha256:\0") + 32
    path.write_bytes(record[:name_length_at] + (200).to_bytes(4, "little") + record[name_length_at + 4 :])
    (error,) = ImaLogReader(path).read_new()
    assert isinstance(error, ImaParseError) and "runs past" in error.reason


def test_a_log_that_shrinks_was_rewritten(tmp_path):
    path = tmp_path / "log"
    path.write_text(SyntheticLog([entry_for("/a"), entry_for("/b")]).ascii())
    reader = ImaLogReader(path)
    reader.read_new()
    path.write_text(entry_for("/a").ascii() + "\n")
    with pytest.raises(ImaLogError, match="truncated or replaced"):
        reader.read_new()


def test_a_missing_log_is_a_clear_error(tmp_path):
    with pytest.raises(ImaLogError, match=r"cannot read the IMA log .*\[attest\] ima_log"):
        ImaLogReader(tmp_path / "absent").read_new()
