import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.pp import prepare_expression, select_genes
from napari_trihrge.pp.markers import (
    MARKER_PANELS,
    marker_genes_detected,
    marker_note,
    marker_panel_genes,
)
from napari_trihrge.tl import RunConfig, validate_config


def sample_with(named: dict[str, int], n_spots=300, n_background=40, seed=0) -> AnnData:
    """Counts of background genes G0.. plus named genes detected in the given number of spots."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.gamma(1.0, 2.0, size=n_background), size=(n_spots, n_background))
    cols = []
    for n_detected in named.values():
        col = np.zeros(n_spots)
        col[rng.choice(n_spots, n_detected, replace=False)] = 1
        cols.append(col)
    a = AnnData(X=sp.csr_matrix(np.column_stack([x, *cols]).astype(np.float32)))
    a.var_names = [f"G{i}" for i in range(n_background)] + list(named)
    a.obs_names = [f"s{i}" for i in range(n_spots)]
    return a


def test_all_is_the_union_of_the_tissue_panels_in_order():
    union = marker_panel_genes("all")
    assert len(union) == len(set(union))
    assert set(union) == set().union(*MARKER_PANELS.values())
    assert union[0] == MARKER_PANELS["breast"][0]
    assert {"ERBB2", "PCP4", "CD74", "COL1A1"} <= set(union)
    assert marker_panel_genes(None) == ()
    with pytest.raises(TrihrgeInputError, match="unknown marker panel"):
        marker_panel_genes("liver")


def test_panel_genes_absent_or_rare_are_skipped_not_an_error():
    # ERBB2 in 30 of 300 spots (kept), KRT8 in 2 (too few), the other breast genes absent
    a = sample_with({"ERBB2": 30, "KRT8": 2})
    kept, skipped = marker_genes_detected(a, panel="breast")
    assert kept == ["ERBB2"]
    assert skipped[0] == "KRT8" and "ESR1" in skipped and "ERBB2" not in skipped
    genes = select_genes(a, n_top_genes=10, marker_panel="breast")
    assert genes[-1] == "ERBB2" and "KRT8" not in genes and len(genes) == 11
    assert "ERBB2" not in select_genes(a, n_top_genes=10)
    note = marker_note("breast", kept, skipped)
    assert "1 genes mapped" in note and "KRT8" in note


def test_a_mouse_sections_symbols_match_the_panel_regardless_of_case():
    # mouse symbols (Erbb2, Krt8) stand for the panel's human ones; the sample's names are kept
    a = sample_with({"Erbb2": 30, "Krt8": 2, "ESR1": 40})
    kept, skipped = marker_genes_detected(a, panel="breast")
    assert kept == ["Erbb2", "ESR1"]  # in the panel's order
    assert "Krt8" in skipped and "Erbb2" not in skipped and "ERBB2" not in skipped
    assert "Erbb2" in select_genes(a, n_top_genes=10, marker_panel="breast")


def test_prepare_expression_records_the_panel():
    a = sample_with({"ERBB2": 30, "CD74": 40, "KRT8": 2})
    out = prepare_expression(a, n_top_genes=10, marker_panel="all")
    record = out.uns["trihrge_preprocessing"]
    assert record["marker_panel"] == "all"
    assert record["marker_genes"] == ["ERBB2", "CD74"]
    assert "KRT8" in record["marker_genes_skipped"]
    assert {"ERBB2", "CD74"} <= set(out.var_names)
    none = prepare_expression(a, n_top_genes=10)
    assert none.uns["trihrge_preprocessing"]["marker_panel"] == "none"


def test_run_config_default_panel_and_validation():
    assert RunConfig().marker_panel == "all"
    assert RunConfig().most_genes(500) == 500 + len(marker_panel_genes("all"))
    validate_config(RunConfig(marker_panel=None))
    with pytest.raises(TrihrgeInputError, match="unknown marker panel"):
        validate_config(RunConfig(marker_panel="liver"))
