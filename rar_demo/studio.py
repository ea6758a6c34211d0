"""The studio's engine, free of UI code: models, request checking, paced frames, results.

app.py maps these onto Gradio components; everything here runs, and is tested, without a
browser or a server. A run is one batched `Pipeline.stream` in a thread of its own, paced to
the requested speed and never waiting for a frame; the caller pulls frames of the newest
canvas as fast as it can show them, at most MAX_FPS a second, each frame costing at most a
bounded share of the wall clock in decoding.
"""

from __future__ import annotations

import math
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from . import masks, plots
from .config import SamplingConfig
from .orders import check_order_name
from .pipeline import Pipeline, load_pipeline
from .registry import MODEL_NAMES, RUNTIMES, spec
from .render import (
    code_patches,
    display_scale,
    mark_progress,
    patch_in,
    save_animation,
    sheet,
    to_uint8,
)
from .sampler import StepEvent, generate, step_sizes
from .vqgan import to_tensor

T = TypeVar("T")
MAX_ORDERS = 4
MAX_FPS = 25.0
# Full decodes may take at most this share of a run's wall clock: they run beside the sampler
# on the same cores, and the preview patches between them are close to a decode anyway.
DECODE_SHARE = 0.05
ANIMATION_FRAMES = 64  # recorded frames per run, spread evenly over the steps
ANIMATION_DIR = Path(tempfile.gettempdir()) / "rar-studio"
ANIMATION_TTL_S = 3600.0

# Input ranges, shared by the UI's controls and the checks below.
SEED_RANGE = (0, 2**32 - 1)
CFG_RANGE = (0.0, 20.0)
CFG_POWER_RANGE = (0.0, 5.0)
TEMPERATURE_RANGE = (0.05, 3.0)
TOP_K_RANGE = (0, 1024)  # 0 = no top-k filtering
SPEED_RANGE = (4, 512)  # steps per second; the top is faster than any model runs here
DEFAULT_SPEED = 64
STEP_CHOICES = (256, 128, 64, 32, 16)  # sampler steps a run may take (tokens: 256)
DEFAULT_SCHEDULE = "cosine"  # with fewer steps than tokens: few tokens first, more later


def default_model(env: Mapping[str, str]) -> str:
    """RAR_DEMO_MODEL if set; RAR-B on Hugging Face Spaces; else the offline bundled model."""
    name = env.get("RAR_DEMO_MODEL") or ("rar_b" if env.get("SPACE_ID") else "bundled")
    if name not in MODEL_NAMES:
        raise ValueError(f"RAR_DEMO_MODEL={name!r} is not one of {', '.join(MODEL_NAMES)}")
    return name


def runtimes(env: Mapping[str, str]) -> list[str]:
    """The runtimes (keys of registry.RUNTIMES) to offer. On ZeroGPU (SPACES_ZERO_GPU) torch
    only: the GPU is attached inside each call, in a forked worker, which an ONNX Runtime
    session made beforehand cannot follow (its CUDA context, its thread pool)."""
    zero_gpu = env.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return ["torch"] if zero_gpu else list(RUNTIMES)


def examples(model: str) -> list[list]:
    """One-click presets [model, class, orders, seed] that the given model can run."""
    return [[model, e.class_name, list(e.orders), e.seed] for e in spec(model).examples]


class ModelCache:
    """Pipelines by model and runtime, loaded on first use and shared by all requests
    (thread-safe)."""

    def __init__(self, device: str | torch.device = "cpu", compile: bool = False) -> None:
        self.device = torch.device(device)
        self.compile = compile  # see pipeline.torch_executor
        self._pipelines: dict[tuple[str, str], Pipeline] = {}
        self._patches: dict[str, Tensor] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, *key: str) -> threading.Lock:
        # One lock per pipeline: a long download or export never blocks generating with another.
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def put(self, name: str, runtime: str, pipe: Pipeline) -> None:
        """Serves `pipe` as that model (benchmarks: random weights at a real size)."""
        self._pipelines[name, runtime] = pipe

    def has(self, name: str, runtime: str = "torch") -> bool:
        """Whether that pipeline is loaded already (get() returns at once)."""
        return (name, runtime) in self._pipelines

    def get(self, name: str, runtime: str = "torch") -> Pipeline:
        spec(name).check_runtime(runtime)
        key = name, runtime
        with self._lock(*key):
            if key not in self._pipelines:
                backend, int8 = RUNTIMES[runtime]
                self._pipelines[key] = load_pipeline(
                    name,
                    device=self.device,
                    backend=backend,
                    int8=int8,
                    compile=self.compile and backend == "torch",
                )
            return self._pipelines[key]

    def patches(self, pipe: Pipeline) -> Tensor:
        """The model's per-code preview patches, built on first use rather than at load time:
        only slow decoders need them, and on ZeroGPU the decoder runs only inside a GPU call.
        Every runtime of a model shares its tokenizer, hence its patches."""
        with self._lock("patches", pipe.name):
            if pipe.name not in self._patches:
                self._patches[pipe.name] = code_patches(pipe.tokenizer)
            return self._patches[pipe.name]


def sampler_values(sampling: SamplingConfig) -> tuple[float, float, float, int]:
    """(CFG scale, CFG power, temperature, top-k with 0 = off), as the controls show them."""
    s = sampling
    return s.guidance_scale, s.guidance_power, s.temperature, s.top_k or 0


def keep_class(pipe: Pipeline, class_name: str | int | None) -> str:
    """The class to select after switching to `pipe`: the current one if it has it."""
    try:
        return pipe.class_names[pipe.class_id(class_name)]
    except ValueError:
        return pipe.class_names[0]


@dataclass(frozen=True)
class Request:
    """A checked generation request; plain data, so it can cross to a GPU worker process."""

    model: str
    class_id: int
    class_name: str
    orders: tuple[str, ...]
    permutations: Tensor  # (B, L) the orders, built once (random ones drawn from the seed)
    seed: int
    sampling: SamplingConfig
    speed: float  # at most this many steps per second
    runtime: str = "torch"  # a key of RUNTIMES
    # An edit: the picture at the model's resolution, and the (h, w) cells to regenerate. Its
    # tokens are encoded when the run starts (on ZeroGPU, inside the GPU call).
    pixels: np.ndarray | None = None
    regenerate: Tensor | None = None

    @property
    def edited_cells(self) -> int:
        """How many cells an edit regenerates (0: not an edit)."""
        return 0 if self.regenerate is None else int(self.regenerate.sum())

    @property
    def kept_cells(self) -> int:
        """How many cells an edit keeps from its picture (0: not an edit)."""
        return 0 if self.regenerate is None else int((~self.regenerate).sum())

    def prompt(self, pipe: Pipeline, batch: int) -> Tensor | None:
        """An edit's (batch, L) kept tokens for the sampler, -1 where to generate; else None."""
        if self.pixels is None or self.regenerate is None:
            return None
        return pipe.edit_prompt(self.pixels, self.regenerate, batch)

    @property
    def short_name(self) -> str:
        return self.class_name.split(",")[0]  # ImageNet names list synonyms after a comma


class InputError(ValueError):
    """A bad request input: `field` names the input (an API parameter name) it is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _number(field: str, label: str, value: object, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InputError(field, f"{label} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(field, f"{label} must be between {lo} and {hi}, got {value}")
    return value


def _field(field: str, check: Callable[[], T]) -> T:
    try:
        return check()
    except InputError:
        raise
    except ValueError as err:
        raise InputError(field, str(err)) from None


def parse(
    cache: ModelCache,
    model: str,
    class_name: str | int | None,
    orders: list[str] | tuple[str, ...] | None,
    seed: object,
    cfg_scale: float | None = None,
    cfg_power: float | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    speed: float = DEFAULT_SPEED,
    runtime: str = "torch",
    steps: int | None = None,
    schedule: str = DEFAULT_SCHEDULE,
    image: object = None,
    mask: object = None,
    load: bool = True,
) -> Request | None:
    """Checks raw inputs into a Request, or raises InputError (naming the input) or
    hub.WeightsUnavailable with a message meant for the user. Sampler settings left as None
    take the model's own defaults; top_k 0 turns top-k filtering off. With load False, a model
    not loaded yet is not loaded: only what needs no model is checked, and None returned.

    An edit gives `image` (a picture: path, bytes, array or PIL image) and `mask` (a preset
    name of masks.MASK_PRESETS or a mask picture, see masks.edit_source)."""
    entry = _field("model", lambda: spec(model))
    _field("runtime", lambda: entry.check_runtime(runtime))
    orders = tuple(orders or ())
    if not orders:
        raise InputError("orders", "choose at least one generation order")
    if len(orders) > MAX_ORDERS:
        raise InputError("orders", f"choose at most {MAX_ORDERS} orders, got {len(orders)}")
    if len(set(orders)) < len(orders):
        raise InputError("orders", "each order can be chosen only once")
    for name in orders:
        _field("orders", lambda name=name: check_order_name(name))
    seed = _number("seed", "seed", seed, SEED_RANGE)
    if seed != int(seed):
        raise InputError("seed", f"seed must be a whole number, got {seed}")
    speed = _number("speed", "speed", speed, SPEED_RANGE)
    default = entry.sampling
    sampling = default.with_(
        guidance_scale=default.guidance_scale
        if cfg_scale is None
        else _number("cfg_scale", "CFG scale", cfg_scale, CFG_RANGE),
        guidance_power=default.guidance_power
        if cfg_power is None
        else _number("cfg_power", "CFG power", cfg_power, CFG_POWER_RANGE),
        temperature=default.temperature
        if temperature is None
        else _number("temperature", "temperature", temperature, TEMPERATURE_RANGE),
        top_k=default.top_k
        if top_k is None
        else int(_number("top_k", "top-k", top_k, TOP_K_RANGE)) or None,
    )
    L = entry.generator.image_seq_len
    if steps is not None:
        steps = _number("steps", "steps", steps, (1, L))
        if steps != int(steps):
            raise InputError("steps", f"steps must be a whole number, got {steps}")
    parallel = None if steps in (None, L) else int(steps)
    checked = _field("schedule", lambda: sampling.with_(steps=parallel, schedule=schedule))
    if parallel:  # one token per step has no schedule: the request keeps the model's defaults
        sampling = checked
    if not load and not cache.has(model, runtime):
        return None

    pipe = cache.get(model, runtime)
    class_id = _field("class_name", lambda: pipe.class_id("" if class_name is None else class_name))
    pixels = regenerate = None
    if image is None and mask is None:
        permutations = pipe.orders(orders, int(seed))
    else:
        pixels, regenerate = _edit_source(pipe, image, mask, int(seed))
        permutations = _field("mask", lambda: pipe.edit_orders(regenerate, orders, int(seed)))
    return Request(
        model,
        class_id,
        pipe.class_names[class_id],
        orders,
        permutations,
        int(seed),
        sampling,
        float(speed),
        runtime,
        pixels,
        regenerate,
    )


def _edit_source(
    pipe: Pipeline, image: object, mask: object, seed: int
) -> tuple[np.ndarray, Tensor]:
    """An edit's picture and cells (see masks.edit_source). A mask given as text must be a
    preset's name: requests never name files on the server."""
    if image is None:
        raise InputError("image", "choose a picture to edit")
    if isinstance(mask, str):
        mask = mask.strip() or None
    if mask is None:
        raise InputError("mask", "paint the cells to regenerate, or pick a mask preset")
    if isinstance(mask, str) and mask not in masks.MASK_PRESETS:
        presets = ", ".join(masks.MASK_PRESETS)
        raise InputError("mask", f"unknown mask {mask!r}; choose one of {presets}")
    resolution = pipe.tokenizer.config.resolution
    picture = _field("image", lambda: masks.open_image(image))
    return _field("mask", lambda: masks.edit_source(picture, mask, resolution, pipe.grid, seed))


class Keep(Enum):
    KEEP = "keep"


KEEP = Keep.KEEP  # an Update field left as it was


@dataclass(frozen=True)
class Update:
    """One state of the outputs: each field a new value, None to clear it, or KEEP."""

    status: str
    panels: dict[str, np.ndarray] | Keep = KEEP  # order name -> (H, W, 3) uint8, shown live
    finals: dict[str, np.ndarray] | Keep | None = KEEP  # the finished images, to keep
    animation: str | Keep | None = KEEP  # a file path
    order_plot: Figure | Keep | None = KEEP
    stats_plot: Figure | Keep | None = KEEP


class Pacer:
    """Holds steps back to `steps_per_s`."""

    def __init__(
        self,
        steps_per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.step_s = 1 / steps_per_s
        self.clock, self.sleep = clock, sleep
        self.start = clock()

    def wait(self, step: int) -> None:
        """Returns once step `step` (0-based) is due."""
        now = self.clock()
        # Time lost to a slow model is not made up for later by bursting through steps.
        self.start = max(self.start, now - (step + 1) * self.step_s)
        lead = self.start + (step + 1) * self.step_s - now
        if lead > 0:
            self.sleep(lead)


class Sampling(threading.Thread):
    """A run's sampler, paced, in a thread of its own: the newest event, every step's
    probability and entropy, and whether it has finished (or failed, or was stopped)."""

    def __init__(self, stream: Iterator[StepEvent], steps_per_s: float) -> None:
        super().__init__(daemon=True, name="rar-sampling")
        self.stream, self.pacer = stream, Pacer(steps_per_s)
        self.stop = threading.Event()
        self.latest: StepEvent | None = None
        self.probs: list[Tensor] = []
        self.entropy: list[Tensor] = []
        self.error: BaseException | None = None
        self.finished = False
        self._changed = threading.Condition()

    def run(self) -> None:
        try:
            for event in self.stream:
                self.probs.append(event.probs)
                self.entropy.append(event.entropy)
                self.pacer.wait(event.round)  # a step of the sampler may hold several tokens
                with self._changed:
                    self.latest = event
                    self._changed.notify_all()
                if self.stop.is_set():
                    break
        except BaseException as err:  # handed to the consumer, which raises it
            self.error = err
        finally:
            self.stream.close()  # the sampler's KV cache goes with it
            with self._changed:
                self.finished = True
                self._changed.notify_all()

    def newer_than(self, step: int, timeout: float | None = None) -> StepEvent | None:
        """Waits for an event past `step` (or the end); returns the newest, None if none."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.finished or (self.latest and self.latest.step > step), timeout
            )
            return self.latest

    def wait_finished(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.finished, max(0.0, timeout))


class Renderer:
    """Frames of a growing canvas at a bounded decoding cost.

    A full decode runs only once the time since the previous one reaches its cost divided by
    DECODE_SHARE, so however slow the decoder, it takes at most that share of the run; in
    between, cells filled since the last decode are pasted from per-code preview patches.
    """

    def __init__(
        self, cache: ModelCache, pipe: Pipeline, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cache, self.pipe, self.clock = cache, pipe, clock
        self.pixels: Tensor | None = None  # the last full decode ...
        self.decoded: Tensor | None = None  # ... of this canvas
        self.decoded_at, self.decode_cost = -math.inf, 0.0

    def __call__(self, canvas: Tensor, newest: Tensor | None) -> np.ndarray:
        """(B, L) canvas, (B,) newest positions -> (B, H, W, 3) uint8 marked frames."""
        now = self.clock()
        if self.pixels is None or now - self.decoded_at >= self.decode_cost / DECODE_SHARE:
            self.pixels, self.decoded = self.pipe.decode(canvas), canvas
            self.decoded_at = self.clock()
            self.decode_cost = self.decoded_at - now
            pixels = self.pixels
        else:
            patches = self.cache.patches(self.pipe)
            pixels = patch_in(self.pixels, self.decoded, canvas, patches, self.pipe.grid)
        return mark_progress(pixels, canvas, newest, self.pipe.grid)

    def blank(self, batch: int) -> np.ndarray:
        """The frame before the first step: every cell pending, no decoder run."""
        h, w = self.pipe.grid
        side = self.pipe.tokenizer.config.resolution
        canvas = torch.full((batch, h * w), -1, dtype=torch.long)
        return mark_progress(torch.zeros(batch, 3, side, side), canvas, None, self.pipe.grid)


def _describe(request: Request) -> str:
    s = request.sampling
    top_k = f" · top-k {s.top_k}" if s.top_k else ""
    steps = f" · {s.steps} steps ({s.schedule})" if s.steps else ""
    runtime = f" · {request.runtime}" if request.runtime != "torch" else ""
    edit = f"edit of {request.edited_cells} cells · " if request.edited_cells else ""
    return (
        f"{edit}{request.short_name} (class {request.class_id}) · seed {request.seed}"
        f" · CFG {s.guidance_scale:g} (power {s.guidance_power:g}) · T {s.temperature:g}{top_k}"
        f"{steps}{runtime}"
    )


def _animation_path(request: Request) -> Path:
    """A fresh file for a run's animation (short name, unique folder); old runs' files are
    swept away here."""
    cutoff = time.time() - ANIMATION_TTL_S
    for old in ANIMATION_DIR.glob("*/*.webp"):
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
            old.parent.rmdir()
    slug = re.sub(r"[^a-z0-9]+", "-", request.short_name.lower()).strip("-")[:24]
    folder = ANIMATION_DIR / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    return folder / f"{slug}-{request.seed}.webp"


def edit_preview(pipe: Pipeline, image: object, mask: object, seed: int = 0) -> np.ndarray:
    """The picture at the model's resolution, the cells an edit of it would regenerate
    hatched, upscaled to about 256 px: what Edit keeps, shown before it runs."""
    resolution = pipe.tokenizer.config.resolution
    pixels, regenerate = masks.edit_source(image, mask, resolution, pipe.grid, seed)
    canvas = torch.where(regenerate.flatten(), -1, 0)[None]  # -1: drawn as pending
    frame = mark_progress(to_tensor(pixels[None]), canvas, None, pipe.grid)[0]
    scale = display_scale(resolution)
    return frame.repeat(scale, axis=0).repeat(scale, axis=1)


def still(cache: ModelCache, request: Request) -> np.ndarray:
    """The request's first panel, finished, as one (H, W, 3) uint8 image upscaled to about
    256 px: no frames, no pacing (the sampler's non-streaming path)."""
    pipe = cache.get(request.model, request.runtime)
    orders = request.permutations[:1]
    labels = torch.full((1,), request.class_id, dtype=torch.long)
    prompt = request.prompt(pipe, 1)
    canvas = generate(pipe.executor, labels, orders, request.sampling, request.seed, prompt)
    image = to_uint8(pipe.decode(canvas))[0]
    scale = display_scale(image.shape[0])
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def run(
    cache: ModelCache,
    request: Request,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Update]:
    """Streams a request: a blank first update, frames of the newest canvas (at most MAX_FPS a
    second, however fast the sampler runs beside it), then one update with everything: final
    images, animation, plots. Setting `stop` ends the run with a "Stopped" update; closing the
    iterator stops the sampler at once."""
    pipe = cache.get(request.model, request.runtime)
    names = request.orders
    render = Renderer(cache, pipe)
    about = _describe(request)
    order_plot = plots.order_heatmaps(names, request.permutations, pipe.grid, request.kept_cells)
    # An edit shows the cells it keeps from the start.
    prompt = request.prompt(pipe, len(names))
    first = render.blank(len(names)) if prompt is None else render(prompt, None)
    yield Update(
        status=f"**Starting** · {about}",
        panels=dict(zip(names, first, strict=True)),
        finals=None,
        animation=None,
        order_plot=order_plot,
        stats_plot=None,
    )

    start = clock()
    sampling = Sampling(
        pipe.stream(
            request.class_id,
            request.permutations,
            request.seed,
            request.sampling,
            prompt,
        ),
        request.speed,
    )
    scale = display_scale(pipe.tokenizer.config.resolution)
    recorded: list[tuple[int, Image.Image]] = []  # (steps filled, sheet): the animation
    shown = -1
    sampling.start()
    try:
        while not sampling.finished and not (stop is not None and stop.is_set()):
            event = sampling.newer_than(shown, timeout=0.1)  # wakes to check `stop`
            if event is None or event.step <= shown or event.done:
                continue  # the last step shows as the final images
            frame_start = clock()
            frames = render(event.canvas, event.positions)
            shown = event.step
            filled = event.step + 1 - event.given  # tokens generated (an edit's kept cells aside)
            to_fill = event.num_steps - event.given
            if not recorded or filled - recorded[-1][0] >= to_fill / ANIMATION_FRAMES:
                footer = f"step {event.round + 1} / {event.num_rounds}"
                recorded.append((filled, sheet(frames, names, scale, footer)))
            yield Update(
                status=f"**Step {event.round + 1} / {event.num_rounds}** · {about}",
                panels=dict(zip(names, frames, strict=True)),
            )
            # At most MAX_FPS frames: what the browser could not show anyway.
            sampling.wait_finished(1 / MAX_FPS - (clock() - frame_start))
    finally:
        sampling.stop.set()
        sampling.join()
    if sampling.error is not None:
        raise sampling.error

    event, seconds = sampling.latest, clock() - start
    if event is None or not event.done:
        taken = 0 if event is None else event.round + 1
        rounds = len(step_sizes(request.sampling, pipe.num_steps, request.kept_cells))
        yield Update(status=f"**Stopped at step {taken} / {rounds}** · {about}")
        return
    stats = plots.step_curves(names, torch.stack(sampling.probs), torch.stack(sampling.entropy))
    finals = to_uint8(pipe.decode(event.canvas))
    final_panels = dict(zip(names, finals, strict=True))
    summary = f"**Done**: {event.num_rounds} steps in {seconds:.1f} s · {about}"
    yield Update(status=f"{summary} · preparing the animation…", panels=final_panels)

    sheets = [s for _, s in recorded]
    sheets.append(sheet(finals, names, scale, f"{request.short_name}, seed {request.seed}"))
    # Everything at once: an API client's result() is this last update.
    yield Update(
        status=summary,
        panels=final_panels,
        finals=final_panels,
        animation=str(save_animation(sheets, _animation_path(request))),
        order_plot=order_plot,
        stats_plot=stats,
    )
