"""Emoji dataset: every renderable Unicode emoji as a 64x64 RGB image, labelled by emoji group.

The images are rendered locally from Debian's Noto Color Emoji font, so nothing is downloaded
and the dataset is rebuilt byte-for-byte identically from the installed packages.

    python -m rar_demo.data --out .cache/emoji64.npz --preview preview.png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The Unicode emoji groups in emoji-test.txt order, minus "Component" (skin tones and hair
# styles on their own are not pictures worth generating).
EMOJI_CLASSES: tuple[str, ...] = (
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
)

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")  # fonts-noto-color-emoji
EMOJI_TEST_PATH = Path("/usr/share/unicode/emoji/emoji-test.txt")  # unicode-data
CACHE_PATH = Path(".cache/emoji64.npz")

FONT_PX = 109  # NotoColorEmoji is a bitmap (CBDT) font with a single 109 px strike
_NOTDEF = "\U0010fffd"  # private-use code point: never in the font, so it draws the .notdef glyph


def parse_emoji_test(path: Path | str) -> list[tuple[str, str]]:
    """(emoji, group) for every fully-qualified emoji in emoji-test.txt, in file order."""
    entries = []
    group = ""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.removeprefix("# group:").strip()
            continue
        data = line.split("#", 1)[0]
        if ";" not in data:
            continue
        codepoints, status = (part.strip() for part in data.split(";", 1))
        if status == "fully-qualified" and group != "Component":
            # Build the string from the code points, not the comment, which is informal.
            entries.append(("".join(chr(int(cp, 16)) for cp in codepoints.split()), group))
    return entries


def is_heldout(emoji: str) -> bool:
    """About 10% of emoji are held out, decided by the emoji alone.

    A content hash keeps the split fixed across runs, Python processes (unlike hash()) and
    font/Unicode versions that add or drop other emoji.
    """
    return int.from_bytes(hashlib.sha1(emoji.encode("utf-8")).digest(), "big") % 10 == 0


def load_font(path: Path | str = FONT_PATH) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_require(Path(path), "fonts-noto-color-emoji")), size=FONT_PX)


def _draw_rgba(font: ImageFont.FreeTypeFont, text: str) -> Image.Image:
    # A canvas twice the font size fits one glyph plus its overhang past the nominal bbox.
    canvas = Image.new("RGBA", (2 * FONT_PX, 2 * FONT_PX), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((FONT_PX // 2, FONT_PX // 2), text, font=font, embedded_color=True)
    return canvas


@cache
def _notdef(font: ImageFont.FreeTypeFont) -> tuple[float, bytes]:
    """Advance and pixels of the font's fallback glyph, to recognise emoji it lacks."""
    return font.getlength(_NOTDEF), _draw_rgba(font, _NOTDEF).tobytes()


def render_emoji(font: ImageFont.FreeTypeFont, emoji: str, size: int = 64) -> np.ndarray | None:
    """The emoji centred on a white square, as uint8 (size, size, 3); None if the font lacks it."""
    notdef_advance, notdef_pixels = _notdef(font)
    # A sequence the font has no ligature for falls apart into several glyphs side by side.
    if font.getlength(emoji) > 1.5 * notdef_advance:
        return None
    rgba = _draw_rgba(font, emoji)
    bbox = rgba.getbbox()  # of the alpha channel: None when nothing was drawn
    if bbox is None or rgba.tobytes() == notdef_pixels:
        return None
    glyph = rgba.crop(bbox)
    # A thin margin keeps every image's border white, even for emoji that are filled squares.
    side = max(glyph.size) * 17 // 16
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    # Composite before resizing so transparent pixels' colours cannot bleed into the edges.
    small = square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8)


@dataclass(eq=False)  # array fields: compare them with np.array_equal, not ==
class EmojiDataset:
    images: np.ndarray  # uint8 (N, size, size, 3)
    labels: np.ndarray  # int64 (N,), indices into class_names
    emoji: list[str]
    heldout: np.ndarray  # bool (N,)
    class_names: tuple[str, ...] = EMOJI_CLASSES
    skipped: list[str] = field(default_factory=list)  # emoji the font could not render

    def __len__(self) -> int:
        return len(self.labels)

    def _subset(self, mask: np.ndarray) -> EmojiDataset:
        return EmojiDataset(
            images=self.images[mask],
            labels=self.labels[mask],
            emoji=[e for e, keep in zip(self.emoji, mask, strict=True) if keep],
            heldout=self.heldout[mask],
            class_names=self.class_names,
        )

    def train(self) -> EmojiDataset:
        return self._subset(~self.heldout)

    def heldout_split(self) -> EmojiDataset:
        return self._subset(self.heldout)

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        # Written to a file object so numpy keeps the name, then renamed so an interrupted
        # build never leaves a truncated cache behind.
        with tmp.open("wb") as f:
            np.savez_compressed(
                f,
                images=self.images,
                labels=self.labels,
                emoji=np.array(self.emoji, dtype=str),
                heldout=self.heldout,
                class_names=np.array(self.class_names, dtype=str),
                skipped=np.array(self.skipped, dtype=str),
            )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | str) -> EmojiDataset:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                images=z["images"],
                labels=z["labels"],
                emoji=z["emoji"].tolist(),
                heldout=z["heldout"],
                class_names=tuple(z["class_names"].tolist()),
                skipped=z["skipped"].tolist(),
            )


def _require(path: Path, package: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; install the Debian package: sudo apt-get install -y {package}"
        )
    return path


def build_dataset(
    size: int = 64,
    limit_per_class: int | None = None,
    font_path: Path | str = FONT_PATH,
    emoji_test_path: Path | str = EMOJI_TEST_PATH,
) -> EmojiDataset:
    """Render every emoji in emoji-test.txt order (at most limit_per_class per class)."""
    entries = parse_emoji_test(_require(Path(emoji_test_path), "unicode-data"))
    font = load_font(font_path)
    label_of = {name: i for i, name in enumerate(EMOJI_CLASSES)}
    counts = [0] * len(EMOJI_CLASSES)
    images, labels, emoji, skipped = [], [], [], []
    for e, group in entries:
        label = label_of[group]
        if limit_per_class is not None and counts[label] >= limit_per_class:
            continue
        image = render_emoji(font, e, size)
        if image is None:
            skipped.append(e)
            continue
        counts[label] += 1
        images.append(image)
        labels.append(label)
        emoji.append(e)
    return EmojiDataset(
        images=np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        labels=np.array(labels, dtype=np.int64),
        emoji=emoji,
        heldout=np.array([is_heldout(e) for e in emoji], dtype=bool),
        skipped=skipped,
    )


def load_or_build(cache_path: Path | str = CACHE_PATH) -> EmojiDataset:
    """The cached dataset, building it on first use (.cache/ is git-ignored)."""
    cache_path = Path(cache_path)
    if cache_path.is_file():
        return EmojiDataset.load(cache_path)
    dataset = build_dataset()
    dataset.save(cache_path)
    return dataset


def class_counts(dataset: EmojiDataset) -> dict[str, dict[str, int]]:
    n = len(dataset.class_names)
    train = np.bincount(dataset.labels[~dataset.heldout], minlength=n)
    held = np.bincount(dataset.labels[dataset.heldout], minlength=n)
    return {
        name: {"train": int(t), "heldout": int(h)}
        for name, t, h in zip(dataset.class_names, train, held, strict=True)
    }


def preview_sheet(
    dataset: EmojiDataset, per_class: int = 12, label_width: int = 140
) -> Image.Image:
    """One row per class: its name, then per_class samples spread evenly over the class."""
    size = dataset.images.shape[1]
    sheet = Image.new(
        "RGB", (label_width + per_class * size, len(dataset.class_names) * size), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for row, name in enumerate(dataset.class_names):
        draw.text((4, row * size + size // 2), name, fill="black", anchor="lm")
        members = np.flatnonzero(dataset.labels == row)
        if len(members) == 0:
            continue
        picks = members[np.linspace(0, len(members) - 1, min(per_class, len(members))).astype(int)]
        for col, i in enumerate(picks):
            sheet.paste(Image.fromarray(dataset.images[i]), (label_width + col * size, row * size))
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render the emoji dataset to a .npz file.")
    parser.add_argument("--out", type=Path, default=CACHE_PATH)
    parser.add_argument("--limit-per-class", type=int, default=None)
    parser.add_argument("--preview", type=Path, default=None, help="write a sample sheet PNG")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    dataset = build_dataset(limit_per_class=args.limit_per_class)
    seconds = time.perf_counter() - start
    dataset.save(args.out)
    if args.preview is not None:
        preview_sheet(dataset).save(args.preview)
    summary = {
        "classes": class_counts(dataset),
        "total": {"train": int((~dataset.heldout).sum()), "heldout": int(dataset.heldout.sum())},
        "skipped": len(dataset.skipped),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    main()
