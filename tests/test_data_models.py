"""Data sources and the checkpoint format."""

import numpy as np
import pytest
import torch

from core import CheckpointError, load_model
from core.data import DataError, convert_images, load_dataset, load_ood
from core.models import ARCHS, build_model, save_model


def test_npz_dir_gives_mnist_in_nchw(mnist):
    assert mnist.x_train.shape == (60000, 1, 28, 28) and mnist.x_train.dtype == torch.uint8
    assert mnist.x_test.shape == (10000, 1, 28, 28)
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the original order
    assert "npz" in mnist.source


def test_cifar_ood_is_converted_to_the_victims_shape(cifar_probe):
    assert cifar_probe.x.shape == (300, 1, 28, 28) and cifar_probe.x.dtype == torch.uint8
    assert "CIFAR-10" in cifar_probe.source
    assert cifar_probe.x.float().std() > 20  # real images, not a constant


def test_offline_default_digits_are_real_and_learnable():
    ds = load_dataset("digits")
    assert ds.x_train.shape[1:] == (1, 28, 28) and len(ds.x_train) + len(ds.x_test) == 1797
    assert set(ds.y_train.tolist()) == set(range(10))
    assert "offline default" in ds.source
    # the digit sits in the 20x20 centre box, like MNIST
    assert ds.x_train[:, :, :4].max() == 0 and ds.x_train[:, :, 8:20, 8:20].float().mean() > 30


def test_offline_ood_crops_when_cifar_is_missing(tmp_path):
    ood = load_ood("cifar10", (1, 28, 28), 40, data_dir=tmp_path)
    assert ood.x.shape == (40, 1, 28, 28)
    assert "natural-image crops" in ood.source and "not found" in ood.source
    assert len({tuple(x.flatten()[:50].tolist()) for x in ood.x}) == 40  # distinct crops
    noise = load_ood("noise", (3, 32, 32), 8)
    assert noise.x.shape == (8, 3, 32, 32)


def test_missing_dataset_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="--dataset digits"):
        load_dataset("mnist", tmp_path, download=False)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)


def test_corrupted_or_wrong_npz(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset("mnist", tmp_path)
    bad = tmp_path / "other"
    bad.mkdir()
    np.savez(bad / "mnist.npz", x_train=np.zeros((2, 32, 32), np.uint8), y_train=np.zeros(2),
             x_test=np.zeros((2, 32, 32), np.uint8), y_test=np.zeros(2))
    with pytest.raises(DataError, match="shape"):
        load_dataset("mnist", bad)


def test_convert_rgb_to_gray_uses_luma():
    red = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    red[:, 0] = 255
    out = convert_images(red, (1, 28, 28))
    assert out.shape == (1, 1, 28, 28) and int(out[0, 0, 10, 10]) == round(0.299 * 255)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_every_arch_exposes_features_and_head(arch, dataset):
    m = build_model(arch, dataset).eval()
    c = 1 if dataset == "mnist" else 3
    s = 28 if dataset == "mnist" else 32
    x = torch.rand(2, c, s, s)
    f = m.features(x)
    assert f.shape == (2, m.feature_dim) and m(x).shape == (2, 10)
    assert torch.allclose(m.head(f), m(x))
    if arch.endswith("2d"):
        assert m.feature_dim == 2 and m.head.bias is None


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    m = build_model("lenet2d", "digits")
    save_model(m, tmp_path / "m.pt", note="x")
    back = load_model(tmp_path / "m.pt")
    assert back.arch == "lenet2d" and back.dataset == "digits" and back.info["note"] == "x"
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(back(x), m.eval()(x))

    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a model checkpoint written by this project"):
        load_model(tmp_path / "foreign.pt")
    good = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "cut.pt")


def test_committed_victim_is_accurate(victim, mnist):
    from core.metrics import accuracy, outputs

    assert victim.arch == "lenet2d" and victim.dataset == "mnist"
    acc = accuracy(outputs(victim, mnist.x_test)[1], mnist.y_test)
    assert acc >= 0.99
    assert acc == pytest.approx(victim.info["test_accuracy"], abs=1e-6)


def test_torchvision_folder_is_read_when_there_is_no_npz(tmp_path, mnist):
    """Source 2 of the data-dir order: torchvision's own MNIST folder (raw idx files)."""
    import struct

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, x, y in (("train", mnist.x_train[:500], mnist.y_train[:500]), ("t10k", mnist.x_test[:200], mnist.y_test[:200])):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(x), 28, 28) + x.numpy().tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(y)) + y.numpy().astype(np.uint8).tobytes())
    ds = load_dataset("mnist", tmp_path, download=False)
    assert "torchvision" in ds.source and ds.x_train.shape == (500, 1, 28, 28)
    assert torch.equal(ds.x_test, mnist.x_test[:200]) and torch.equal(ds.y_train, mnist.y_train[:500])


def test_run_folder_survives_damage_and_is_not_recreated(tmp_path):
    from core.advft import AdvFTConfig
    from core.runs import RunConfig, RunDir, list_runs

    run = RunDir(tmp_path / "r1")
    run.write_config(RunConfig(advft=AdvFTConfig(), victim="mnist_lenet2d"))
    run.write_history([{"epoch": 0}, {"epoch": 1}])
    with open(run.path / "history.jsonl", "a") as f:
        f.write('{"epoch": 2, "acc\n')  # damaged by hand
    with pytest.raises(ValueError):
        run.history()  # loudly: the app reports it for that run only
    assert [r.name for r in list_runs(tmp_path)] == ["r1"]
    run.delete()
    with pytest.raises(FileNotFoundError, match="deleted"):
        run.write_status("running")
    assert not run.path.exists() and list_runs(tmp_path) == []


def test_a_test_split_alone_reads_only_that_split(data_dir):
    from core.data import _CACHE

    _CACHE.clear()  # so that this really reads the archive
    part = load_dataset("cifar10", data_dir, splits=("test",))
    assert part.x_test.shape == (10000, 3, 32, 32) and part.x_train.shape == (0, 3, 32, 32)
    full = load_dataset("cifar10", data_dir)
    assert full.x_train.shape == (50000, 3, 32, 32) and torch.equal(full.x_test, part.x_test)
    assert load_dataset("cifar10", data_dir, splits=("test",)) is full  # the full set serves any request
