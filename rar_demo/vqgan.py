"""MaskGIT-VQGAN: the convolutional tokenizer the official RAR models generate tokens for.

Module names match `maskgit-vqgan-imagenet-f16-256.bin`, so the official file loads unchanged.
Pixels are in [0, 1] both ways; codes are (B, N) in raster order over an h x w grid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VQGANConfig


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


def _conv(c_in: int, c_out: int, kernel: int, bias: bool = True) -> nn.Conv2d:
    # "Same" padding at stride 1, as the official Conv2dSame computes it for odd kernels.
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = _conv(c_in, c_out, 3, bias=False)
        self.norm2 = _norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(c_out, c_out, 3, bias=False)
        if c_in != c_out:
            self.nin_shortcut = _conv(c_out, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        # When channels change, the official block projects the *output* as the shortcut;
        # the checkpoints were trained that way, so it stays.
        shortcut = self.nin_shortcut(h) if hasattr(self, "nin_shortcut") else x
        return h + shortcut


def _res_stack(c_in: int, c_out: int, config: VQGANConfig) -> nn.ModuleList:
    return nn.ModuleList(
        ResnetBlock(c_in if i == 0 else c_out, c_out, config.dropout)
        for i in range(config.num_res_blocks)
    )


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, downsample: bool, config: VQGANConfig) -> None:
        super().__init__()
        self.block = _res_stack(c_in, c_out, config)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return F.avg_pool2d(x, 2) if self.downsample else x


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, upsample: bool, config: VQGANConfig) -> None:
        super().__init__()
        self.block = _res_stack(c_in, c_out, config)
        if upsample:
            self.upsample_conv = _conv(c_out, c_out, 3)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        if hasattr(self, "upsample_conv"):
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class Encoder(nn.Module):
    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        widths = [config.hidden_channels * m for m in config.channel_mult]
        last = config.num_resolutions - 1
        self.conv_in = _conv(config.num_channels, config.hidden_channels, 3, bias=False)
        self.down = nn.ModuleList(
            DownBlock(widths[i - 1] if i else config.hidden_channels, widths[i], i != last, config)
            for i in range(config.num_resolutions)
        )
        self.mid = _res_stack(widths[-1], widths[-1], config)
        self.norm_out = _norm(widths[-1])
        self.conv_out = _conv(widths[-1], config.z_channels, 1)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.conv_in(pixels)
        for block in [*self.down, *self.mid]:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        widths = [config.hidden_channels * m for m in config.channel_mult]
        last = config.num_resolutions - 1
        self.conv_in = _conv(config.z_channels, widths[-1], 3)
        self.mid = _res_stack(widths[-1], widths[-1], config)
        # up[i] works at the resolution of down[i]; they run from the coarsest (up[-1]) down.
        self.up = nn.ModuleList(
            UpBlock(widths[min(i + 1, last)], widths[i], i != 0, config)
            for i in range(config.num_resolutions)
        )
        self.norm_out = _norm(widths[0])
        self.conv_out = _conv(widths[0], config.num_channels, 3)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        for block in [*self.mid, *reversed(self.up)]:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        # Given a weight, Embedding skips its own normal_ init (uniform_ below sets it): on
        # the meta device, normal_ alone imports torch._dynamo, 2 s of every start-up.
        self.embedding = nn.Embedding(codebook_size, dim, _weight=torch.empty(codebook_size, dim))
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def codes(self, z: Tensor) -> Tensor:
        """(B, C, h, w) latents -> (B, h * w) nearest-entry ids in raster order."""
        B, C = z.shape[:2]
        flat = z.permute(0, 2, 3, 1).reshape(-1, C)  # (B*h*w, C)
        table = self.embedding.weight
        # |z - e|^2 expanded as the official quantizer computes it, so near-ties break alike.
        dist = torch.addmm(
            flat.pow(2).sum(1, keepdim=True) + table.pow(2).sum(1)[None, :],
            flat,
            table.t(),
            alpha=-2.0,
        )
        return dist.argmin(1).view(B, -1)

    def lookup(self, codes: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, N) ids -> (B, C, h, w) latents."""
        return self.embedding(codes).view(codes.shape[0], *grid, -1).permute(0, 3, 1, 2)


class VQGAN(nn.Module):
    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.codebook_size, config.z_channels)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.config.grid_size, self.config.grid_size)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, N) codes."""
        return self.quantize.codes(self.encoder(images))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """(B, N) codes -> (B, 3, H, W) pixels in [0, 1]."""
        return self.decoder(self.quantize.lookup(codes, self.grid)).clamp(0.0, 1.0)


def to_tensor(images: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) floats in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def tokenize(tokenizer: VQGAN, images: np.ndarray, flip: bool = False) -> Tensor:
    """(N, H, W, 3) uint8 images (mirrored with flip) -> (N, L) codes, on the CPU."""
    pixels = to_tensor(images)
    if flip:
        pixels = pixels.flip(-1)
    device = tokenizer.quantize.embedding.weight.device
    return torch.cat([tokenizer.encode(b.to(device)).cpu() for b in pixels.split(256)])
