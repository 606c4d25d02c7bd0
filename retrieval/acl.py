"""Access control: the one place a principal becomes a store filter.

A principal may read a chunk when the chunk's `groups` share at least one group with the
principal, and the chunk's `region` is `global` or the principal's region (a principal whose
region is `global`, e.g. central HR, reads every region). The store holds only current document
versions (superseded ones are removed at ingest), so no version condition is needed here.

The filter is applied inside every store query, in every prefetch of a hybrid query. Caller
filters are ANDed onto it: they can narrow what a principal sees, never widen it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import PolicyRagError
from retrieval.directory import Directory


class AccessError(PolicyRagError):
    code = "access_denied"
    http_status = 403


class UnknownUser(AccessError):
    code = "unknown_user"


class NoGroups(AccessError):
    code = "no_groups"


@dataclass(frozen=True)
class Principal:
    user_id: str
    groups: tuple[str, ...]
    region: str


@dataclass(frozen=True)
class FieldMatch:
    """`key` has at least one of `values` (for list fields: any element matches)."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class StoreFilter:
    """A conjunction of FieldMatch conditions; every store backend translates it 1:1."""

    must: tuple[FieldMatch, ...]

    def matches(self, payload: dict) -> bool:
        """Evaluate locally (used by tests and benchmarks as the exact reference)."""
        for cond in self.must:
            value = payload.get(cond.key)
            have = set(value) if isinstance(value, list) else {value}
            if not have & set(cond.values):
                return False
        return True


# fields a caller may narrow on; each maps to a payload key with a keyword index
NARROWABLE_FIELDS = ("doc_id", "region", "groups", "version", "citation_id")


@dataclass(frozen=True)
class SearchFilters:
    """Caller filters, e.g. `SearchFilters(doc_ids=("leave-uk",))`. They only ever narrow."""

    doc_ids: tuple[str, ...] | None = None
    regions: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None

    def conditions(self) -> tuple[FieldMatch, ...]:
        out = []
        for key, values in (("doc_id", self.doc_ids), ("region", self.regions), ("groups", self.groups)):
            if values is not None:
                # an empty list narrows to nothing rather than being ignored
                out.append(FieldMatch(key, tuple(values)))
        return tuple(out)


def resolve_principal(directory: Directory, user_id: str) -> Principal:
    user = directory.users.get(user_id)
    if user is None:
        raise UnknownUser(
            f"unknown user {user_id!r}: not in the directory; add them to the directory file "
            "or use a known user id"
        )
    if not user.groups:
        raise NoGroups(
            f"user {user_id!r} belongs to no group and may read nothing; add a group in the "
            "directory file"
        )
    return Principal(user_id, tuple(sorted(user.groups)), user.region)


def build_acl_filter(principal: Principal, narrow: SearchFilters | None = None) -> StoreFilter:
    """The access filter for `principal`, ANDed with the caller's narrowing filters."""
    if not principal.groups:
        raise NoGroups(f"principal {principal.user_id!r} has no groups")
    must: list[FieldMatch] = [FieldMatch("groups", tuple(sorted(principal.groups)))]
    if principal.region != "global":
        must.append(FieldMatch("region", ("global", principal.region)))
    if narrow is not None:
        must.extend(narrow.conditions())
    return StoreFilter(tuple(must))


def may_read(principal: Principal, groups: Sequence[str], region: str) -> bool:
    """Whether `principal` may read a chunk with these `groups` and `region`: the access filter
    itself, evaluated locally, so eval's leak check and tuning's audience check can never drift
    from what the store query enforces."""
    return build_acl_filter(principal).matches({"groups": list(groups), "region": region})
