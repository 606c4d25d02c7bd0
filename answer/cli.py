"""`policyrag serve`, `policyrag ask`, `policyrag audit`, `policyrag keys ...` (registered on the
root app in policyrag/cli.py)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.table import Table

from core.errors import ConfigError
from core.settings import get_settings, settings_for_backend
from core.terminal import console, err_console

keys_app = typer.Typer(help="API keys (stored hashed).", no_args_is_help=True)


def serve(
    host: Annotated[str | None, typer.Option(help="default: POLICYRAG_SERVICE_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default: POLICYRAG_SERVICE_PORT")] = None,
    backend: Annotated[str | None, typer.Option(help="vllm or local (default: POLICYRAG_ANSWER_BACKEND)")] = None,
) -> None:
    """The answer service (and, unless POLICYRAG_VLLM_URL is set, the vLLM server it supervises)."""
    from answer.app import build_service, run_service
    from answer.auth import check_bind

    settings = settings_for_backend(backend)
    host = host or settings.service_host
    port = port or settings.service_port
    check_bind(settings, host)  # before the model server starts
    with err_console.status("starting the answer service") as status:
        service = build_service(settings, on_stage=status.update)
    try:
        err_console.print(f"[green]serving[/] http://{host}:{port}/  (chat page; API docs at /docs)")
        run_service(service, host, port)
    finally:
        service.close()


def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    user: Annotated[str, typer.Option("--as", help="the asking user (a directory user id)")],
    backend: Annotated[str | None, typer.Option(help="vllm or local (default: POLICYRAG_ANSWER_BACKEND)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Answer one question as USER through the same pipeline as the service."""
    from answer.app import build_service
    from answer.openai_format import message_text

    settings = settings_for_backend(backend)
    with err_console.status("loading") as status:
        service = build_service(settings, on_stage=status.update)
    try:
        principal = service.pipeline.retriever.principal(user)
        result = service.pipeline.answer(principal, question, endpoint="cli")
    finally:
        service.close()
    if as_json:
        console.print_json(json.dumps(result.to_json()))
        return
    colour = {"answered": "green", "refused": "yellow", "escalate": "magenta"}[result.status]
    console.print(f"[bold {colour}]{result.status}[/]" + (f" ({result.answer.reason})" if result.answer.reason else ""))
    console.print(message_text(result), markup=False)
    v = result.versions
    console.print(f"[dim]adapter {v['adapter'] or 'none (base model)'} · {v['backend']} · "
                  f"{result.latency_ms['total'] / 1000:.1f} s · request {result.request_id}[/]")


def _parse_date(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--{name} {value!r} is not a date; use YYYY-MM-DD or an ISO timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def audit(
    user: Annotated[str | None, typer.Option(help="only this user's questions")] = None,
    since: Annotated[str | None, typer.Option(help="from this date/time (UTC), inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="before this date/time (UTC)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many (the newest)")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON record per line")] = False,
) -> None:
    """Read the audit log: who asked what, what was retrieved, the answer and the versions."""
    from answer.audit import AuditLog

    settings = get_settings()
    start, end = _parse_date(since, "since"), _parse_date(until, "until")
    if until is not None and len(until) == 10:
        end = end + dt.timedelta(days=1)  # --until 2026-11-28 includes that whole day
    from collections import deque

    log = AuditLog(settings.audit_dir)
    records = list(deque(log.read(user=user, since=start, until=end), maxlen=limit))  # streamed: the newest N only
    if log.torn_lines:
        err_console.print(f"[yellow]{len(log.torn_lines)} torn line(s) skipped[/] (a write cut short, e.g. by a "
                          f"crash): {', '.join(log.torn_lines[:5])}")
    if as_json:
        for record in records:
            typer.echo(json.dumps(record, ensure_ascii=False))
        return
    table = Table(title=f"audit log ({len(records)} records)")
    for column in ("at", "user", "endpoint", "question", "status", "cited", "adapter", "ms"):
        table.add_column(column)
    for r in records:
        if r["kind"] == "operator":  # an operator action (adapters promote)
            table.add_row(r["at"][:19], r.get("user", ""), r["endpoint"],
                          f"{r.get('action')} {r.get('version')}" + (" (forced)" if r.get("forced") else ""),
                          "", "", str(r.get("version")), "")
            continue
        cited = ", ".join(c["id"] for c in json.loads(r["answer"])["citations"])
        table.add_row(r["at"][:19], r["user"], r["endpoint"], r["question"][:60], r["status"], cited,
                      str(r["versions"].get("adapter")), f"{r['latency_ms']['total']:.0f}")
    console.print(table)


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option(help="directory user id")],
    label: Annotated[str, typer.Option(help="what the key is for")] = "",
) -> None:
    """Issue an API key for USER; it is printed once and stored only as a hash."""
    from answer.auth import ApiKeyStore
    from retrieval.acl import resolve_principal
    from retrieval.directory import load_directory

    settings = get_settings()
    resolve_principal(load_directory(settings.directory_file), user)
    key = ApiKeyStore(settings.api_keys_path).create(user, label)
    err_console.print(f"API key for {user} (shown once; store it now):")
    typer.echo(key)


@keys_app.command("revoke")
def keys_revoke(user: Annotated[str, typer.Option(help="directory user id")]) -> None:
    """Revoke every API key of USER."""
    from answer.auth import ApiKeyStore

    n = ApiKeyStore(get_settings().api_keys_path).revoke(user)
    console.print(f"revoked {n} key(s) of {user}")


@keys_app.command("list")
def keys_list() -> None:
    """Issued keys (user, label, date; never the key)."""
    from answer.auth import ApiKeyStore

    rows = ApiKeyStore(get_settings().api_keys_path).list()
    table = Table(title=f"{len(rows)} API keys")
    for column in ("user", "label", "created", "hash"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["user"], row["label"], row["created_at"], row["hash_prefix"] + "…")
    console.print(table)

