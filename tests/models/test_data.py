"""models.data: IDX reading/writing, split loading, its errors, and tensor conversion."""

import gzip
import struct

import numpy as np
import pytest
import torch

from models.data import (
    CLASS_NAMES,
    FILES,
    IMAGE_SHAPE,
    DataError,
    Split,
    load_split,
    read_idx,
    to_tensors,
    write_idx,
)

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
N = 20


def make_images(n=N, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, 28, 28)).astype(np.uint8)


def make_labels(n=N):
    return (np.arange(n) % 10).astype(np.uint8)


def write_split(root, split, images, labels):
    images_name, labels_name = FILES[split]
    write_idx(root / images_name, images)
    write_idx(root / labels_name, labels)
    return root / images_name, root / labels_name


@pytest.fixture
def data_dir(tmp_path):
    """A folder with synthetic train (20 images) and test (10 images) splits."""
    write_split(tmp_path, "train", make_images(N, seed=1), make_labels(N))
    write_split(tmp_path, "test", make_images(10, seed=2), make_labels(10)[::-1].copy())
    return tmp_path


# -- IDX round trip --

@pytest.mark.parametrize("compress, name", [(True, "x-idx3-ubyte.gz"), (False, "x-idx3-ubyte")])
def test_idx_round_trip_images(tmp_path, compress, name):
    """write_idx then read_idx gives back the same uint8 array, gzip-compressed or raw."""
    images = make_images()
    path = tmp_path / name
    write_idx(path, images, compress=compress)
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" if compress else raw[:4] == b"\x00\x00\x08\x03"
    out = read_idx(path, IMAGES_MAGIC, (None, 28, 28))
    assert out.dtype == np.uint8 and out.shape == (N, 28, 28)
    assert np.array_equal(out, images)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip_labels_and_header_bytes(tmp_path, compress):
    """A 1-D label file has magic 0x801, one big-endian dimension, then the raw bytes."""
    labels = make_labels()
    path = tmp_path / ("l.gz" if compress else "l.idx")
    write_idx(path, labels, compress=compress)
    raw = gzip.decompress(path.read_bytes()) if compress else path.read_bytes()
    assert raw == struct.pack(">II", LABELS_MAGIC, N) + labels.tobytes()
    assert np.array_equal(read_idx(path, LABELS_MAGIC, (None,)), labels)


# -- load_split --

def test_load_split_reads_both_splits(data_dir):
    """load_split finds the four Debian file names and returns matching images and labels."""
    train = load_split("train", data_dir)
    assert isinstance(train, Split)
    assert train.images.shape == (N, 28, 28) and train.labels.shape == (N,)
    assert np.array_equal(train.images, make_images(N, seed=1))
    assert np.array_equal(train.labels, make_labels(N))
    test = load_split("test", str(data_dir))  # a str folder works too
    assert test.images.shape == (10, 28, 28)
    assert test.labels.tolist() == list(range(9, -1, -1))


def test_load_split_rejects_unknown_split(data_dir):
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("validation", data_dir)


# -- errors --

def test_missing_file_names_path_and_install_hint(tmp_path):
    """A missing file is a DataError naming the full path and the apt-get fix."""
    with pytest.raises(DataError) as e:
        load_split("train", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / FILES["train"][0]) in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg


def test_missing_labels_file(tmp_path):
    """With the images present, the missing labels file is the one named."""
    write_idx(tmp_path / FILES["test"][0], make_images(5))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: file not found"):
        load_split("test", tmp_path)


def test_bad_magic_number(data_dir):
    """A header with another magic number (here a float32 IDX type, 0x0D03) is rejected."""
    path = data_dir / FILES["train"][0]
    path.write_bytes(gzip.compress(struct.pack(">IIII", 0x00000D03, N, 28, 28) + make_images().tobytes()))
    with pytest.raises(DataError, match=r"bad magic number 0x00000d03, expected 0x00000803") as e:
        load_split("train", data_dir)
    assert str(path) in str(e.value)


def test_labels_file_in_place_of_images(data_dir):
    """Swapped files are caught by the magic number (0x801 where 0x803 is expected)."""
    path = data_dir / FILES["train"][0]
    write_idx(path, make_labels())
    with pytest.raises(DataError, match="bad magic number 0x00000801"):
        load_split("train", data_dir)


@pytest.mark.parametrize("missing", [1, 28 * 28, 28 * 28 + 5])
def test_truncated_data(data_dir, missing):
    """Fewer data bytes than the header promises is a DataError giving both counts."""
    path = data_dir / FILES["train"][0]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-missing]))
    with pytest.raises(DataError, match=f"holds {N * 784 - missing} data bytes, header promises {N * 784}"):
        load_split("train", data_dir)


def test_extra_trailing_bytes(data_dir):
    """More bytes than promised is corrupt too."""
    path = data_dir / FILES["train"][1]
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"\x00"))
    with pytest.raises(DataError, match="header promises 20"):
        load_split("train", data_dir)


@pytest.mark.parametrize("content", [b"", b"\x00\x00", b"\x00\x00\x08\x03\x00\x00"])
def test_truncated_header(tmp_path, content):
    """A file too short to hold its header is a DataError, not an IndexError/struct.error."""
    path = tmp_path / "short.idx"
    path.write_bytes(content)
    with pytest.raises(DataError, match="truncated header"):
        read_idx(path, IMAGES_MAGIC)


def test_random_bytes_with_gz_name(data_dir):
    """Random bytes named .gz are a DataError saying the file is corrupt."""
    path = data_dir / FILES["train"][0]
    path.write_bytes(np.random.RandomState(3).bytes(4096))
    with pytest.raises(DataError, match="cannot read .*corrupt") as e:
        load_split("train", data_dir)
    assert str(path) in str(e.value)


def test_truncated_gzip_stream(data_dir):
    """A gzip file cut in half (EOFError inside gzip) is a DataError."""
    path = data_dir / FILES["train"][0]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot read"):
        load_split("train", data_dir)


def test_any_corrupted_gzip_byte_is_a_data_error(tmp_path):
    """Flipping any single byte of a compressed file either still decodes to the same array
    (header fields such as the stored file name) or raises DataError -- never another
    exception type. Compressible data makes the deflate stream use Huffman codes, whose
    corruption surfaces as zlib.error rather than as gzip's own CRC error."""
    images = (np.arange(N * 28 * 28) % 7).astype(np.uint8).reshape(N, 28, 28)
    good = tmp_path / "good.gz"
    write_idx(good, images)
    raw = good.read_bytes()
    bad = tmp_path / "bad.gz"
    escaped = {}
    for offset in range(10, len(raw) - 8):  # after the fixed 10-byte gzip header, before the trailer
        corrupted = bytearray(raw)
        corrupted[offset] ^= 0xFF
        bad.write_bytes(bytes(corrupted))
        try:
            out = read_idx(bad, IMAGES_MAGIC, (None, 28, 28))
        except DataError:
            continue
        except Exception as e:  # noqa: BLE001 -- the point of the test
            escaped[offset] = f"{type(e).__module__}.{type(e).__name__}: {e}"
            continue
        assert np.array_equal(out, images), f"byte {offset} flipped, yet read_idx returned other data"
    first = dict(list(escaped.items())[:3])
    assert not escaped, f"{len(escaped)} corrupted files raised a non-DataError from read_idx, e.g. {first}"


def test_wrong_image_dims(data_dir):
    """27x28 images are rejected with both the found and expected dimensions."""
    write_idx(data_dir / FILES["train"][0], np.zeros((N, 27, 28), np.uint8))
    with pytest.raises(DataError, match=r"dimensions \(20, 27, 28\), expected \(None, 28, 28\)"):
        load_split("train", data_dir)


def test_label_out_of_range(data_dir):
    """A label of 10 (there are 10 classes, 0..9) is rejected and the labels file named."""
    labels = make_labels()
    labels[7] = 10
    write_idx(data_dir / FILES["train"][1], labels)
    with pytest.raises(DataError, match="label 10 out of range") as e:
        load_split("train", data_dir)
    assert FILES["train"][1] in str(e.value)


def test_image_label_count_mismatch(data_dir):
    """20 images with 19 labels is a DataError giving both counts."""
    write_idx(data_dir / FILES["train"][1], make_labels(N - 1))
    with pytest.raises(DataError, match="20 images but 19 labels in the train split"):
        load_split("train", data_dir)


# -- to_tensors / constants --

def test_to_tensors_value_ranges():
    """0 -> lo and 255 -> hi exactly; 51 -> 20% of the way; shapes and dtypes as documented."""
    images = np.zeros((3, 28, 28), np.uint8)
    images[0] = 0
    images[1] = 255
    images[2] = 51
    images[2, 0, 0] = 255
    split = Split(images, np.array([0, 5, 9], np.uint8))
    x, y = to_tensors(split)
    assert x.shape == (3, *IMAGE_SHAPE) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [0, 5, 9]
    assert torch.all(x[0] == -1.0) and torch.all(x[1] == 1.0)
    assert x[2, 0, 0, 0] == 1.0
    assert torch.allclose(x[2, 0, 1:], torch.full((27, 28), -0.6), atol=1e-6)
    x01, _ = to_tensors(split, (0.0, 1.0))
    assert torch.all(x01[0] == 0.0) and torch.all(x01[1] == 1.0)
    assert torch.allclose(x01[2, 0, 5, 5], torch.tensor(0.2), atol=1e-6)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_to_tensors_does_not_alias_split():
    """Converting must not modify the uint8 arrays of the split (it works on a copy)."""
    images = np.full((2, 28, 28), 128, np.uint8)
    split = Split(images, np.array([1, 2], np.uint8))
    x, _ = to_tensors(split)
    x.fill_(0.0)
    assert np.all(split.images == 128)


def test_class_names():
    assert CLASS_NAMES == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )
