"""Person linking (cage_cli.annotation.identity.linkage) and the embedding front end (embed.py), on
real faces: the aligned shared photos' descriptors in the face-api reference fixture, and a
few photos of ../shared/identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from cage_cli.annotation.identity.embed import (
    CROP_SIZE,
    align_face,
    distances,
    embed_faces,
    face_quality,
    load_embedding_model,
    similarity_transform,
    template,
)
from cage_cli.annotation.identity.linkage import link_persons, overlap_constraints, pair_scores

FIXTURE = Path(__file__).parent / "fixtures" / "faceapi_recognition_reference.npz"
IDENTITY = ROOT.parent / "shared" / "identity"
#: two photos each of three people (london: one studio; wild: years apart)
PHOTOS = ["london/019_neutral.jpg", "london/019_smiling.jpg", "london/020_neutral.jpg",
          "london/020_smiling.jpg", "wild/img1.jpg", "wild/img2.jpg"]


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def identity_faces():
    """(images, MTCNN landmarks, boxes) of the largest face of each photo in PHOTOS."""
    from cage_cli.annotation.detection.detect import DetectOptions, Detector

    detector = Detector(DetectOptions(), "cpu")
    images, marks, boxes = [], [], []
    for name in PHOTOS:
        image = np.asarray(Image.open(IDENTITY / name).convert("RGB"))
        (faces,) = detector([image], [True])
        k = int(np.argmax((faces.boxes[:, 2] - faces.boxes[:, 0])
                          * (faces.boxes[:, 3] - faces.boxes[:, 1])))
        images.append(image)
        marks.append(faces.landmarks[k])
        boxes.append(faces.boxes[k])
    return images, np.stack(marks), np.stack(boxes)


@pytest.fixture(scope="module")
def model():
    return load_embedding_model()


@pytest.fixture(scope="module")
def embeddings(identity_faces, model):
    images, marks, _ = identity_faces
    return embed_faces(images, marks, model, batch_size=16)


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 2.5, np.array([10.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = similarity_transform(src, src @ rot.T + shift)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def test_aligned_crop_puts_the_eyes_level_where_the_template_says(identity_faces):
    """A photo rotated by 20 degrees: the aligned crop's eyes (found again by MTCNN) are level
    and at the template's positions, as in the unrotated photo's crop."""
    from cage_cli.annotation.detection.detect import DetectOptions, Detector

    image = Image.fromarray(identity_faces[0][0])
    rotated = np.asarray(image.rotate(20, resample=Image.Resampling.BICUBIC, expand=True))
    detector = Detector(DetectOptions(), "cpu")
    (faces,) = detector([rotated], [True])
    crop = align_face(rotated, faces.landmarks[0])
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    assert np.array_equal(align_face(Image.fromarray(rotated), faces.landmarks[0]), crop)
    (again,) = detector([crop], [True])
    eyes = again.landmarks[0, :2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 3  # level
    assert np.abs(eyes - template()[:2]).max() < 6


def test_embed_faces_batches_and_falls_back_to_box_crops(identity_faces, model, embeddings):
    images, marks, boxes = identity_faces
    one = embeddings
    assert one.shape == (6, 128) and one.dtype == np.float32
    nan = marks.copy()
    nan[1] = np.nan  # --detector none: no landmarks, the box crop is used
    with pytest.raises(ValueError, match="no landmarks and no box"):
        embed_faces(images, nan, model)
    box = embed_faces(images, nan, model, batch_size=4, boxes=boxes)  # batches of 4, 2
    np.testing.assert_allclose(np.delete(box, 1, 0), np.delete(one, 1, 0), atol=1e-5)
    assert np.abs(box[1] - one[1]).max() > 1e-3
    assert embed_faces([], np.zeros((0, 5, 2)), model).shape == (0, 128)


def test_face_quality_prefers_big_frontal_faces(reference):
    marks = reference["landmarks"]
    q = face_quality(marks)
    assert q.shape == (len(marks),) and ((q >= 0) & (q <= 1)).all()
    src = reference["sources"]
    # the big frontal portraits beat the small faces of the interview
    assert q[src == "portrait_kate_siegel.jpg"].min() > q[np.char.startswith(
        src.astype(str), "interview")].max()
    turned = marks[7].copy()
    turned[2] = turned[1]  # nose tip in line with one eye: a profile
    assert face_quality(turned[None])[0] == 0
    assert face_quality(np.full((1, 5, 2), np.nan))[0] == 0


def test_three_people_two_photos_each(embeddings):
    emb = embeddings
    ids = link_persons(emb)
    assert ids.tolist() == [0, 0, 1, 1, 2, 2]
    d = distances(emb)
    assert d[0, 1] < 0.45 and d[4, 5] < 0.45 and d[0, 2] > 0.6


def test_photo_faces_and_video_frames(reference):
    """The fixture's faces, photo faces cannot-linked within their photo: short_clip's face in
    two frames is one person; the 11 people of the photos stay 11."""
    src = reference["sources"]
    frames = [s.split("#")[0] if s.endswith(".jpg") else str(s) for s in src]
    cannot = overlap_constraints(frames, np.zeros(len(src)), np.zeros(len(src)))
    ids = link_persons(reference["descriptors"], cannot_link=cannot)
    # single_face, multiface's 6 and the 4 portraits: 11 people, numbered as they come
    assert list(ids[:11]) == list(range(11))
    clip = ids[np.char.startswith(src.astype(str), "short_clip")]
    assert len(clip) == 2 and clip[0] == clip[1] == 11
    # without the constraints, nothing in this set is close enough to merge either
    assert len(set(link_persons(reference["descriptors"])[:11])) == 11


def test_cannot_link_wins_over_distance():
    e = np.zeros((4, 3))
    e[2:] = 1.0  # two identical pairs, far apart
    assert link_persons(e).tolist() == [0, 0, 1, 1]
    assert link_persons(e, cannot_link=[(0, 1)]).tolist() == [0, 1, 2, 2]
    # numbered by first appearance when items are not in that order
    assert link_persons(e, first_seen=[50, 60, 10, 70]).tolist() == [1, 1, 0, 0]
    # a chain a-b-c: a and c may not be one person, so b joins only one of them
    chain = np.array([[0.0], [0.2], [0.4]])
    ids = link_persons(chain, threshold=0.45, cannot_link=[(0, 2)], linkage="average")
    assert ids[0] != ids[2] and ids[1] in (ids[0], ids[2])


def test_linkage_and_threshold():
    line = np.array([[0.0], [0.3], [0.6]])
    # average: {0, 0.3} to 0.6 is (0.6 + 0.3) / 2 = 0.45 apart
    assert link_persons(line, threshold=0.46, linkage="average").tolist() == [0, 0, 0]
    # complete: 0 and 0.6 are 0.6 apart, more than the threshold
    assert link_persons(line, threshold=0.46, linkage="complete").tolist() == [0, 0, 1]
    assert link_persons(line, threshold=0.1).tolist() == [0, 1, 2]
    assert link_persons(np.zeros((0, 128))).tolist() == []
    with pytest.raises(ValueError, match="unknown linkage"):
        link_persons(line, linkage="single")


def test_overlap_constraints():
    groups = ["a.mp4", "a.mp4", "a.mp4", "b.mp4"]
    pairs = overlap_constraints(groups, [0, 5, 11, 0], [10, 20, 30, 100])
    assert pairs.tolist() == [[0, 1], [1, 2]]


def test_pair_scores():
    s = pair_scores(["a", "a", "b", "b"], [0, 0, 0, 1])
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == 0.5
    assert s["persons"] == 2 and s["true_persons"] == 2
