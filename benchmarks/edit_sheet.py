"""Edits on the bundled model, raster vs random order: assets/bundled/edits.png.

python benchmarks/edit_sheet.py

Each row starts from a picture the model drew itself (raster, seed 0): the centre inpainted
as the same class, the picture shrunk into the centre and the border outpainted, and the
centre re-drawn as another class; each in raster and in random order, seed 1.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from rar_demo.masks import edit_source
from rar_demo.pipeline import load_pipeline
from rar_demo.render import mark_progress, sheet, stack, to_uint8
from rar_demo.sampler import generate
from rar_demo.vqgan import to_tensor

torch.set_num_threads(1)
pipe = load_pipeline("bundled")
ORDERS = ["raster", "random"]
ROWS = [  # (picture's class, re-class target)
    ("Smileys & Emotion", "Animals & Nature"),
    ("Flags", "Food & Drink"),
    ("Food & Drink", "Smileys & Emotion"),
]
side = pipe.tokenizer.config.resolution


def edited(pixels, mask: str, class_id: int) -> list:
    """The masked source, then the edit in each of ORDERS."""
    pixels, regenerate = edit_source(pixels, mask, side, pipe.grid, seed=1)
    orders, prompt = pipe.edit_inputs(pixels, regenerate, ORDERS, seed=1)
    labels = torch.full((len(ORDERS),), class_id)
    canvas = generate(pipe.executor, labels, orders, pipe.sampling, 1, prompt)
    source = mark_progress(to_tensor(pixels[None]), prompt[:1], None, pipe.grid)[0]
    return [source, *to_uint8(pipe.decode(canvas))]


rows = []
for name, other in ROWS:
    c, o = pipe.class_id(name), pipe.class_id(other)
    canvas = generate(pipe.executor, torch.tensor([c]), pipe.orders(["raster"], 0), pipe.sampling)
    picture = to_uint8(pipe.decode(canvas))[0]
    panels = [picture, *edited(picture, "center", c), *edited(picture, "outpaint", c)]
    panels += edited(picture, "center", o)[1:]
    captions = ["picture", "centre", "inpaint ras", "inpaint rnd", "shrunk", "outpaint ras"]
    captions += ["outpaint rnd", "re-class ras", "re-class rnd"]
    rows.append(sheet(panels, captions, scale=2, footer=f"{name}; re-class: {other}"))
stack(rows).save(Path(__file__).resolve().parents[1] / "assets/bundled/edits.png")
