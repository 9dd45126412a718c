"""The embedded synthetic sample: an H&E-like image, Visium-like spots and the known truth.

:func:`synthetic_sample` draws, from one seed, a tissue section with five domains (stroma, tumour
nests, an immune band with small lymphoid aggregates, glands with a pale lumen, adipose tissue),
renders it as an H&E-like RGB image (Beer-Lambert mix of hematoxylin and eosin: purple nuclei drawn
one by one, pink fibrous stroma, white background around an irregular tissue outline), defines the
true expression of every gene on an 8 um grid, and measures it with Visium-like spots (55 um disks,
100 um hexagonal lattice, Poisson counts of the truth integrated over each disk).

Gene classes (``var['gene_class']``):

* ``marker``: high in one domain (``var['target']`` names it; 'tumor,gland' for epithelial genes),
  so the image shows where they are;
* ``density``: follow the local number of nuclei (cellularity), also readable from the image;
* ``gradient``: smooth spatial trends the image does not show (``var['target']`` names the trend),
  the information only the measured spots carry;
* ``noise``: spatially random, no structure at all;
* ``sparse``: genes at the depth real Visium has for most highly variable genes, detected in a
  few % of the spots (up to about 15 %, median about 3 %; on DLPFC 151673 half of the 1000 HVGs are
  detected in under 5 % of the spots). Each follows the pattern of one of the classes above
  (``var['target']`` is ``'<class>:<target>'``, e.g. ``'marker:immune'``), so there is signal to
  find, but a model can also settle for predicting a constant. By default 60 % of the genes.

The truth lives in ``uns['truth']`` (see :func:`synthetic_sample`); :func:`truth_at`,
:func:`truth_in_spots` and :func:`truth_map` read it for any set of locations, aligned to the
AnnData's current genes.
"""

from __future__ import annotations

# the domain labels of ``uns['truth']['domain_8um']`` and the sample's library id stay importable
# from here as before the package was split (not public API)
from .layout import ADIPOSE, BACKGROUND, DOMAIN_NAMES, GLAND, IMMUNE, STROMA, TUMOR  # noqa: F401
from .sample import (
    LIBRARY_ID,  # noqa: F401
    load_sample,
    synthetic_sample,
)
from .spots import SPOT_DIAMETER_UM, SPOT_SPACING_UM
from .truth import (
    SPARSE_FRACTION,
    TRUTH_STRIDE_UM,
    truth_at,
    truth_in_spots,
    truth_map,
    truth_nuclei,
)
from .writers import write_visium_hd

__all__ = [
    "DOMAIN_NAMES",
    "TRUTH_STRIDE_UM",
    "SPOT_DIAMETER_UM",
    "SPOT_SPACING_UM",
    "SPARSE_FRACTION",
    "synthetic_sample",
    "load_sample",
    "truth_map",
    "truth_at",
    "truth_in_spots",
    "truth_nuclei",
    "write_visium_hd",
]


def __dir__() -> list[str]:  # dir() and tab completion show the public API only
    return sorted(__all__)
