"""Per-status precision and recall of decided statuses against the expected ones: one definition
for eval's report (`refusal_precision`, `escalation_recall`, ...) and tuning's learning curve,
which may not import eval. Settings-free: the curve also runs on a bare GPU machine.

    >>> status_precision_recall(["refused", "answered"], ["refused", "refused"], "refused")
    PrecisionRecall(precision=0.5, recall=1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class PrecisionRecall(NamedTuple):
    precision: float | None  # None: the status was never decided
    recall: float | None  # None: the status was never expected


def status_precision_recall(expected: Sequence[str], decided: Sequence[str], status: str) -> PrecisionRecall:
    """Of the items decided `status`, the share expected so (precision); of those expected
    `status`, the share decided so (recall); each rounded to 4 places."""
    hits = sum(e == d == status for e, d in zip(expected, decided))
    n_decided, n_expected = decided.count(status), expected.count(status)
    return PrecisionRecall(round(hits / n_decided, 4) if n_decided else None,
                           round(hits / n_expected, 4) if n_expected else None)
