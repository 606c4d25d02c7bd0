"""The directory of users: who belongs to which groups and region (`policies/directory.yaml`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ConfigError

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
