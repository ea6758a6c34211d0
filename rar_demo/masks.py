"""What an edit regenerates: a (h, w) bool grid over the token cells, True where the sampler
generates and False where the picture's own tokens are kept.

Masks come from presets, from brush strokes or mask images snapped to the cells, and source
pictures are brought to the model's resolution here (`prepare_image`, `shrink_to_center`).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

MASK_PRESETS: tuple[str, ...] = (
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "border",
    "outpaint",  # the border ring, after shrinking the picture into the centre
    "random",
)
SHRINK_PRESETS = frozenset({"outpaint"})  # presets that first shrink the picture (see below)
MAX_PIXELS = 40_000_000  # larger uploads are refused before decoding: a decompression bomb
SNAP_THRESHOLD = 0.25  # a cell is regenerated once a quarter of it is painted


def preset_mask(name: str, height: int, width: int, seed: int = 0) -> Tensor:
    """(height, width) bool: left/right/top/bottom half, the centre box (half the side), the
    border ring around it (also outpaint's), or a seeded random half of the cells."""
    rows = torch.arange(height)[:, None].expand(height, width)
    cols = torch.arange(width)[None].expand(height, width)
    center = (
        (rows >= height // 4)
        & (rows < height - height // 4)
        & (cols >= width // 4)
        & (cols < width - width // 4)
    )
    if name == "random":
        gen = torch.Generator().manual_seed(seed)
        cells = torch.randperm(height * width, generator=gen)[: height * width // 2]
        return (
            torch.zeros(height * width, dtype=torch.bool)
            .index_fill_(0, cells, True)
            .view(height, width)
        )
    masks = {
        "left": cols < width // 2,
        "right": cols >= width // 2,
        "top": rows < height // 2,
        "bottom": rows >= height // 2,
        "center": center,
        "border": ~center,
        "outpaint": ~center,
    }
    if name not in masks:
        raise ValueError(f"unknown mask {name!r}; choose one of {', '.join(MASK_PRESETS)}")
    return masks[name].clone()


def snap(
    painted: np.ndarray | Tensor, grid: tuple[int, int], threshold: float = SNAP_THRESHOLD
) -> Tensor:
    """(H, W) paint (bool, or 0-1 coverage) -> (h, w) bool: the cells at least `threshold`
    covered. H and W must be multiples of the grid."""
    paint = torch.as_tensor(np.asarray(painted, dtype=np.float32))
    h, w = grid
    H, W = paint.shape
    if H % h or W % w:
        raise ValueError(f"a {W}x{H} mask does not divide into the {w}x{h} token grid")
    cells = paint.view(h, H // h, w, W // w).mean(dim=(1, 3))  # (h, w) coverage
    return cells >= threshold


def paint_of(mask: Image.Image) -> Image.Image:
    """A mask picture's paint as greys: its transparency where it has any (a brush layer),
    else its grey levels (white = paint)."""
    if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
        alpha = mask.convert("RGBA").getchannel("A")
        low, high = alpha.getextrema()
        if low != high:
            return alpha
    return mask.convert("L")


def mask_from_image(mask: Image.Image, grid: tuple[int, int], resolution: int) -> Tensor:
    """A square mask picture at the model's resolution or the grid's -> (h, w) bool: the
    cells it paints (see `paint_of`, `snap`)."""
    sides = (resolution, grid[0])
    if mask.size not in ((s, s) for s in sides):
        raise ValueError(
            f"the mask is {mask.width}x{mask.height}; draw it at the picture's size, at "
            f"{resolution}x{resolution} or at the {grid[1]}x{grid[0]} grid"
        )
    return snap(np.asarray(paint_of(mask)) >= 128, grid)


def edit_source(
    image: Image.Image | str | bytes | np.ndarray,
    mask: str | Image.Image | np.ndarray,
    resolution: int,
    grid: tuple[int, int],
    seed: int = 0,
) -> tuple[np.ndarray, Tensor]:
    """(pixels (S, S, 3) uint8, regenerate (h, w) bool) for an edit: any picture, and a mask
    that is a preset name (outpaint also shrinks the picture) or a mask picture (a path or
    an image) at the picture's size (cropped as the picture is), the model's or the grid's."""
    picture = open_image(image)
    pixels = prepare_image(picture, resolution)
    if isinstance(mask, str) and not any(c in mask for c in "./\\"):
        regenerate = preset_mask(mask, *grid, seed)
        return (shrink_to_center(pixels) if mask in SHRINK_PRESETS else pixels), regenerate
    drawn = paint_of(open_image(mask))
    if drawn.size == picture.size and drawn.size != (resolution, resolution):
        drawn = Image.fromarray(prepare_image(drawn, resolution)[..., 0])  # cropped alike
    return pixels, mask_from_image(drawn, grid, resolution)


def open_image(data: Image.Image | str | bytes | np.ndarray) -> Image.Image:
    """A picture from a PIL image, an array or a file path; ValueError for anything that is
    not a readable image, or one too large to decode safely."""
    if isinstance(data, Image.Image):
        return data
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    if isinstance(data, bytes):
        data = io.BytesIO(data)
    try:
        image = Image.open(data)
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(
                f"the image is {image.width}x{image.height}: larger than {MAX_PIXELS:,} pixels"
            )
        image.load()
    except (OSError, Image.DecompressionBombError, SyntaxError) as err:
        raise ValueError(f"not a readable image: {err}") from None
    return image


def prepare_image(image: Image.Image, resolution: int) -> np.ndarray:
    """Any picture -> (resolution, resolution, 3) uint8: upright, transparency onto white,
    centre-cropped to a square and resized."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, "white")
        image = Image.alpha_composite(white, rgba)
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return np.array(image.resize((resolution, resolution), Image.LANCZOS))


def shrink_to_center(pixels: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 -> the picture at half size in the centre of a white canvas: what
    outpainting keeps, with the border ring left to generate."""
    S = pixels.shape[0]
    small = np.asarray(Image.fromarray(pixels).resize((S // 2, S // 2), Image.LANCZOS))
    out = np.full_like(pixels, 255)
    out[S // 4 : S // 4 + S // 2, S // 4 : S // 4 + S // 2] = small
    return out
