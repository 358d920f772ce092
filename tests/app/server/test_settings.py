"""app.server.settings: defaults, LATENTSERVE_ environment variables, validation messages, and how
``python -m app`` fails fast on bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from app.server.settings import DEFAULT_WEIGHTS_DIR, ENV_PREFIX, Settings, describe_errors
from bench.servers import child_pythonpath

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


def test_defaults():
    s = Settings()
    assert s.host == "127.0.0.1"
    assert s.port == 8000
    assert s.weights_dir == DEFAULT_WEIGHTS_DIR == REPO / "weights"
    assert s.models == []
    assert s.device == "auto"
    assert s.dtype == "float32"
    assert s.torch_threads == 0
    assert s.max_batch_rows == 32
    assert s.torchscript is True and s.opentelemetry is False and s.channels_last is True
    assert s.min_batch_rows == 1
    assert s.max_wait_ms == 2.0
    assert s.max_queue_rows == 2048
    assert s.max_queue_wait_s == 2.0
    assert s.max_body_bytes == 1024 * 1024
    assert s.request_timeout_s == 30.0
    assert s.max_images_per_request == 64
    assert s.max_interpolation_steps == 64
    assert s.playground is True and s.open_port_when_ready is False
    assert s.projection_concurrency == 1 and s.projection_max_steps == 1000 and s.projection_timeout_s == 10.0
    assert s.max_upload_bytes == 2 * 1024 * 1024
    assert s.max_upload_pixels == 4096 * 4096
    assert s.png_threads == 2
    assert s.png_compress_level == 1
    assert s.log_level == "info"


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(ValidationError):
        s.port = 1


def test_env_vars_are_read(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTSERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("LATENTSERVE_PORT", "9123")
    monkeypatch.setenv("LATENTSERVE_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("LATENTSERVE_DEVICE", " CUDA:1 ")
    monkeypatch.setenv("LATENTSERVE_DTYPE", "bfloat16")
    monkeypatch.setenv("LATENTSERVE_MAX_BATCH_ROWS", "32")
    monkeypatch.setenv("LATENTSERVE_MIN_BATCH_ROWS", "32")
    monkeypatch.setenv("LATENTSERVE_MAX_WAIT_MS", "0.5")
    monkeypatch.setenv("LATENTSERVE_REQUEST_TIMEOUT_S", "2.5")
    monkeypatch.setenv("LATENTSERVE_LOG_LEVEL", "DEBUG")
    s = Settings()
    assert s.host == "0.0.0.0"
    assert s.port == 9123
    assert s.weights_dir == tmp_path
    assert isinstance(s.weights_dir, Path)
    assert s.device == "cuda:1"
    assert s.dtype == "bfloat16"
    assert (s.min_batch_rows, s.max_batch_rows) == (32, 32)
    assert s.max_wait_ms == 0.5
    assert s.request_timeout_s == 2.5
    assert s.log_level == "debug"


def test_unprefixed_vars_are_ignored(monkeypatch):
    monkeypatch.setenv("PORT", "1234")
    monkeypatch.setenv("MODELS", "x")
    s = Settings()
    assert s.port == 8000
    assert s.models == []


@pytest.mark.parametrize("raw, expected", [
    ("a, b", ["a", "b"]),
    ("gan-v1,vae-v2", ["gan-v1", "vae-v2"]),
    (" a ,, b , ", ["a", "b"]),
    ("single", ["single"]),
    ("", []),
    (" , ", []),
])
def test_models_comma_list(monkeypatch, raw, expected):
    monkeypatch.setenv("LATENTSERVE_MODELS", raw)
    assert Settings().models == expected


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_valid_devices(monkeypatch, device):
    monkeypatch.setenv("LATENTSERVE_DEVICE", device)
    assert Settings().device == device


def _errors(monkeypatch, **env: str) -> tuple[ValidationError, str]:
    for k, v in env.items():
        monkeypatch.setenv(ENV_PREFIX + k.upper(), v)
    with pytest.raises(ValidationError) as info:
        Settings()
    return info.value, describe_errors(info.value)


@pytest.mark.parametrize("env, var, fragment", [
    ({"port": "99999"}, "LATENTSERVE_PORT", "'99999'"),
    ({"port": "abc"}, "LATENTSERVE_PORT", "'abc'"),
    ({"port": "-1"}, "LATENTSERVE_PORT", "'-1'"),
    ({"device": "tpu"}, "LATENTSERVE_DEVICE", "must be auto, cpu, cuda, cuda:N or mps"),
    ({"device": "cuda:x"}, "LATENTSERVE_DEVICE", "'cuda:x'"),
    ({"dtype": "int8"}, "LATENTSERVE_DTYPE", "'int8'"),
    ({"max_batch_rows": "0"}, "LATENTSERVE_MAX_BATCH_ROWS", "'0'"),
    ({"max_queue_rows": "0"}, "LATENTSERVE_MAX_QUEUE_ROWS", "'0'"),
    ({"request_timeout_s": "0"}, "LATENTSERVE_REQUEST_TIMEOUT_S", "'0'"),
    ({"log_level": "loud"}, "LATENTSERVE_LOG_LEVEL", "'loud'"),
    ({"max_upload_pixels": "100"}, "LATENTSERVE_MAX_UPLOAD_PIXELS", "'100'"),
    ({"torch_threads": "100000"}, "LATENTSERVE_TORCH_THREADS", "'100000'"),
    ({"device": "cuda:\u00b2"}, "LATENTSERVE_DEVICE", "must be auto, cpu, cuda, cuda:N or mps"),
    ({"forwarded_allow_ips": "10.0.0.0/8,localhost"}, "LATENTSERVE_FORWARDED_ALLOW_IPS",
     "'localhost' is not an IP address or network"),
])
def test_invalid_values_name_the_variable(monkeypatch, env, var, fragment):
    exc, text = _errors(monkeypatch, **env)
    assert len(exc.errors()) == 1
    assert text.startswith(f"invalid setting {var}: ")
    assert fragment in text
    assert "\n" not in text


def test_min_batch_rows_above_max(monkeypatch):
    exc, text = _errors(monkeypatch, min_batch_rows="128", max_batch_rows="64")
    assert len(exc.errors()) == 1
    assert "LATENTSERVE_MIN_BATCH_ROWS (128) must not exceed LATENTSERVE_MAX_BATCH_ROWS (64)" in text
    # min above the default max as well
    _, text = _errors(monkeypatch, min_batch_rows="65", max_batch_rows="64")
    assert "LATENTSERVE_MIN_BATCH_ROWS (65)" in text


def test_interpolation_steps_above_the_queue_bound(monkeypatch):
    """Such interpolations would be a 429 forever (never queueable): refused at startup."""
    exc, text = _errors(monkeypatch, max_queue_rows="16", max_images_per_request="16")
    assert len(exc.errors()) == 1
    assert "LATENTSERVE_MAX_INTERPOLATION_STEPS (64) must not exceed LATENTSERVE_MAX_QUEUE_ROWS (16)" in text
    monkeypatch.setenv("LATENTSERVE_MAX_INTERPOLATION_STEPS", "16")
    assert Settings().max_interpolation_steps == 16


def test_proxy_networks_and_star_are_accepted(monkeypatch):
    monkeypatch.setenv("LATENTSERVE_FORWARDED_ALLOW_IPS", "10.0.0.0/8, 192.168.1.7, ::1, fd00::/8")
    assert Settings().forwarded_allow_ips == ["10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8"]
    monkeypatch.setenv("LATENTSERVE_FORWARDED_ALLOW_IPS", "*")
    assert Settings().forwarded_allow_ips == ["*"]


def test_several_errors_one_line_each(monkeypatch):
    exc, text = _errors(monkeypatch, port="99999", dtype="int8", device="tpu")
    lines = text.splitlines()
    assert len(lines) == 3
    assert sorted(line.split(":")[0] for line in lines) == [
        "invalid setting LATENTSERVE_DEVICE", "invalid setting LATENTSERVE_DTYPE", "invalid setting LATENTSERVE_PORT"]


# -- python -m app --

def _run_app(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    full["PYTHONPATH"] = child_pythonpath()
    full.update({ENV_PREFIX + k.upper(): v for k, v in env.items()})
    return subprocess.run([sys.executable, "-m", "app"], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=120)


def test_main_bad_port_exits_2(tmp_path):
    proc = _run_app(tmp_path, port="abc")
    assert proc.returncode == 2, proc.stderr
    assert "LATENTSERVE_PORT" in proc.stderr
    assert "'abc'" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0  # one line
    assert proc.stdout == ""


def test_main_empty_weights_dir_exits_1(tmp_path):
    empty = tmp_path / "empty-weights"
    empty.mkdir()
    proc = _run_app(tmp_path, weights_dir=str(empty), device="cpu")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("latentserve: cannot load models: ")
    assert str(empty) in lines[0]
    assert "no gan or vae model cards found" in lines[0]


def test_main_device_cuda(tmp_path):
    empty = tmp_path / "empty-weights"
    empty.mkdir()
    proc = _run_app(tmp_path, weights_dir=str(empty), device="cuda")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    if torch.cuda.is_available():
        # the device is fine, so it fails on the empty weights directory instead
        assert "no gan or vae model cards found" in lines[0]
    else:
        assert "LATENTSERVE_DEVICE=cuda: CUDA is not available on this machine" in lines[0]
