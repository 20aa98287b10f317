from __future__ import annotations

import pytest
import torch

from mcm_train.contract.modalities import ModalitySpec, cond_channels
from mcm_train.nets.mcm import MCM, modulate
from mcm_train.nets.unet import UNet, UNetConfig

SMALL = UNetConfig(channels=(8, 16), num_res_blocks=1, attention_resolutions=(8,), image_size=16, groups=4)


def test_unet_shapes() -> None:
    net = UNet(SMALL)
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([0.0, 999.0]))
    assert out.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("space_to_depth", [1, 2])
def test_untrained_mcm_is_the_identity(space_to_depth: int) -> None:
    k = cond_channels([ModalitySpec("segmentation", "segmentation", 8), ModalitySpec("sketch", "sketch", 1)])
    assert k == 11
    mcm = MCM(3, k, UNetConfig(**{**SMALL.to_dict(), "space_to_depth": space_to_depth}))
    x, eps = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    gamma, beta = mcm(x, eps, torch.rand(2, k, 16, 16), torch.tensor([5.0, 500.0]))
    assert gamma.shape == beta.shape == eps.shape
    assert torch.equal(modulate(eps, gamma, beta), eps)


def test_modulate_is_scale_and_shift() -> None:
    eps = torch.tensor([1.0, -2.0])
    assert torch.allclose(modulate(eps, torch.tensor([0.5, 1.0]), torch.tensor([0.1, 0.2])), torch.tensor([1.6, -3.8]))


def test_space_to_depth_keeps_full_resolution_output() -> None:
    cfg = UNetConfig(**{**SMALL.to_dict(), "space_to_depth": 2})
    net = UNet(cfg)
    torch.nn.init.normal_(net.conv_out.weight)
    assert net.conv_in.in_channels == 3 * 4 and net.conv_out.out_channels == 3 * 4
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([0.0, 999.0]))
    assert out.shape == (2, 3, 16, 16)
    # pixel_shuffle, not upsampling: the four pixels of a 2x2 block carry different values
    block = out[0, 0, :2, :2].flatten()
    assert len(set(block.tolist())) == 4
