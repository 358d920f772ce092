"""Broken deployments: the real ``python -m app`` refuses to start, with one clear line on
stderr and a non-zero exit status, instead of serving a wrong or half-loaded model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import start_server


def copy_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def refuse(weights: Path, **env: str) -> str:
    """Start the server and expect it to exit non-zero before serving; returns its output."""
    proc, _ = start_server(weights, **env)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, None), out
    lines = [line for line in out.strip().splitlines() if line]
    assert len(lines) == 1, out  # one line an operator can read in `kubectl logs`, no traceback
    assert "Traceback" not in out
    return lines[0]


def edit_card(folder: Path, name: str, change) -> None:
    card_path = folder / f"{name}.json"
    card = json.loads(card_path.read_text())
    change(card)
    card_path.write_text(json.dumps(card))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.e2e
def test_wrong_sha256_refuses_to_start(tmp_path: Path, tiny_weights: Path):
    w = copy_weights(tiny_weights, tmp_path / "w")
    _flip_last_byte(w / "tiny-vae.safetensors")
    line = refuse(w)
    assert "tiny-vae.safetensors" in line and "sha256" in line


@pytest.mark.e2e
def test_truncated_weights_refuse_to_start(tmp_path: Path, tiny_weights: Path):
    w = copy_weights(tiny_weights, tmp_path / "w")
    blob = w / "tiny-gan.safetensors"
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    line = refuse(w)
    assert "tiny-gan.safetensors" in line


@pytest.mark.e2e
def test_truncated_weights_with_a_matching_sha_refuse_to_start(tmp_path: Path, tiny_weights: Path):
    """Whoever truncated the file also fixed the card's digest: the tensor check still catches it."""
    from models.card import sha256_file

    w = copy_weights(tiny_weights, tmp_path / "w")
    blob = w / "tiny-gan.safetensors"
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size - 64])
    edit_card(w, "tiny-gan", lambda card: card.update(sha256=sha256_file(blob)))
    line = refuse(w)
    assert "tiny-gan" in line


@pytest.mark.e2e
def test_card_that_does_not_match_the_tensors_refuses_to_start(tmp_path: Path, tiny_weights: Path):
    w = copy_weights(tiny_weights, tmp_path / "w")
    edit_card(w, "tiny-gan", lambda card: card["config"].update(latent_dim=card["config"]["latent_dim"] + 1))
    line = refuse(w)
    assert "tiny-gan" in line and ("latent_dim" in line or "shape" in line)


@pytest.mark.e2e
def test_missing_model_refuses_to_start(tmp_path: Path, tiny_weights: Path):
    line = refuse(tiny_weights, LATENTSERVE_MODELS="tiny-gan,no-such-model")
    assert "no-such-model" in line


@pytest.mark.e2e
def test_missing_weights_file_refuses_to_start(tmp_path: Path, tiny_weights: Path):
    w = copy_weights(tiny_weights, tmp_path / "w")
    (w / "tiny-vae.safetensors").unlink()
    line = refuse(w)
    assert "tiny-vae" in line


@pytest.mark.e2e
def test_empty_weights_folder_refuses_to_start(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    line = refuse(tmp_path / "empty")
    assert "empty" in line or "no model" in line.lower()


@pytest.mark.e2e
def test_unavailable_device_refuses_to_start(tiny_weights: Path):
    line = refuse(tiny_weights, LATENTSERVE_DEVICE="cuda:99")  # absent with or without CUDA
    assert "LATENTSERVE_DEVICE=cuda:99" in line
    assert "not available" in line or "CUDA device(s)" in line


@pytest.mark.e2e
def test_invalid_setting_exits_2(tiny_weights: Path):
    proc, _ = start_server(tiny_weights, LATENTSERVE_MAX_BATCH_ROWS="lots")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.strip().startswith("invalid setting LATENTSERVE_MAX_BATCH_ROWS")
