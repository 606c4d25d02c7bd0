"""Who is asking: an API key or a JWT bearer token becomes a principal from the directory.

- API keys are stored only as sha256 hashes (`data/auth/api_keys.json`, written by
  `policyrag keys create`). The directory's demo keys are hashed when loaded and accepted only
  when `environment` is `local`, and then only on a loopback bind (`check_bind`).
- JWTs: HS256 with `POLICYRAG_JWT_HS256_SECRET` and/or RS256 with the public key in
  `POLICYRAG_JWT_RS256_PUBLIC_KEY_FILE`; `sub` is the user id; `exp` is required; audience and
  issuer are checked when set.
- The principal comes only from the credential, never from a request body. No or bad credential:
  `Unauthenticated` (401). A valid credential for a user not in the directory: `UnknownUser` (403).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from pathlib import Path

from core.durable import write_atomic
from core.errors import ConfigError, PolicyRagError
from core.settings import Settings
from retrieval.acl import Principal, UnknownUser, resolve_principal
from retrieval.directory import Directory, load_directory

KEY_PREFIX = "prk_"


class Unauthenticated(PolicyRagError):
    code = "unauthenticated"
    http_status = 401


class NotAnOperator(PolicyRagError):
    """A valid credential whose user is in none of POLICYRAG_OPERATOR_GROUPS (403)."""

    code = "forbidden"
    http_status = 403


def require_operator(settings: Settings, principal: Principal) -> Principal:
    if not set(principal.groups) & set(settings.operator_groups):
        raise NotAnOperator(f"{principal.user_id} is in none of the operator groups "
                            f"({', '.join(settings.operator_groups)}; POLICYRAG_OPERATOR_GROUPS)")
    return principal


def metrics_allowed(settings: Settings, client_host: str, authorization: str | None) -> bool:
    """/metrics without a user credential: the configured metrics token as a bearer token, or,
    when no token is configured, a loopback client (a local `curl`)."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    if token:
        given = (authorization or "").removeprefix("Bearer ").strip()
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())
    return is_loopback(client_host)


def hash_key(key: str) -> str:
    # keys are 32 random bytes, so a plain sha256 cannot be brute-forced; a slow KDF would only
    # add latency to every request
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyStore:
    """sha256(key) -> {user, label, created_at}; the key itself is shown once and never stored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"API key file {self.path} is not valid JSON ({exc}); restore it or delete it and re-issue keys") from None

    def _update(self, change) -> None:
        """Read, change and atomically rewrite the key file (0600) under an exclusive lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = change(self._read())
            write_atomic(self.path, json.dumps(keys, indent=2, sort_keys=True) + "\n", mode=0o600)

    def create(self, user: str, label: str = "") -> str:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        entry = {"user": user, "label": label,
                 "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self._update(lambda keys: {**keys, hash_key(key): entry})
        return key

    def revoke(self, user: str) -> int:
        removed = 0

        def drop(keys: dict[str, dict]) -> dict[str, dict]:
            nonlocal removed
            kept = {h: v for h, v in keys.items() if v["user"] != user}
            removed = len(keys) - len(kept)
            return kept

        self._update(drop)
        return removed

    def hashes(self) -> dict[str, str]:
        return {h: v["user"] for h, v in self._read().items()}

    def list(self) -> list[dict]:
        return [{"user": v["user"], "label": v.get("label", ""), "created_at": v.get("created_at", ""),
                 "hash_prefix": h[:12]} for h, v in sorted(self._read().items(), key=lambda kv: kv[1]["user"])]


class Authenticator:
    def __init__(self, settings: Settings, directory: Directory | Callable[[], Directory]) -> None:
        """`directory` is the directory, or a function giving it as it is now (the retriever's
        live one: removing a user or a demo key from the file takes effect at the next request)."""
        self.settings = settings
        self._directory = directory if callable(directory) else (lambda: directory)
        self.keys = ApiKeyStore(settings.api_keys_path)
        self._demo_of: tuple[Directory, dict[str, str]] | None = None
        self._rs256_key = None
        if settings.jwt_rs256_public_key_file is not None:
            try:
                self._rs256_key = settings.jwt_rs256_public_key_file.read_text()
            except OSError as exc:
                raise ConfigError(
                    f"POLICYRAG_JWT_RS256_PUBLIC_KEY_FILE {settings.jwt_rs256_public_key_file} cannot be read ({exc})"
                ) from None

    @property
    def directory(self) -> Directory:
        return self._directory()

    @property
    def _demo(self) -> dict[str, str]:
        """Hashed demo keys of the directory now (recomputed only when it changed)."""
        directory = self.directory
        if self._demo_of is None or self._demo_of[0] is not directory:
            demo = {}
            if self.settings.environment == "local":
                demo = {hash_key(u.api_key): uid for uid, u in directory.users.items() if u.api_key}
            self._demo_of = (directory, demo)
        return self._demo_of[1]

    def principal_for(self, authorization: str | None, api_key_header: str | None = None) -> Principal:
        user = self.user_for(authorization, api_key_header)
        try:
            return resolve_principal(self.directory, user)
        except UnknownUser:
            raise UnknownUser(
                f"the credential is valid but user {user!r} is not in the directory; ask an admin to add them"
            ) from None

    def user_for(self, authorization: str | None, api_key_header: str | None = None) -> str:
        token = api_key_header
        if token is None and authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthenticated("the Authorization header must be 'Bearer <API key or JWT>'")
            token = value.strip()
        if not token:
            raise Unauthenticated("no credential: send 'Authorization: Bearer <API key or JWT>' or an X-API-Key header")
        if token.count(".") == 2 and not token.startswith(KEY_PREFIX):
            return self._jwt_user(token)
        digest = hash_key(token)
        user = self.keys.hashes().get(digest) or self._demo.get(digest)
        if user is None:
            raise Unauthenticated("the API key is not valid (revoked, mistyped, or a demo key outside local)")
        return user

    def _jwt_user(self, token: str) -> str:
        import jwt

        keys: list[tuple[str, object]] = []
        if self.settings.jwt_hs256_secret is not None:
            keys.append(("HS256", self.settings.jwt_hs256_secret.get_secret_value()))
        if self._rs256_key is not None:
            keys.append(("RS256", self._rs256_key))
        if not keys:
            raise Unauthenticated("bearer JWTs are not accepted here: no JWT key is configured; use an API key")
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not a valid JWT ({exc})") from None
        key = dict(keys).get(algorithm)
        if key is None:
            raise Unauthenticated(f"JWT algorithm {algorithm!r} is not accepted; use {' or '.join(a for a, _ in keys)}")
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer, options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the JWT was rejected: {exc}") from None
        return str(claims["sub"])


# secrets anyone can read: placeholders, and the example/test values published in this repository
KNOWN_EXAMPLE_SECRETS = frozenset({
    "change-me", "changeme", "change_me", "secret", "your-256-bit-secret",
    "test-secret-of-at-least-32-bytes-length!", "another-secret-of-at-least-32-bytes!!",
})
MIN_JWT_SECRET_BYTES = 32  # HS256 signs with SHA-256: a shorter key is weaker than the hash (RFC 7518 §3.2)


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def demo_key_users(settings: Settings) -> list[str]:
    """Users of the directory file that carry a (published) demo API key."""
    return [uid for uid, user in load_directory(settings.directory_file).users.items() if user.api_key]


def check_bind(settings: Settings, host: str) -> None:
    """The directory's demo keys are published: in `local` they work only on a loopback bind, so
    `--host 0.0.0.0` with demo keys refuses to start instead of opening them to the network."""
    if settings.environment != "local" or is_loopback(host):
        return
    demo = demo_key_users(settings)
    if demo:
        raise ConfigError(
            f"refusing to serve on {host}: the directory {settings.directory_file} holds published demo API keys "
            f"(users: {', '.join(demo)}) and environment is 'local'. Bind to 127.0.0.1 for a local demo, or remove "
            "the demo keys, issue keys with `policyrag keys create` and set POLICYRAG_ENVIRONMENT=production"
        )


def check_production_secrets(settings: Settings) -> None:
    """Outside `local`, refuse demo API keys in the directory and a weak or known JWT secret."""
    if settings.environment == "local":
        return

    problems = []
    demo = demo_key_users(settings)
    if demo:
        problems.append(
            f"the directory {settings.directory_file} holds demo API keys "
            f"(users: {', '.join(demo)}); remove them and issue keys with `policyrag keys create`"
        )
    if settings.jwt_hs256_secret is not None:
        secret = settings.jwt_hs256_secret.get_secret_value()
        size = len(secret.encode("utf-8"))
        known = secret.strip().lower() in KNOWN_EXAMPLE_SECRETS
        if known or size < MIN_JWT_SECRET_BYTES:
            why = "is a published example value" if known else f"is only {size} bytes"
            problems.append(
                f"POLICYRAG_JWT_HS256_SECRET (jwt_hs256_secret) {why}; set it to a random secret of at least "
                f"{MIN_JWT_SECRET_BYTES} bytes, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`, "
                "or unset it to accept only API keys and RS256 tokens"
            )
    if problems:
        raise ConfigError(f"environment is {settings.environment!r}; refusing to start: " + "; ".join(problems))
