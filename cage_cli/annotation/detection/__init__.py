"""Faces in frames: MTCNN detection, cuts, and tracks through a video."""
