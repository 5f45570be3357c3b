"""`cage annotate`: media files in, one row per face out (library: ``cage_cli.annotate``).

Four groups of modules, in data-flow order:

- ``io``: ``inputs`` (find the media files) -> ``decode`` (sampled RGB frames); ``write``
  (crash-safe Parquet / JSONL / CSV, to a local path or, through ``store``, a filesystem URI)
  and ``read`` (any of these back).
- ``detection``: ``detect`` (faces, by the MTCNN in ``mtcnn`` with the networks of
  ``mtcnn_nets``), ``shots`` (cuts) and ``track`` (one id per face in a video).
- ``identity`` (``--persons``): ``embed`` (aligned crops and face descriptors), ``linkage``
  (clustering descriptors into persons) and ``persons`` (a video's tracks, or photos, linked).
- ``running``: ``pipeline`` wires the stages together, ``infer`` makes the batched model calls
  (detection and classification share the CPU threads of ``workers``); ``runner``
  (``annotate_to``: resume, shards, errors, signals) with ``progress`` (bar and summary on
  stderr); ``cluster`` runs the same pipeline on a Ray cluster (``--ray``), reporting through
  the actor in ``cluster_progress``.
"""
