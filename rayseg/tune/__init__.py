"""Ray Tune sweeps: search-space files (:mod:`rayseg.tune.space`) and the Tuner driver (:mod:`rayseg.tune.sweep`)."""
