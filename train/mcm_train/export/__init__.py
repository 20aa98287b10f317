"""Export to the device contract: ONNX files and test vectors (`onnx`), random-weight fixtures
(`random_models`), diffusers import (`diffusers`), the parity vectors of both halves (`parity`)."""
