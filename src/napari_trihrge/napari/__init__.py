"""The napari door: the npe2 reader, writers and sample data, layer data tuples (:mod:`.layers`)
and the Qt widgets (:mod:`._qt`, the only place Qt is imported)."""
