"""From tokens to pictures: partial-canvas frames, preview patches, side-by-side sheets, animations.

Nothing here knows about logits or the UI: frames are built from a StepEvent's canvas (tokens
by raster position, -1 where not generated yet) and decoded pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .vqgan import VQGAN

HIGHLIGHT = (255, 64, 160)  # the newest token's outline
DISPLAY_SIZE = 256  # sheets and animations of small models are upscaled (nearest) to this


def display_scale(resolution: int) -> int:
    """The whole-pixel upscaling that brings a `resolution` image to about DISPLAY_SIZE."""
    return max(1, DISPLAY_SIZE // resolution)


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.inference_mode()
def code_patches(tokenizer: VQGAN) -> Tensor:
    """(V, 3, ph, pw): what each code looks like on its own, for cheap preview frames.

    Decodes a few images that each hold many different codes (every code once), rather than
    one image per code, so building the table costs ceil(V / N) decodes.
    """
    V, (h, w) = tokenizer.config.codebook_size, tokenizer.grid
    N = h * w
    device = tokenizer.quantize.embedding.weight.device
    codes = torch.arange(-(-V // N) * N, device=device) % V
    pixels = torch.cat([tokenizer.decode(c[None]) for c in codes.view(-1, N)])  # (n, 3, H, W)
    ph, pw = pixels.shape[-2] // h, pixels.shape[-1] // w
    patches = pixels.view(-1, 3, h, ph, w, pw).permute(0, 2, 4, 1, 3, 5)  # (n, h, w, 3, ph, pw)
    return patches.reshape(-1, 3, ph, pw)[:V].float().cpu()


def preview(canvas: Tensor, patches: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, L) tokens -> (B, 3, H, W) by pasting each code's patch: no decoder run."""
    h, w = grid
    B = canvas.shape[0]
    tiles = patches[canvas.clamp_min(0)]  # (B, L, 3, ph, pw)
    ph, pw = tiles.shape[-2:]
    return tiles.view(B, h, w, 3, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, h * ph, w * pw)


@functools.cache
def _hatching(H: int, W: int, ph: int) -> Tensor:
    """(H, W) diagonal grey stripes, three quarters of a pending cell's look."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    hatch = ((ys + xs) // max(2, ph // 2)) % 2 == 0
    return 0.75 * torch.where(hatch, 0.80, 0.88)


def mark_progress(
    images: Tensor, canvas: Tensor, newest: Tensor | None, grid: tuple[int, int]
) -> np.ndarray:
    """Dims and hatches cells not generated yet and outlines the newest cell.

    images (B, 3, H, W) in [0, 1]; canvas (B, L); newest (B,) raster positions (-1: none)
    or None.
    Returns (B, H, W, 3) uint8.
    """
    B, _, H, W = images.shape
    h, w = grid
    ph, pw = H // h, W // w
    pending = (canvas < 0).view(B, h, w)
    pending = pending.repeat_interleave(ph, 1).repeat_interleave(pw, 2)  # (B, H, W)
    out = torch.where(pending[:, None], 0.25 * images + _hatching(H, W, ph), images)
    frames = to_uint8(out)
    return frames if newest is None else outline(frames, newest, grid)


def outline(frames: np.ndarray, newest: Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Outlines each panel's newest cell, in place: frames (B, H, W, 3) uint8, newest (B,)
    raster positions (-1: none). Returns frames."""
    _, H, W, _ = frames.shape
    h, w = grid
    ph, pw = H // h, W // w
    for b, pos in enumerate(newest.tolist()):
        if pos < 0:  # a finished panel beside unfinished ones
            continue
        r, c = divmod(pos, w)
        y0, x0, y1, x1 = r * ph, c * pw, (r + 1) * ph - 1, (c + 1) * pw - 1
        frames[b, y0 : y1 + 1, [x0, x1]] = HIGHLIGHT
        frames[b, [y0, y1], x0 : x1 + 1] = HIGHLIGHT
    return frames


class LiveFrames:
    """Frames of a canvas that fills cell by cell, as mark_progress draws them, kept as uint8:
    each newly filled cell is pasted from its code's preview patch, so a frame costs what its
    new cells cost rather than a pass over every pixel. Cells only fill (never empty again)."""

    def __init__(
        self, pixels: Tensor, canvas: Tensor, patches: Tensor, grid: tuple[int, int]
    ) -> None:
        """pixels (B, 3, H, W) decoded or previewed from canvas (B, L); patches (V, 3, ph, pw)
        as code_patches gives them."""
        self.frames = mark_progress(pixels, canvas, None, grid)  # (B, H, W, 3)
        self.canvas = canvas.clone()
        self.patches = to_uint8(patches)  # (V, ph, pw, 3)
        self.grid = grid

    def __call__(self, canvas: Tensor, newest: Tensor | None) -> np.ndarray:
        """(B, L) canvas, (B,) newest positions -> (B, H, W, 3) uint8 frames."""
        w = self.grid[1]
        ph, pw = self.patches.shape[1:3]
        cells = (canvas != self.canvas).nonzero()  # (n, 2): panel, raster position
        tokens = canvas[cells[:, 0], cells[:, 1]].tolist()
        for (b, pos), token in zip(cells.tolist(), tokens, strict=True):
            r, c = divmod(pos, w)
            self.frames[b, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = self.patches[token]
        self.canvas = canvas.clone()
        frames = self.frames.copy()
        return frames if newest is None else outline(frames, newest, self.grid)


@functools.cache  # read from disk once per size: sheets and heatmaps draw text every run
def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default()


def sheet(
    panels: Sequence[np.ndarray], captions: Sequence[str], scale: int = 1, footer: str | None = None
) -> Image.Image:
    """Panels side by side, each with a caption above; an optional footer line below."""
    tiles = [
        Image.fromarray(p).resize((p.shape[1] * scale, p.shape[0] * scale), Image.NEAREST)
        for p in panels
    ]
    tw, th = tiles[0].size
    pad, cap = 8, 22
    out = Image.new(
        "RGB", (len(tiles) * (tw + pad) + pad, th + cap + pad + (cap if footer else 0)), "white"
    )
    draw = ImageDraw.Draw(out)
    text_font = font(14)
    for i, (tile, text) in enumerate(zip(tiles, captions, strict=True)):
        x = pad + i * (tw + pad)
        out.paste(tile, (x, cap))
        draw.text((x, 3), text, fill="black", font=text_font)
    if footer:
        draw.text((pad, cap + th + 4), footer, fill="black", font=text_font)
    return out


def stack(images: Sequence[Image.Image]) -> Image.Image:
    """Images one above the other, left-aligned."""
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height
    return out


def save_animation(
    frames: Sequence[Image.Image], path: Path | str, fps: float = 25.0, hold_last_s: float = 1.5
) -> Path:
    """Writes a looping GIF or WebP (by suffix); the last frame is held for a moment."""
    path = Path(path)
    ms = max(20, round(1000 / fps))
    durations = [ms] * (len(frames) - 1) + [max(ms, round(hold_last_s * 1000))]
    kwargs = {"lossless": True} if path.suffix.lower() == ".webp" else {"optimize": False}
    frames[0].save(
        path, save_all=True, append_images=list(frames[1:]), duration=durations, loop=0, **kwargs
    )
    return path
