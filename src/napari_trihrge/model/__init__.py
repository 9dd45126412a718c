"""The model: the TriHRGE network (:mod:`.network`), its training (:mod:`.training`), prediction
in bounded memory (:mod:`.predict`) and the per-gene blend that recovery scores (:mod:`.stacking`)."""
