"""`cage export`: an annotation output in, a pre-labelled face dataset to review and train on out.

Modules in flow order: ``prelabel`` (select faces, cut square crops, write the labels CSVs,
manifest and review sheet; also the manifest and labels readers and writers both modules use)
-> ``review`` (`cage export DATASET_DIR --apply-review SHEET`: fold the filled-in review sheet
back into the dataset). Walkthrough: docs/prelabel.md.
"""
