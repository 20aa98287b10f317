"""Networks: the U-Net of the base, MCM and segmenter (`unet`), the MCM (`mcm`) and the
ControlNet-style baseline (`controlnet`). Depends on nothing else here."""
