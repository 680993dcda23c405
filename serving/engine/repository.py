"""The served model versions, by name: which registered versions serve (version policies), and loading
and unloading them while the server runs (the Open Inference Protocol's model repository extension).

One repository per server process, shared by every front end (the BentoML APIs, the explorer, OIP REST
and gRPC) through serving/handlers/classify.py, so they all see the same set. It knows the BentoML model store only
through `list_store` and opens versions through `open_version` (serving/bento/store.py gives both),
so it is tested without BentoML.

Version policies (CAPSNET_VERSION_POLICY), in the spirit of Triton's `version_policy`:
    best          one version: the highest validation accuracy recorded at export (newest on a tie)
    latest[:N]    the N newest (default 1)
    all           every registered version
    specific:V,W  exactly these versions
The versions a policy selects are listed in order of preference; a request that names no version
gets the first. `best` is the default so that training a quick model never displaces a better one
that is already registered (`make pretrained` then `make pipeline` keeps serving the 99.6 % model).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from serving.handlers.validation import InputError

log = logging.getLogger(__name__)

READY, UNAVAILABLE = "READY", "UNAVAILABLE"
POLICY_KINDS = ("best", "latest", "all", "specific")


class UnknownModelError(LookupError):
    """A request named a model or version this server does not serve (HTTP 404, gRPC NOT_FOUND)."""


class ModelControlDisabled(PermissionError):
    """Load/unload asked of a server started without CAPSNET_MODEL_CONTROL=explicit (HTTP 403)."""


@dataclass(frozen=True)
class StoredVersion:
    """One registered version in the model store, as far as choosing it goes."""

    name: str
    version: str
    created: datetime
    val_accuracy: float | None = None

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
            ranked = sorted(newest, key=lambda v: -1.0 if v.val_accuracy is None else v.val_accuracy, reverse=True)
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


class ModelRepository:
    """Served versions by name (`served[name]`: most preferred first), the reason a known name serves
    nothing, and load/unload. `open_version` opens and warms one stored version (blocking: run in a
    thread). A version that leaves service is dropped from `served`; its queued requests still finish.
    `served` may be a dict the caller keeps (the service's admission gate reads it); it is changed in
    place, one assignment per change."""

    def __init__(self, list_store: Callable[[], list[StoredVersion]], open_version: Callable[[StoredVersion], Any],
                 policies: tuple[VersionPolicy, dict[str, VersionPolicy]] = (VersionPolicy(), {}),
                 control: bool = False, served: dict[str, list[Any]] | None = None) -> None:
        self.list_store, self.open_version = list_store, open_version
        self.default_policy, self.policies = policies
        self.control = control  # CAPSNET_MODEL_CONTROL=explicit: load and unload allowed
        self.served: dict[str, list[Any]] = {} if served is None else served  # name -> versions, preferred first
        self.unavailable: dict[str, str] = {}  # name -> why nothing of it serves
        self._lock = asyncio.Lock()

    def policy_of(self, name: str) -> VersionPolicy:
        return self.policies.get(name, self.default_policy)

    def registered(self, name: str) -> list[StoredVersion]:
        return [v for v in self.list_store() if v.name == name]

    def start(self, wanted: dict[str, VersionPolicy]) -> None:
        """Open what each name's policy selects, at start-up (blocking). UnknownModelError / InputError
        when a name or pinned version is not registered."""
        for name, policy in wanted.items():
            versions = self.registered(name)
            if not versions:
                raise UnknownModelError(f"no model {name!r} in the model store")
            self.served[name] = [self.open_version(v) for v in policy.select(versions)]
            self.policies[name] = policy  # a later load without a policy selects the same way

    def models(self) -> list[Any]:
        """Every served version, names in start-up order, each name's preferred version first."""
        return [m for versions in self.served.values() for m in versions]

    def names(self) -> list[str]:
        return list(self.served)

    def find(self, name: str, version: str = "") -> Any:
        """The served version `version` of `name` ('' : the preferred one)."""
        versions = self.served.get(name)
        if not versions:
            if name in self.unavailable:
                raise UnknownModelError(f"model {name!r} is not loaded ({self.unavailable[name]}); "
                                        f"load it with POST /v2/repository/models/{name}/load")
            raise UnknownModelError(f"unknown model {name!r}; this server serves {self.listing()}")
        if not version:
            return versions[0]
        for model in versions:
            if model.version == version:
                return model
        raise UnknownModelError(f"unknown model {name!r} version {version!r}; this server serves {self.listing()} "
                                f"(version policy of {name}: {self.policy_of(name)})")

    def listing(self) -> str:
        """The served set in words: 'a' version '1', 'b' versions '2', '3'."""
        return ", ".join(f"{name!r} version{'s' if len(vs) > 1 else ''} " + ", ".join(repr(m.version) for m in vs)
                         for name, vs in self.served.items()) or "no model"

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index: every registered version of every name this server knows (served, or
        served once), with its state and, when not ready, why."""
        names = list(dict.fromkeys([*self.served, *self.unavailable]))
        entries = []
        for version in sorted((v for v in self.list_store() if v.name in names),
                              key=lambda v: (names.index(v.name), v.created)):
            serving = any(m.version == version.version for m in self.served.get(version.name, []))
            reason = "" if serving else self.unavailable.get(
                version.name, f"not selected by version policy {self.policy_of(version.name)}")
            if serving or not ready_only:
                entries.append({"name": version.name, "version": version.version,
                                "state": READY if serving else UNAVAILABLE, "reason": reason})
        return entries

    def _check_control(self, action: str) -> None:
        if not self.control:
            raise ModelControlDisabled(f"model {action} is off on this server; start it with "
                                       "CAPSNET_MODEL_CONTROL=explicit to allow it")

    async def load(self, name: str, policy: VersionPolicy | None = None) -> list[str]:
        """(Re)load `name` from the store by `policy` (default: its configured one): versions newly
        selected are opened and warmed up before they take requests; versions no longer selected leave
        service, their queued requests finishing. Returns the versions now served."""
        self._check_control("loading")
        policy = policy or self.policy_of(name)
        async with self._lock:
            versions = self.registered(name)
            if not versions:
                raise UnknownModelError(f"no model {name!r} in the model store")
            selected = policy.select(versions)
            current = {m.version: m for m in self.served.get(name, [])}
            opened = [current.get(v.version) or await asyncio.to_thread(self.open_version, v) for v in selected]
            self.served[name] = opened  # one assignment: requests see the old set or the new one
            self.unavailable.pop(name, None)
            self.policies[name] = policy  # a later load without a policy selects the same way
            log.info("loaded %s: serving version(s) %s (policy %s)", name,
                     ", ".join(m.version for m in opened), policy)
            return [m.version for m in opened]

    async def unload(self, name: str) -> None:
        """Take every version of `name` out of service; requests already queued finish, new ones get
        UnknownModelError (404 / NOT_FOUND) until it is loaded again."""
        self._check_control("unloading")
        async with self._lock:
            if name not in self.served:
                raise UnknownModelError(f"no model {name!r} is loaded; loaded: {', '.join(self.names()) or 'none'}")
            del self.served[name]
            self.unavailable[name] = "unloaded through the repository API"
            log.info("unloaded %s", name)
