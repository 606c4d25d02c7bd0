"""Outside `local`, a weak or published JWT secret or demo keys stop the service (answer/auth.py)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import jwt
import pytest
import yaml
from fastapi.testclient import TestClient

from answer.app import build_service, create_app
from answer.auth import check_production_secrets
from core.errors import ConfigError
from core.settings import Settings
from tests.answer.hardening import (
    ALICE,
    assert_house_error,
)
from tests.answer.helpers import (
    copy_data,
)
from tests.conftest import CORPUS


def directory_without_demo_keys(tmp_path: Path) -> Path:
    data = yaml.safe_load((CORPUS / "directory.yaml").read_text())
    for user in data["users"].values():
        user.pop("api_key", None)
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("secret", [
    "change-me",
    "CHANGE-ME",
    "x" * 31,  # one byte short
    "test-secret-of-at-least-32-bytes-length!",  # long enough, but published in this repository
])
@pytest.mark.parametrize("environment", ["staging", "production"])
def test_outside_local_a_weak_or_published_jwt_secret_stops_the_service(tmp_path, secret, environment):
    settings_ = Settings(data_dir=tmp_path / "data", environment=environment,
                         directory_file=directory_without_demo_keys(tmp_path), jwt_hs256_secret=secret)
    with pytest.raises(ConfigError, match="POLICYRAG_JWT_HS256_SECRET") as caught:
        build_service(settings_)  # refuses before opening anything
    message = str(caught.value)
    assert "32 bytes" in message and environment in message
    assert secret not in message  # the error names the setting, never the secret
    check_production_secrets(settings_.model_copy(update={"environment": "local"}))  # local development may


def test_demo_keys_and_a_weak_secret_are_both_named_in_one_refusal(tmp_path):
    with pytest.raises(ConfigError) as caught:
        check_production_secrets(Settings(data_dir=tmp_path, environment="production", jwt_hs256_secret="change-me"))
    assert "demo API keys" in str(caught.value) and "POLICYRAG_JWT_HS256_SECRET" in str(caught.value)


def test_outside_local_a_long_random_secret_and_no_demo_keys_start_the_service(answer_data, local_backend, embedder, tmp_path):
    secret = secrets.token_hex(24)  # 48 bytes
    svc = build_service(
        Settings(data_dir=copy_data(answer_data, tmp_path / "data"), environment="production",
                 directory_file=directory_without_demo_keys(tmp_path), jwt_hs256_secret=secret),
        backend=local_backend, embedder=embedder)
    try:
        with TestClient(create_app(svc)) as client:
            token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, secret, algorithm="HS256")
            me = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200 and me.json()["user"] == "alice"
            assert_house_error(client.get("/v1/me", headers=ALICE), 401, "unauthenticated")  # demo key refused
    finally:
        svc.pipeline.retriever.store.close()
