import numpy as np
import pytest

import napari_trihrge as th
from napari_trihrge.errors import TrihrgeInputError


def test_spots_plots_each_gene_over_the_tissue(synthetic, tmp_path):
    path = tmp_path / "spots.png"
    fig = th.pl.spots(synthetic, ["COL1A1", "ERBB2"], path=path)
    assert path.stat().st_size > 10_000
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["COL1A1", "ERBB2"]
    # one disk per spot, coloured by the log-normalised expression of that gene
    coll = panels[0].collections[0]
    assert len(coll.get_paths()) == synthetic.n_obs
    expected = th.pp.gene_expression(synthetic, ["COL1A1"])["COL1A1"].to_numpy()
    np.testing.assert_allclose(np.asarray(coll.get_array()), expected, rtol=1e-5)
    assert panels[0].images, "the H&E is drawn under the spots"


def test_spots_reads_layers_and_rejects_unknown_genes(synthetic):
    pred = synthetic[:50].copy()
    pred.layers["measured"] = np.full(pred.shape, 2.0, dtype=np.float32)
    fig = th.pl.spots(pred, "COL1A1", layer="measured", image=False)
    coll = [ax for ax in fig.axes if ax.get_title()][0].collections[0]
    assert np.allclose(coll.get_array(), 2.0)
    with pytest.raises(TrihrgeInputError, match="NOT_A_GENE"):
        th.pl.spots(synthetic, ["NOT_A_GENE"])
