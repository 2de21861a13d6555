"""Shared fixtures. Real data comes from $ADVFT_DATA_DIR (CI: ../shared/data); tests that need it
skip only when it is truly absent, and .ci/run always provides it."""

import os
from pathlib import Path

# The suite runs in two processes on two cores (README's test command), beside servers, browsers and
# workers: OpenMP threads that spin while they wait for work would take cores the others need. Set before
# torch loads OpenMP; the processes the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# An app job trains on every core by default (app/jobs.py: job_threads); here it shares them with the other
# test process, a browser and a server: one thread each.
os.environ.setdefault("ADVFT_JOB_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ADVFT_DATA_DIR") or ROOT.parent / "shared" / "data")
MNIST_VICTIM = ROOT / "assets" / "victims" / "mnist_lenet2d.pt"

torch.set_num_threads(min(2, torch.get_num_threads()))


# Under the README's `-n 2 --dist loadfile --no-loadscope-reorder` each file runs whole in one of two
# processes, taken in this order as a process comes free: the longest files first (minutes each on a
# 2-core machine) keep both processes busy to the end; the Ray grid first, while the other process draws
# in a browser rather than trains, and the two browser files apart.
LONGEST_FILES = ("test_grid.py", "test_browser.py", "test_hardening.py", "test_presenter_keys.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "mnist.npz").is_file():
        pytest.skip(f"MNIST not found in {DATA_DIR}; set ADVFT_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist(data_dir):
    from core.data import load_dataset

    return load_dataset("mnist", data_dir)


@pytest.fixture(scope="session")
def mnist_small(mnist):
    """Real MNIST, cut to 3,000 training and 1,000 test images so engine tests stay fast."""
    from dataclasses import replace

    return replace(mnist, x_train=mnist.x_train[:3000], y_train=mnist.y_train[:3000],
                   x_test=mnist.x_test[:1000], y_test=mnist.y_test[:1000])


@pytest.fixture(scope="session")
def small_data_dir(data_dir, tmp_path_factory):
    """A data dir holding real MNIST and CIFAR-10 cut to a few thousand images, for CLI runs."""
    import numpy as np

    out = tmp_path_factory.mktemp("small-data")
    for name, n_train, n_test in (("mnist", 3000, 1000), ("cifar10", 2000, 2000)):
        with np.load(data_dir / f"{name}.npz") as z:
            np.savez(out / f"{name}.npz", x_train=z["x_train"][:n_train], y_train=z["y_train"][:n_train],
                     x_test=z["x_test"][:n_test], y_test=z["y_test"][:n_test])
    return out


@pytest.fixture(scope="session")
def victim():
    from core import load_model

    return load_model(MNIST_VICTIM)


@pytest.fixture(scope="session")
def cifar_probe(data_dir, mnist):
    from core.data import load_ood

    return load_ood("cifar10", mnist.shape, 300, data_dir)


def tiny_config(**kw):
    """An AdvFT config small enough for a test: a few steps, small evaluation sets."""
    from core.advft import AdvFTConfig

    base = dict(epochs=1, i_g=2, i_f=3, batch_size=16, probe_size=50, eval_train_size=200, eval_ood_size=100)
    base.update(kw)
    return AdvFTConfig(**base)


def app_charts(at) -> dict:
    """An AppTest page's Plotly figures (as dicts) by their key, in page order: those drawn by
    app.views.chart (a bidi component, redrawn in place in a browser) and any st.plotly_chart."""
    import json
    import re

    found = []
    for c in at.get("bidi_component"):
        if c.proto.component_name == "advft_chart":
            found.append((c.proto.id, json.loads(json.loads(c.proto.json)["spec"])))
    found += [(c.proto.id, json.loads(c.proto.spec)) for c in at.get("plotly_chart")]
    order = [n.proto.id for n in at.main if hasattr(n, "proto") and hasattr(n.proto, "id")]
    found.sort(key=lambda f: order.index(f[0]) if f[0] in order else len(order))
    return {re.sub(r"^\$\$ID-[0-9a-f]+-", "", cid): fig for cid, fig in found}
