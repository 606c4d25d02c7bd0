"""The directory of users: who belongs to which groups and region (`policies/directory.yaml`)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ConfigError

logger = logging.getLogger(__name__)

# the regions a document or a user belongs to; access by region is decided in retrieval/acl.py
Region = Literal["global", "UK", "US", "DE"]
REGIONS: tuple[str, ...] = ("global", "UK", "US", "DE")


class DirectoryUser(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    groups: tuple[str, ...] = ()
    region: Region
    api_key: str | None = Field(None, description="demo keys only; refused outside `local`")


class Directory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    users: dict[str, DirectoryUser]
    groups: dict[str, str] = Field(default_factory=dict, description="group -> description")

    @property
    def known_groups(self) -> set[str]:
        known = set(self.groups)
        for user in self.users.values():
            known.update(user.groups)
        return known


def load_directory(path: Path) -> Directory:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"directory file {path} not found; set POLICYRAG_DIRECTORY_FILE"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"directory file {path} is not valid YAML: {exc}") from None
    try:
        return Directory.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"directory file {path} is invalid: {exc}") from None


class LiveDirectory:
    """The directory file as it is now: `current()` re-reads it when its modification time or size
    changed (one `stat` per call), so a user or group removed from the file loses access at the
    next request, not at the next restart. An edit that does not load (bad YAML, unknown field)
    is logged and the last valid directory stays in force until the file is fixed.

    Usage: `LiveDirectory(path).current().users`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._directory = load_directory(path)

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def current(self) -> Directory:
        stamp = self._stat()
        if stamp == self._stamp:
            return self._directory
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._directory = load_directory(self.path)
                except ConfigError as exc:
                    logger.error("the directory edit is not in force, the last valid one is: %s", exc)
                self._stamp = stamp
        return self._directory
