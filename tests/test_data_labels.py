"""Each dataset's native-label table against the dataset spec (spec/datasets.md, section 3)."""

from __future__ import annotations

import pytest

from manet_jax.data import CANONICAL_CLASSES
from manet_jax.data.affectnet import AFFECTNET_LABELS
from manet_jax.data.caer_s import CAER_S_LABELS
from manet_jax.data.ferplus import FERPLUS_LABELS, VOTE_COLUMNS, majority_vote
from manet_jax.data.image_folder import IMAGE_FOLDER_LABELS
from manet_jax.data.labels import canonical_indices, class_names
from manet_jax.data.raf_db import RAF_DB_LABELS
from manet_jax.data.sfew import SFEW_LABELS

# ImageFolder's alphabetical class order on CAER-S / SFEW folders (spec table 3.6).
ALPHABETICAL_FOLDERS = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
FOLDER_MEANING = ["Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise"]


def test_canonical_order_is_manet_readme_order():
    assert CANONICAL_CLASSES == ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust",
                                 "Anger", "Contempt")
    assert class_names(7) == CANONICAL_CLASSES[:7]
    assert class_names(8) == CANONICAL_CLASSES
    with pytest.raises(ValueError):
        class_names(6)
    with pytest.raises(ValueError, match="Happy"):
        canonical_indices({1: "Happy"})


def test_raf_db_codes():
    # Spec: official RAF-DB label k maps to MA-Net folder [3, 4, 5, 1, 2, 6, 0][k - 1].
    assert RAF_DB_LABELS == {k: [3, 4, 5, 1, 2, 6, 0][k - 1] for k in range(1, 8)}
    # 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
    names = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
    assert {k: CANONICAL_CLASSES[v] for k, v in RAF_DB_LABELS.items()} == dict(enumerate(names, 1))


def test_affectnet_codes():
    # 0 Neutral ... 7 Contempt are MA-Net's order; 8 None, 9 Uncertain, 10 No-Face are dropped.
    assert AFFECTNET_LABELS == {k: k for k in range(8)}
    assert not {8, 9, 10} & set(AFFECTNET_LABELS)


def test_ferplus_columns():
    assert list(FERPLUS_LABELS) == ["neutral", "happiness", "surprise", "sadness", "anger",
                                    "disgust", "fear", "contempt"]
    assert {c: CANONICAL_CLASSES[i] for c, i in FERPLUS_LABELS.items()} == {
        "neutral": "Neutral", "happiness": "Happiness", "surprise": "Surprise",
        "sadness": "Sadness", "anger": "Anger", "disgust": "Disgust", "fear": "Fear",
        "contempt": "Contempt"}
    assert VOTE_COLUMNS[8:] == ("unknown", "NF")


def test_class_folder_datasets():
    for table in (CAER_S_LABELS, SFEW_LABELS):
        assert [CANONICAL_CLASSES[table[f]] for f in ALPHABETICAL_FOLDERS] == FOLDER_MEANING
    assert CAER_S_LABELS["Anger"] == CAER_S_LABELS["Angry"] == 6
    assert IMAGE_FOLDER_LABELS == {str(k): k for k in range(8)}


@pytest.mark.parametrize("votes, winner", [
    ([6, 2, 0, 0, 0, 0, 0, 0, 2, 0], 0),     # 6 of 10
    ([0, 0, 4, 1, 0, 0, 3, 0, 0, 0], 2),     # single vote dropped: 4 of 7
    ([0, 0, 0, 5, 5, 0, 0, 0, 0, 0], None),  # tie, not a majority
    ([0, 0, 0, 4, 2, 2, 2, 0, 0, 0], None),  # 4 of 10
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], None),  # all single votes
    ([0, 0, 0, 0, 0, 0, 0, 0, 7, 3], None),  # unknown wins
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], None),  # not a face
    ([1, 0, 0, 0, 0, 0, 0, 2, 0, 0], 7),     # contempt, after dropping the single vote
])
def test_ferplus_majority_rule(votes, winner):
    assert majority_vote(votes) == winner
