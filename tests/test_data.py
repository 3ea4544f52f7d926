import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from sparseprior.data import (
    DATASETS,
    FASHION_MNIST_DEFAULT_ROOT,
    encode_idx,
    find_idx_files,
    load_dataset,
    make_blobs,
    make_loader,
    read_idx,
    write_idx,
)
from sparseprior.data.mnist import IDX_FILES

# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((5, 3, 4)) * 50).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", arr)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


def test_idx_header_layout_is_big_endian():
    data = encode_idx(np.arange(6, dtype=np.int32).reshape(2, 3))
    assert data[:4] == bytes([0, 0, 0x0C, 2])
    assert data[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert data[12:16] == (0).to_bytes(4, "big") and data[16:20] == (1).to_bytes(4, "big")


def _corrupt(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_idx_corrupt_files_give_clear_errors(tmp_path):
    good = encode_idx(np.zeros((4, 2, 2), np.uint8))
    cases = {
        "magic": (b"\x01" + good[1:], "bad magic number"),
        "type": (good[:2] + b"\x07" + good[3:], "unknown element type 0x07"),
        "truncated": (good[:-1], "truncated or corrupt"),
        "extra": (good + b"\x00", "declares shape"),
        "short": (b"\x00\x00", "too short"),
        "header": (good[:9], "truncated inside its header"),
        "ndim0": (bytes([0, 0, 8, 0]), "at least 1"),
        "badgz": (gzip.compress(good)[:-12], "corrupt or truncated gzip"),
    }
    for name, (data, message) in cases.items():
        path = _corrupt(tmp_path, name, data)
        with pytest.raises(ValueError, match=message) as info:
            read_idx(path)
        assert name in str(info.value)  # the error names the file
    with pytest.raises(ValueError, match="not found"):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(ValueError, match="cannot be stored in IDX"):
        encode_idx(np.zeros(3, np.complex64))


# ---------------------------------------------------------------- MNIST-format folders


def _fake_mnist(folder: Path, n_train: int = 30, n_test: int = 12, gz: bool = True) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, stem in IDX_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])


def test_mnist_from_user_folder_raw_and_torchvision_layout(tmp_path):
    _fake_mnist(tmp_path / "flat", gz=False)
    splits = load_dataset("mnist", tmp_path / "flat")
    assert splits.sizes == {"train": 30, "val": 0, "test": 12}
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    x, y = splits.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert splits.mean == (0.1307,) and splits.std == (0.3081,)
    raw = read_idx(tmp_path / "flat" / IDX_FILES["x_train"])
    expected = (torch.from_numpy(raw).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[:, 0], expected)

    _fake_mnist(tmp_path / "tv" / "MNIST" / "raw")
    assert load_dataset("mnist", tmp_path / "tv").sizes["test"] == 12


def test_missing_files_say_which_and_how(tmp_path):
    _fake_mnist(tmp_path)
    (tmp_path / (IDX_FILES["y_test"] + ".gz")).unlink()
    (tmp_path / (IDX_FILES["x_train"] + ".gz")).unlink()
    with pytest.raises(ValueError) as info:
        load_dataset("fashion-mnist", tmp_path)
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte" in msg and "train-images-idx3-ubyte" in msg
    assert "train-labels" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    with pytest.raises(ValueError, match="no such folder"):
        find_idx_files("fashion-mnist", tmp_path / "absent")
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("cifar10")


def test_mismatched_idx_counts_are_rejected(tmp_path):
    _fake_mnist(tmp_path)
    write_idx(tmp_path / (IDX_FILES["y_train"] + ".gz"), np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match="holds 30 images"):
        load_dataset("mnist", tmp_path)


@pytest.fixture(scope="module")
def fashion():
    if not all((FASHION_MNIST_DEFAULT_ROOT / (f + ".gz")).is_file() for f in IDX_FILES.values()):
        pytest.skip(f"{FASHION_MNIST_DEFAULT_ROOT} absent (apt-get install dataset-fashion-mnist)")
    return load_dataset("fashion-mnist")


def test_fashion_mnist_full(fashion):
    assert fashion.sizes == {"train": 60000, "val": 0, "test": 10000}
    assert tuple(fashion.train.tensors[0].shape) == (60000, 1, 28, 28)
    assert tuple(fashion.test.tensors[0].shape) == (10000, 1, 28, 28)
    for ds in (fashion.train, fashion.test):
        y = ds.tensors[1]
        assert torch.equal(torch.unique(y), torch.arange(10))
    counts = torch.bincount(fashion.train.tensors[1])
    assert torch.equal(counts, torch.full((10,), 6000))
    x = fashion.train.tensors[0]
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    assert fashion.classes[9] == "Ankle boot"


# ---------------------------------------------------------------- digits / synthetic / splits


def test_digits_fixed_split_and_seeded_val():
    a = load_dataset("digits", val_size=0.1, seed=3)
    b = load_dataset("digits", val_size=0.1, seed=3)
    c = load_dataset("digits", val_size=0.1, seed=4)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert a.sizes == {"train": 1293, "val": 144, "test": 360}
    for part in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, part).tensors, getattr(b, part).tensors, strict=True):
            assert torch.equal(ta, tb)
    assert torch.equal(a.test.tensors[0], c.test.tensors[0])  # test split ignores the seed
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    assert a.mean == c.mean  # stats come from the whole official training split
    assert torch.equal(torch.bincount(a.test.tensors[1]).clamp(max=1), torch.ones(10).long())


def test_val_and_subset_are_disjoint_and_val_ignores_subset():
    kw = {"n_train": 200, "n_test": 50, "num_classes": 4, "image_shape": (1, 6, 6)}
    full = load_dataset("synthetic", val_size=40, seed=1, **kw)
    small = load_dataset("synthetic", val_size=40, subset=30, seed=1, **kw)
    assert full.sizes == {"train": 160, "val": 40, "test": 50}
    assert small.sizes == {"train": 30, "val": 40, "test": 50}
    assert torch.equal(full.val.tensors[0], small.val.tensors[0])
    rows = {tuple(r.tolist()) for r in full.val.tensors[0].flatten(1)}
    assert not rows & {tuple(r.tolist()) for r in full.train.tensors[0].flatten(1)}
    train_rows = {tuple(r.tolist()) for r in full.train.tensors[0].flatten(1)}
    assert {tuple(r.tolist()) for r in small.train.tensors[0].flatten(1)} <= train_rows


def test_synthetic_is_seeded_and_learnable_shape():
    a = load_dataset("synthetic", seed=5, n_train=64, n_test=16, image_shape=(3, 8, 8))
    b = load_dataset("synthetic", seed=5, n_train=64, n_test=16, image_shape=(3, 8, 8))
    c = load_dataset("synthetic", seed=6, n_train=64, n_test=16, image_shape=(3, 8, 8))
    assert a.input_shape == (3, 8, 8) and a.num_classes == 10
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert torch.equal(torch.bincount(a.train.tensors[1], minlength=10)[:4], torch.tensor(
        [7, 7, 7, 7]))
    # nearest-centre classification of fresh test blobs works: classes really are separated
    x, y, centers = make_blobs(200, num_classes=5, image_shape=(1, 4, 4), seed=0)
    pred = torch.cdist(x.flatten(1), centers.flatten(1)).argmin(1)
    assert (pred == y).float().mean() > 0.9


def test_loaders_are_deterministic_under_seed():
    splits = load_dataset("digits", seed=0)
    def batches(seed, epochs=2):
        loader = make_loader(splits.train, batch_size=100, shuffle=True, seed=seed)
        return [torch.cat([y for _, y in loader]) for _ in range(epochs)]
    e1, e2 = batches(0)
    f1, f2 = batches(0)
    g1, _ = batches(1)
    assert torch.equal(e1, f1) and torch.equal(e2, f2)
    assert not torch.equal(e1, e2) and not torch.equal(e1, g1)
    assert sorted(e1.tolist()) == sorted(splits.train.tensors[1].tolist())

    loader = make_loader(splits.test, batch_size=128, shuffle=False)
    xs = [x for x, _ in loader]
    assert len(loader) == 3 and [len(x) for x in xs] == [128, 128, 104]
    assert torch.equal(torch.cat(xs), splits.test.tensors[0])
    dropped = make_loader(splits.test, batch_size=128, shuffle=True, drop_last=True)
    assert len(dropped) == 2 and all(len(x) == 128 for x, _ in dropped)


class _ListDataset(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i


def test_make_loader_generic_dataset_is_seeded():
    def order(seed):
        return torch.cat([y for _, y in make_loader(_ListDataset(), 4, True, seed)])
    assert torch.equal(order(2), order(2)) and not torch.equal(order(2), order(3))


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match=r"name='cifar100' is unknown; allowed: \["):
        load_dataset("cifar100")
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['bogus'\]"):
        load_dataset("digits", bogus=1)
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("synthetic", n_train=20, n_test=5, val_size=20)
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("synthetic", n_train=20, n_test=5, val_size=1.5)
    with pytest.raises(ValueError, match="subset=19 exceeds"):
        load_dataset("synthetic", n_train=20, n_test=5, val_size=2, subset=19)
    with pytest.raises(ValueError, match="subset"):
        load_dataset("synthetic", n_train=20, n_test=5, subset=0)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(_ListDataset(), 0)
    with pytest.raises(ValueError, match="image_shape"):
        make_blobs(4, image_shape=(8, 8))
    assert set(DATASETS) == {"fashion-mnist", "mnist", "digits", "cifar10", "synthetic"}


# ---------------------------------------------------------------- CIFAR-10


def _fake_cifar(folder: Path, per_batch: int = 4) -> None:
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        # image j of batch i: red = 10*i + j, green = 100, blue = 200
        data = np.zeros((per_batch, 3, 32, 32), np.uint8)
        data[:, 0] = (10 * i + np.arange(per_batch))[:, None, None]
        data[:, 1], data[:, 2] = 100, 200
        batch = {b"batch_label": b"fake", b"data": data.reshape(per_batch, -1),
                 b"labels": [(i + j) % 10 for j in range(per_batch)],
                 b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                             b"frog", b"horse", b"ship", b"truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def test_fake_cifar_folder_loads(tmp_path):
    _fake_cifar(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        splits = load_dataset("cifar10", root, normalize=False)
        assert splits.sizes == {"train": 20, "val": 0, "test": 4}
        assert splits.input_shape == (3, 32, 32) and splits.num_classes == 10
    x, y = splits.train.tensors
    torch.testing.assert_close(x[5, 0], torch.full((32, 32), 11 / 255))  # batch 2, image 1
    torch.testing.assert_close(x[5, 2], torch.full((32, 32), 200 / 255))
    assert y.tolist()[:5] == [0, 1, 2, 3, 1]
    assert splits.classes[1] == "automobile"
    norm = load_dataset("cifar10", tmp_path)
    assert norm.mean == (0.4914, 0.4822, 0.4465)
    torch.testing.assert_close(norm.train.tensors[0][0, 1, 0, 0],
                               torch.tensor((100 / 255 - 0.4822) / 0.2435))


def test_cifar_rejects_missing_and_malicious_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _fake_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ValueError, match=r"lacks \['data_batch_3'\]"):
        load_dataset("cifar10", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(ValueError, match="builtins.print.*refusing"):
        load_dataset("cifar10", tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="could not be unpickled"):
        load_dataset("cifar10", tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8),
                                                        "labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        load_dataset("cifar10", tmp_path)
