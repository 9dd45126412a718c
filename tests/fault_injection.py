"""Fault injection for the tests: run Python code in a subprocess that SIGKILLs itself at a
chosen point (a write cut off as by a crash, the OOM killer or a power cut), then look at what
remains on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)

#: ``kill_at(module, function)`` cuts the process off at the nth call of ``module.function``
#: (``after=True``: once it returned; ``when``: count only the calls it accepts)
_PRELUDE = '''
import os, signal, importlib, functools, warnings
warnings.simplefilter("ignore")

def kill_at(module, name, nth=1, after=False, when=None):
    mod = importlib.import_module(module)
    original = getattr(mod, name)
    calls = [0]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        hit = when is None or when(*args, **kwargs)
        calls[0] += hit
        if hit and calls[0] == nth and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(*args, **kwargs)
        if hit and calls[0] == nth and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(mod, name, wrapper)
'''


def run_killed(code: str, cwd: Path | None = None) -> None:
    """Run ``code`` (which calls ``kill_at(...)`` first) in a fresh interpreter and check that
    it was killed by SIGKILL, not ended by an error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [SRC, TESTS, *filter(None, [os.environ.get("PYTHONPATH")])]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")


def small_enhance_result(adata, value: float = 1.0):
    """An enhance result in miniature (virtual spots at the measured spots, a 4 x 4 map of two
    genes filled with ``value``): enough for the writers, without training."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd
    from anndata import AnnData

    genes = list(adata.var_names[:2])
    virtual = AnnData(np.full((adata.n_obs, 2), value, np.float32),
                      var=pd.DataFrame(index=pd.Index(genes)))
    virtual.obs_names = [f"v{i}" for i in range(adata.n_obs)]
    virtual.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    virtual.uns["trihrge"] = dict(adata.uns["trihrge"])
    maps = SimpleNamespace(values=np.full((2, 4, 4), value, np.float32), std=None,
                           stride_um=16.0, origin_rc_um=np.array([8.0, 8.0]),
                           gene_names=genes, mask=np.ones((4, 4), bool))
    return SimpleNamespace(virtual=virtual, maps=maps)
