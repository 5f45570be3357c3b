"""`cage annotate`: media files in, one row per face out (library: ``cage_cli.annotate``).

Modules in data-flow order: ``inputs`` (find the media files) -> ``decode`` (sampled RGB
frames) -> ``detect`` (faces, by the MTCNN in ``mtcnn`` with the networks of ``mtcnn_nets``)
-> ``track`` (one id per person in a video) -> ``infer`` (batched expression / valence /
arousal model calls; detection and classification share the CPU threads of ``workers``),
wired together by ``pipeline``; then ``write`` (crash-safe Parquet / JSONL / CSV, to a local
path or, through ``store``, a filesystem URI; ``read`` reads any of these back) and ``runner``
(``annotate_to``: resume, shards, errors, signals) with ``progress`` (bar and summary on
stderr). ``cluster`` runs the same pipeline on a Ray cluster (``--ray``), reporting through the
actor in ``cluster_progress``.
"""
