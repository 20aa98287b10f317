"""mcm-train: data, base pretraining, MCM training, reference segmenter and ONNX export for mcm-edge."""
