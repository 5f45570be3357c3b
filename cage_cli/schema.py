"""The output schema: one row per face, defined once here and documented in docs/schema.md."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "3"

#: Canonical expression classes, in AffectNet-8 order (the order CAGE uses).
EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)

#: MTCNN's five landmarks, in its output order.
LANDMARKS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

PROB_COLUMNS: tuple[str, ...] = tuple(f"p_{e}" for e in EXPRESSIONS)
LANDMARK_COLUMNS: tuple[str, ...] = tuple(f"{p}_{a}" for p in LANDMARKS for a in ("x", "y"))

f32 = pa.float32()
#: face descriptors (--persons): faceapi-recognition's 128 values
EMBEDDING_TYPE = pa.list_(f32)

SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("media", pa.string(), nullable=False),  # image | video
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("timestamp_s", pa.float64()),  # null for images
        pa.field("frame_width", pa.int32(), nullable=False),
        pa.field("frame_height", pa.int32(), nullable=False),
        pa.field("face_index", pa.int32()),  # null on --keep-empty rows
        pa.field("track_id", pa.int32()),  # videos: one id per person; null for images
        pa.field("person_id", pa.int32()),  # --persons: one id per person in the source
        pa.field("shot", pa.int32()),  # videos: 0, then +1 at each cut; null for images
        pa.field("face_source", pa.string()),  # detected | tracked | padded | whole_image
        pa.field("x1", f32),
        pa.field("y1", f32),
        pa.field("x2", f32),
        pa.field("y2", f32),
        pa.field("det_score", f32),
        *[pa.field(c, f32) for c in LANDMARK_COLUMNS],
        pa.field("model", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        *[pa.field(c, f32) for c in PROB_COLUMNS],
        pa.field("valence", f32),
        pa.field("arousal", f32),
        pa.field("va_method", pa.string()),  # head | centroid
        #: --persons: a face descriptor (videos: each track's, on its first row; photos: each
        #: face's); null on the other rows and without --persons
        pa.field("embedding", EMBEDDING_TYPE),
    ],
    metadata={"cage.schema_version": SCHEMA_VERSION},
)

COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

#: CSV has no lists: there ``embedding`` is its values as text, separated by spaces
CSV_SCHEMA = SCHEMA.set(SCHEMA.get_field_index("embedding"), pa.field("embedding", pa.string()))
