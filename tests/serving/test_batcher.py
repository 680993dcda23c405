"""find_batcher against stand-ins shaped like BentoML 1.4's app (the real one is covered end to end
in test_serve_e2e.py, whose metadata test asserts the in-process path was found)."""

from __future__ import annotations

import asyncio
import functools
from types import SimpleNamespace

import pytest

from serving.batcher import NotWiredYet, find_batcher


class FakeFactory:
    def __init__(self) -> None:
        self.dispatchers = {"infer": object()}
        self.calls: list[tuple] = []

    async def api_endpoint_wrapper(self, name: str, request: object) -> None:
        raise AssertionError("the HTTP endpoint must not be called")

    async def batch_infer(self, name: str, args: tuple, kwargs: dict) -> str:
        self.calls.append((name, args, kwargs))
        return f"batched {args[0]}"


def service_with_routes(*routes: object) -> SimpleNamespace:
    proxy = SimpleNamespace(to_async=SimpleNamespace(app=SimpleNamespace(routes=list(routes))))
    return SimpleNamespace(__self_proxy__=proxy)


def test_finds_the_factorys_batcher_for_the_named_route():
    factory = FakeFactory()
    other = SimpleNamespace(name="classify", endpoint=functools.partial(factory.api_endpoint_wrapper, "classify"))
    infer = SimpleNamespace(name="infer", endpoint=functools.partial(factory.api_endpoint_wrapper, "infer"))
    batcher = find_batcher(service_with_routes(other, infer), "infer")
    assert batcher is not None
    assert asyncio.run(batcher("x")) == "batched x"
    assert factory.calls == [("infer", ("x",), {})]


def test_returns_none_when_bentoml_is_not_shaped_as_expected():
    factory = FakeFactory()
    with pytest.raises(NotWiredYet):  # app not started: no proxy yet, ask again later
        find_batcher(SimpleNamespace(), "infer")
    plain = SimpleNamespace(name="infer", endpoint=lambda request: None)  # endpoint not a partial
    assert find_batcher(service_with_routes(plain), "infer") is None
    factory.dispatchers = {}  # route exists but no batcher for it (API not batchable)
    route = SimpleNamespace(name="infer", endpoint=functools.partial(factory.api_endpoint_wrapper, "infer"))
    assert find_batcher(service_with_routes(route), "infer") is None
