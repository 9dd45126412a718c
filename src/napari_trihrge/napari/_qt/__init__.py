"""napari dock widgets (the only place Qt is imported). Thin: they call the engine in workers.

The widgets load on first use: importing this package (as the reader hook :mod:`._open` does)
imports no Qt."""

__all__ = ["SampleWidget", "TrainWidget", "ApplyModelWidget", "GeneExplorer", "RegionExplorer",
           "CellsWidget"]


def __getattr__(name: str):
    if name == "SampleWidget":
        from ._sample_widget import SampleWidget

        return SampleWidget
    if name == "TrainWidget":
        from ._train_widget import TrainWidget

        return TrainWidget
    if name == "ApplyModelWidget":
        from ._apply_model import ApplyModelWidget

        return ApplyModelWidget
    if name == "GeneExplorer":
        from ._gene_explorer import GeneExplorer

        return GeneExplorer
    if name == "RegionExplorer":
        from ._region_explorer import RegionExplorer

        return RegionExplorer
    if name == "CellsWidget":
        from ._cells_widget import CellsWidget

        return CellsWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
