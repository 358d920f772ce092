"""Deployment files: Kubernetes manifests checked against the API schemas (strict), the probes
and drain budget they promise, and the Dockerfile's conventions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app.settings import Settings

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
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
    assert "cpu" in c["resources"]["requests"]
    for name in env:
        assert name.removeprefix("LATENTSERVE_").lower() in Settings.model_fields, name


def test_dockerfile_conventions():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim$", text, re.M)
    assert re.search(r"^USER 10001$", text, re.M)
    assert re.search(r"^EXPOSE 8000$", text, re.M)
    assert "/healthz" in text and "HEALTHCHECK" in text
    entry = re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1)
    assert json.loads(entry) == ["latentserve"]  # exec form
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[0] == "*" and "!weights/" in ignore
