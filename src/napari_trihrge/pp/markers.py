"""Marker panels: genes a pathologist asks about, mapped whether or not they are variable.

A run's genes are the most variable ones (:func:`napari_trihrge.pp.select_genes`); the marker
genes of a tissue are often not among them (ERBB2 is not among her2st C3's 1000 most variable
genes). A panel adds them: each gene of the panel that the sample has and detects in enough spots
(:func:`marker_genes_detected`) is learned and mapped too; the others are skipped with a note.

The panels (HGNC symbols, as Space Ranger and most tables name genes):

- ``breast``: HER2 amplicon (ERBB2, GRB7), hormone receptors (ESR1, PGR, AR, FOXA1, GATA3),
  luminal and basal keratins (KRT8/18/19, KRT5/14/17), epithelium (EPCAM, CDH1, MUC1), secretory
  (TFF1, SCGB2A2) and proliferation (MKI67, TOP2A).
- ``brain``: cortical layer markers (RELN and AQP4 layer 1, HPCAL1 and CUX2 layers 2/3, FREM3,
  RORB layer 4, PCP4 and TRABD2A layer 5, NR4A2 layer 6), white matter (MBP, MOBP, PLP1),
  astrocytes (GFAP), neurons (SNAP25, NEFL, CAMK2A) and interneurons (GAD1, SST, PVALB).
- ``immune``: leukocytes (PTPRC), antigen presentation (CD74, HLA-DRA), T cells (CD3E, CD3D, CD4,
  CD8A, FOXP3), NK and cytotoxic (NKG7, GZMB), B and plasma cells (MS4A1, CD79A, IGKC, IGHG1,
  JCHAIN), macrophages (CD68, CD163, LYZ).
- ``stroma``: fibroblasts and matrix (COL1A1, COL1A2, COL3A1, FN1, DCN, LUM, SPARC, POSTN,
  PDGFRB, VIM), smooth muscle (ACTA2, MYH11) and vessels (PECAM1, VWF).
- ``all`` (the default, :data:`DEFAULT_MARKER_PANEL`): the union of the four; a tissue's genes
  that a section does not detect are skipped, so one default serves breast and brain alike.
"""

from __future__ import annotations

import math

import numpy as np
from anndata import AnnData

from ..errors import TrihrgeInputError

MARKER_PANELS: dict[str, tuple[str, ...]] = {
    "breast": ("ERBB2", "GRB7", "ESR1", "PGR", "AR", "FOXA1", "GATA3", "KRT8", "KRT18", "KRT19",
               "KRT5", "KRT14", "KRT17", "EPCAM", "CDH1", "MUC1", "TFF1", "SCGB2A2", "MKI67",
               "TOP2A"),
    "brain": ("RELN", "AQP4", "HPCAL1", "CUX2", "FREM3", "RORB", "PCP4", "TRABD2A", "NR4A2",
              "MBP", "MOBP", "PLP1", "GFAP", "SNAP25", "NEFL", "CAMK2A", "GAD1", "SST", "PVALB"),
    "immune": ("PTPRC", "CD74", "HLA-DRA", "CD3E", "CD3D", "CD4", "CD8A", "FOXP3", "NKG7", "GZMB",
               "MS4A1", "CD79A", "IGKC", "IGHG1", "JCHAIN", "CD68", "CD163", "LYZ"),
    "stroma": ("COL1A1", "COL1A2", "COL3A1", "FN1", "DCN", "LUM", "SPARC", "POSTN", "PDGFRB",
               "VIM", "ACTA2", "MYH11", "PECAM1", "VWF"),
}

#: the panel every run adds unless told otherwise (RunConfig.marker_panel)
DEFAULT_MARKER_PANEL = "all"

#: what a run may be given as its marker panel (None: the variable genes alone)
MARKER_PANEL_CHOICES = (*MARKER_PANELS, "all")

#: a panel gene is mapped only when it is detected (count > 0) in at least this share of the
#: spots (and in at least ``min_spots``): a gene seen in a handful of spots has nothing to learn
MARKER_MIN_SPOT_FRACTION = 0.01


def marker_panel_genes(panel: str | None) -> tuple[str, ...]:
    """Return the genes of a named panel ('all': the union, in panel order; None: none)."""
    if panel is None:
        return ()
    if panel == "all":
        return tuple(dict.fromkeys(g for genes in MARKER_PANELS.values() for g in genes))
    if panel not in MARKER_PANELS:
        raise TrihrgeInputError(f"unknown marker panel {panel!r}",
                                f"use one of: {', '.join(MARKER_PANEL_CHOICES)}, or none")
    return MARKER_PANELS[panel]


def check_marker_panel(panel: str | None) -> None:
    """Raise :class:`TrihrgeInputError` for a panel name that is not known."""
    marker_panel_genes(panel)


def marker_genes_detected(adata: AnnData, *, panel: str | None, min_spots: int = 3
                          ) -> tuple[list[str], list[str]]:
    """Split a panel's genes into those ``adata`` can map and those it cannot.

    Returns ``(kept, skipped)``: a gene is kept when the sample has it and detects it (raw count
    above 0) in at least ``min_spots`` spots and :data:`MARKER_MIN_SPOT_FRACTION` of them;
    ``skipped`` are the others: first those detected in too few spots, then the absent ones.
    A panel gene the sample lacks under its (human) symbol is matched regardless of case, so a
    mouse section's ``Erbb2`` stands for ``ERBB2``; ``kept`` holds the sample's names.
    """
    genes = marker_panel_genes(panel)
    if not genes:
        return [], []
    names = set(adata.var_names)
    by_case = {}
    for name in adata.var_names:
        by_case.setdefault(str(name).upper(), name)
    own = {g: g if g in names else by_case.get(g.upper()) for g in genes}
    present = [own[g] for g in genes if own[g] is not None]
    need = max(int(min_spots), math.ceil(MARKER_MIN_SPOT_FRACTION * adata.n_obs))
    kept: list[str] = []
    if present:
        x = adata[:, present].X
        n_detected = np.asarray((x > 0).sum(axis=0)).ravel()
        kept = [g for g, n in zip(present, n_detected, strict=True) if n >= need]
    rare = [g for g in present if g not in kept]
    return kept, rare + [g for g in genes if own[g] is None]


def marker_note(panel: str | None, added: list[str], skipped: list[str]) -> str:
    """One line for a run's log: how many panel genes are mapped, which were skipped."""
    if panel is None:
        return "no marker panel"
    text = f"marker panel '{panel}': {len(added)} genes mapped"
    if skipped:
        text += (f", {len(skipped)} skipped (detected in too few spots or absent: "
                 f"{', '.join(skipped[:6])}{', ...' if len(skipped) > 6 else ''})")
    return text


__all__ = [
    "DEFAULT_MARKER_PANEL",
    "MARKER_MIN_SPOT_FRACTION",
    "MARKER_PANELS",
    "MARKER_PANEL_CHOICES",
    "check_marker_panel",
    "marker_genes_detected",
    "marker_note",
    "marker_panel_genes",
]
