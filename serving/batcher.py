"""In-process access to BentoML's adaptive batcher for one `batchable=True` API.

BentoML (1.4) offers in-process callers only `self.to_async.<api>`, which is an HTTP client whose
transport is the service's own ASGI app: every call JSON-encodes the array, runs the whole
middleware stack, rebuilds the API's JSON schema, decodes again, and only then reaches the batcher.
Measured under load, that loopback cost more CPU than the model itself. The batcher it ends in is
`ServiceAppFactory.batch_infer(name, args, kwargs)` (BentoML's CorkDispatcher, with its metrics
histogram and worker thread); `find_batcher` returns that bound method, so our HTTP and gRPC handlers
hand a validated array straight to the same batcher and share batches with direct /infer callers.

The lookup reads BentoML internals (the route BentoML registers for the API, whose endpoint is a
partial of the factory's bound `api_endpoint_wrapper`), so it checks every step and returns None
when anything is not as expected; the caller then falls back to `to_async` (correct, just slower).
Before BentoML has wired the app there is nothing to find yet: `NotWiredYet` says so, and the
caller asks again later instead of settling for the fallback.
The bentoml pin in pyproject.toml (<1.5) and the end-to-end tests guard it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Batcher = Callable[[Any], Awaitable[Any]]


class NotWiredYet(Exception):
    """BentoML has not finished setting up the app (its startup completes after our startup hooks)."""


def find_batcher(service_instance: Any, api_name: str) -> Batcher | None:
    """The coroutine function `images -> outputs` that enqueues `images` (a batch along axis 0) in
    BentoML's batcher for `api_name` and returns this request's slice of the batched result; None
    when this BentoML does not expose it the expected way. Raises NotWiredYet before BentoML has
    wired the app."""
    proxy = getattr(service_instance, "__self_proxy__", None)  # set by BentoML once the app starts
    if proxy is None:
        raise NotWiredYet
    app = getattr(getattr(proxy, "to_async", None), "app", None)
    for route in getattr(app, "routes", ()):
        endpoint = getattr(route, "endpoint", None)
        if getattr(route, "name", None) != api_name or not isinstance(endpoint, functools.partial):
            continue
        factory = getattr(endpoint.func, "__self__", None)
        batch_infer = getattr(factory, "batch_infer", None)
        if callable(batch_infer) and api_name in getattr(factory, "dispatchers", {}):
            return functools.partial(_call, batch_infer, api_name)
    log.warning("BentoML's batcher for %r not found in-process; using the slower self.to_async path", api_name)
    return None


async def _call(batch_infer: Callable[..., Awaitable[Any]], api_name: str, value: Any) -> Any:
    return await batch_infer(api_name, (value,), {})


class Batchers:
    """The infer APIs' batchers for in-process calls, each looked up once BentoML has wired the app
    (before that nothing is cached: self.to_async is then the plain, unbatched method). With `enabled`
    off, or where BentoML does not expose a batcher, calls go through the service's own to_async."""

    def __init__(self, service_instance: Any, enabled: bool) -> None:
        self.service, self.enabled = service_instance, enabled
        self.found: dict[str, Batcher | None] = {}  # API name -> batcher (None: not exposed)

    def look_up(self, name: str) -> None:
        if self.enabled and name not in self.found:
            try:
                self.found[name] = find_batcher(self.service, name)
            except NotWiredYet:
                pass

    def get(self, name: str) -> Batcher:
        """API `name`'s batcher: in-process when found, else BentoML's self.to_async (looked up per call)."""
        self.look_up(name)
        return self.found.get(name) or getattr(self.service.to_async, name)

    def ready(self, names: list[str]) -> bool:
        """Every API's lookup answered (only the in-process path needs BentoML's wiring)."""
        for name in names:
            self.look_up(name)
        return not self.enabled or all(name in self.found for name in names)

    def in_process(self, name: str) -> bool:
        self.look_up(name)
        return self.found.get(name) is not None
