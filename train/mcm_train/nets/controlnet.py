"""ControlNet-style baseline (Zhang et al., ICCV 2023) on the same frozen base U-Net, for comparing
training cost and quality with the MCM (issue 4).

Structure, as in ControlNet:
- a *trainable copy* of the base's encoder (time embedding, `conv_in`, `down`, `mid`), initialised
  from the base's weights, reads x_t; the modality maps `cond` [B, K, H, W] go through a small conv
  "hint" block whose last conv is zero-initialised and whose output is added after the copy's `conv_in`;
- every skip feature of the copy and its mid output pass through a zero-initialised 1x1 conv and are
  added to the frozen base's skip features / mid output before the base's decoder runs.

The base's weights are frozen (`requires_grad` False) but, unlike the MCM, the loss backpropagates
through the base's decoder into the copy: that is the cost the MCM avoids. At initialisation every
zero conv outputs exactly 0, so the ControlNet's eps equals the base's eps.

The base's forward is split with `UNet.encode` / `UNet.decode` (the halves `UNet.forward` itself
runs); the hint enters through `encode`'s `hint`.

For the device, `ControlNetMCM` wraps the trained net in the unchanged `mcm.onnx` contract:
`gamma = 0`, `beta = eps_controlnet - eps`, so that `eps * (1 + gamma) + beta` is the ControlNet's eps
(the wrapper holds the whole base plus the copy, so the device runs the base twice per step).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .unet import ResBlock, UNet


def _check_plain(net: UNet) -> None:
    """Refuse U-Nets that fold space into depth: their output is unfolded after `decode` and gets a
    full-resolution path (an MCM speed option, not a base layout) that the baseline does not use.

    Raises:
        ValueError: `net.cfg.space_to_depth` != 1.
    """
    if net.cfg.space_to_depth != 1:
        raise ValueError(f"a ControlNet base needs space_to_depth = 1, got {net.cfg.space_to_depth}")


def _out_channels(layer: nn.Module) -> int:
    """Channels a `down` / `mid` layer of a `UNet` outputs."""
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    if isinstance(layer, ResBlock):
        return layer.conv2.out_channels
    if isinstance(layer, nn.ModuleList):  # ResBlock followed by attention (keeps the width)
        return _out_channels(layer[0])
    raise TypeError(f"unexpected U-Net layer {type(layer).__name__}")


def _zero_conv(cin: int, cout: int, kernel: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class ControlNet(nn.Module):
    """Frozen base U-Net + trainable encoder copy joined by zero convolutions.

    `forward(sample [B, C, H, W], cond [B, K, H, W], timestep f32 [B]) -> eps [B, C, H, W]`.

    Attributes:
        base: the frozen `UNet` (held by reference, `requires_grad` False, kept in eval mode).
        control: trainable copy of the base (decoder removed: only `encode` is used on it).
        hint: conv block `cond` [B, K, H, W] -> [B, channels[0], H, W], last conv zero-initialised.
        zero_skips: one zero-initialised 1x1 conv per skip feature of `encode`.
        zero_mid: zero-initialised 1x1 conv on the mid output.
        cfg: the base's `UNetConfig` (image size and channels; used by `export_mcm`).
    """

    def __init__(self, base: UNet, cond_channels: int, hint_channels: Sequence[int] = (16, 32)) -> None:
        super().__init__()
        if not base.temb_dim:
            raise ValueError("a ControlNet needs a diffusion U-Net with a timestep embedding")
        _check_plain(base)
        self.cfg = base.cfg
        self.cond_channels = cond_channels
        self.base = base.requires_grad_(False).eval()
        self.control = copy.deepcopy(base).requires_grad_(True)
        del self.control.up, self.control.norm_out, self.control.conv_out
        ch0, layers, cin = base.cfg.channels[0], [], cond_channels
        for ch in hint_channels:
            layers += [nn.Conv2d(cin, ch, 3, padding=1), nn.SiLU()]
            cin = ch
        self.hint = nn.Sequential(*layers, _zero_conv(cin, ch0, 3))
        skips = [ch0] + [_out_channels(layer) for layer in base.down]
        self.zero_skips = nn.ModuleList([_zero_conv(c, c) for c in skips])
        mid = _out_channels(base.mid[-1])
        self.zero_mid = _zero_conv(mid, mid)

    def train(self, mode: bool = True) -> ControlNet:
        """Set training mode on the trainable parts; the frozen base stays in eval mode."""
        super().train(mode)
        self.base.eval()
        return self

    def controls(self, sample: torch.Tensor, cond: torch.Tensor, timestep: torch.Tensor
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The residuals added to the base: one per skip feature (shapes of `encode`'s `hs`) and one
        for the mid output. All exactly zero at initialisation."""
        temb = self.control.embed_timestep(timestep)
        hs, h = self.control.encode(sample, temb, hint=self.hint(cond))
        return [z(f) for z, f in zip(self.zero_skips, hs, strict=True)], self.zero_mid(h)

    def forward(self, sample: torch.Tensor, cond: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the frozen encoder's outputs need no gradient: nothing before them trains
            temb = self.base.embed_timestep(timestep)
            hs, h = self.base.encode(sample, temb)
        skips, mid = self.controls(sample, cond, timestep)
        return self.base.decode(h + mid, [a + b for a, b in zip(hs, skips, strict=True)], temb)




# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------






# --------------------------------------------------------------------------------------------
# Export in the device's MCM contract
# --------------------------------------------------------------------------------------------


class ControlNetMCM(nn.Module):
    """A `ControlNet` behind the `mcm.onnx` contract: `(sample, eps, cond [B, K, H, W], timestep [B])
    -> (gamma, beta)` with `gamma = 0` and `beta = eps_controlnet(sample, cond, timestep) - eps`, all
    [B, C, H, W]; so the device's `eps * (1 + gamma) + beta` is the ControlNet's eps (strength 1).

    Has the attributes `export.export_mcm` reads (`image_channels`, `net.cfg`).
    """

    def __init__(self, net: ControlNet) -> None:
        super().__init__()
        self.net = net
        self.image_channels = net.cfg.in_channels

    def forward(self, sample: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor,
                timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(eps), self.net(sample, cond, timestep) - eps


