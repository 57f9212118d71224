"""deploy/kubernetes and the Dockerfile: valid against the Kubernetes schemas (kubernetes-validate), clean under the
checkov security scan (every skip carries its reason), and consistent with each other and with the server (labels
and selectors, ports, probe routes, settings names, the metric the autoscaler reads, the drain timing)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from glm4voice_api.config import Settings
from glm4voice_api.routes.health import router as health_router
from glm4voice_api.serving.metrics import Metrics
from glm4voice_api.settings_tree import setting_fields, settings_with

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
CHECKOV = REPO / ".venv" / "tools" / "checkov" / "bin" / "checkov"
# The oldest Kubernetes still commonly run and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRDS = {"monitoring.coreos.com/v1": {"ServiceMonitor"}}  # not in the core schemas: checked field by field below
END_OF_STREAM_S = 15  # drain abort + engine shutdown, as the README and server.py say


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in _documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def test_every_manifest_matches_the_kubernetes_schemas() -> None:
    docs = _documents()
    assert {d["kind"] for _, d in docs} >= {
        "Deployment",
        "Service",
        "StatefulSet",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    }
    for file, doc in docs:
        assert doc["metadata"].get("namespace", "glm4voice") == "glm4voice", file
        if doc["kind"] in CRDS.get(doc["apiVersion"], ()):
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{file}: {doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {exc.message}")


def _checkov(*args: str) -> dict:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} missing: `scripts/install.sh test` installs checkov in a venv of its own")
    # --skip-download: no network (policies ship with the package); JSON on stdout, progress on stderr.
    result = subprocess.run(
        [str(CHECKOV), *args, "-o", "json", "--skip-download", "--compact"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO / ".venv" / "tools")},
    )
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def _skip_reasons() -> dict[tuple[str, str], str]:
    """(file, check id) -> reason, from the `checkov.io/skipN: CHECK=reason` annotations."""
    reasons = {}
    for file, doc in _documents():
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                reasons[(file, check)] = reason.strip()
    return reasons


def test_checkov_finds_nothing_unexplained() -> None:
    kubernetes = _checkov("-d", "deploy/kubernetes", "--framework", "kubernetes")
    assert kubernetes["summary"]["parsing_errors"] == 0
    assert kubernetes["summary"]["resource_count"] >= 10
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in kubernetes["results"]["failed_checks"]]
    assert failed == []
    reasons = _skip_reasons()
    for check in kubernetes["results"]["skipped_checks"]:
        reason = reasons.get((Path(check["file_path"]).name, check["check_id"]), "")
        assert len(reason) > 20, f"{check['check_id']} skipped without a reason in {check['file_path']}"

    dockerfile = _checkov("-f", "Dockerfile", "--framework", "dockerfile")
    assert dockerfile["summary"]["passed"] > 0
    assert dockerfile["results"]["failed_checks"] == []


def _pod_labels() -> dict:
    return _one("Deployment")["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_ports_and_references_fit_together() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    labels = _pod_labels()
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    service = _one("Service", "glm4voice-api")
    assert _selects(service["spec"]["selector"], labels)
    assert service["spec"]["sessionAffinity"] == "None"  # any replica serves any conversation
    assert _selects(_one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    monitor = _one("ServiceMonitor")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]

    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    http = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert int(env["GLM4VOICE_PORT"]["value"]) == http
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}

    # One GPU per replica, one replica per node.
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname" and _selects(
        anti[0]["labelSelector"]["matchLabels"], labels
    )

    # Secrets, volumes and claims referred to exist.
    secret = _one("Secret")
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
    assert refs and all(r["name"] == secret["metadata"]["name"] and r["key"] in secret["stringData"] for r in refs)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {_one("PersistentVolumeClaim")["metadata"]["name"]}
    assert "redis" in secret["stringData"]["store-url"] and _one("Service", "glm4voice-redis")


def test_settings_probes_drain_and_metric_are_the_servers() -> None:
    container = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    fields = setting_fields()
    for name in env:  # every setting given is one the server reads (GLM4VOICE_<GROUP>__<FIELD>)
        path = name.removeprefix("GLM4VOICE_").lower().replace("__", ".")
        assert name.startswith("GLM4VOICE_") and path in fields, name
    values = {
        n.removeprefix("GLM4VOICE_").lower().replace("__", "."): e["value"] for n, e in env.items() if "value" in e
    }
    settings_with(Settings(), values)  # the values validate

    routes = {route.path for route in health_router.routes}
    assert container["livenessProbe"]["httpGet"]["path"] in routes
    assert container["startupProbe"]["httpGet"]["path"] in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"

    pod = _one("Deployment")["spec"]["template"]["spec"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env["GLM4VOICE_TIMEOUTS__DRAIN_S"]["value"])
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + END_OF_STREAM_S

    # The autoscaler's metric is one /metrics exports, and the adapter rule serves that name.
    exported = {metric.name for metric in Metrics().registry.collect()}
    metric = _one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric == "glm4voice_admission_queue_depth" and metric in exported
    rules = yaml.safe_load(_one("ConfigMap")["data"]["config.yaml"])["rules"]
    assert [r["name"]["as"] for r in rules] == [metric]
    assert re.search(rf"^{metric}\{{", rules[0]["seriesQuery"])
