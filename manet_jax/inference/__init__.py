"""Inference on image files, over HTTP, and model export (entry points `manet_jax.predict`,
`manet_jax.serve`, `manet_jax.export`).

images: finding and decoding inputs; faces: detection and crops; preprocess: the evaluation view of
a crop; predictor: batched, sharded prediction with a model bundle; photos: files in, records
out; records: table, JSON, CSV; visualize: attention PNGs; server: the web application (Flask);
stablehlo, savedmodel: exports.
"""
