"""Paired data: class palettes (`classes`), frame -> map rules shared with the device
(`preprocess`), the procedural scenes (`scenes`) and dataset folders (`folder`)."""
