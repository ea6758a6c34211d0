"""The bundled model at 256, 64 and 32 sampler steps, raster vs random: assets/bundled/parallel.png.

python benchmarks/parallel_sheet.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from rar_demo.pipeline import load_pipeline
from rar_demo.render import sheet, stack, to_uint8
from rar_demo.sampler import generate

torch.set_num_threads(1)
pipe = load_pipeline("bundled")
cols = [
    ("raster", 256),
    ("random", 256),
    ("random", 64),
    ("raster", 64),
    ("random", 32),
    ("raster", 32),
]
rows = []
for name in ["Smileys & Emotion", "Flags", "Food & Drink", "Animals & Nature"]:
    c = pipe.class_id(name)
    panels = []
    for order, steps in cols:
        s = pipe.sampling.with_(steps=None if steps == 256 else steps, schedule="cosine")
        canvas = generate(pipe.executor, torch.tensor([c]), pipe.orders([order], 0), s, 0)
        panels.append(to_uint8(pipe.decode(canvas))[0])
    rows.append(sheet(panels, [f"{o} {n}" for o, n in cols], scale=2, footer=name))
stack(rows).save(Path(__file__).resolve().parents[1] / "assets/bundled/parallel.png")
