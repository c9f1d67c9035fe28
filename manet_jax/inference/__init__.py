"""Inference on image and video files, over HTTP, and model export (entry points
`manet_jax.predict`, `manet_jax.serve`, `manet_jax.export`).

images: finding and decoding inputs; faces: detection and crops; detectors: the face detectors by
name; boxes: the user's own face boxes; face_options: the command-line options of the tools that
run faces; preprocess: the evaluation view of a crop; predictor: batched, sharded prediction with
a model bundle; photos: files in, records out; video: frames of video files and cameras, sampled;
tracking: faces followed across frames, smoothing; clips: videos in, records out; records: table,
JSON, CSV; visualize: attention PNGs, annotated frames, timelines; server: the web application
(Flask); stablehlo, savedmodel, onnx_export: exports; onnx_runtime: ONNX exports run with ONNX
Runtime.
"""
