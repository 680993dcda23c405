"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas offline (strict: no
unknown fields), and every manifest agrees with the Bento it deploys: image name, ports, health paths."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from export.bento import GPU_BENTO_NAME
from serving.settings import ServingSettings
from tests.helpers import REPO

DEPLOY = REPO / "deploy"
BENTO_NAME = yaml.safe_load((REPO / "bentofile.yaml").read_text())["name"]
SETTINGS = ServingSettings()
PORTS = {"http": 3000, "oip-http": SETTINGS.oip_http_port, "grpc": SETTINGS.grpc_port}  # 3000: bentoml serve's


def documents(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kinds(path) -> dict[str, dict]:
    return {d["kind"]: d for d in documents(path)}


@pytest.mark.parametrize("name", ["capsnet.yaml", "capsnet-gpu.yaml"])
def test_kubernetes_manifests_validate_strictly(name):
    for document in documents(DEPLOY / "kubernetes" / name):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_a_manifest_with_an_unknown_field_is_refused():  # the validator is not a no-op
    deployment = kinds(DEPLOY / "kubernetes" / "capsnet.yaml")["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("name,image,gpus", [("capsnet.yaml", BENTO_NAME, None),
                                             ("capsnet-gpu.yaml", GPU_BENTO_NAME, 1)])
def test_each_deployment_matches_its_bento(name, image, gpus):
    container = kinds(DEPLOY / "kubernetes" / name)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].split(":")[0] == image
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == PORTS
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["CAPSNET_GRPC_PORT"]) == PORTS["grpc"] and int(env["CAPSNET_OIP_HTTP_PORT"]) == PORTS["oip-http"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["resources"]["limits"].get("nvidia.com/gpu") == gpus
    assert (env.get("CAPSNET_REQUIRE_GPU") == "true") == bool(gpus)
    # draining: a preStop wait for the endpoint to go, inside a grace period that leaves 30 s to drain
    pod = kinds(DEPLOY / "kubernetes" / name)["Deployment"]["spec"]["template"]["spec"]
    wait = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert 5 <= wait and pod["terminationGracePeriodSeconds"] >= wait + 30


def test_the_service_and_autoscaler_reach_every_port_of_the_deployment():
    manifests = kinds(DEPLOY / "kubernetes" / "capsnet.yaml")
    deployment, service, hpa = manifests["Deployment"], manifests["Service"], manifests["HorizontalPodAutoscaler"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == PORTS
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(PORTS)
    assert next(p for p in service["spec"]["ports"] if p["name"] == "grpc")["appProtocol"] == "kubernetes.io/h2c"
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_the_kserve_inference_service_speaks_v2_grpc_on_an_h2c_port():
    isvc = documents(DEPLOY / "kserve" / "inferenceservice.yaml")[0]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["image"].split(":")[0] == BENTO_NAME
    assert container["ports"] == [{"name": "h2c", "containerPort": PORTS["grpc"], "protocol": "TCP"}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["CAPSNET_GRPC_PORT"]) == PORTS["grpc"] and env["PROTOCOL"] == "v2"


def container_env(container: dict) -> dict[str, str]:
    """A container's environment as the server reads it; a value from a Secret stands in as 'from-a-secret'."""
    return {e["name"]: e["value"] if "value" in e else "from-a-secret" for e in container.get("env", [])}


def every_container() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for document in documents(path):
            spec = document.get("spec", {})
            pod = spec.get("template", {}).get("spec") or spec.get("predictor") or {}
            found += [(f"{path.name}:{c['name']}", c) for c in pod.get("containers", [])]
    return found


@pytest.mark.parametrize("name,container", every_container(), ids=[n for n, _ in every_container()])
def test_every_container_sets_what_the_server_accepts(name, container):
    """The settings a manifest gives are checked by the server's own rules (workers with model control,
    ports, booleans, the control key): a manifest that would not start fails here."""
    ServingSettings.from_env(container_env(container))


def test_the_settings_check_refuses_what_the_server_refuses():
    with pytest.raises(ValueError, match="CAPSNET_WORKERS=1"):
        ServingSettings.from_env(container_env({"env": [{"name": "CAPSNET_WORKERS", "value": "2"},
                                                        {"name": "CAPSNET_MODEL_CONTROL", "value": "explicit"},
                                                        {"name": "CAPSNET_CONTROL_KEY", "valueFrom": {}}]}))


@pytest.mark.parametrize("name", ["capsnet.yaml", "capsnet-gpu.yaml"])
def test_each_deployment_has_an_autoscaler_that_fits_it(name):
    manifests = kinds(DEPLOY / "kubernetes" / name)
    deployment, hpa = manifests["Deployment"], manifests["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert 1 <= low <= deployment["spec"]["replicas"] <= high
    gpus = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    if gpus:  # one GPU per pod: starting from one replica, not holding idle GPUs
        assert low == deployment["spec"]["replicas"] == 1
    signals = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert signals == ["cpu"]  # scaled on what every cluster reports (docs/scaling-out.md says why)


def test_probes_point_at_the_strict_readiness():
    """/readyz is false while no model serves (serving/handlers/classify.py: Classifier.ready), so the
    startup and readiness probes must be on it, never on /livez."""
    for _, container in every_container():
        for probe in ("startupProbe", "readinessProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["path"] == "/readyz"
