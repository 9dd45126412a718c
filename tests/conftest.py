"""Shared test fixtures. Tests never reach the network: the hub is forced offline."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # otherwise every hub call retries for ~25 s
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """Path inside ../shared/data; skips the test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (only present in the project's CI)")
    return path


@pytest.fixture
def dlpfc_dir() -> Path:
    return shared_path("dlpfc_151673")


@pytest.fixture
def her2st_dir() -> Path:
    return shared_path("her2st")


@pytest.fixture(scope="session")
def _synthetic_cached():
    from napari_trihrge.datasets import synthetic_sample

    return synthetic_sample(seed=0)


@pytest.fixture
def synthetic(_synthetic_cached):
    """The embedded synthetic sample (a fresh copy per test; generated once per session)."""
    return _synthetic_cached.copy()


# The test model sizes, each defined once here and imported by the tests (``from conftest import``).
#: network widths of the model unit tests (network, prediction, training, thread pools)
NET_TINY = {"hidden_dim": 32, "attention_dim": 16, "decoder_dims": (64, 64)}
#: small, fast settings for pipeline tests on 2 CPU cores (decoder_dims a list, as stored in h5ad)
TINY_MODEL = {"hidden_dim": 32, "attention_dim": 16, "decoder_dims": [64, 64, 64]}
TINY_TRAIN = {"max_epochs": 8, "patience": 4, "batch_size": 64}
#: wider networks for the tests that compare accuracy with a baseline
SMALL_MODEL = {"hidden_dim": 64, "attention_dim": 32, "decoder_dims": [128, 128]}
#: RunConfig keywords of a tiny run (CLI, widgets, cohort): 30 genes, the tiny network, the CPU
TINY_RUN = {"n_top_genes": 30, "model": TINY_MODEL, "train": TINY_TRAIN, "device": "cpu"}


#: a tiny ViT with UNI's architecture arguments (the encoder tests; no download)
TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def truth_dense_maps(adata):
    """The synthetic sample's log truth expression as DenseMaps (a stand-in for Enhance's maps)."""
    import numpy as np

    from napari_trihrge.datasets import truth_map
    from napari_trihrge.tl import DenseMaps

    expr, stride, origin = truth_map(adata)
    return DenseMaps(values=np.log1p(expr), stride_um=stride, origin_rc_um=origin,
                     gene_names=list(adata.var_names), mask=np.ones(expr.shape[1:], dtype=bool))


def tiny_uni(seed: int = 0, **over):
    """A random tiny ViT built with UNI's timm arguments, its LayerScale set so the blocks matter."""
    import timm
    import torch

    from napari_trihrge.features._architectures import uni_args

    torch.manual_seed(seed)
    model = timm.create_model("vit_large_patch16_224", pretrained=False,
                              **{**uni_args(), **TINY_VIT, **over})
    with torch.no_grad():  # LayerScale starts at 1e-5: make the blocks matter for the test
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(0.5)
    return model.eval()


@pytest.fixture(scope="session")
def uni_checkpoint(tmp_path_factory):
    """(path of a tiny UNI-architecture ``pytorch_model.bin``, the model it holds)."""
    import torch

    path = tmp_path_factory.mktemp("uni") / "pytorch_model.bin"
    model = tiny_uni()
    torch.save(model.state_dict(), path)
    return path, model


def _x_server_available() -> bool:
    import shutil

    return bool(os.environ.get("DISPLAY")) or shutil.which("Xvfb") is not None


NO_X_SERVER = ("no X server: install Xvfb (Debian: apt-get install xvfb libxcb-icccm4 "
               "libxcb-keysyms1 libxcb-cursor0) to run the napari GUI tests")


#: the packages of the ``spatialdata`` extra (the test command installs it beside ``testing``)
SPATIALDATA_MODULES = ("spatialdata", "spatialdata_io", "napari_spatialdata")
#: test modules that skip without them
SPATIALDATA_TESTS = ("test_spatialdata.py", "test_spatialdata_view.py")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def pytest_collection_modifyitems(config, items):
    """GUI tests need an X server (pytest-xvfb starts Xvfb when it is installed). On a user's
    machine without one they are skipped with the reason; in CI (``CI`` set) a missing display
    fails the run, so a green CI always means the GUI tests ran. Likewise the SpatialData tests
    skip without the extra on a user's machine, and fail the run in CI."""
    import importlib.util

    if _in_ci() and any(item.path.name in SPATIALDATA_TESTS for item in items):
        missing = [m for m in SPATIALDATA_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise pytest.UsageError(f"CI must run the SpatialData tests, but {missing} are not "
                                    'installed: pip install -e ".[testing,spatialdata]"')
    if _x_server_available() or not any("gui" in item.keywords for item in items):
        return
    if _in_ci():
        raise pytest.UsageError(f"CI must run the GUI tests, but there is {NO_X_SERVER}")
    skip = pytest.mark.skip(reason=NO_X_SERVER)
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Record each phase's report on the test item (``item.rep_setup``, ``rep_call``, ...):
    napari's ``make_napari_viewer`` fixture reads ``rep_call`` when it tears down."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    if report.when == "setup" and not report.passed:
        # skipped or failed in setup (e.g. shared data absent): no call phase will run, but
        # the viewer fixture's teardown still reads ``rep_call``
        item.rep_call = report


@pytest.fixture
def viewer(make_napari_viewer):
    """A real napari viewer (GUI tests)."""
    return make_napari_viewer()


@pytest.fixture
def notes():
    """Collects napari notifications raised during a GUI test."""
    from qt_support import Notifications

    n = Notifications()
    yield n
    n.close()


@pytest.fixture
def one_torch_thread(monkeypatch):
    """Tiny models gain nothing from threads, and on a busy 2-core machine torch's spinning
    threads made the model tests ~10x slower; restored after the test. Training and prediction
    size their own pools (threads.py), from TRIHRGE_THREADS here."""
    import torch

    monkeypatch.setenv("TRIHRGE_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
