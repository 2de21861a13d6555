"""Probe one input: where M_R and M_F put it in the penultimate feature space, and what they answer.

The mechanism of AdvFT in one gesture: a digit drawn by hand is in-distribution, so M_F keeps its
features where M_R had them (fidelity); a photo is out of distribution, so M_F moves it away (the
defence). `as_digit` lays a drawing out as MNIST's digits are laid out (the digit in a 20x20 box, its
centre of mass at the centre of 28x28), without which a drawn digit would itself look out of
distribution; `as_photo` only converts and resizes, as the OOD probes are.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import DataError, convert_images, to_float
from .models import Classifier

MAX_SIDE = 4096              # an uploaded image larger than this is refused, not decoded
MAX_BYTES = 20_000_000       # nor a file larger than this
INK = 0.1                    # a pixel is part of the digit when brighter than this share of the brightest


def decode_image(data: bytes, where: str = "the image") -> np.ndarray:
    """An uploaded or drawn image file (PNG, JPEG, WebP, GIF, BMP) -> uint8 H x W x 3, or a DataError that
    says what is wrong; the size is checked before the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_BYTES:
        raise DataError(f"{where} is {len(data) / 1e6:.0f} MB; at most {MAX_BYTES / 1e6:.0f} MB is read")
    unreadable = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
    except unreadable as e:
        raise DataError(f"{where} could not be read as an image ({type(e).__name__}); use a PNG or JPEG") from None
    with im:
        if max(im.size) > MAX_SIDE:
            raise DataError(f"{where} is {im.size[0]}x{im.size[1]} pixels; at most {MAX_SIDE} on a side is read")
        try:
            im.seek(0)  # the first frame of an animation
            rgba = im.convert("RGBA")
        except unreadable as e:
            raise DataError(f"{where} could not be decoded ({type(e).__name__}): a damaged or truncated file") from None
    rgb = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # transparent parts read as the black of a canvas
    rgb.alpha_composite(rgba)
    return np.asarray(rgb.convert("RGB"), dtype=np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    """uint8 H x W or H x W x C -> float H x W in [0, 1] (luma)."""
    x = np.asarray(image, dtype=np.float64) / 255.0
    if x.ndim == 3:
        x = x[..., :3] @ np.array([0.299, 0.587, 0.114]) if x.shape[2] >= 3 else x[..., 0]
    return x


def as_digit(image: np.ndarray, invert: bool = False) -> np.ndarray | None:
    """A drawing (light ink on dark, or dark on light with `invert`) -> uint8 1 x 28 x 28 in MNIST's
    layout: the ink's bounding box scaled to fit 20x20 (aspect kept), placed so that its centre of mass
    is at the centre. None when there is no ink (an empty canvas)."""
    g = _grey(image)
    if invert:
        g = 1.0 - g
    if g.max() <= 0.05:
        return None
    rows, cols = np.nonzero(g > INK * g.max())
    box = g[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = box.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.interpolate(torch.from_numpy(box).float()[None, None], size=size, mode="bilinear", antialias=True,
                          align_corners=False)[0, 0].clamp(0, 1).numpy()
    out = np.zeros((28, 28))
    top, left = (28 - size[0]) // 2, (28 - size[1]) // 2
    out[top:top + size[0], left:left + size[1]] = small
    mass = out.sum()
    cy, cx = (np.arange(28) @ out.sum(1)) / mass, (np.arange(28) @ out.sum(0)) / mass
    dy, dx = int(round(13.5 - cy)), int(round(13.5 - cx))
    # shift by whole pixels; what would leave the frame stays (the box is 20 px, the shift at most a few)
    dy = max(-top, min(dy, 28 - top - size[0]))
    dx = max(-left, min(dx, 28 - left - size[1]))
    out = np.roll(out, (dy, dx), axis=(0, 1))
    return (out * 255).round().astype(np.uint8)[None]


def as_photo(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Any picture -> uint8 of the victim's input shape, the way the OOD probes are made (luma grey for a
    grey victim, resized; no centring)."""
    x = np.asarray(image, dtype=np.uint8)
    x = x[None, None] if x.ndim == 2 else np.ascontiguousarray(x.transpose(2, 0, 1))[None]
    return convert_images(torch.from_numpy(x), shape)[0].numpy()


@dataclass(frozen=True)
class Answer:
    """One model's view of the input: its penultimate features and its top answers (class, probability)."""

    features: np.ndarray
    top: list[tuple[int, float]]


@dataclass(frozen=True)
class Probe:
    """M_R's answer, M_F's answer (None when there is no M_F yet) and how far the features moved."""

    before: Answer
    after: Answer | None

    @property
    def shift(self) -> float | None:
        """|f_F(x) - f_R(x)|, the distance AdvFT moved this input's features (the paper's OOD shift for one x)."""
        return None if self.after is None else float(np.linalg.norm(self.after.features - self.before.features))


@torch.no_grad()
def answer(model: Classifier, image: np.ndarray, k: int = 3) -> Answer:
    """The model's features and top-k answers for one uint8 C x H x W image."""
    x = to_float(torch.from_numpy(np.asarray(image, dtype=np.uint8))[None]).to(next(model.parameters()).device)
    model.eval()
    feats = model.features(x)
    probs = torch.softmax(model.head(feats), 1)[0].cpu()
    top = torch.topk(probs, min(k, len(probs)))
    return Answer(feats[0].cpu().double().numpy(), [(int(i), float(p)) for p, i in zip(top.values, top.indices)])


def probe(m_r: Classifier, m_f: Classifier | None, image: np.ndarray) -> Probe:
    return Probe(answer(m_r, image), answer(m_f, image) if m_f is not None else None)


def median_shifts(snapshot) -> tuple[float, float]:
    """The median feature shift of a snapshot's ID and OOD probes (M_R -> M_F): what one probe's shift is
    compared with."""
    def med(a, b) -> float:
        return float((a.float() - b.float()).norm(dim=1).median())

    return med(snapshot.after.id, snapshot.before.id), med(snapshot.after.ood, snapshot.before.ood)
