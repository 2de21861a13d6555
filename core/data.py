"""Datasets: in-distribution (ID) data for victims and out-of-distribution (OOD) query sources.

Images are kept as uint8 tensors of shape (N, C, H, W) and turned into floats in [0, 1] one batch
at a time (`to_float`), so a whole MNIST fits in 47 MB instead of 190 MB.

Where data comes from, in this order (see README, "Data"):
1. `<data_dir>/<name>.npz` with x_train/y_train/x_test/y_test (the format of ../shared/data);
2. torchvision's own dataset folders under `<data_dir>`, downloading them when the machine is online;
3. the embedded offline default: scikit-learn's 8x8 handwritten digits upscaled to 28x28 (the
   `digits` dataset) as ID data, and crops of the photos that ship with scikit-learn as OOD data.
Every loaded set says which of these it came from (`.source`), and the CLI and app print it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

DATA_DIR_ENV = "ADVFT_DATA_DIR"
DEFAULT_DATA_DIR = "./data"


class DataError(UserError, ValueError):
    """A dataset cannot be found or read; the message says what to do about it."""


class _NotFound(DataError):
    """No source holds the dataset at all (as opposed to one that holds a broken copy): only this
    case may fall back to the offline default, a broken file must not be silently replaced."""


@dataclass(frozen=True)
class DatasetInfo:
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    title: str


DIGIT_CLASSES = tuple(str(i) for i in range(10))
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo((1, 28, 28), DIGIT_CLASSES, "MNIST"),
    "fmnist": DatasetInfo(
        (1, 28, 28),
        ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"),
        "Fashion-MNIST",
    ),
    "cifar10": DatasetInfo(
        (3, 32, 32),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        "CIFAR-10",
    ),
    # The embedded offline default: real handwritten digits that ship with scikit-learn.
    "digits": DatasetInfo((1, 28, 28), DIGIT_CLASSES, "scikit-learn digits (offline default)"),
}
OOD_SOURCES = ("cifar10", "noise", "natural")


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor  # uint8 (N, C, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str  # where it was read from, for humans

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def classes(self) -> tuple[str, ...]:
        return DATASETS[self.name].classes


@dataclass(frozen=True)
class ImageSet:
    """Unlabelled images (an OOD probe or transfer set), uint8 (N, C, H, W)."""

    x: torch.Tensor
    source: str


def resolve_data_dir(cli_value: str | None = None) -> Path:
    """The data-directory setting: CLI flag, then $ADVFT_DATA_DIR, then ./data."""
    return Path(cli_value or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 images as N,H,W (grey) or N,H,W,C -> an N,C,H,W tensor."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.ndim == 3:  # N, H, W (MNIST)
        return t.unsqueeze(1)
    return t.permute(0, 3, 1, 2).contiguous()  # N, H, W, C -> N, C, H, W


def check_images(x: np.ndarray, where: str) -> None:
    """Raises DataError unless `x` is a non-empty uint8 image array, N x H x W or N x H x W x C
    (N x C x H x W is left to the caller). Float pixels in [0, 1] cast to uint8 would become all
    zeros, so they are refused, never rescaled. Also for transfer-set .npz files read elsewhere."""
    if x.dtype != np.uint8:
        found, fix = f"{x.dtype} pixels", ""
        if x.dtype.kind in "iuf" and x.size:
            lo, hi = x.min(), x.max()
            found += f" in {lo:g}..{hi:g}"
            if x.dtype.kind == "f" and 0 <= lo and hi <= 1:
                fix = "; rescale them with (x * 255).round().astype(np.uint8)"
            elif 0 <= lo and hi <= 255:
                fix = "; convert them with x.astype(np.uint8)"
        raise DataError(f"{where}: found {found}, expected uint8 pixels 0..255{fix}")
    if x.ndim not in (3, 4):
        raise DataError(f"{where}: found an array of shape {tuple(x.shape)}, "
                        f"expected images N x H x W or N x H x W x C")
    if len(x) == 0:
        raise DataError(f"{where}: found 0 images, expected at least one")


def check_split(x: np.ndarray, y: np.ndarray, name: str, x_where: str, y_where: str) -> None:
    """Raises DataError unless x, y are one usable split of dataset `name`: images as check_images
    in the dataset's shape, one integer label in 0..classes-1 per image. Cheap: no copies, one
    min/max over the labels."""
    info = DATASETS[name]
    check_images(x, x_where)
    c, h, w = info.shape
    found_chw = (1, *x.shape[1:]) if x.ndim == 3 else (x.shape[3], *x.shape[1:3])
    if found_chw != info.shape:
        expected = f"N x {h} x {w}" + (f" x {c}" if c > 1 else "")
        raise DataError(f"{x_where}: found images of shape {' x '.join(map(str, ('N', *x.shape[1:])))}, "
                        f"expected {expected} for {info.title}")
    k = len(info.classes)
    if y.ndim != 1:
        raise DataError(f"{y_where}: found labels of shape {tuple(y.shape)}, "
                        f"expected a 1-D array of {len(x)} class indices")
    if len(y) != len(x):
        raise DataError(f"{y_where}: found {len(y)} labels for {len(x)} images, expected one label per image")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{y_where}: found {y.dtype} labels, expected integer class indices 0..{k - 1}")
    lo, hi = y.min(), y.max()
    if y.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi) and np.all(y == np.floor(y))):
        raise DataError(f"{y_where}: found {y.dtype} labels that are not whole numbers, "
                        f"expected integer class indices 0..{k - 1}")
    if lo < 0 or hi > k - 1:
        raise DataError(f"{y_where}: found labels {lo:g}..{hi:g}, expected class indices 0..{k - 1} "
                        f"for the {k} classes of {info.title}")


def _from_npz(path: Path, name: str, splits: tuple[str, ...]) -> Dataset:
    """Reads only the requested splits (the archives are compressed: CIFAR-10's train split alone
    takes a second to inflate); a split not asked for is left empty."""
    c, h, w = DATASETS[name].shape
    empty = {"x": np.zeros((0, h, w) if c == 1 else (0, h, w, c), np.uint8), "y": np.zeros(0, np.int64)}
    try:
        with np.load(path) as z:
            arrays = {f"{k}_{s}": z[f"{k}_{s}"] if s in splits else empty[k]
                      for k in ("x", "y") for s in ("train", "test")}
    except KeyError as e:
        raise DataError(f"{path} lacks the array {e}; expected x_train, y_train, x_test, y_test") from None
    except Exception as e:  # zip/pickle errors from a corrupted file
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    for s in splits:
        check_split(arrays[f"x_{s}"], arrays[f"y_{s}"], name, f"{path} array x_{s}", f"{path} array y_{s}")
    return Dataset(
        name,
        nchw(arrays["x_train"]),  # checked uint8 above: no cast, no copy
        torch.from_numpy(arrays["y_train"].astype(np.int64)),
        nchw(arrays["x_test"]),
        torch.from_numpy(arrays["y_test"].astype(np.int64)),
        source=f"npz file {path}",
    )


def _from_torchvision(root: Path, name: str, download: bool) -> Dataset:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fmnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    splits = []
    for train in (True, False):
        ds = cls(root=str(root), train=train, download=download)
        x = np.asarray(ds.data.numpy() if hasattr(ds.data, "numpy") else ds.data)
        y = np.asarray(ds.targets.numpy() if hasattr(ds.targets, "numpy") else ds.targets)
        where = f"torchvision {cls.__name__} folder {root}, {'train' if train else 'test'} split"
        check_split(x, y, name, f"{where}: images", f"{where}: labels")
        splits += [nchw(x), torch.from_numpy(y.astype(np.int64))]
    how = "downloaded into" if download else "read from"
    return Dataset(name, *splits, source=f"torchvision {cls.__name__} {how} {root}")


def _offline_digits() -> Dataset:
    """scikit-learn's 1,797 real 8x8 digits, upscaled into MNIST's 20x20-box-in-28x28 layout."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # 0..16 -> 0..1
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False).clamp_(0, 1)
    x = F.pad(x, (4, 4, 4, 4))
    x = (x * 255).round().to(torch.uint8)
    y = torch.from_numpy(d.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    n_train = int(0.8 * len(y))
    return Dataset("digits", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                   source="embedded offline default (scikit-learn's 8x8 digits, upscaled to 28x28)")


_CACHE: dict[tuple, Dataset] = {}


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True,
                 splits: tuple[str, ...] = ("train", "test")) -> Dataset:
    """Load an ID dataset by name; raises DataError with a message a user can act on.
    `splits=("test",)` may leave the training split empty (npz sources read only what is asked)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    root = resolve_data_dir(str(data_dir) if data_dir else None)
    full, part = (name, str(root.resolve()), ("train", "test")), (name, str(root.resolve()), tuple(splits))
    if full in _CACHE or part in _CACHE:
        return _CACHE.get(full) or _CACHE[part]
    if name == "digits":
        ds = _offline_digits()
    else:
        ds = _find(name, root, download, tuple(splits))
    _CACHE[part] = ds
    return ds


def _find(name: str, root: Path, download: bool, splits: tuple[str, ...]) -> Dataset:
    candidates = [root / f"{name}.npz"] + ([root / "fashion_mnist.npz"] if name == "fmnist" else [])
    for path in candidates:
        if path.is_file():
            return _from_npz(path, name, splits)
    try:
        return _from_torchvision(root, name, download=False)
    except DataError:
        raise  # the folder is there but its data is unusable: say so, do not download over it
    except Exception:
        pass
    if download and _online():
        try:
            return _from_torchvision(root, name, download=True)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{DATASETS[name].title} download into {root} failed ({e})") from None
    raise _NotFound(
        f"{DATASETS[name].title} not found in data dir '{root}' (looked for {name}.npz and torchvision's "
        f"folder; offline, so no download). Point --data-dir or ${DATA_DIR_ENV} at a folder that has it, "
        f"or use --dataset digits (the embedded offline default)."
    )


def _online(timeout: float = 2.0) -> bool:
    """True when torchvision's download mirrors answer; a closed network answers in milliseconds."""
    import socket

    try:
        socket.create_connection(("ossci-datasets.s3.amazonaws.com", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def available_datasets(data_dir: str | Path | None = None) -> list[str]:
    """ID datasets that load without a download, offline default last."""
    out = []
    for name in DATASETS:
        if name == "digits":
            continue
        try:
            load_dataset(name, data_dir, download=False)
            out.append(name)
        except DataError:
            pass
    return out + ["digits"]


# ---------------------------------------------------------------- OOD sources


def convert_images(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> uint8 images of `shape`: luma grayscale or channel repeat, resize."""
    c, h, w = shape
    xf = to_float(x)
    if xf.shape[1] == 3 and c == 1:
        xf = (0.299 * xf[:, 0:1] + 0.587 * xf[:, 1:2] + 0.114 * xf[:, 2:3])
    elif xf.shape[1] == 1 and c == 3:
        xf = xf.repeat(1, 3, 1, 1)
    if xf.shape[2:] != (h, w):
        xf = F.interpolate(xf, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return (xf.clamp(0, 1) * 255).round().to(torch.uint8)


def natural_crops(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    """n random crops (uint8, 3 x size x size) of the two photos that ship with scikit-learn."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in load_sample_images().images]
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = photos[int(torch.randint(len(photos), (1,), generator=g))]
        side = int(torch.randint(size, min(img.shape[1:]) // 2, (1,), generator=g))
        top = int(torch.randint(img.shape[1] - side + 1, (1,), generator=g))
        left = int(torch.randint(img.shape[2] - side + 1, (1,), generator=g))
        crop = img[:, top:top + side, left:left + side].unsqueeze(0)
        if bool(torch.rand(1, generator=g) < 0.5):
            crop = crop.flip(3)
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def load_ood(source: str, shape: tuple[int, int, int], n: int, data_dir: str | Path | None = None,
             seed: int = 0, split: str = "test") -> ImageSet:
    """n OOD images in the victim's input shape. CIFAR-10 falls back to the offline natural crops
    (and says so in `.source`) when it is not available."""
    if source not in OOD_SOURCES:
        raise DataError(f"unknown OOD source '{source}'; choose one of: {', '.join(OOD_SOURCES)}")
    g = torch.Generator().manual_seed(seed)
    if source == "noise":
        x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        return ImageSet(x, "uniform noise")
    if source == "cifar10":
        try:
            ds = load_dataset("cifar10", data_dir, download=False, splits=(split,))
            pool = ds.x_test if split == "test" else ds.x_train
            idx = torch.randperm(len(pool), generator=g)[:n]
            return ImageSet(convert_images(pool[idx], shape), f"CIFAR-10 {split} ({ds.source}), as {shape}")
        except _NotFound:  # a broken CIFAR-10 raises: it must not be silently replaced by crops
            crops = natural_crops(n, seed)
            return ImageSet(convert_images(crops, shape),
                            "CIFAR-10 not found: natural-image crops of scikit-learn's sample photos (offline default)")
    return ImageSet(convert_images(natural_crops(n, seed), shape), "natural-image crops of scikit-learn's sample photos")


def stratified_indices(y: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n indices with classes as balanced as the labels allow (fixed probe sets for plots)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    per = max(1, n // len(classes))
    picks = []
    for c in classes:
        idx = (y == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per]])
    out = torch.cat(picks)
    return out[torch.randperm(len(out), generator=g)][:n]
