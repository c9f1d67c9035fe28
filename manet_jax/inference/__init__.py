"""Inference on image and video files and model export (entry points `manet_jax.predict`,
`manet_jax.export`).

images: finding and decoding inputs; faces: detection and crops; preprocess: the evaluation view of
a crop; predictor: batched, sharded prediction with a model bundle; photos: files in, records
out; video: frames of video files and cameras, sampled; tracking: faces followed across frames,
smoothing; clips: videos in, records out; records: table, JSON, CSV; visualize: attention PNGs,
annotated frames, timelines; stablehlo, savedmodel: exports.
"""
