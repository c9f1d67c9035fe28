"""The TF transforms against torchvision's algorithms (re-implemented in NumPy here) and PIL.

Tolerance against PIL's bilinear resize: at most 1/255 per value and at most 8% of the values
off by that much. PIL computes in fixed point, TF in float32: they differ only where the exact
result is (nearly) halfway between two 8-bit levels, typically for under 3% of the values and
about 6% at factors like 1.5 where exact halves are common.
"""

from __future__ import annotations

import io
import math

import data_fixtures as fx
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import stats

from manet_jax.data import augment
from manet_jax.data.sampling import augmentation_keys

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def torchvision_rrc_params(height, width, u, scale=SCALE, ratio=RATIO):
    """torchvision.transforms.RandomResizedCrop.get_params, with its random draws taken from
    `u` (4 x 10 uniforms: area, log-ratio, top, left per try)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for t in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0][t])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1][t])
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            i = int(u[2][t] * (height - h + 1))  # torch.randint(0, height - h + 1)
            j = int(u[3][t] * (width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def torchvision_erasing_params(height, width, u, scale=augment.ERASING_SCALE,
                               ratio=augment.ERASING_RATIO):
    """torchvision.transforms.RandomErasing.get_params (value 0), draws from `u` (4 x 10)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for t in range(10):
        erase_area = area * (scale[0] + (scale[1] - scale[0]) * u[0][t])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1][t])
        h = round(math.sqrt(erase_area * aspect_ratio))
        w = round(math.sqrt(erase_area / aspect_ratio))
        if not (h < height and w < width):
            continue
        return int(u[2][t] * (height - h + 1)), int(u[3][t] * (width - w + 1)), h, w
    return None


def pil_resize(array, height, width):
    return np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.BILINEAR))


def assert_matches_pil(levels, reference):
    """`levels` (0-255 floats) within the PIL tolerance stated in the module docstring."""
    diff = np.abs(np.asarray(levels, np.float64) - reference)
    assert diff.max() <= 1.0 + 1e-4
    assert (diff > 0.5).mean() <= 0.08


def encode(array, fmt, **kw):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kw)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, kw, grey", [
    ("JPEG", {"quality": 90}, False), ("JPEG", {"quality": 75, "subsampling": 0}, False),
    ("JPEG", {"quality": 95, "progressive": True}, False), ("JPEG", {}, True),
    ("PNG", {}, False), ("PNG", {}, True)])
def test_decode_matches_pil_exactly(fmt, kw, grey):
    data = encode(fx.pixels(np.random.default_rng(1), 37, 53, grey), fmt, **kw)
    np.testing.assert_array_equal(augment.decode_image(tf.constant(data)).numpy(), fx.decode(data))


@pytest.mark.parametrize("shape, size", [
    ((100, 100), (224, 224)), ((37, 53), (224, 224)), ((300, 200), (224, 224)),
    ((200, 300), (224, 224)), ((100, 100), (64, 64)), ((80, 300), (112, 112)),
    ((150, 100), (100, 150)), ((48, 48), (48, 48))])
def test_resize_matches_pil_bilinear(shape, size):
    image = np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)
    levels = augment.resize_bilinear(tf.constant(image), *size).numpy()
    assert levels.shape == (*size, 3)
    assert_matches_pil(levels, pil_resize(image, *size))


def test_eval_image_is_pil_resize_to_tensor():
    image = fx.pixels(np.random.default_rng(3), 100, 100)
    out = augment.eval_image(tf.constant(encode(image, "PNG")), 224).numpy()
    assert out.dtype == np.float32 and out.shape == (224, 224, 3)
    assert_matches_pil(out * 255, pil_resize(image, 224, 224))


def test_crop_box_is_torchvisions_get_params():
    rng = np.random.default_rng(4)
    shapes = [(100, 100), (48, 48), (181, 143), (10, 200), (200, 10), (1, 1), (7, 9)]
    for height, width in shapes:
        for _ in range(60):
            u = rng.random((4, 10))
            box = augment.random_resized_crop_box(height, width, tf.constant(u)).numpy()
            assert tuple(box) == torchvision_rrc_params(height, width, u), (height, width)


def _pipeline_boxes(height, width, n, seed=0):
    """Crop boxes as the training pipeline draws them (uniforms from per-sample keys)."""
    keys = augmentation_keys(seed, np.zeros(n, np.int64), np.arange(n))

    def box(key):
        u = tf.random.stateless_uniform([82], key, dtype=tf.float64)
        return augment.random_resized_crop_box(height, width, tf.reshape(u[:40], [4, 10]))

    ds = tf.data.Dataset.from_tensor_slices(keys).map(box, num_parallel_calls=tf.data.AUTOTUNE)
    return np.concatenate([b for b in ds.batch(1000).as_numpy_iterator()])


def _torchvision_boxes(height, width, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([torchvision_rrc_params(height, width, rng.random((4, 10))) for _ in range(n)])


@pytest.mark.parametrize("height, width", [(100, 100), (181, 143), (30, 160)])
def test_crop_box_statistics_follow_torchvision(height, width):
    n = 6000
    ours, ref = _pipeline_boxes(height, width, n), _torchvision_boxes(height, width, n)
    for boxes in (ours, ref):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()
    area = lambda b: b[:, 2] * b[:, 3] / (height * width)
    aspect = lambda b: np.log(b[:, 3] / b[:, 2])
    centre_y = lambda b: (b[:, 0] + b[:, 2] / 2) / height
    for statistic in (area, aspect, centre_y):
        assert stats.ks_2samp(statistic(ours), statistic(ref)).pvalue > 1e-3
    if (height, width) == (100, 100):  # no fallback in a square: within the scale/ratio ranges
        assert 0.075 < area(ours).min() and area(ours).max() <= 1.0
        assert np.abs(aspect(ours)).max() <= math.log(4 / 3) + 0.03


def test_random_erasing_is_torchvisions():
    rng = np.random.default_rng(5)
    image = tf.ones([40, 60, 3])
    for _ in range(50):
        u = rng.random(41)
        out = augment.random_erasing(image, tf.constant(u), prob=0.5).numpy()
        params = torchvision_erasing_params(40, 60, u[1:].reshape(4, 10))
        expected = np.ones((40, 60, 3), np.float32)
        if u[0] < 0.5 and params:
            i, j, h, w = params
            expected[i:i + h, j:j + w] = 0
        np.testing.assert_array_equal(out, expected)


def _train_views(image, n, **kwargs):
    data = tf.constant(encode(image, "PNG"))
    keys = augmentation_keys(0, np.zeros(n, np.int64), np.arange(n))
    ds = tf.data.Dataset.from_tensor_slices(keys).map(
        lambda k: augment.train_image(data, k, image.shape[0], **kwargs),
        num_parallel_calls=tf.data.AUTOTUNE)
    return np.concatenate([b for b in ds.batch(500).as_numpy_iterator()])


def test_flip_rate_is_one_half():
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)  # asymmetric
    views = _train_views(image, 2000, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # crop = whole image
    unit = image / np.float32(255)
    flipped = np.all(views == unit[:, ::-1], axis=(1, 2, 3))
    kept = np.all(views == unit, axis=(1, 2, 3))
    assert (flipped | kept).all()
    assert abs(flipped.sum() - 1000) < 100  # 4.5 sigma


def test_train_view_range_dtype_and_levels():
    views = _train_views(fx.pixels(np.random.default_rng(6), 64, 64), 40)
    assert views.dtype == np.float32 and views.shape == (40, 64, 64, 3)
    assert views.min() >= 0.0 and views.max() <= 1.0
    np.testing.assert_allclose(views * 255, np.round(views * 255), atol=1e-3)  # 8-bit levels
    assert len({v.tobytes() for v in views}) == 40


def test_fixed_seed_gives_a_fixed_view():
    image = fx.pixels(np.random.default_rng(7), 100, 100)
    key = augmentation_keys(123, np.array([2]), np.array([17]))[0]
    out = augment.train_image(tf.constant(encode(image, "PNG")), tf.constant(key), 224).numpy()
    u = tf.random.stateless_uniform([82], key, dtype=tf.float64).numpy()
    top, left, h, w = torchvision_rrc_params(100, 100, u[:40].reshape(4, 10))
    assert (top, left, h, w, bool(u[40] < 0.5)) == (0, 17, 89, 78, True)  # pinned
    crop = image[top:top + h, left:left + w][:, ::-1]
    assert_matches_pil(out * 255, pil_resize(np.ascontiguousarray(crop), 224, 224))
    assert int(np.rint(out * 255).sum()) == 18_439_624  # pinned
    again = augment.train_image(tf.constant(encode(image, "PNG")), tf.constant(key), 224).numpy()
    np.testing.assert_array_equal(out, again)


def test_random_erasing_after_the_other_transforms():
    image = fx.pixels(np.random.default_rng(8), 32, 32)
    plain = _train_views(image, 20)
    erased = _train_views(image, 20, erasing_prob=1.0)
    changed = np.any(erased != plain, axis=-1)  # erased pixels are 0
    assert changed.any(axis=(1, 2)).all()
    assert (erased[changed] == 0).all()
    fraction = changed.mean(axis=(1, 2))
    assert ((fraction >= 0.015) & (fraction <= 0.34)).all()  # scale (0.02, 0.33), rounded
