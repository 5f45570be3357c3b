"""`cage summary`, `cage render` and `cage plot`: look at an annotation output.

Modules in flow order: ``summary`` (loads an output and matches its sources, for all three
commands; per-source counts and means) -> ``render`` (the annotations drawn onto copies of the
photos and videos) -> ``plot`` (a matplotlib figure of the output).
"""
