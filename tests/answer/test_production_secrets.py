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


def test_demo_keys_work_only_on_a_loopback_bind(tmp_path):
    """Issue 15 #2: `local` with the published demo keys must not be reachable from the network."""
    from answer.auth import check_bind

    settings = Settings()  # environment local, the demo directory with its keys
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        check_bind(settings, host)
    for host in ("0.0.0.0", "::", "192.168.1.5", "policy.example.com"):
        with pytest.raises(ConfigError, match=f"refusing to serve on {host}.*demo API keys.*hannah"):
            check_bind(settings, host)
    check_bind(settings.model_copy(update={"directory_file": directory_without_demo_keys(tmp_path)}), "0.0.0.0")


def test_serve_on_all_interfaces_with_demo_keys_refuses_to_start_and_says_why(tmp_path):
    import os
    import subprocess
    import sys

    from tests.answer.helpers import free_port

    env = {**os.environ, "POLICYRAG_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    env.pop("POLICYRAG_ENVIRONMENT", None)
    done = subprocess.run([sys.executable, "-m", "policyrag", "serve", "--host", "0.0.0.0", "--port", str(free_port()),
                           "--backend", "local"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0" in done.stderr and "Bind to 127.0.0.1" in done.stderr
    assert not (tmp_path / "data" / "models").exists()  # refused before any model was provisioned
