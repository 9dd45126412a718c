"""napari-trihrge: high-resolution gene expression from H&E histology and spatial transcriptomics.

Python API in the scanpy style (AnnData in, AnnData out)::

    import napari_trihrge as th
    adata = th.io.read("path/to/spaceranger/outs")
    result = th.tl.recovery(adata, holdout_fraction=0.5)
    enhanced = th.tl.enhance(adata, factor=4)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"io", "pp", "tl", "pl", "datasets", "geometry", "metrics", "features"}


def __getattr__(name: str) -> Any:
    # lazy: importing the package must stay cheap (napari imports it to read the manifest)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", *sorted(_SUBMODULES)]
