"""Deployment files: Kubernetes manifests checked against the API schemas (strict), the probes
and drain budget they promise, and the Dockerfile's conventions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app.server.drain import stop_budget_s
from app.server.settings import Settings
from app.server.workers import JOIN_MARGIN_S

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def deployments() -> list[dict]:
    docs = [d for p in MANIFESTS for d in yaml.safe_load_all(p.read_text())]
    return [d for d in docs if d["kind"] == "Deployment"]


def test_kinds_present():
    kinds = {d["kind"] for p in MANIFESTS for d in yaml.safe_load_all(p.read_text())}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    gpu = [d for d in deployments() if "nvidia.com/gpu" in d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]]
    assert len(gpu) == 1


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["metadata"]["name"])
def test_probes_and_grace_period_cover_the_drain(deployment: dict):
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e.get("value") for e in c["env"]}
    drain = float(env.get("LATENTSERVE_DRAIN_TIMEOUT_S") or Settings().drain_timeout_s)
    command = c["lifecycle"]["preStop"]["exec"]["command"]  # exec sleep: any Kubernetes version
    assert command[0] == "sleep" and len(command) == 2
    pre_stop = float(command[1])
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
    # the supervisor kills a stuck worker (exit 1) before the kubelet's SIGKILL does
    assert pod["terminationGracePeriodSeconds"] > pre_stop + stop_budget_s(drain) + JOIN_MARGIN_S
    assert c["readinessProbe"]["timeoutSeconds"] > 1 and c["livenessProbe"]["timeoutSeconds"] > 1
    assert "cpu" in c["resources"]["requests"]
    for name in env:
        assert name.removeprefix("LATENTSERVE_").lower() in Settings.model_fields, name


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["metadata"]["name"])
def test_every_variant_is_scraped_keyed_and_behind_the_gateway(deployment: dict):
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
    assert {"LATENTSERVE_API_KEYS", "LATENTSERVE_FORWARDED_ALLOW_IPS", "LATENTSERVE_TORCH_THREADS"} <= set(env)
    Settings(forwarded_allow_ips=env["LATENTSERVE_FORWARDED_ALLOW_IPS"]["value"])  # a valid value


def test_deployment_selectors_do_not_overlap():
    """Each Deployment owns only its own pods (overlapping selectors make the HPA average the CPU
    of the GPU pods too); the HPA owns the CPU Deployment's count."""
    ds = deployments()
    for d in ds:
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        for other in ds:
            if other is not d:
                assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()
    hpa = next(doc for p in MANIFESTS for doc in yaml.safe_load_all(p.read_text()) if doc["kind"] == "HorizontalPodAutoscaler")
    target = next(d for d in ds if d["metadata"]["name"] == hpa["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in target["spec"]


def test_dockerfile_conventions():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim$", text, re.MULTILINE)
    assert re.search(r"^USER 10001$", text, re.MULTILINE)
    assert re.search(r"^EXPOSE 8000$", text, re.MULTILINE)
    assert "/healthz" in text and "HEALTHCHECK" in text
    entry = re.search(r"^ENTRYPOINT (.+)$", text, re.MULTILINE).group(1)
    assert json.loads(entry) == ["latentserve"]  # exec form
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[0] == "*" and "!weights/" in ignore


def test_the_ingress_and_the_nginx_config_agree_with_the_service_settings():
    """Body size = MAX_UPLOAD_BYTES, read timeouts above REQUEST_TIMEOUT_S, the same retry policy
    and prefix in the Kubernetes Ingress and in deploy/nginx."""
    settings = Settings()
    ingress = yaml.safe_load((ROOT / "deploy" / "k8s" / "ingress.yaml").read_text())
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "proxy-body-size"] == f"{settings.max_upload_bytes // (1024 * 1024)}m"
    assert float(notes[prefix + "proxy-read-timeout"]) > settings.request_timeout_s
    assert notes[prefix + "x-forwarded-prefix"] == "/latentserve"
    proxy = (ROOT / "deploy" / "nginx" / "latentserve-proxy.conf").read_text()
    retry = re.search(r"(?m)^proxy_next_upstream (.+);", proxy).group(1)
    assert notes[prefix + "proxy-next-upstream"] == retry == "error timeout http_503 non_idempotent"
    assert f"client_max_body_size {settings.max_upload_bytes // (1024 * 1024)}m;" in proxy
    read = int(re.search(r"(?m)^proxy_read_timeout (\d+)s;", proxy).group(1))
    assert read > settings.request_timeout_s and str(read) == notes[prefix + "proxy-read-timeout"]
    site = (ROOT / "deploy" / "nginx" / "latentserve.conf").read_text()
    assert re.findall(r"server 127\.0\.0\.1:\d+ max_fails=(\d+);", site) == ["0", "0"]
    service = next(d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "service.yaml").read_text()))
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"] and backend["port"]["name"] == service["spec"]["ports"][0]["name"]
