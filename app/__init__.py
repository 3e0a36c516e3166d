"""DSCNet serving: decode images, run the ONNX model, answer over HTTP. Never imports TensorFlow."""
