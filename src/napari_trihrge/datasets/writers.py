"""The synthetic sample's truth written as a Visium HD-like Space Ranger ``outs/`` folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from ..errors import TrihrgeInputError
from ..geometry import rc_um_to_xy_px
from .sample import LIBRARY_ID
from .truth import _truth


def write_visium_hd(adata, path, *, bin_sizes_um=(8, 16), seed: int = 0,
                    dataset_id: str = LIBRARY_ID, spatialdata_store: bool = False,
                    overwrite: bool = False):
    """Write the truth of a :func:`synthetic_sample` as a Visium HD-like Space Ranger folder.

    The ``outs/`` folder holds ``binned_outputs/square_XXXum/`` per bin size (multiples of 8 um)
    with Poisson counts of the truth in each bin, ``tissue_positions.parquet``,
    ``scalefactors_json.json`` (with ``bin_size_um`` and ``microns_per_pixel``) and the H&E as
    hires/lowres PNGs, plus ``spatial/`` and a ``<dataset_id>_feature_slice.h5`` holding only the
    layout metadata that ``spatialdata_io.visium_hd`` reads.

    With ``spatialdata_store=True`` (needs the ``spatialdata`` extra) the folder is also read with
    ``spatialdata_io.visium_hd`` and written next to it as ``<path>.zarr``. Returns the folder.
    """
    from pathlib import Path

    from .._atomic import atomic_path, refuse_overwrite

    truth = _truth(adata)
    stride = float(truth["stride_um"])
    expr = np.asarray(truth["expression_8um"], dtype=np.float64)  # expected counts per 8 um bin
    tissue = np.asarray(truth["tissue_8um"], dtype=bool)
    sizes = [int(s) for s in bin_sizes_um]
    bad = [s for s in sizes if s % int(stride) or s <= 0]
    if bad:
        raise TrihrgeInputError(f"bin sizes {bad} um are not multiples of the truth's "
                                f"{stride:g} um grid", "use bin sizes such as 8 and 16")
    final = Path(path)
    store = final.with_name(final.name + ".zarr")
    refuse_overwrite(final, overwrite)
    if spatialdata_store:
        refuse_overwrite(store, overwrite)
    with atomic_path(final, overwrite) as outs:  # written beside, swapped in when complete
        _write_visium_hd_folder(outs, adata, truth, expr, tissue, sizes, seed, dataset_id)
    if spatialdata_store:
        from ..io.spatialdata import require_spatialdata, table_write_settings

        require_spatialdata()
        import spatialdata_io

        sdata = spatialdata_io.visium_hd(final, dataset_id=dataset_id,
                                         load_segmentations_only=False)
        with atomic_path(store, overwrite) as tmp, table_write_settings():
            sdata.write(tmp)
    return final


def _write_visium_hd_folder(outs, adata, truth: dict, expr: np.ndarray, tissue: np.ndarray,
                            sizes: list[int], seed: int, dataset_id: str) -> None:
    """Write the Visium HD-like ``outs`` folder of :func:`write_visium_hd` into ``outs``."""
    import json

    import h5py
    from skimage.measure import block_reduce

    from ..io.visium_hd import write_visium_hd_bins

    info = adata.uns.get("trihrge", {})
    um_per_px = float(info["um_per_px"])
    stride = float(truth["stride_um"])
    origin = np.asarray(truth["origin_rc_um"], dtype=np.float64)
    genes = [str(g) for g in truth.get("genes", adata.var_names)]
    rng = np.random.default_rng(seed)
    counts_8 = rng.poisson(expr[:, tissue]).astype(np.float32)  # (genes, tissue bins)
    full = np.zeros(expr.shape, dtype=np.float32)
    full[:, tissue] = counts_8
    lib = adata.uns["spatial"][info.get("library_id", LIBRARY_ID)]
    images = {res: lib["images"][res] for res in ("hires", "lowres") if res in lib["images"]}
    gene_ids = (list(adata.var["gene_ids"].reindex(genes).fillna("").astype(str))
                if "gene_ids" in adata.var else None)
    for size in sizes:
        k = size // int(stride)
        n_r, n_c = expr.shape[1] // k, expr.shape[2] // k
        binned = block_reduce(full[:, :n_r * k, :n_c * k], (1, k, k), np.sum)
        in_tissue = block_reduce(tissue[:n_r * k, :n_c * k], (k, k), np.any)
        ii, jj = np.meshgrid(np.arange(n_r), np.arange(n_c), indexing="ij")
        # bin centre: the centre of its k x k block of 8 um truth pixels
        centre_rc_um = origin + (np.stack([ii.ravel(), jj.ravel()], axis=1) * k
                                 + (k - 1) / 2.0) * stride
        xy_px = rc_um_to_xy_px(centre_rc_um, um_per_px)
        barcodes = np.array([f"s_{size:03d}um_{i:05d}_{j:05d}-1"
                             for i, j in zip(ii.ravel(), jj.ravel(), strict=True)])
        positions = pd.DataFrame({
            "barcode": barcodes, "in_tissue": in_tissue.ravel().astype(np.int32),
            "array_row": ii.ravel().astype(np.int32), "array_col": jj.ravel().astype(np.int32),
            "pxl_row_in_fullres": xy_px[:, 1], "pxl_col_in_fullres": xy_px[:, 0]})
        keep = in_tissue.ravel()
        counts = sparse.csr_matrix(binned.reshape(len(genes), -1)[:, keep].T)
        scalefactors = {
            "spot_diameter_fullres": size / um_per_px, "bin_size_um": float(size),
            "microns_per_pixel": um_per_px, "regist_target_img_scalef": 1.0,
            "tissue_hires_scalef": float(lib["scalefactors"]["tissue_hires_scalef"]),
            "tissue_lowres_scalef": float(lib["scalefactors"]["tissue_lowres_scalef"]),
            "fiducial_diameter_fullres": 4 * size / um_per_px,
        }
        write_visium_hd_bins(outs, size, counts, list(barcodes[keep]), genes, positions,
                             scalefactors, images, gene_ids=gene_ids)
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=2))
    from PIL import Image

    for res, arr in images.items():
        Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(spatial / f"tissue_{res}_image.png")
    with h5py.File(outs / f"{dataset_id}_feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(
            {"hd_layout_json": json.dumps({"file_format": "1.0"}), "transform_matrices": {},
             "note": "synthetic: layout metadata only, written by napari-trihrge"})
