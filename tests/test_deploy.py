"""deploy/ validates against published schemas (no Docker engine or cluster runs here).

- compose files: ``check-jsonschema --builtin-schema vendor.compose-spec`` (the Compose
  Specification's JSON schema, vendored in the check-jsonschema package: works offline);
- Kubernetes manifests: ``kubernetes-validate --strict`` (the Kubernetes OpenAPI schemas,
  shipped in the package), every document of every file;
- the ServiceMonitor (a CRD: no schema ships with either package) against a hand-written
  subset of the prometheus-operator schema, and the kustomization by hand (listed files exist);
- the commands the files run use options the CLI has.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE_FILES = sorted(DEPLOY.glob("docker-compose*.yml"))
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
NOT_CORE = {"ServiceMonitor", "Kustomization"}  # no schema in kubernetes-validate


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_files_exist() -> None:
    assert (DEPLOY / "Dockerfile").is_file()
    assert {p.name for p in COMPOSE_FILES} == {"docker-compose.yml", "docker-compose.cluster.yml"}
    kinds = {d["kind"] for p in K8S_FILES for d in _docs(p)}
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "Secret",
        "ConfigMap",
        "ServiceMonitor",
        "PersistentVolumeClaim",
    } <= kinds


def test_compose_files_match_the_compose_spec() -> None:
    pytest.importorskip("check_jsonschema")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            *map(str, COMPOSE_FILES),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_catches_mistakes(tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a misspelt key and a wrong type are refused."""
    pytest.importorskip("check_jsonschema")
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    image: x\n    restartt: always\n    ports: 5\n")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", bad],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "restartt" in result.stdout


def test_cluster_compose_has_three_qdrant_nodes_replicas_and_workers() -> None:
    c = yaml.safe_load((DEPLOY / "docker-compose.cluster.yml").read_text())
    nodes = [s for s in c["services"] if s.startswith("qdrant-")]
    assert len(nodes) == 3
    for name in nodes:
        svc = c["services"][name]
        assert svc["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert "--uri" in svc["command"]
    assert sum("--bootstrap" in c["services"][n]["command"] for n in nodes) == 2
    env = c["services"]["neuronatlas"]["environment"]
    assert env["NEURONATLAS_REPLICATION_FACTOR"] == "2" and int(env["NEURONATLAS_SHARD_NUMBER"]) > 1
    assert c["services"]["neuronatlas"]["deploy"]["replicas"] >= 2
    assert c["services"]["worker"]["command"][:2] == ["worker", "--server"]


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_kubernetes_manifests_validate(path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for doc in _docs(path):
        if doc["kind"] in NOT_CORE:
            continue
        kv.validate(doc, kv.latest_version(), strict=True)  # raises ValidationError


def test_kubernetes_validation_catches_mistakes() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    deployment = next(
        d for d in _docs(DEPLOY / "k8s" / "neuronatlas.yaml") if d["kind"] == "Deployment"
    )
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, kv.latest_version(), strict=True)


# The part of prometheus-operator's ServiceMonitor CRD schema (monitoring.coreos.com/v1) that
# our manifest uses, written out by hand: no PyPI package ships the CRD schemas.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def test_service_monitor_selects_the_metrics_port() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    (monitor,) = _docs(DEPLOY / "k8s" / "servicemonitor.yaml")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    service = next(
        d
        for d in _docs(DEPLOY / "k8s" / "neuronatlas.yaml")
        if d["kind"] == "Service" and d["metadata"]["name"] == "neuronatlas"
    )
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_kustomization_lists_existing_files() -> None:
    (k,) = _docs(DEPLOY / "k8s" / "kustomization.yaml")
    assert k["kind"] == "Kustomization"
    listed = set(k["resources"])
    assert listed == {p.name for p in K8S_FILES} - {"kustomization.yaml"}


def test_service_deployment_probes_and_resources() -> None:
    deployments = {
        d["metadata"]["name"]: d
        for d in _docs(DEPLOY / "k8s" / "neuronatlas.yaml")
        if d["kind"] == "Deployment"
    }
    (svc,) = deployments["neuronatlas"]["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert svc[probe]["grpc"]["port"] == 50051, probe
    assert svc["resources"]["requests"]["cpu"] and svc["resources"]["requests"]["memory"]
    (worker,) = deployments["neuronatlas-worker"]["spec"]["template"]["spec"]["containers"]
    assert worker["args"][:2] == ["worker", "--server"]
    assert worker["resources"]["requests"]


def _commands() -> list[list[str]]:
    """Every neuronatlas command line the deploy files run."""
    out = []
    for path in COMPOSE_FILES:
        for svc in yaml.safe_load(path.read_text())["services"].values():
            if str(svc.get("image", "")).startswith("neuronatlas"):
                out.append([str(a) for a in svc["command"]])
    for path in K8S_FILES:
        for d in _docs(path):
            if d["kind"] == "Deployment":
                for c in d["spec"]["template"]["spec"]["containers"]:
                    out.append([str(a) for a in c["args"]])
    docker_cmd = next(
        line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("CMD")
    )
    out.append(yaml.safe_load(docker_cmd[3:]))
    return out


def test_deploy_commands_use_real_cli_options() -> None:
    from neuronatlas.cli import cli

    commands = _commands()
    assert any(c[0] == "serve" for c in commands)
    for argv in commands:
        sub = cli.commands.get(argv[0])
        if sub is None:  # `worker` belongs to the job-queue work; checked once it exists
            assert argv[0] == "worker", f"unknown command {shlex.join(argv)}"
            continue
        options = {o for p in sub.params for o in getattr(p, "opts", [])}
        for arg in argv[1:]:
            if arg.startswith("--"):
                assert arg in options, f"{shlex.join(argv)}: {arg} is not an option of {argv[0]}"


def test_readme_configuration_reference_lists_every_setting() -> None:
    """Every setting appears in README's Configuration reference with its variable and its
    default."""
    from dataclasses import MISSING, fields

    from neuronatlas.core.config import Settings

    text = (REPO / "README.md").read_text()
    ref = text[text.index("## Configuration reference") :]
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in ref.splitlines()
        if line.startswith("| `")
    }
    for f in fields(Settings):
        assert f.name in rows, f"README's Configuration reference lacks {f.name}"
        row = rows[f.name]
        assert f"`NEURONATLAS_{f.name.upper()}`" in row, row
        if f.default is not MISSING and f.default not in (None, ""):
            shown = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
            assert f"`{shown}`" in row, f"{f.name}: default {shown} not in {row}"
