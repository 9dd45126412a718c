"""The model: the TriHRGE network (:mod:`.network`), its training (:mod:`.training`), prediction
in bounded memory (:mod:`.predict`), its trunk fused for inference at map locations
(:mod:`.trunk`) and the per-gene blend that recovery scores (:mod:`.stacking`)."""
