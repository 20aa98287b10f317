"""Networks: the epsilon-prediction U-Net (frozen base), the MCM and the reference segmenter.

All three are one `UNet` with different widths: residual blocks with GroupNorm + SiLU, strided-conv
downsampling, nearest upsampling + conv, skip connections, single-head self-attention at chosen
resolutions, and (for the diffusion nets) a sinusoidal timestep embedding (Ho et al. 2020, DDPM).
Everything here exports with `torch.onnx` into ops that tract runs (see export.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    """Shape of a `UNet`.

    Attributes:
        in_channels / out_channels: channels of the input / output tensors [B, C, H, W].
        channels: width per resolution level; level i works at H / 2**i.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sizes (pixels) with a self-attention layer.
        image_size: H = W of the input, used to place attention.
        timestep_embedding: add a sinusoidal embedding of `timestep` (diffusion nets); False for the segmenter.
        groups: GroupNorm groups (must divide every width).
        zero_out: zero-initialise the output conv (the MCM starts as the identity modulation).
        space_to_depth: run the net at H / f with f*f times the channels: the input is folded with
            `pixel_unshuffle(f)` and the output unfolded with `pixel_shuffle(f)` (Shi et al. 2016), so
            every output pixel keeps its own value while the cost drops roughly by f*f; a 3x3 conv
            from the input at full resolution (`conv_local`, zero-initialised with `zero_out`) is
            added to the output so that thin sketch strokes and class boundaries act per pixel.
            1 = off.
    """

    in_channels: int = 3
    out_channels: int = 3
    channels: tuple[int, ...] = (32, 64, 128)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    image_size: int = 64
    timestep_embedding: bool = True
    groups: int = 8
    zero_out: bool = False
    space_to_depth: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> UNetConfig:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        d["attention_resolutions"] = tuple(d["attention_resolutions"])
        return UNetConfig(**d)


def timestep_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; DDPM): `timestep` f32 [B] -> [B, dim] (cos, sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    args = timestep.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, timestep embedding added in between, 1x1 skip when widths differ."""

    def __init__(self, cin: int, cout: int, temb_dim: int | None, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout) if temb_dim else None
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None and temb is not None:
            h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, written with matmul + softmax."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        self.scale = ch**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.matmul(q.transpose(1, 2), k) * self.scale, dim=-1)  # [B, HW, HW]
        out = torch.matmul(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """U-Net `(x [B, in, H, W], timestep f32 [B] or None) -> [B, out, H, W]`; H, W divisible by
    space_to_depth * 2**(len(channels)-1)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch0, g = cfg.channels[0], cfg.groups
        self.temb_dim = 4 * ch0 if cfg.timestep_embedding else None
        if self.temb_dim:
            self.temb_mlp = nn.Sequential(nn.Linear(ch0, self.temb_dim), nn.SiLU(), nn.Linear(self.temb_dim, self.temb_dim))
        f = cfg.space_to_depth
        self.conv_in = nn.Conv2d(cfg.in_channels * f * f, ch0, 3, padding=1)
        self.down = nn.ModuleList()
        skips, cur, res = [ch0], ch0, cfg.image_size // f
        for level, ch in enumerate(cfg.channels):
            for _ in range(cfg.num_res_blocks):
                self.down.append(self._block(cur, ch, res))
                cur = ch
                skips.append(cur)
            if level < len(cfg.channels) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(cur, cur, self.temb_dim, g), Attention(cur, g), ResBlock(cur, cur, self.temb_dim, g)])
        self.up = nn.ModuleList()
        for level, ch in reversed(list(enumerate(cfg.channels))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(self._block(cur + skips.pop(), ch, res))
                cur = ch
            if level > 0:
                self.up.append(Upsample(cur))
                res *= 2
        self.norm_out = nn.GroupNorm(g, cur)
        self.conv_out = nn.Conv2d(cur, cfg.out_channels * f * f, 3, padding=1)
        self.conv_local = nn.Conv2d(cfg.in_channels, cfg.out_channels, 3, padding=1, bias=False) if f > 1 else None
        if cfg.zero_out:
            for conv in (self.conv_out, self.conv_local):
                if conv is not None:
                    nn.init.zeros_(conv.weight)
                    if conv.bias is not None:
                        nn.init.zeros_(conv.bias)

    def _block(self, cin: int, cout: int, res: int) -> nn.Module:
        block = ResBlock(cin, cout, self.temb_dim, self.cfg.groups)
        if res in self.cfg.attention_resolutions:
            return nn.ModuleList([block, Attention(cout, self.cfg.groups)])
        return block

    def _run(self, layer: nn.Module, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        if isinstance(layer, ResBlock):
            return layer(h, temb)
        if isinstance(layer, nn.ModuleList):
            for sub in layer:
                h = self._run(sub, h, temb)
            return h
        return layer(h)

    def embed_timestep(self, timestep: torch.Tensor | None) -> torch.Tensor | None:
        """The timestep embedding `timestep` f32 [B] -> [B, 4 * channels[0]]; None without one.

        Raises:
            ValueError: this U-Net has a timestep embedding and `timestep` is None.
        """
        if not self.temb_dim:
            return None
        if timestep is None:
            raise ValueError("this UNet needs a timestep [B]")
        return self.temb_mlp(timestep_embedding(timestep, self.cfg.channels[0]))

    def encode(self, x: torch.Tensor, temb: torch.Tensor | None, hint: torch.Tensor | None = None
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The encoder half: `x` [B, in, H, W] -> (skip features `hs`, mid output `h`).

        `hs[0]` is `conv_in` of the (folded) input [B, channels[0], H/f, W/f] plus `hint` when given
        (same shape; the ControlNet baseline's entry), then one feature per `down` layer; `h` is
        [B, channels[-1], H/(f*2**(L-1)), W/(f*2**(L-1))].
        """
        f = self.cfg.space_to_depth
        h = self.conv_in(F.pixel_unshuffle(x, f) if f > 1 else x)
        if hint is not None:
            h = h + hint
        hs = [h]
        for layer in self.down:
            h = self._run(layer, h, temb)
            hs.append(h)
        for layer in self.mid:
            h = self._run(layer, h, temb)
        return hs, h

    def decode(self, h: torch.Tensor, hs: list[torch.Tensor], temb: torch.Tensor | None) -> torch.Tensor:
        """The decoder half: mid output `h` and skip features `hs` (as `encode` returns them; not
        modified) -> [B, out * f * f, H/f, W/f], the output before unfolding (f = space_to_depth)."""
        hs = list(hs)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = self._run(layer, torch.cat([h, hs.pop()], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | None = None,
                features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`x` [B, in, H, W] (and `timestep` [B] with a timestep embedding) -> [B, out, H, W]; with
        `features`, also the mid output (the bottleneck, after `mid`) averaged over its positions,
        [B, channels[-1]]: the reference segmenter's features are the embedding of the realism
        figure of `mcm-edge eval` (fsd, a Frechet distance as in FID)."""
        temb = self.embed_timestep(timestep)
        hs, h = self.encode(x, temb)
        out = self.decode(h, hs, temb)
        if self.conv_local is not None:
            out = F.pixel_shuffle(out, self.cfg.space_to_depth) + self.conv_local(x)
        return (out, h.mean(dim=(2, 3))) if features else out


class UNetWithFeatures(nn.Module):
    """A U-Net read as the reference segmenter is exported: `image` [B, in, H, W] -> (`forward`'s
    output [B, out, H, W], pooled bottleneck features [B, channels[-1], 1, 1], 4-D as every output
    of the model contract). The weights are the wrapped net's, under `net.`."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, features = self.net(image, features=True)  # through net's forward: its weights keep their scope
        return out, features[:, :, None, None]


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)




