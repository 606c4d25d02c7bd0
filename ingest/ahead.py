"""`map_ahead`: a map whose calls run in one background thread, a bounded number of items ahead
of the consumer.

Ingest uses it to scrub PII (Presidio + spaCy: Python, one core) for the next documents while
the main thread embeds the current batch (OpenVINO, which releases the GIL), so the two
stages overlap on two cores instead of taking turns. `ThreadPoolExecutor.map` alone would
submit every item at once and hold every result until it is read, so memory would grow with the
corpus; here at most `depth` results wait.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_ahead(fn: Callable[[T], R], items: Iterable[T], *, depth: int) -> Iterator[R]:
    """`fn(item)` for each item, in order; an exception from `fn` is raised here, at its item.
    Closing the iterator early cancels the calls not yet started."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    pool = ThreadPoolExecutor(1, thread_name_prefix="ingest-ahead")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
