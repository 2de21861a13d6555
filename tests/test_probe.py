"""Probe your own input (core/probe.py): a drawing laid out as MNIST's digits are, uploaded files read with
their problems named, and the mechanism itself on real data: AdvFT keeps a test digit's features where M_R
put them and moves a photo's (the shipped lecture recording's M_F against the committed victim M_R)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import DataError, load_ood
from core.models import load_model
from core.probe import as_digit, as_photo, decode_image, probe
from core.training import RECORDED_DIR
from tests.conftest import MNIST_VICTIM

LECTURE_MODEL = RECORDED_DIR / "recorded-lecture" / "model.pt"


def on_canvas(digit: np.ndarray, top: int, left: int, scale: int = 6, size: int = 224) -> np.ndarray:
    """An MNIST digit as someone might draw it: enlarged, off centre, on a 224 px RGB canvas."""
    big = np.kron(digit, np.ones((scale, scale), dtype=np.uint8))
    canvas = np.zeros((size, size), dtype=np.uint8)
    canvas[top:top + big.shape[0], left:left + big.shape[1]] = big
    return np.repeat(canvas[..., None], 3, axis=2)


def test_a_drawing_is_laid_out_as_mnist_and_m_r_reads_it_as_the_digit(mnist_small):
    m_r = load_model(MNIST_VICTIM)
    x, y = mnist_small.x_test[:60, 0].numpy(), mnist_small.y_test[:60]
    right = 0
    for i, digit in enumerate(x):
        laid = as_digit(on_canvas(digit, top=5 + i % 50, left=50 - i % 40))
        assert laid.shape == (1, 28, 28) and laid.dtype == np.uint8
        rows, cols = np.nonzero(laid[0] > 0.1 * laid.max())
        assert max(np.ptp(rows), np.ptp(cols)) + 1 <= 21  # the ink fits MNIST's 20x20 box
        mass = laid[0].astype(float)
        cy, cx = (np.arange(28) @ mass.sum(1)) / mass.sum(), (np.arange(28) @ mass.sum(0)) / mass.sum()
        assert abs(cy - 13.5) <= 1.0 and abs(cx - 13.5) <= 1.0  # its centre of mass at the centre
        right += probe(m_r, None, laid).before.top[0][0] == int(y[i])
    assert right >= 0.9 * len(x), f"M_R read {right} of {len(x)} re-laid digits right"
    # an empty canvas has nothing to probe; dark ink on white is read once inverted
    assert as_digit(np.zeros((224, 224, 3), np.uint8)) is None
    inverted = as_digit(255 - on_canvas(x[0], 40, 40), invert=True)
    assert np.abs(inverted.astype(int) - as_digit(on_canvas(x[0], 40, 40)).astype(int)).max() <= 1


@pytest.mark.skipif(not LECTURE_MODEL.is_file(), reason="the lecture recording ships without its model")
def test_a_test_digit_stays_put_and_a_photo_jumps(mnist_small, data_dir):
    m_r, m_f = load_model(MNIST_VICTIM), load_model(LECTURE_MODEL)
    digits = [probe(m_r, m_f, d.numpy()) for d in mnist_small.x_test[:40]]
    photos = [probe(m_r, m_f, p.numpy()) for p in load_ood("cifar10", (1, 28, 28), 40, data_dir, seed=7).x]
    id_shift, ood_shift = (float(np.median([p.shift for p in ps])) for ps in (digits, photos))
    assert ood_shift > 4 * id_shift, (id_shift, ood_shift)
    kept = sum(p.before.top[0][0] == p.after.top[0][0] for p in digits)
    assert kept >= 38, f"M_F changed its answer on {40 - kept} of 40 test digits"
    for p in photos:  # top answers, most probable first
        probs = [q for _, q in p.after.top]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_uploads_are_read_or_refused_with_what_is_wrong():
    clear = Image.new("RGBA", (40, 30), (255, 255, 255, 0))  # a transparent canvas reads as black
    clear.putpixel((5, 5), (255, 255, 255, 255))
    rgb = decode_image(png(clear))
    assert rgb.shape == (30, 40, 3) and rgb[0, 0].tolist() == [0, 0, 0] and rgb[5, 5].tolist() == [255, 255, 255]
    assert as_photo(rgb, (1, 28, 28)).shape == (1, 28, 28) and as_photo(rgb, (3, 32, 32)).shape == (3, 32, 32)
    for data, problem in ((b"not an image", "could not be read as an image"),
                          (png(Image.new("L", (5000, 2))), "5000x2 pixels"),
                          (b"\x89PNG" + bytes(21_000_000), "21 MB"),
                          (png(Image.new("RGB", (64, 64), (9, 90, 200)))[:70], "could not be")):  # truncated
        with pytest.raises(DataError, match=problem):
            decode_image(data, "the upload")
