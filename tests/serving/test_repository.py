"""Version policies and the model repository (serving/engine/repository.py) with a stand-in store: which
versions serve, what the index says, load and unload while requests are answered."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from serving.engine.policies import StoredVersion, VersionPolicy, parse_policies
from serving.engine.repository import ModelRepository
from serving.errors import InputError, ModelControlDisabled, UnknownModelError
from tests.serving.fakes import run

T0 = datetime(2026, 12, 1)
# capsnet-mnist: the shipped model (99.6 %), then a quick one trained later (99.0 %), then one without accuracy
STORE = [StoredVersion("capsnet-mnist", "shipped", T0, 0.9968),
         StoredVersion("capsnet-mnist", "quick", T0 + timedelta(1), 0.9904),
         StoredVersion("capsnet-mnist", "noacc", T0 + timedelta(2)),
         StoredVersion("capsnet-fashion-mnist", "f1", T0, 0.93)]


@dataclass
class Opened:
    name: str
    version: str
    objects: int = 1


def repository(store: list[StoredVersion] | None = None, control: bool = True,
               policy: str = "best") -> ModelRepository:
    store = STORE if store is None else store
    return ModelRepository(lambda: list(store), lambda v: Opened(v.name, v.version), parse_policies(policy),
                           control=control)


def versions(policy: str) -> list[str]:
    return [v.version for v in VersionPolicy.parse(policy).select([v for v in STORE if v.name == "capsnet-mnist"])]


def test_policies_select_in_order_of_preference():
    assert versions("best") == ["shipped"]  # a quick model trained later does not displace the better one
    assert versions("latest") == ["noacc"] and versions("latest:2") == ["noacc", "quick"]
    assert versions("all") == ["noacc", "quick", "shipped"]
    assert versions("specific:quick,shipped") == ["quick", "shipped"]
    with pytest.raises(InputError, match="nope not registered; registered: noacc, quick, shipped"):
        versions("specific:nope")
    tie = [StoredVersion("m", "old", T0, 0.9), StoredVersion("m", "new", T0 + timedelta(1), 0.9)]
    assert [v.version for v in VersionPolicy().select(tie)] == ["new"]


def test_policy_texts_and_triton_configs():
    default, per_name = parse_policies("latest:3; capsnet-mnist=specific:a,b")
    assert str(default) == "latest:3" and str(per_name["capsnet-mnist"]) == "specific:a,b"
    assert VersionPolicy.from_config({"version_policy": {"latest": {"num_versions": 2}}}) == VersionPolicy("latest", 2)
    assert VersionPolicy.from_config({"version_policy": {"specific": {"versions": [3, "x"]}}}).versions == ("3", "x")
    assert VersionPolicy.from_config({"version_policy": {"all": {}}}).kind == "all"
    assert VersionPolicy.from_config({}).kind == "best"
    for bad in ("newest", "latest:x", "specific:", "all:2"):
        with pytest.raises(InputError):
            VersionPolicy.parse(bad)
    with pytest.raises(InputError, match="one of best, latest, all, specific"):
        VersionPolicy.from_config({"version_policy": {"latest": {}, "all": {}}})


def test_start_find_and_index():
    repo = repository(policy="best;capsnet-fashion-mnist=all")
    repo.start({"capsnet-mnist": repo.policy_of("capsnet-mnist"), "capsnet-fashion-mnist": repo.policy_of(
        "capsnet-fashion-mnist")})
    assert repo.find("capsnet-mnist").version == "shipped" and repo.find("capsnet-fashion-mnist", "f1").version == "f1"
    with pytest.raises(UnknownModelError, match="'capsnet-mnist' version 'quick'.*policy of capsnet-mnist: best"):
        repo.find("capsnet-mnist", "quick")
    with pytest.raises(UnknownModelError, match="unknown model 'nope'; this server serves 'capsnet-mnist' version"):
        repo.find("nope")
    index = {(e["name"], e["version"]): (e["state"], e["reason"]) for e in repo.index()}
    assert index[("capsnet-mnist", "shipped")] == ("READY", "")
    assert index[("capsnet-mnist", "quick")] == ("UNAVAILABLE", "not selected by version policy best")
    assert [e["version"] for e in repo.index(ready_only=True)] == ["shipped", "f1"]
    with pytest.raises(UnknownModelError, match="no model 'absent'"):
        repository().start({"absent": VersionPolicy()})


def test_load_a_second_version_beside_the_first_then_unload_and_load_again():
    repo = repository()
    repo.start({"capsnet-mnist": VersionPolicy()})
    shipped = repo.find("capsnet-mnist")
    served = run(repo.load("capsnet-mnist", VersionPolicy.parse("specific:shipped,quick")))
    assert served == ["shipped", "quick"] and repo.find("capsnet-mnist") is shipped  # kept, not reopened
    assert repo.find("capsnet-mnist", "quick").version == "quick"
    run(repo.unload("capsnet-mnist"))
    with pytest.raises(UnknownModelError, match="not loaded .*unloaded through the repository API.*/load"):
        repo.find("capsnet-mnist")
    assert {e["state"] for e in repo.index()} == {"UNAVAILABLE"} and repo.index(ready_only=True) == []
    with pytest.raises(UnknownModelError, match="no model 'capsnet-mnist' is loaded"):
        run(repo.unload("capsnet-mnist"))
    assert run(repo.load("capsnet-mnist")) == ["shipped", "quick"]  # the policy it was last loaded with
    with pytest.raises(UnknownModelError, match="no model 'nope' in the model store"):
        run(repo.load("nope"))
    with pytest.raises(InputError, match="x not registered"):
        run(repo.load("capsnet-mnist", VersionPolicy.parse("specific:x")))
    assert [m.version for m in repo.served["capsnet-mnist"]] == ["shipped", "quick"]  # a failed load changes nothing


def test_a_new_export_goes_live_on_load_and_the_old_version_leaves():
    store = [v for v in STORE if v.name == "capsnet-mnist"]
    repo = repository(store, policy="latest")
    repo.start({"capsnet-mnist": VersionPolicy.parse("latest")})
    assert repo.find("capsnet-mnist").version == "noacc"
    store.append(StoredVersion("capsnet-mnist", "fresh", T0 + timedelta(3), 0.99))
    assert repo.find("capsnet-mnist").version == "noacc"  # nothing changes until asked
    assert run(repo.load("capsnet-mnist")) == ["fresh"]
    assert repo.find("capsnet-mnist").version == "fresh"


def test_requests_keep_being_answered_while_a_version_is_opened():
    opening, release = threading.Event(), threading.Event()

    def slow_open(stored: StoredVersion) -> Opened:  # ONNX Runtime session creation and warm-up
        opening.set()
        release.wait(timeout=60)  # a hang guard only: the test releases it
        return Opened(stored.name, stored.version)

    repo = ModelRepository(lambda: STORE, slow_open, control=True)
    repo.served["capsnet-mnist"] = [Opened("capsnet-mnist", "shipped")]

    async def scenario() -> list[str]:
        load = asyncio.create_task(repo.load("capsnet-mnist", VersionPolicy.parse("specific:quick")))
        while not opening.is_set():  # the open has begun, in its own thread
            await asyncio.sleep(0.001)
        answered = []
        for _ in range(10):  # the event loop is free while the new version opens: the old one answers
            answered.append(repo.find("capsnet-mnist").version)
            await asyncio.sleep(0)
        assert not load.done()
        release.set()
        await load
        return answered

    assert run(scenario()) == ["shipped"] * 10 and repo.find("capsnet-mnist").version == "quick"


def test_load_and_unload_need_model_control():
    repo = repository(control=False)
    repo.start({"capsnet-mnist": VersionPolicy()})
    for action in (repo.load("capsnet-mnist"), repo.unload("capsnet-mnist")):
        with pytest.raises(ModelControlDisabled, match="CAPSNET_MODEL_CONTROL=explicit"):
            run(action)
    assert repo.find("capsnet-mnist").version == "shipped"


def test_an_unload_sent_while_a_load_opens_waits_for_it_and_wins():
    """Load and unload take the repository's lock in turn: an unload that arrives while a load is
    still opening its version is applied after the load, never interleaved with it, so the model
    ends unloaded (the later request) and the load's version is not left half in service."""
    opening, release = threading.Event(), threading.Event()

    def slow_open(stored: StoredVersion) -> Opened:
        opening.set()
        release.wait(timeout=60)  # a hang guard only: the test releases it
        return Opened(stored.name, stored.version)

    repo = ModelRepository(lambda: STORE, slow_open, control=True)
    repo.served["capsnet-mnist"] = [Opened("capsnet-mnist", "shipped")]

    async def scenario() -> tuple[list[str], bool]:
        load = asyncio.create_task(repo.load("capsnet-mnist", VersionPolicy.parse("specific:quick")))
        while not opening.is_set():
            await asyncio.sleep(0.001)
        unload = asyncio.create_task(repo.unload("capsnet-mnist"))
        for _ in range(5):
            await asyncio.sleep(0)
        waited = not unload.done()  # the unload waits on the lock the load holds
        release.set()
        loaded = await load
        await unload
        return loaded, waited

    loaded, waited = run(scenario())
    assert loaded == ["quick"] and waited
    assert not repo.serves("capsnet-mnist") and "unloaded" in repo.unavailable["capsnet-mnist"]
