"""What the trainer and the device agree on: modalities and the `cond` layout (`modalities`), the
noise schedule (`schedule`), the `model.toml` file (`model_toml`). Depends on nothing else here."""
