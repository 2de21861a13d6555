"""Broken datasets fail loudly where they are read (DataError naming file, array, found, expected),
instead of loading into silently wrong results."""

import struct

import numpy as np
import pytest
import torch

from core.data import DataError, Dataset, check_images, load_dataset, load_ood


@pytest.fixture(scope="module")
def small_mnist(data_dir):
    """Slices of the real MNIST: 200 training and 100 test images with their labels."""
    with np.load(data_dir / "mnist.npz") as z:
        return {"x_train": z["x_train"][:200], "y_train": z["y_train"][:200],
                "x_test": z["x_test"][:100], "y_test": z["y_test"][:100]}


def write_mnist(folder, arrays, **changes):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "mnist.npz", **{**arrays, **changes})
    return folder


def test_small_and_real_mnist_still_load(tmp_path, small_mnist, data_dir):
    ds = load_dataset("mnist", write_mnist(tmp_path, small_mnist))
    assert ds.x_train.shape == (200, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert torch.equal(ds.y_test, torch.from_numpy(small_mnist["y_test"].astype(np.int64)))
    real = load_dataset("mnist", data_dir)
    assert real.x_train.shape == (60000, 1, 28, 28) and real.y_test.shape == (10000,)


def bad_cases(a):
    """(name, changed arrays, words the message must hold) for each way a file can be wrong."""
    return [
        ("float01", {"x_train": a["x_train"].astype(np.float32) / 255},
         ["array x_train", "float32 pixels in 0..1", "expected uint8 pixels 0..255"]),
        ("labels50", {"y_test": a["y_test"] + 50}, ["array y_test", "labels 50..59", "expected class indices 0..9"]),
        ("negative", {"y_train": a["y_train"].astype(np.int64) - 1}, ["array y_train", "labels -1..8", "0..9"]),
        ("short_y", {"y_test": a["y_test"][:60]}, ["array y_test", "60 labels for 100 images", "one label per image"]),
        ("no_images", {"x_train": a["x_train"][:0], "y_train": a["y_train"][:0]},
         ["array x_train", "0 images", "at least one"]),
        ("2d_labels", {"y_train": a["y_train"].reshape(100, 2)}, ["array y_train", "shape (100, 2)", "1-D"]),
        ("5d_images", {"x_test": a["x_test"].reshape(100, 28, 28, 1, 1)},
         ["array x_test", "shape (100, 28, 28, 1, 1)", "N x H x W"]),
        ("rgb", {"x_test": np.repeat(a["x_test"][..., None], 3, axis=3)},
         ["array x_test", "N x 28 x 28 x 3", "expected N x 28 x 28 for MNIST"]),
        ("float_labels", {"y_train": a["y_train"] + 0.5}, ["array y_train", "not whole numbers"]),
    ]


@pytest.mark.parametrize("case", range(9))
def test_bad_npz_raises_a_data_error_that_names_the_problem(tmp_path, small_mnist, case):
    name, changes, words = bad_cases(small_mnist)[case]
    folder = write_mnist(tmp_path / name, small_mnist, **changes)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", folder)
    msg = str(e.value)
    assert "\n" not in msg and str(folder / "mnist.npz") in msg
    for w in words:
        assert w in msg, (w, msg)


def test_a_split_not_asked_for_is_not_checked(tmp_path, small_mnist):
    folder = write_mnist(tmp_path, small_mnist, y_train=small_mnist["y_train"] + 50)
    assert len(load_dataset("mnist", folder, splits=("test",)).x_test) == 100
    with pytest.raises(DataError, match="y_train"):
        load_dataset("mnist", folder)


def test_broken_torchvision_folder_is_reported_not_skipped(tmp_path, small_mnist):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, x, y in (("train", small_mnist["x_train"], small_mnist["y_train"] + 50),
                        ("t10k", small_mnist["x_test"], small_mnist["y_test"])):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(x), 28, 28) + x.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(y)) + y.tobytes())
    with pytest.raises(DataError, match=r"torchvision MNIST folder .*train split: labels: found labels 50\.\.59"):
        load_dataset("mnist", tmp_path, download=False)


def test_broken_cifar_is_not_replaced_by_offline_crops(tmp_path):
    np.savez(tmp_path / "cifar10.npz", x_train=np.zeros((4, 32, 32, 3), np.float32), y_train=np.zeros(4, np.uint8),
             x_test=np.zeros((4, 32, 32, 3), np.float32), y_test=np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="cifar10.npz array x_test: found float32 pixels"):
        load_ood("cifar10", (1, 28, 28), 4, data_dir=tmp_path)


def test_check_images_for_transfer_sets():
    check_images(np.zeros((2, 32, 32, 3), np.uint8), "t.npz array x_train")
    check_images(np.zeros((2, 3, 32, 32), np.uint8), "t.npz array x_train")  # N x C x H x W: caller's to reorder
    for x, words in ((np.ones((2, 8, 8), np.float64), "t.npz array x_train: found float64 pixels in 1..1"),
                     (np.zeros((0, 8, 8), np.uint8), "found 0 images"),
                     (np.zeros((8, 8), np.uint8), "found an array of shape (8, 8)")):
        with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            check_images(x, "t.npz array x_train")


def valid(ds: Dataset) -> bool:
    return all(
        x.dtype == torch.uint8 and x.shape[1:] == (1, 28, 28) and len(x) == len(y) > 0
        and y.dtype == torch.int64 and y.ndim == 1 and int(y.min()) >= 0 and int(y.max()) <= 9
        for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)))


def test_fuzz_gives_a_valid_dataset_or_a_data_error(tmp_path, small_mnist):
    rng = np.random.default_rng(12)
    outcomes = []
    for i in range(20):
        arrays = dict(small_mnist)
        for key in rng.choice(list(arrays), size=rng.integers(1, 3), replace=False):
            a = arrays[key]
            dtype = rng.choice([np.uint8, np.int64, np.float32, np.float64])
            if key.startswith("x"):
                a = a.astype(dtype)
                if a.dtype.kind == "f" and rng.random() < 0.5:
                    a /= 255  # the [0, 1] floats of many exporters
                shape = [(len(a), 28, 28), (len(a), 28, 28, 1), (len(a), 28, 28, 1, 1), (len(a), 784),
                         (0, 28, 28), (len(a) // 2, 56, 28)][rng.integers(6)]
                a = np.resize(a, shape).astype(a.dtype)
            else:
                lo = int(rng.integers(-3, 12))
                a = (rng.integers(lo, lo + int(rng.integers(1, 12)), size=rng.choice([len(a), len(a) - 7, 0]))
                     .astype(dtype))
                if rng.random() < 0.2:
                    a = a.reshape(-1, 1)
            arrays[key] = a
        folder = write_mnist(tmp_path / str(i), arrays)
        try:
            ds = load_dataset("mnist", folder)
        except DataError as e:
            assert str(e) and "\n" not in str(e)
            outcomes.append("error")
        else:
            assert valid(ds), {k: (v.dtype, v.shape) for k, v in arrays.items()}
            outcomes.append("loaded")
    assert "error" in outcomes and "loaded" in outcomes  # the fuzz reaches both outcomes
