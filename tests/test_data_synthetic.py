"""synthetic_faces: deterministic, fast, and its expressions are learnable but not trivially."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from manet_jax.data.face_renderer import CLASSES, render_face
from manet_jax.data.synthetic_faces import SyntheticFacesConfig


def faces(n_per_class, size, seed):
    images, labels = [], []
    for i in range(n_per_class * len(CLASSES)):
        images.append(render_face(i % len(CLASSES), size, np.random.default_rng([seed, i])))
        labels.append(i % len(CLASSES))
    return np.stack(images), np.array(labels)


def test_rendering_is_deterministic():
    a = render_face(3, 40, np.random.default_rng(5))
    b = render_face(3, 40, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (40, 40, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, render_face(3, 40, np.random.default_rng(6)))


def test_rendering_is_fast():
    start = time.process_time()
    faces(10, 112, 0)
    assert (time.process_time() - start) / 70 < 0.02  # ~3-5 ms per 112 px face


def test_expressions_are_learnable_but_not_trivial():
    """A ridge classifier on 12x12 grey thumbnails (420 training faces) is well above chance
    (1/7) but far from perfect: pose, identity and clutter hide the expression from pixels."""
    def features(images):
        grey = images.mean(-1).astype(np.float32)
        return np.stack([np.asarray(Image.fromarray(g).resize((12, 12), Image.Resampling.BOX))
                         for g in grey]).reshape(len(images), -1)

    (x_train, y_train), (x_test, y_test) = faces(60, 32, 1), faces(30, 32, 2)
    f_train, f_test = features(x_train), features(x_test)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (np.c_[(f - mu) / sd, np.ones(len(f))] for f in (f_train, f_test))
    weights = np.linalg.solve(f_train.T @ f_train + 10 * np.eye(f_train.shape[1]),
                              f_train.T @ np.eye(len(CLASSES))[y_train])
    accuracy = ((f_test @ weights).argmax(1) == y_test).mean()
    assert 0.22 < accuracy < 0.8


def test_config_names():
    config = SyntheticFacesConfig.from_name("112")
    assert (config.size, config.num_train, config.num_test) == (112, 4200, 700)
    config = SyntheticFacesConfig.from_name("64_1400_350")
    assert (config.size, config.num_train, config.num_test) == (64, 1400, 350)
    assert SyntheticFacesConfig.from_name("33_70_14").size == 33
    for bad in ("64x64", "8", "64_3_1", "33"):  # a size without split sizes is one of docs/datasets.md's
        with pytest.raises(ValueError):
            SyntheticFacesConfig.from_name(bad)
