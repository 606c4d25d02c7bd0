"""`ingest --watch`: apply changes to a folder as they land."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from ingest.pipeline import Ingestor, IngestReport

logger = logging.getLogger(__name__)

RESCAN_MS = 3_600_000  # also re-run hourly: a version whose effective date arrives becomes current


def watch_folder(
    ingestor: Ingestor,
    root: Path,
    on_report: Callable[[IngestReport], None],
    *,
    default_groups: Iterable[str] | None = None,
    stop_event: threading.Event | None = None,
    debounce_ms: int = 400,
) -> None:
    """Ingest `root` now, then again after every batch of file changes until `stop_event`."""
    from watchfiles import watch

    groups = list(default_groups or [])
    on_report(ingestor.run(root, default_groups=groups))
    for _changes in watch(
        root,
        stop_event=stop_event,
        debounce=debounce_ms,
        step=50,
        rust_timeout=RESCAN_MS,
        yield_on_timeout=True,
        recursive=True,
    ):
        try:
            on_report(ingestor.run(root, default_groups=groups))
        except Exception:  # keep watching: the next change may fix it
            logger.exception("ingest run failed; watching on")
