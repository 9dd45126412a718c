"""Orchestration over the engine: run folders (:mod:`.runs`), many samples on dask.distributed
(:mod:`.cohort`) and the ``trihrge`` command line (:mod:`.cli`)."""
