"""Which registered versions of a model serve: the store's view of a version and the version
policies (CAPSNET_VERSION_POLICY), in the spirit of Triton's `version_policy`:
    best          one version: the highest validation accuracy recorded at export (on a tie float32
                  before INT8, then the newest)
    latest[:N]    the N newest (default 1)
    all           every registered version
    specific:V,W  exactly these versions
The versions a policy selects are listed in order of preference; a request that names no version
gets the first. `best` is the default so that training a quick model never displaces a better one
that is already registered (`make pretrained` then `make pipeline` keeps serving the 99.6 % model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from serving.errors import InputError

POLICY_KINDS = ("best", "latest", "all", "specific")


def split_tag(tag: str) -> tuple[str, str]:
    """'name:version' -> (name, version); a bare name -> (name, '')."""
    name, _, version = tag.partition(":")
    return name, version


@dataclass(frozen=True)
class StoredVersion:
    """One registered version in the model store, as far as choosing it goes."""

    name: str
    version: str
    created: datetime
    val_accuracy: float | None = None
    precision: str = "fp32"  # an INT8 version (capsnet export --int8) says "int8"

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "best"
    count: int = 1  # latest:N
    versions: tuple[str, ...] = ()  # specific:V,W

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """'best', 'latest', 'latest:3', 'all' or 'specific:V1,V2'; ValueError (an InputError) says what is valid."""
        kind, _, argument = text.strip().partition(":")
        if kind not in POLICY_KINDS:
            raise InputError(f"unknown version policy {text!r}; use best, latest[:N], all or specific:V1,V2")
        if kind == "latest":
            if argument and (not argument.isdigit() or int(argument) < 1):
                raise InputError(f"version policy {text!r}: latest:N needs a whole number N >= 1")
            return cls(kind, int(argument or 1))
        if kind == "specific":
            versions = tuple(v.strip() for v in argument.split(",") if v.strip())
            if not versions:
                raise InputError(f"version policy {text!r}: name the versions, specific:V1,V2")
            return cls(kind, versions=versions)
        if argument:
            raise InputError(f"version policy {text!r}: {kind} takes no argument")
        return cls(kind)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VersionPolicy:
        """Triton's model config `version_policy` ({"latest": {"num_versions": 2}}, {"all": {}},
        {"specific": {"versions": [...]}}) or ours ("best"), as a load request may carry it."""
        policy = config.get("version_policy", "best")
        if isinstance(policy, str):
            return cls.parse(policy)
        if not isinstance(policy, dict) or len(policy) != 1:
            raise InputError(f"version_policy must be one of best, latest, all, specific; got {policy!r}")
        (kind, body), = policy.items()
        body = body or {}
        if kind == "latest":
            return cls.parse(f"latest:{body.get('num_versions', 1)}")
        if kind == "specific":
            return cls.parse("specific:" + ",".join(str(v) for v in body.get("versions", [])))
        return cls.parse(kind)

    @classmethod
    def from_load_request(cls, config: str | None) -> VersionPolicy | None:
        """The policy a repository load request carries: tritonclient's `config`, a JSON model config
        with an optional version_policy; None (no config): the model's own policy."""
        if not config:
            return None
        try:
            document = json.loads(config)
        except ValueError as e:
            raise InputError(f"the load request's config is not JSON: {e}") from None
        if not isinstance(document, dict):
            raise InputError("the load request's config must be a JSON object (a model config)")
        return cls.from_config(document)

    def select(self, versions: list[StoredVersion]) -> list[StoredVersion]:
        """The versions this policy serves, most preferred first. InputError when a specific one is
        not registered."""
        newest = sorted(versions, key=lambda v: v.created, reverse=True)
        if self.kind == "best":
            # the highest validation accuracy; among equals float32 before INT8 (a quantized graph
            # serves by `best` only when it measured better), then the newest
            ranked = sorted(newest, key=lambda v: (-1.0 if v.val_accuracy is None else v.val_accuracy,
                                                   v.precision == "fp32"), reverse=True)
            return ranked[:1]
        if self.kind == "latest":
            return newest[:self.count]
        if self.kind == "all":
            return newest
        by_version = {v.version: v for v in versions}
        missing = [v for v in self.versions if v not in by_version]
        if missing:
            raise InputError(f"version(s) {', '.join(missing)} not registered; registered: "
                             f"{', '.join(v.version for v in newest) or 'none'}")
        return [by_version[v] for v in self.versions]

    def __str__(self) -> str:
        return {"latest": f"latest:{self.count}", "specific": "specific:" + ",".join(self.versions)}.get(
            self.kind, self.kind)


def parse_policies(text: str) -> tuple[VersionPolicy, dict[str, VersionPolicy]]:
    """CAPSNET_VERSION_POLICY: ';'-separated entries, `POLICY` for every model or `NAME=POLICY` for one,
    e.g. 'best;capsnet-mnist=latest:2' -> (the default policy, per-name policies)."""
    default, per_name = VersionPolicy(), {}
    for entry in (e.strip() for e in text.split(";") if e.strip()):
        name, equals, policy = entry.partition("=")
        if equals:
            per_name[name.strip()] = VersionPolicy.parse(policy)
        else:
            default = VersionPolicy.parse(entry)
    return default, per_name
