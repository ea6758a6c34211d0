import numpy as np
import pytest

from rar_demo.data import (
    EMOJI_CLASSES,
    EMOJI_TEST_PATH,
    FONT_PATH,
    EmojiDataset,
    build_dataset,
    is_heldout,
    load_font,
    parse_emoji_test,
    render_emoji,
)

needs_font = pytest.mark.skipif(
    not FONT_PATH.is_file(), reason="apt-get install fonts-noto-color-emoji"
)
needs_data = pytest.mark.skipif(
    not (FONT_PATH.is_file() and EMOJI_TEST_PATH.is_file()),
    reason="apt-get install fonts-noto-color-emoji unicode-data",
)

EMOJI_TEST = """\
# emoji-test.txt (synthetic)
# group: Smileys & Emotion

# subgroup: face-smiling
1F600                                      ; fully-qualified     # 😀 E1.0 grinning face
263A FE0F                                  ; fully-qualified     # ☺️ E0.6 smiling face
263A                                       ; unqualified         # ☺ E0.6 smiling face

# group: Component
1F3FB                                      ; component           # 🏻 E1.0 light skin tone
1F9B0                                      ; fully-qualified     # 🦰 pretend component

# group: Flags
1F1EB 1F1F7                                ; fully-qualified     # 🇫🇷 E2.0 flag: France
1F3F3                                      ; minimally-qualified # 🏳 E0.7 white flag

# Status Counts
# fully-qualified : 4
"""


def test_parse_emoji_test(tmp_path):
    path = tmp_path / "emoji-test.txt"
    path.write_text(EMOJI_TEST, encoding="utf-8")
    assert parse_emoji_test(path) == [
        ("😀", "Smileys & Emotion"),
        ("\u263a\ufe0f", "Smileys & Emotion"),
        ("🇫🇷", "Flags"),
    ]


@needs_font
@pytest.mark.parametrize("emoji", ["😀", "🐶", "🍕", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷"])
def test_render_emoji(emoji):
    image = render_emoji(load_font(), emoji)
    assert image is not None
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image < 200).any()  # something coloured was drawn
    for corner in (image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]):
        assert (corner == 255).all()


@needs_font
@pytest.mark.parametrize("text", ["\ue000", "🐶\u200d🍕"])  # no glyph; no ligature
def test_render_skips_what_the_font_lacks(text):
    assert render_emoji(load_font(), text) is None


def test_heldout_rule_is_stable():
    # Pinned: a changed rule would silently move emoji between train and held-out.
    sample = [chr(0x1F600 + i) for i in range(40)]
    assert [e for e in sample if is_heldout(e)] == ["😂", "😞"]
    assert not is_heldout("🇫🇷")


@needs_data
def test_build_is_deterministic():
    a = build_dataset(limit_per_class=2)
    b = build_dataset(limit_per_class=2)
    assert a.images.shape == (2 * len(EMOJI_CLASSES), 64, 64, 3)
    assert a.images.dtype == np.uint8 and a.labels.dtype == np.int64
    assert a.images.tobytes() == b.images.tobytes()
    assert a.emoji == b.emoji
    assert np.array_equal(a.labels, b.labels)
    assert a.labels.min() >= 0 and a.labels.max() < len(EMOJI_CLASSES)
    assert a.heldout.tolist() == [is_heldout(e) for e in a.emoji]


def test_missing_files_name_the_package(tmp_path):
    emoji_test = tmp_path / "emoji-test.txt"
    emoji_test.write_text(EMOJI_TEST, encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
        build_dataset(font_path=tmp_path / "missing.ttf", emoji_test_path=emoji_test)
    with pytest.raises(FileNotFoundError, match="unicode-data"):
        build_dataset(emoji_test_path=tmp_path / "missing.txt")


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    dataset = EmojiDataset(
        images=rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8),
        labels=np.array([0, 8, 3, 3], dtype=np.int64),
        emoji=["😀", "🇫🇷", "🍕", "👨\u200d👩\u200d👧"],
        heldout=np.array([False, True, False, True]),
        skipped=["\ue000"],
    )
    path = tmp_path / "sub" / "emoji.npz"
    dataset.save(path)
    loaded = EmojiDataset.load(path)
    assert np.array_equal(loaded.images, dataset.images)
    assert np.array_equal(loaded.labels, dataset.labels) and loaded.labels.dtype == np.int64
    assert np.array_equal(loaded.heldout, dataset.heldout)
    assert loaded.emoji == dataset.emoji
    assert loaded.class_names == EMOJI_CLASSES
    assert loaded.skipped == dataset.skipped
    assert loaded.train().emoji == ["😀", "🍕"]
    assert loaded.heldout_split().emoji == ["🇫🇷", "👨\u200d👩\u200d👧"]
