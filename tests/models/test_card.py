"""models.card: safetensors + JSON card round trip and every load error."""

import dataclasses
import json

import pytest
import torch

from models.card import (
    ModelLoadError,
    channels_last_on_cpu,
    load_model,
    read_card,
    save_model,
    sha256_file,
)
from models.classifier import Classifier, ClassifierConfig
from models.data import CLASS_NAMES
from models.gan import GANConfig, Generator
from models.vae import VAE, VAEConfig

REQUIRED_KEYS = {"name", "kind", "version", "config", "latent_dim", "classes", "image", "value_range",
                 "sha256", "training", "metrics"}


def tiny(kind):
    if kind == "gan":
        return Generator(GANConfig(g_channels=16, d_channels=8, latent_dim=8))
    if kind == "vae":
        return VAE(VAEConfig(latent_dim=4, channels=4, hidden=32))
    clf = Classifier(ClassifierConfig(channels=4, features=16))
    clf.train()
    with torch.no_grad():
        clf(torch.randn(8, 1, 28, 28))  # moves BatchNorm running stats off their defaults
    return clf


@pytest.fixture
def saved_gan(tmp_path):
    """A saved tiny generator: (card path, weights path, original module)."""
    module = tiny("gan")
    card_path = save_model(module, name="tiny-gan", kind="gan", out_dir=tmp_path)
    return card_path, tmp_path / "tiny-gan.safetensors", module


def edit_card(card_path, **changes):
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))
    return card


# -- round trip --

@pytest.mark.parametrize("kind", ["gan", "vae", "classifier"])
def test_save_load_round_trip(tmp_path, kind):
    """The loaded module has exactly the saved tensors (buffers included) and the same outputs."""
    module = tiny(kind)
    card_path = save_model(module, name=f"tiny-{kind}", kind=kind, out_dir=tmp_path / "w",
                           training={"epochs": 1}, metrics={"fid": 1.5})
    assert card_path == tmp_path / "w" / f"tiny-{kind}.json"
    loaded, card = load_model(card_path)
    assert type(loaded) is type(module)
    saved, got = module.state_dict(), loaded.state_dict()
    assert saved.keys() == got.keys()
    for k in saved:
        assert torch.equal(saved[k], got[k]), k
    assert card["kind"] == kind and card["name"] == f"tiny-{kind}"
    assert card["training"] == {"epochs": 1} and card["metrics"] == {"fid": 1.5}
    module.eval()
    with torch.no_grad():
        if kind == "classifier":
            x = torch.rand(2, 1, 28, 28)
            assert torch.equal(module(x), loaded(x))
        else:
            z, y = torch.randn(2, module.cfg.latent_dim), torch.tensor([1, 8])
            assert torch.equal(module.generate(z, y), loaded.generate(z, y))


def test_the_same_tensors_always_give_the_same_file_and_sha256(tmp_path):
    """A rerun of a training command that reproduces the tensors reproduces the file byte for byte
    (and so the card's sha256): the file's metadata is one key, the model's identity as sorted JSON."""
    from safetensors import safe_open

    module = tiny("vae")
    digests = set()
    for i in range(6):  # a map of several keys came out in either order from run to run
        card = json.loads(save_model(module, name="tiny-vae", kind="vae", out_dir=tmp_path / str(i)).read_text())
        digests.add(card["sha256"])
    assert len(digests) == 1
    with safe_open(tmp_path / "0" / "tiny-vae.safetensors", "pt") as f:
        assert json.loads(f.metadata()["model"]) == {"kind": "vae", "name": "tiny-vae", "version": "1.0.0"}


@pytest.mark.parametrize("kind", ["gan", "vae", "classifier"])
def test_card_contents(tmp_path, kind):
    """The card carries the required keys, the config, and the sha256 of the weights file."""
    module = tiny(kind)
    card_path = save_model(module, name="m", kind=kind, out_dir=tmp_path)
    card = json.loads(card_path.read_text())
    assert REQUIRED_KEYS <= card.keys()
    assert card["version"] == "1.0.0"
    assert card["sha256"] == sha256_file(tmp_path / "m.safetensors")
    assert len(card["sha256"]) == 64
    assert card["weights_file"] == "m.safetensors"
    assert card["classes"] == list(CLASS_NAMES)
    assert card["image"] == {"channels": 1, "height": 28, "width": 28}
    assert card["value_range"] == [-1.0, 1.0]
    assert card["config"]["num_classes"] == 10
    assert card["latent_dim"] == (None if kind == "classifier" else module.cfg.latent_dim)
    assert card["parameters"] == sum(p.numel() for p in module.parameters())
    assert card["training"] == {} and card["metrics"] == {}
    assert read_card(card_path) == card


def test_card_config_for_gan(saved_gan):
    card = json.loads(saved_gan[0].read_text())
    assert card["config"] == {"latent_dim": 8, "num_classes": 10, "g_channels": 16, "d_channels": 8,
                              "embed_dim": 32, "image_channels": 1, "image_size": 28}
    assert card["image"] == {"channels": 1, "height": 28, "width": 28}


@pytest.mark.parametrize("kind", ["gan", "vae", "classifier"])
def test_loaded_module_is_frozen_eval(tmp_path, kind):
    """load_model returns an eval-mode module (dropout off, BN frozen) with no gradients."""
    card_path = save_model(tiny(kind), name="m", kind=kind, out_dir=tmp_path)
    module, _ = load_model(card_path)
    assert not module.training
    assert all(not m.training for m in module.modules())
    assert all(not p.requires_grad for p in module.parameters())
    if kind == "classifier":
        x = torch.rand(4, 1, 28, 28)
        assert torch.equal(module(x), module(x))  # deterministic: dropout off


def test_load_model_dtype(saved_gan):
    module, _ = load_model(saved_gan[0], dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in module.parameters())


def test_sha256_file_known_value(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# -- load errors --

def test_altered_weights_fail_sha256(saved_gan):
    """One changed byte in the weights is caught by the sha256 check, naming the weights file."""
    card_path, weights, _ = saved_gan
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError) as e:
        load_model(card_path)
    assert "tiny-gan.safetensors" in str(e.value)
    assert "sha256" in str(e.value)


@pytest.mark.parametrize("change", [{"g_channels": 32}, {"latent_dim": 9}])
def test_config_mismatching_tensors(saved_gan, change):
    """A card config that builds differently shaped tensors: ModelLoadError naming the file and the tensor."""
    card_path, _, _ = saved_gan
    card = json.loads(card_path.read_text())
    edit_card(card_path, config={**card["config"], **change})
    with pytest.raises(ModelLoadError, match=r"tiny-gan\.safetensors: tensor \S+ has shape"):
        load_model(card_path)


def test_kind_mismatching_tensors(saved_gan):
    """GAN weights under a VAE card: the tensor names differ, and the error says so."""
    card_path, _, _ = saved_gan
    edit_card(card_path, kind="vae", config=dataclasses.asdict(VAEConfig()))
    with pytest.raises(ModelLoadError, match=r"tiny-gan\.safetensors: tensors do not match .*missing \['decoder"):
        load_model(card_path)


def test_unknown_config_key(saved_gan):
    card_path, _, _ = saved_gan
    card = json.loads(card_path.read_text())
    edit_card(card_path, config={**card["config"], "depth": 3})
    with pytest.raises(ModelLoadError, match=r"tiny-gan\.json: cannot build the model .*depth"):
        load_model(card_path)


@pytest.mark.parametrize("key", ["latent_dim", "g_channels"])
def test_a_config_must_name_every_size(saved_gan, key):
    """A key left out was filled with its default: a card without latent_dim loaded (the shipped
    sizes are the defaults) and the service then failed its warm-up with KeyError('latent_dim')."""
    card_path, _, _ = saved_gan
    config = json.loads(card_path.read_text())["config"]
    del config[key]
    edit_card(card_path, config=config)
    with pytest.raises(ModelLoadError, match=rf"tiny-gan\.json: cannot build the model .*lacks \['{key}'\]"):
        load_model(card_path)


@pytest.mark.parametrize("change", [{"g_channels": -2}, {"latent_dim": 0}, {"embed_dim": -1}, {"image_size": 30}])
def test_impossible_sizes_name_the_card(saved_gan, change):
    """A negative size raised torch's RuntimeError, which start-up does not turn into its one-line
    "cannot load models" exit: a traceback that named no file."""
    card_path, _, _ = saved_gan
    card = json.loads(card_path.read_text())
    edit_card(card_path, config={**card["config"], **change})
    with pytest.raises(ModelLoadError, match=r"tiny-gan\.(json: cannot build|safetensors: tensor)"):
        load_model(card_path)


@pytest.mark.parametrize("image", [None, {}, {"channels": 1, "height": 28}, {"channels": 3, "height": 28, "width": 28},
                                   {"channels": 1, "height": 0, "width": 28}, {"channels": 1, "height": "28", "width": 28},
                                   {"channels": True, "height": 28, "width": 28}, [1, 28, 28]])
def test_a_card_must_give_the_image_size(saved_gan, image):
    """The service reads card["image"]: without it the card loaded and warm-up failed with KeyError('image')."""
    card_path, _, _ = saved_gan
    card = json.loads(card_path.read_text())
    if image is None:
        del card["image"]
        card_path.write_text(json.dumps(card))
    else:
        edit_card(card_path, image=image)
    with pytest.raises(ModelLoadError, match=r"tiny-gan\.json: image must give positive integer channels"):
        load_model(card_path)


@pytest.mark.parametrize("classes, message", [
    (None, "classes must be a list"),
    ([], "classes must be a list"),
    (["a"] * 10, "distinct"),
    ([f"c{i}" for i in range(9)] + [""], "non-empty"),
    ([f"c{i}" for i in range(11)], "11 classes named for a model of num_classes=10"),
    ([f"c{i}" for i in range(9)], "9 classes named for a model of num_classes=10"),
])
def test_card_classes_must_match_the_model(saved_gan, classes, message):
    """The served label range comes from the card: one class past the embedding failed a whole
    shared batch at run time."""
    card_path, _, _ = saved_gan
    edit_card(card_path, classes=classes)
    with pytest.raises(ModelLoadError, match=rf"tiny-gan\.json: .*{message}"):
        load_model(card_path)


def test_unknown_kind(saved_gan):
    card_path, _, _ = saved_gan
    edit_card(card_path, kind="diffusion")
    with pytest.raises(ModelLoadError, match=r"tiny-gan\.json: cannot build .*unknown kind 'diffusion'"):
        load_model(card_path)


def test_card_missing(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.json: model card not found"):
        load_model(tmp_path / "nope.json")


def test_weights_missing(saved_gan):
    card_path, weights, _ = saved_gan
    weights.unlink()
    with pytest.raises(ModelLoadError, match=r"tiny-gan\.safetensors: weights file not found"):
        load_model(card_path)


def test_weights_file_cannot_leave_card_folder(saved_gan, tmp_path):
    """weights_file is reduced to a bare name: '../x' resolves inside the card's folder."""
    card_path, weights, _ = saved_gan
    sub = tmp_path / "sub"
    sub.mkdir()
    moved = sub / "tiny-gan.json"
    card_path.rename(moved)
    edit_card(moved, weights_file="../tiny-gan.safetensors")
    with pytest.raises(ModelLoadError, match=r"sub/tiny-gan\.safetensors: weights file not found"):
        load_model(moved)


def test_card_invalid_json(saved_gan):
    card_path, _, _ = saved_gan
    card_path.write_text('{"name": "tiny-gan", ')
    with pytest.raises(ModelLoadError, match=r"tiny-gan\.json: unreadable model card"):
        load_model(card_path)


@pytest.mark.parametrize("text", ["null", "42", "[1, 2]", '"a string"'])
def test_card_json_not_an_object(saved_gan, text):
    """Valid JSON that is not an object is a ModelLoadError naming the card (not a TypeError)."""
    card_path, _, _ = saved_gan
    card_path.write_text(text)
    with pytest.raises(ModelLoadError, match=r"tiny-gan\.json"):
        load_model(card_path)


def test_card_missing_keys(saved_gan):
    card_path, _, _ = saved_gan
    card = json.loads(card_path.read_text())
    del card["sha256"], card["config"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"lacks \['config', 'sha256'\]"):
        load_model(card_path)


@pytest.mark.parametrize("keep", [4, 100, 0.5, -1])
def test_truncated_safetensors_with_matching_sha(saved_gan, keep):
    """A truncated weights file whose sha256 the card matches is still rejected as not valid safetensors."""
    card_path, weights, _ = saved_gan
    raw = weights.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else (len(raw) + keep if keep < 0 else keep)
    weights.write_bytes(raw[:n])
    edit_card(card_path, sha256=sha256_file(weights))
    with pytest.raises(ModelLoadError, match=r"tiny-gan\.safetensors: not a valid safetensors file"):
        load_model(card_path)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.double(), r"is torch.float64, the model needs torch.float32"),
    (lambda t: t.half(), r"is torch.float16, the model needs torch.float32"),
    (lambda t: torch.full_like(t, float("nan")), r"holds NaN or infinite values"),
    (lambda t: torch.full_like(t, float("inf")), r"holds NaN or infinite values"),
])
def test_tensors_of_another_dtype_or_not_finite_are_refused(saved_gan, change, message):
    """load_state_dict cast float64 or float16 tensors silently, and NaN weights loaded (a model
    that serves black images); the card's sha256 matches, so only these checks catch them."""
    from safetensors.torch import load_file, save_file

    card_path, weights, _ = saved_gan
    tensors = load_file(str(weights))
    key = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[key] = change(tensors[key])
    save_file(tensors, str(weights))
    edit_card(card_path, sha256=sha256_file(weights))
    with pytest.raises(ModelLoadError, match=rf"tensor {key} {message}"):
        load_model(card_path)


def test_channels_last_only_on_a_cpu():
    conv = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3))
    assert channels_last_on_cpu(conv, torch.device("cuda")) is False  # left as loaded
    assert conv[0].weight.is_contiguous()
    assert channels_last_on_cpu(conv, torch.device("cpu")) is True
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last) and not conv[0].weight.is_contiguous()
