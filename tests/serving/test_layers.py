"""serving/ is built in layers and imports only downward (docs/architecture.md draws them):

    serving/service.py                       the composition root: wires everything, imported by none
    serving/bento/   serving/oip/            the two front ends; neither imports the other
    serving/handlers/                        what a request asks for, transport-neutral
    serving/settings.py                      the environment, read once
    serving/engine/                          models, batching, admission, versions: no HTTP, gRPC, BentoML
    serving/errors.py  serving/asgi.py       the floor: one error table, the ASGI helpers

Read from the source (every import, the ones inside functions too), so a lazy import cannot hide an
arrow up."""

from __future__ import annotations

from tests.helpers import REPO, imports_in

SERVING = REPO / "serving"
# module (or folder) -> its layer; a module may import its own folder and lower layers only
LAYERS = {"serving.errors": 0, "serving.asgi": 0, "serving.engine": 1, "serving.settings": 2,
          "serving.handlers": 3, "serving.oip": 4, "serving.bento": 4, "serving.service": 5}
# what the transport-free layers must never reach, directly or lazily
TRANSPORTS = ("bentoml", "_bentoml_sdk", "_bentoml_impl", "grpc", "starlette", "tritonclient", "httpx", "uvicorn")


def layer_of(module: str) -> str:
    """The LAYERS key a serving module belongs to: 'serving.oip.rest' -> 'serving.oip'."""
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS (and docs/architecture.md)")


def modules() -> dict[str, set[str]]:
    """Every serving module (the package's own __init__ aside) -> what it imports."""
    found = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): imports_in(p)
             for p in SERVING.rglob("*.py")}
    found.pop("serving", None)
    return found


def arrows_up(imports: dict[str, set[str]]) -> list[str]:
    """The imports between serving modules that point to the same or a higher layer outside the
    importer's own folder (up, or across the two front ends)."""
    return [f"{module} -> {target}" for module, targets in sorted(imports.items())
            for target in sorted(t for t in targets if t.startswith("serving."))
            if layer_of(target) != layer_of(module) and LAYERS[layer_of(target)] >= LAYERS[layer_of(module)]]


def test_every_serving_import_points_down_or_sideways_within_its_folder():
    found = arrows_up(modules())
    assert not found, "imports that point up or across front ends:\n" + "\n".join(found)


def test_the_engine_and_the_handlers_know_no_transport():
    leaks = [f"{module} -> {target}" for module, targets in modules().items()
             if layer_of(module) in ("serving.engine", "serving.handlers", "serving.errors", "serving.settings")
             for target in targets if target.split(".")[0] in TRANSPORTS]
    assert not leaks, "\n".join(leaks)


def test_the_layer_check_sees_a_lazy_arrow_up_and_a_crossing(tmp_path):
    """The check itself can fail: a lazy import of a handler from the engine, and OIP reaching into bento."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from serving.handlers.classify import Classifier\n    import bentoml\n")
    assert {"serving.handlers.classify", "bentoml"} <= imports_in(bad)
    found = arrows_up({"serving.engine.batcher": imports_in(bad), "serving.oip.rest": {"serving.bento.answers"},
                       "serving.bento.store": {"serving.bento.openapi", "serving.engine.facts"}})
    assert "serving.engine.batcher -> serving.handlers.classify" in found
    assert "serving.oip.rest -> serving.bento.answers" in found
    assert not [arrow for arrow in found if arrow.startswith("serving.bento.store")]  # its own folder, and down
