"""Trust checks on finished runs and foundation models, run after (or before) federating.

- :mod:`fedfm.trust.lira`: the membership audit with shadow federations (offline LiRA,
  Carlini et al. 2022): ``fedfm audit RUN_DIR --attack lira --shadows K``.
- :mod:`fedfm.trust.strip`: STRIP (Gao et al. 2019) for text classifiers: is a model (a base
  or teacher to federate on) backdoored? ``fedfm screen RUN_DIR``.

A plug-in package: it imports the core and :mod:`fedfm.experiment`; nothing in the core
imports it.
"""
