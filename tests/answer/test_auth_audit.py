"""Credentials → principal, the audit log, and the follow-up rule (no model needed)."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from answer.audit import AuditLog, AuditRecord
from answer.auth import ApiKeyStore, Authenticator, Unauthenticated, hash_key
from answer.pipeline import rewrite_follow_up
from core.errors import ConfigError
from core.settings import PROJECT_ROOT, Settings
from retrieval.acl import UnknownUser
from retrieval.directory import load_directory

DIRECTORY = load_directory(PROJECT_ROOT / "policies" / "directory.yaml")
SECRET = "test-secret-of-at-least-32-bytes-length!"


def token(sub="alice", *, key=SECRET, alg="HS256", exp=300, **claims) -> str:
    payload = {"sub": sub, "exp": int(time.time()) + exp, **claims}
    return jwt.encode(payload, key, algorithm=alg)


@pytest.fixture
def auth(tmp_path) -> Authenticator:
    return Authenticator(Settings(data_dir=tmp_path, jwt_hs256_secret=SECRET), DIRECTORY)


def test_issued_api_keys_are_stored_only_as_hashes_and_can_be_revoked(auth, tmp_path):
    store = ApiKeyStore(auth.settings.api_keys_path)
    key = store.create("bob", "hr system")
    text = auth.settings.api_keys_path.read_text()
    assert key not in text and hash_key(key) in text
    assert auth.principal_for(f"Bearer {key}").user_id == "bob"
    assert auth.principal_for(None, key).user_id == "bob"  # X-API-Key header
    assert store.revoke("bob") == 1
    assert oct(auth.settings.api_keys_path.stat().st_mode & 0o777) == "0o600"  # a rewrite keeps it private
    with pytest.raises(Unauthenticated):
        auth.principal_for(f"Bearer {key}")


def test_demo_keys_work_only_in_local(tmp_path):
    local = Authenticator(Settings(data_dir=tmp_path), DIRECTORY)
    assert local.principal_for("Bearer demo-alice-7Qm2").user_id == "alice"
    prod = Authenticator(Settings(data_dir=tmp_path, environment="production"), DIRECTORY)
    with pytest.raises(Unauthenticated):
        prod.principal_for("Bearer demo-alice-7Qm2")


def test_the_service_refuses_to_start_outside_local_with_demo_keys(tmp_path):
    from answer.auth import check_production_secrets

    with pytest.raises(ConfigError, match="demo API keys"):
        check_production_secrets(Settings(data_dir=tmp_path, environment="production"))


def test_hs256_tokens_map_sub_to_the_directory(auth):
    assert auth.principal_for(f"Bearer {token('clara')}").user_id == "clara"
    with pytest.raises(UnknownUser):  # valid credential, user not in the directory -> 403
        auth.principal_for(f"Bearer {token('mallory')}")
    for bad in (token(exp=-10), token(key="another-secret-of-at-least-32-bytes!!"), token()[:-3] + "abc"):
        with pytest.raises(Unauthenticated):
            auth.principal_for(f"Bearer {bad}")
    no_exp = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="exp"):
        auth.principal_for(f"Bearer {no_exp}")


def test_rs256_tokens_are_verified_with_the_public_key_and_audience(tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(public)
    auth = Authenticator(Settings(data_dir=tmp_path, jwt_rs256_public_key_file=tmp_path / "pub.pem",
                                  jwt_audience="policyrag"), DIRECTORY)
    good = token("leo", key=private, alg="RS256", aud="policyrag")
    assert auth.principal_for(f"Bearer {good}").user_id == "leo"
    with pytest.raises(Unauthenticated):
        auth.principal_for(f"Bearer {token('leo', key=private, alg='RS256', aud='other')}")
    with pytest.raises(Unauthenticated, match="HS256"):  # no HS256 secret configured: alg refused
        auth.principal_for(f"Bearer {token('leo')}")


def test_missing_or_malformed_headers_say_what_to_send(auth):
    for header in (None, "", "Basic xyz", "Bearer "):
        with pytest.raises(Unauthenticated, match="Bearer"):
            auth.principal_for(header)


# -- audit log ----------------------------------------------------------------------------------


def record(user: str, n: int, at: dt.datetime | None = None) -> AuditRecord:
    at = at or dt.datetime.now(dt.timezone.utc)
    return AuditRecord(kind="answer", endpoint="test", at=at.isoformat(), user=user, question=f"q{n}")


def _n(read: dict) -> int:
    return int(read["question"][1:])


def test_the_audit_log_rotates_and_reads_back_every_record_in_order(tmp_path):
    log = AuditLog(tmp_path, max_bytes=2_000, backups=50)
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
    log = AuditLog(Path(folder), max_bytes=4_000, backups=1000)
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
    records = list(AuditLog(tmp_path, backups=1000).read())
    assert len(records) == 180
    for i in range(3):
        assert [_n(r) for r in records if r["user"] == f"w{i}"] == list(range(60))
    for path in AuditLog(tmp_path).files():
        for line in path.read_text().splitlines():
            json.loads(line)  # no interleaved or torn line


# -- follow-ups ---------------------------------------------------------------------------------


def test_follow_ups_are_joined_to_the_previous_question_and_others_stand_alone():
    prev = ["How many days of annual leave can I carry over?"]
    assert rewrite_follow_up("What about contractors?", prev) == f"{prev[0]} Follow-up: What about contractors?"
    assert rewrite_follow_up("Does that apply in Germany too?", prev).startswith(prev[0])
    standalone = "What is the maximum hotel rate for a business trip to London?"
    assert rewrite_follow_up(standalone, prev) == standalone
    assert rewrite_follow_up("and  if I am  part-time?", []) == "and if I am part-time?"


@given(st.text(min_size=1, max_size=200), st.lists(st.text(min_size=1, max_size=80), max_size=3))
def test_a_rewrite_always_keeps_the_question(question, previous):
    out = rewrite_follow_up(question, previous)
    assert " ".join(question.split()) in out
