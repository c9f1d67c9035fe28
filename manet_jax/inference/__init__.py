"""Inference on image files and model export (entry points `manet_jax.predict`, `manet_jax.export`).

images: finding and decoding inputs; faces: detection and crops; preprocess: the evaluation view of
a crop; model: checkpoints for inference and the batched, sharded forward; pipeline: files in,
records out; report: table, JSON, CSV; visualize: attention PNGs; export, savedmodel: exports.
"""
