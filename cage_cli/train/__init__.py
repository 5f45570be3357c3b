"""`cage train` and `cage evaluate`: labelled face data in, a trained model or metrics out.

Modules in flow order: ``datasets`` (labelled face data in the layouts of docs/training.md)
-> ``loop`` (`cage train`: the CAGE recipe, checkpoints, history) -> ``evaluate`` (`cage
evaluate`: any registered model on labelled data) -> ``metrics`` (expression and
valence/arousal metrics, numpy only, used by both).
"""
