"""Pipeline: classes by name or id, one panel per order in one batch, decoding, edits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_RAR, TINY_VQGAN, randomized, tiny_spec

from rar_demo.config import SamplingConfig
from rar_demo.masks import preset_mask
from rar_demo.model import RAR
from rar_demo.orders import make_order
from rar_demo.pipeline import Pipeline
from rar_demo.registry import imagenet_classes
from rar_demo.vqgan import VQGAN

RAR_CONFIG = replace(TINY_RAR, condition_num_classes=10)  # one per entry of CLASSES


@pytest.fixture(scope="module")
def generator() -> RAR:
    return randomized(RAR(RAR_CONFIG))


@pytest.fixture(scope="module")
def tokenizer() -> VQGAN:
    return randomized(VQGAN(TINY_VQGAN), seed=1)


# --- Pipeline.class_id ----------------------------------------------------------------------

CLASSES = (
    "tench, Tinca tinca",
    "goldfish, Carassius auratus",
    "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
    "tiger shark, Galeocerdo cuvieri",
    "golden retriever",
    "Labrador retriever",
    "tiger cat",
    "tiger, Panthera tigris",
    "crane",
    "crane",
)


def _pipeline(generator, tokenizer, classes=CLASSES) -> Pipeline:
    return Pipeline(tiny_spec(RAR_CONFIG), generator, tokenizer, tuple(classes))


@pytest.fixture(scope="module")
def pipe(generator, tokenizer) -> Pipeline:
    return _pipeline(generator, tokenizer)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (0, 0),
        (9, 9),
        ("4", 4),
        (" 7 ", 7),
        ("007", 7),
        ("golden retriever", 4),  # exact
        ("Golden Retriever  ", 4),  # case and whitespace
        ("tench, Tinca tinca", 0),  # exact, the full ImageNet name
        ("tench", 0),  # a comma-separated synonym
        ("Tinca tinca", 0),
        ("goldfish", 1),
        ("white shark", 2),
        ("tiger", 7),  # a synonym wins over substring hits in tiger shark and tiger cat
        ("tiger cat", 6),  # exact wins over the substring hit in nothing else
        ("labrador", 5),  # unique substring
        ("carassius", 1),  # unique substring of a synonym
        ("man-eat", 2),
    ],
)
def test_class_id_resolves(pipe, query, expected) -> None:
    assert pipe.class_id(query) == expected


@pytest.mark.parametrize("query", ["retriever", "shark", "crane", "gold", "tige"])
def test_class_id_ambiguous(pipe, query) -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        pipe.class_id(query)


def test_ambiguous_message_lists_the_candidates(pipe) -> None:
    with pytest.raises(ValueError) as info:
        pipe.class_id("retriever")
    assert "golden retriever" in str(info.value) and "Labrador retriever" in str(info.value)


@pytest.mark.parametrize("query", [10, 1000, -1, "10", "99"])
def test_class_id_out_of_range(pipe, query) -> None:
    with pytest.raises(ValueError, match=r"out of range|unknown class"):
        pipe.class_id(query)


@pytest.mark.parametrize("query", ["", "   ", "zebra", "-1", "tench, goldfish"])
def test_class_id_unknown(pipe, query) -> None:
    with pytest.raises(ValueError):
        pipe.class_id(query)


def test_class_id_with_the_real_imagenet_names(generator, tokenizer) -> None:
    names = imagenet_classes()
    assert len(names) == 1000
    real = _pipeline(generator, tokenizer, names)
    assert real.class_id("golden retriever") == 207
    assert real.class_id("tench") == 0
    assert real.class_id("Tinca tinca") == 0
    assert real.class_id("tiger") == 292
    assert real.class_id("999") == 999
    with pytest.raises(ValueError, match="ambiguous"):
        real.class_id("crane")  # 134 the bird and 517 the machine
    with pytest.raises(ValueError, match="out of range"):
        real.class_id(1000)


EMOJI = ("fox", "dog face", "red heart", "blue heart", "flag: France")
GLYPHS = ("🦊", "🐶", "❤️", "💙", "🇫🇷")
GROUPS = ("Animals & Nature", "Animals & Nature", "Smileys & Emotion", "Smileys & Emotion", "Flags")


@pytest.fixture(scope="module")
def emoji_pipe(generator, tokenizer) -> Pipeline:
    return replace(_pipeline(generator, tokenizer, EMOJI), class_glyphs=GLYPHS, class_groups=GROUPS)


def test_emoji_classes_are_shown_with_their_glyph_and_found_by_it(emoji_pipe, pipe) -> None:
    assert emoji_pipe.class_label(0) == "🦊 fox"
    assert emoji_pipe.class_choices()[4] == ("🇫🇷 flag: France", "flag: France")
    assert pipe.class_choices()[4] == ("golden retriever", "golden retriever")  # no glyphs
    for query, expected in [("fox", 0), ("🦊", 0), ("🦊 fox", 0), ("🐶 Dog Face", 1), ("💙", 3)]:
        assert emoji_pipe.class_id(query) == expected
    with pytest.raises(ValueError, match="ambiguous: ❤️ red heart; 💙 blue heart"):
        emoji_pipe.class_id("heart")


def test_a_group_name_is_not_a_class_even_where_it_is_part_of_a_name(emoji_pipe) -> None:
    groups = (*GROUPS[:4], "Flag")  # "flag" is also a substring of "flag: France"
    pipe = replace(emoji_pipe, class_groups=groups)
    with pytest.raises(ValueError, match="'Flag' is a group of 1 emoji, not one class"):
        pipe.class_id("flag")


def test_a_group_name_is_not_a_class_and_says_which_are(emoji_pipe) -> None:
    with pytest.raises(ValueError) as info:
        emoji_pipe.class_id("animals & nature")
    assert str(info.value) == (
        "'Animals & Nature' is a group of 2 emoji, not one class: pick one of them, "
        "e.g. 'fox', 'dog face'"
    )


def test_an_unknown_name_suggests_the_closest(emoji_pipe, pipe) -> None:
    with pytest.raises(ValueError, match=r"unknown class 'foxx' .*did you mean 'fox'\?"):
        emoji_pipe.class_id("foxx")
    with pytest.raises(ValueError, match=r"unknown class 'zebra' .*python -m rar_demo classes"):
        pipe.class_id("zebra")


# --- Pipeline streaming and decoding --------------------------------------------------------


def test_pipeline_streams_one_panel_per_order_and_decodes(pipe) -> None:
    names = ["raster", "spiral", "random"]
    orders = pipe.orders(names, seed=3)
    events = list(
        pipe.stream(pipe.class_id("tiger"), orders, seed=3, sampling=SamplingConfig(greedy=True))
    )
    assert len(events) == 16
    assert torch.equal(orders, torch.stack([make_order(n, 4, 4, seed=3) for n in names]))
    assert all(torch.equal(e.positions, orders[:, e.step]) for e in events)
    # Greedy, same class: a panel depends on its order only, and orders change the picture.
    assert not torch.equal(events[-1].canvas[0], events[-1].canvas[1])
    images = pipe.decode(events[3].canvas)  # a partial canvas (-1 cells) decodes too
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="at least one"):
        pipe.orders([], seed=0)


# --- Pipeline edits -------------------------------------------------------------------------


def _picture(pipe: Pipeline) -> np.ndarray:
    side = pipe.tokenizer.config.resolution
    return np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)


def test_an_edit_keeps_the_pictures_tokens_outside_the_mask(pipe) -> None:
    pixels = _picture(pipe)
    regenerate = preset_mask("center", *pipe.grid)
    orders, prompt = pipe.edit_inputs(pixels, regenerate, ["raster", "random"], seed=1)
    tokens = pipe.encode(pixels)
    keep = ~regenerate.flatten()
    assert torch.equal(prompt[:, keep], tokens[keep].expand(2, -1))
    assert (prompt[:, ~keep] == -1).all()
    events = list(pipe.stream(4, orders, 1, prompt=prompt))
    assert len(events) == int(regenerate.sum())
    final = events[-1].canvas
    assert torch.equal(final[:, keep], tokens[keep].expand(2, -1)) and (final >= 0).all()


@pytest.mark.parametrize(
    ("regenerate", "message"),
    [
        (torch.zeros(4, 4, dtype=torch.bool), "the mask is empty"),
        (torch.ones(4, 4, dtype=torch.bool), "covers the whole picture"),
        (torch.ones(2, 8, dtype=torch.bool), "must cover the 4x4 token grid"),
    ],
    ids=["empty", "full", "shape"],
)
def test_bad_edit_masks_are_refused(pipe, regenerate, message) -> None:
    with pytest.raises(ValueError, match=message):
        pipe.edit_inputs(_picture(pipe), regenerate, ["raster"], seed=0)


def test_only_pictures_at_the_models_resolution_are_encoded(pipe) -> None:
    side = pipe.tokenizer.config.resolution
    with pytest.raises(ValueError, match=f"expected a {side}x{side} RGB picture"):
        pipe.encode(np.zeros((side * 2, side * 2, 3), dtype=np.uint8))
