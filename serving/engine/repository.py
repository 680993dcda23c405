"""The served model versions by name, and the model repository extension's operations (index, load,
unload, as Triton's explicit model control). One repository per server process, shared by every front
end (the BentoML APIs, the explorer, OIP REST and gRPC), so they all see the same set. It knows the
BentoML model store only through `list_store` and opens versions through `open_version`
(serving/bento/store.py and serving/service.py give both), so it is tested without BentoML.
Which versions a name serves: serving/engine/policies.py. Which model answers a request that names
none: `default_order`, the one rule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from serving.engine.policies import StoredVersion, VersionPolicy, split_tag
from serving.errors import ModelControlDisabled, UnknownModelError

log = logging.getLogger(__name__)

READY, UNAVAILABLE = "READY", "UNAVAILABLE"
PREFERRED_DEFAULT = "capsnet-mnist"


def default_order(models: Iterable[tuple[str, int]]) -> list[str]:
    """Model names from (name, objects per input) pairs, the default model first: the one rule for
    what a request that names no model gets. Single-object models first, capsnet-mnist first among
    them, then by name."""
    return [name for name, _ in sorted(models, key=lambda m: (m[1] != 1, m[0] != PREFERRED_DEFAULT, m[0]))]


class ModelRepository:
    """Served versions by name (`served[name]`: most preferred first), the reason a known name serves
    nothing, the default model, and load/unload. `open_version` opens and warms one stored version
    (blocking: run in a thread). A version that leaves service is dropped from `served`; its queued
    requests still finish. `served` changes by one assignment per change, so a reader on another
    task sees the old set or the new one."""

    def __init__(self, list_store: Callable[[], list[StoredVersion]], open_version: Callable[[StoredVersion], Any],
                 policies: tuple[VersionPolicy, dict[str, VersionPolicy]] = (VersionPolicy(), {}),
                 control: bool = False) -> None:
        self.list_store, self.open_version = list_store, open_version
        self.default_policy, self.policies = policies
        self.control = control  # CAPSNET_MODEL_CONTROL=explicit: load and unload allowed
        self.served: dict[str, list[Any]] = {}  # name -> versions, preferred first
        self.unavailable: dict[str, str] = {}  # name -> why nothing of it serves
        self.default_name = ""  # what a request that names no model gets (`default_order`)
        self._lock = asyncio.Lock()

    @classmethod
    def of(cls, versions: Iterable[Any]) -> ModelRepository:
        """A fixed set of opened versions (each with `name`, `version` and `objects`), no store behind
        them: tests and tools. Load and unload are off."""
        repository = cls(list_store=list, open_version=lambda stored: None)
        for model in versions:
            repository.served.setdefault(model.name, []).append(model)
        repository._choose_default()
        return repository

    def _choose_default(self) -> None:
        order = default_order((name, vs[0].objects) for name, vs in self.served.items())
        self.default_name = order[0] if order else ""

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
        self._choose_default()

    def models(self) -> list[Any]:
        """Every served version, names in start-up order, each name's preferred version first."""
        return [m for versions in self.served.values() for m in versions]

    def names(self) -> list[str]:
        return list(self.served)

    def serves(self, name: str) -> bool:
        """Whether any version of `name` is in service now."""
        return bool(self.served.get(name))

    def find_tag(self, tag: str | None) -> Any:
        """The served version a request names: NAME (its preferred version), NAME:VERSION, or None /
        '' for the default model's preferred version. UnknownModelError otherwise."""
        return self.find(*split_tag(tag)) if tag else self.find(self.default_name)

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
