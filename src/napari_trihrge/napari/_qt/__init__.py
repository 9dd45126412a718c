"""napari dock widgets (the only place Qt is imported). Thin: they call the engine in workers."""

from ._apply_model import ApplyModelWidget
from ._gene_explorer import GeneExplorer
from ._region_explorer import RegionExplorer
from ._sample_widget import SampleWidget
from ._train_widget import TrainWidget

__all__ = ["SampleWidget", "TrainWidget", "ApplyModelWidget", "GeneExplorer", "RegionExplorer"]
