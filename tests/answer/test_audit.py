"""answer/audit.py: one record shape, rotation without loss, concurrent writers."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
from pathlib import Path

from answer.audit import AuditLog, AuditRecord


def record(user: str, n: int, at: dt.datetime | None = None) -> AuditRecord:
    at = at or dt.datetime.now(dt.timezone.utc)
    return AuditRecord(kind="answer", endpoint="test", at=at.isoformat(), user=user, question=f"q{n}")


def _n(read: dict) -> int:
    return int(read["question"][1:])


def test_the_audit_log_rotates_and_reads_back_every_record_in_order(tmp_path):
    log = AuditLog(tmp_path, max_bytes=2_000)
    for n in range(100):
        log.append(record("alice" if n % 2 else "bob", n))
    assert len(log.files()) > 3
    assert [_n(r) for r in log.read()] == list(range(100))
    assert [_n(r) for r in log.read(user="alice")] == list(range(1, 100, 2))
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"


def test_the_audit_log_filters_by_date(tmp_path):
    log = AuditLog(tmp_path)
    day = dt.datetime(2026, 11, 1, 12, tzinfo=dt.timezone.utc)
    for n in range(5):
        log.append(record("alice", n, day + dt.timedelta(days=n)))
    got = log.read(since=day + dt.timedelta(days=1), until=day + dt.timedelta(days=3))
    assert [_n(r) for r in got] == [1, 2]


def _write_many(folder: str, who: str) -> None:
    log = AuditLog(Path(folder), max_bytes=4_000)
    for n in range(60):
        log.append(record(who, n))


def test_concurrent_writers_in_several_processes_lose_no_record(tmp_path):
    """The service and a CLI `ask` may write at once, across rotations."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), f"w{i}")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = list(AuditLog(tmp_path).read())
    assert len(records) == 180
    for i in range(3):
        assert [_n(r) for r in records if r["user"] == f"w{i}"] == list(range(60))
    for path in AuditLog(tmp_path).files():
        for line in path.read_text().splitlines():
            json.loads(line)  # no interleaved or torn line


def test_rotation_never_deletes_a_record_and_warns_past_the_alert_size(tmp_path, caplog):
    """Issue 15 #1: size rotation used to delete the oldest file past 20 backups, so a user who
    flooded the log erased the trail. Now files are only renamed."""
    log = AuditLog(tmp_path, max_bytes=1_000, alert_bytes=20_000)
    with caplog.at_level("WARNING", logger="answer.audit"):
        for n in range(400):
            log.append(record("mallory", n))
    assert len(log.files()) > 21
    assert [_n(r) for r in log.read()] == list(range(400))
    assert log.size_bytes() > 20_000 and "archive the oldest files" in caplog.text


def test_files_of_the_earlier_numbering_are_read_first_in_order(tmp_path):
    AuditLog(tmp_path, max_bytes=10**9).append(record("a", 0))
    (tmp_path / "audit.jsonl").rename(tmp_path / "audit.jsonl.2")  # oldest, earlier numbering
    AuditLog(tmp_path, max_bytes=10**9).append(record("a", 1))
    (tmp_path / "audit.jsonl").rename(tmp_path / "audit.jsonl.1")
    log = AuditLog(tmp_path, max_bytes=300)
    for n in range(2, 8):
        log.append(record("a", n))
    assert [_n(r) for r in log.read()] == list(range(8))


def test_a_torn_line_is_skipped_and_named_and_the_records_around_it_are_read(tmp_path):
    """Issue 15 #14: one torn line (a crash mid-write) made `policyrag audit` fail with JSONDecodeError."""
    log = AuditLog(tmp_path)
    log.append(record("alice", 0))
    with open(log.path, "ab") as handle:
        handle.write(b'{"at": "2026-11-29T10:00:00+00:00", "kind": "answer", "user": "ali')  # cut short
        handle.write(b"\n")
    log.append(record("alice", 1))
    assert [_n(r) for r in log.read()] == [0, 1]
    assert log.torn_lines == ["audit.jsonl:2"]


def test_the_audit_command_streams_the_newest_records_and_reports_torn_lines(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from policyrag.cli import app

    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(tmp_path))
    log = AuditLog(tmp_path / "audit")
    for n in range(30):
        log.append(record("alice", n))
    with open(log.path, "ab") as handle:
        handle.write(b'{"at": "2026-11\n')
    result = CliRunner().invoke(app, ["audit", "--limit", "3", "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert [json.loads(line)["question"] for line in lines] == ["q27", "q28", "q29"]
    assert "1 torn line(s) skipped" in result.stderr
