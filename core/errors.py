"""The one exception root of policyrag.

    PolicyRagError
    ├── ConfigError            a setting or a data file is wrong; the message names it
    ├── ModelMissingError      a model package or path is not installed / not found
    ├── DocumentRejected       one input document cannot be ingested (the run goes on)
    └── StoreError             the vector store failed or is locked by another process

Every message says what was wrong, the offending value, and what to do. Later stages add their
own subclasses of PolicyRagError next to their code. Each class carries its stable `code` and the
HTTP status the answer service gives it (`http_status`); the root's 500 is for no error on
purpose, and a test checks that every subclass chooses its own.
"""

from __future__ import annotations


class PolicyRagError(Exception):
    """Root of every error policyrag raises on purpose."""

    code = "policyrag_error"
    http_status = 500


class ConfigError(PolicyRagError):
    code = "config_error"
    http_status = 422  # a wrong setting or input; at request time, bad input


class ModelMissingError(PolicyRagError):
    code = "model_missing"
    http_status = 503


class DocumentRejected(PolicyRagError):
    """One file cannot be ingested; `reason` is a short machine-readable tag."""

    code = "document_rejected"
    http_status = 422

    def __init__(self, path: str, reason: str, message: str,
                 access: tuple[str, tuple[str, ...], str] | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = reason
        self.message = message
        # the (id, groups, region) the rejected file declares, when its metadata could be read:
        # an edit that narrows who may read an indexed document withdraws it (ingest/plan.py)
        self.access = access


class StoreError(PolicyRagError):
    code = "store_error"
    http_status = 503


class DiskFull(StoreError):
    """Too little free space to write the index safely (the embedded store memory-maps its files:
    running out of space mid-write would crash the process instead of raising)."""

    code = "disk_full"
