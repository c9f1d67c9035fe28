"""Image decoding and the reference transforms as TensorFlow ops (used inside tf.data).

Semantics follow torchvision on PIL images, which MA-Net trains with:
  train: RandomResizedCrop(size) (scale (0.08, 1), ratio (3/4, 4/3) sampled log-uniformly, 10 tries,
         then the centre-crop fallback; bilinear) -> RandomHorizontalFlip(0.5) -> ToTensor
  eval:  Resize((size, size)) (bilinear, aspect not kept) -> ToTensor
Bilinear resizing follows PIL (see `resize_bilinear`) and results are 8-bit levels divided by
255, as ToTensor of a PIL image gives; they match PIL within 1/255 (PIL computes in fixed point),
and exactly for most pixels.
Randomness is stateless: `train_image` draws uniforms from a per-example seed and the
other ops take those uniforms, so they are pure functions.
"""

from __future__ import annotations

import math

import tensorflow as tf

from manet_jax.data.options import ERASING_RATIO, ERASING_SCALE, RRC_RATIO, RRC_SCALE

_TRIES = 10  # torchvision's attempts before falling back


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG or PNG bytes -> uint8 (H, W, 3), pixel-identical to PIL's decode + convert('RGB')."""
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(encoded, channels=3))
    image.set_shape([None, None, 3])
    return image


def resize_bilinear(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """PIL's bilinear resize of an (H, W, C) 8-bit image: float32 (height, width, C) whole levels.

    Like PIL, it resizes one axis at a time (the order that gives the smaller intermediate
    image, horizontal first on ties), rounding to 8 bits after each pass, with a triangle filter
    widened by the scale factor when downscaling (antialiasing).
    """
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    vertical_first = height * shape[1] < shape[0] * width
    resized = tf.cond(vertical_first,
                      lambda: _resize_axis(_resize_axis(image, 0, height), 1, width),
                      lambda: _resize_axis(_resize_axis(image, 1, width), 0, height))
    resized.set_shape([height, width, image.shape[-1]])
    return resized


def _resize_axis(image: tf.Tensor, axis: int, size: int) -> tf.Tensor:
    """One PIL resampling pass along `axis` (0 rows, 1 columns), rounded half up to 8-bit levels."""
    shape = tf.shape(image)
    target = tf.stack([size, shape[1]] if axis == 0 else [shape[0], size])

    def resample() -> tf.Tensor:
        # Without downscaling PIL's filter is plain half-pixel bilinear, whose op is much faster.
        out = tf.cond(shape[axis] < size,
                      lambda: tf.image.resize(image, target, "bilinear", antialias=False),
                      lambda: tf.image.resize(image, target, "bilinear", antialias=True))
        return tf.clip_by_value(tf.floor(out + 0.5), 0.0, 255.0)

    return tf.cond(shape[axis] == size, lambda: image, resample)


def to_unit_range(image: tf.Tensor) -> tf.Tensor:
    """8-bit levels (0-255) -> [0, 1], as ToTensor does (float32 division by 255)."""
    return image / 255.0


def random_resized_crop_box(height: tf.Tensor, width: tf.Tensor, uniforms: tf.Tensor,
                            scale: tuple[float, float] = RRC_SCALE,
                            ratio: tuple[float, float] = RRC_RATIO) -> tf.Tensor:
    """torchvision's RandomResizedCrop.get_params: int32 [top, left, crop_height, crop_width].

    `uniforms` (float64 [4, 10], in [0, 1)) drive the 10 tries: row 0 the area fraction, row 1
    the log aspect ratio, rows 2 and 3 the top and left offsets.
    """
    h_in, w_in = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    target_area = h_in * w_in * (scale[0] + (scale[1] - scale[0]) * uniforms[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * uniforms[1])
    w = tf.round(tf.sqrt(target_area * aspect))  # tf.round rounds half to even, as Python does
    h = tf.round(tf.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= w_in) & (h > 0) & (h <= h_in)
    top = tf.floor(uniforms[2] * (h_in - h + 1))
    left = tf.floor(uniforms[3] * (w_in - w + 1))
    tries = tf.cast(tf.stack([top, left, h, w], axis=1), tf.int32)
    return tf.cond(tf.reduce_any(fits),
                   lambda: tries[tf.argmax(tf.cast(fits, tf.int32))],
                   lambda: _central_crop_box(height, width, ratio))


def _central_crop_box(height: tf.Tensor, width: tf.Tensor, ratio: tuple[float, float]) -> tf.Tensor:
    """torchvision's fallback: the largest centred crop whose aspect lies within `ratio`."""
    h_in, w_in = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    in_ratio = w_in / h_in
    w = tf.where(in_ratio > ratio[1], tf.round(h_in * ratio[1]), w_in)
    h = tf.where(in_ratio < ratio[0], tf.round(w_in / ratio[0]), h_in)
    h, w = tf.cast(h, tf.int32), tf.cast(w, tf.int32)
    return tf.stack([(height - h) // 2, (width - w) // 2, h, w])


def random_resized_crop(image: tf.Tensor, size: int, uniforms: tf.Tensor,
                        scale: tuple[float, float] = RRC_SCALE,
                        ratio: tuple[float, float] = RRC_RATIO, flip_prob: float = 0.5
                        ) -> tf.Tensor:
    """RandomResizedCrop(size) then RandomHorizontalFlip(flip_prob): float32 (size, size, C) levels.

    `uniforms`: float64 [41]; 40 for the crop box (see `random_resized_crop_box`), 1 for the flip.
    The flip is applied to the crop before resizing, which gives the same image (the filter is
    symmetric) for less work.
    """
    shape = tf.shape(image)
    crop_uniforms = tf.reshape(uniforms[:4 * _TRIES], [4, _TRIES])
    box = random_resized_crop_box(shape[0], shape[1], crop_uniforms, scale, ratio)
    crop = image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
    crop = tf.cond(uniforms[4 * _TRIES] < flip_prob, lambda: tf.reverse(crop, [1]), lambda: crop)
    return resize_bilinear(crop, size, size)


def random_erasing(image: tf.Tensor, uniforms: tf.Tensor, prob: float,
                   scale: tuple[float, float] = ERASING_SCALE,
                   ratio: tuple[float, float] = ERASING_RATIO, value: float = 0.0) -> tf.Tensor:
    """torchvision's RandomErasing(prob, scale, ratio, value) on an (H, W, C) float image.

    `uniforms`: float64 [41]; the first decides whether to erase, then 4 rows of 10 tries (area
    fraction, log aspect, top, left) as in `random_resized_crop_box`.
    """
    shape = tf.shape(image)
    h_in, w_in = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    u = tf.reshape(uniforms[1:], [4, _TRIES])
    area = h_in * w_in * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[1])
    h = tf.round(tf.sqrt(area * aspect))
    w = tf.round(tf.sqrt(area / aspect))
    fits = (h < h_in) & (w < w_in)
    k = tf.argmax(tf.cast(fits, tf.int32))
    top = tf.cast(tf.floor(u[2, k] * (h_in - h[k] + 1)), tf.int32)
    left = tf.cast(tf.floor(u[3, k] * (w_in - w[k] + 1)), tf.int32)
    h, w = tf.cast(h[k], tf.int32), tf.cast(w[k], tf.int32)
    rows, cols = tf.range(shape[0])[:, None], tf.range(shape[1])[None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    erase = (uniforms[0] < prob) & tf.reduce_any(fits)
    return tf.where((inside & erase)[..., None], tf.cast(value, image.dtype), image)


def train_image(encoded: tf.Tensor, seed: tf.Tensor, size: int, *,
                scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO,
                flip_prob: float = 0.5, erasing_prob: float = 0.0,
                erasing_scale: tuple[float, float] = ERASING_SCALE) -> tf.Tensor:
    """The training view of one encoded image: float32 (size, size, 3) in [0, 1].

    Order as in torchvision pipelines: crop, flip, ToTensor, [RandomErasing]. All of its
    randomness is one stateless draw of 82 uniforms from `seed` (int64 [2]).
    """
    uniforms = tf.random.stateless_uniform([2 * (4 * _TRIES + 1)], seed, dtype=tf.float64)
    image = to_unit_range(random_resized_crop(decode_image(encoded), size,
                                              uniforms[:4 * _TRIES + 1], scale, ratio, flip_prob))
    if erasing_prob > 0:
        image = random_erasing(image, uniforms[4 * _TRIES + 1:], erasing_prob, erasing_scale)
    return image


def eval_image(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """The evaluation view: Resize((size, size)) and ToTensor, float32 in [0, 1]."""
    return to_unit_range(resize_bilinear(decode_image(encoded), size, size))
