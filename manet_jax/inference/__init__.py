"""Inference on image files and model export (entry points `manet_jax.predict`, `manet_jax.export`).

images: finding and decoding inputs; faces: detection and crops; preprocess: the evaluation view of
a crop; predictor: batched, sharded prediction with a model bundle; photos: files in, records
out; records: table, JSON, CSV; visualize: attention PNGs; stablehlo, savedmodel: exports.
"""
