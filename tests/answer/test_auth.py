"""answer/auth.py: API keys, demo keys, JWTs, and the credential errors."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from answer.auth import ApiKeyStore, Authenticator, Unauthenticated, hash_key
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


def test_an_edit_of_the_directory_takes_effect_at_the_next_request(make_service, tmp_path):
    """Issue 15 #7: the directory was read once at start, so a removed user or group kept access
    until a restart. A broken edit keeps the last valid directory (and says so in the log)."""
    import shutil

    import yaml
    from fastapi.testclient import TestClient

    from answer.app import create_app
    from tests.answer.hardening import ALICE, BOB

    directory = tmp_path / "directory.yaml"
    shutil.copy(PROJECT_ROOT / "policies" / "directory.yaml", directory)
    service = make_service("live-directory", directory_file=directory, retrieval_score_floor=0.99)
    with TestClient(create_app(service)) as client:
        assert client.get("/v1/me", headers=BOB).status_code == 200
        data = yaml.safe_load(directory.read_text())
        del data["users"]["bob"]
        data["users"]["alice"]["groups"] = ["contractors"]
        directory.write_text(yaml.safe_dump(data))
        assert client.get("/v1/me", headers=BOB).status_code == 401  # his demo key went with him
        assert client.get("/v1/me", headers=ALICE).json()["groups"] == ["contractors"]
        assert service.pipeline.retriever.principal("alice").groups == ("contractors",)
        directory.write_text("users: [broken")
        assert client.get("/v1/me", headers=ALICE).json()["groups"] == ["contractors"]  # the last valid one
        assert client.get("/v1/me", headers=BOB).status_code == 401
