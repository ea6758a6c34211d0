"""The studio's engine, free of UI code: models, request checking, paced frames, results.

app.py maps these onto Gradio components; everything here runs, and is tested, without a
browser or a server. A run's panels are sampled in one batch, in a thread of its own, paced to
the requested speed and never waiting for a frame; the caller pulls frames of the newest
canvas as fast as it can show them, at most MAX_FPS a second, each frame costing at most a
bounded share of the wall clock in decoding. A `Batcher` lets runs of the same kind that wait
for a free slot share one batch: each still gets its panels as it would alone.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import masks, plots
from .config import SamplingConfig
from .orders import check_order_name
from .pipeline import Pipeline, load_pipeline
from .registry import MODEL_NAMES, RUNTIMES, spec
from .render import (
    LiveFrames,
    code_patches,
    display_scale,
    mark_progress,
    preview,
    save_animation,
    sheet,
    to_uint8,
)
from .sampler import StepEvent, generate, step_sizes
from .vqgan import to_tensor

T = TypeVar("T")
MAX_PANELS = 4  # orders x step counts
MAX_FPS = 25.0
# Frames of all runs together may take at most this share of a core: with many runs at once,
# each shows fewer frames rather than slowing the samplers.
FRAME_SHARE = 0.5
BATCH_SLOTS = 2  # batches sampling at once; more would only share the same cores
MAX_BATCH_PANELS = 32  # panels (of all its runs) in one batch
# Full decodes may take at most this share of a run's wall clock: they run beside the sampler
# on the same cores, and the preview patches between them are close to a decode anyway.
DECODE_SHARE = 0.02
FIRST_DECODE_S = 1.0
ANIMATION_FRAMES = 64  # recorded frames per run, spread evenly over the steps
ANIMATION_DIR = Path(tempfile.gettempdir()) / "rar-studio"
ANIMATION_TTL_S = 3600.0
_SWEEPING = threading.Lock()  # old animations are swept by one run at a time

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


def leave_a_core() -> int:
    """On a CPU, samples with one intra-op thread fewer than there are cores, so that the
    server and the frames have a core of their own; returns the thread count. Measured on
    2 cores: one thread samples as fast as two at the app's batch sizes (RAR-B's steps are
    bound by memory bandwidth, the bundled model's by Python), while two made the frames and
    the sampler wait for each other (1.6x the engine's time through the app, against 1.2x)."""
    threads = max(1, len(os.sched_getaffinity(0)) - 1)  # the cores this process may use
    torch.set_num_threads(threads)
    return threads


def zero_gpu(env: Mapping[str, str]) -> bool:
    """Whether this is a ZeroGPU Space (SPACES_ZERO_GPU): each GPU call runs in a forked
    worker, which neither an ONNX Runtime session nor a shared batch can follow."""
    return env.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def runtimes(env: Mapping[str, str]) -> list[str]:
    """The runtimes (keys of registry.RUNTIMES) to offer: torch only on ZeroGPU, where the GPU
    is attached inside each call, which an ONNX Runtime session made beforehand cannot follow
    (its CUDA context, its thread pool)."""
    return ["torch"] if zero_gpu(env) else list(RUNTIMES)


def examples(model: str) -> list[list]:
    """One-click presets [model, class, orders, seed, steps] that the given model can run."""
    return [
        [model, e.class_name, list(e.orders), e.seed, list(e.steps)] for e in spec(model).examples
    ]


AUTO_RUNTIME = "auto"  # a runtime choice: the fastest here (ModelCache.default_runtime)


class ModelCache:
    """Pipelines by model and runtime, loaded on first use and shared by all requests
    (thread-safe). `runtimes`: those offered here (see runtimes())."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        compile: bool = False,
        runtimes: Sequence[str] = tuple(RUNTIMES),
    ) -> None:
        self.device = torch.device(device)
        self.compile = compile  # see pipeline.torch_executor
        self.runtimes = tuple(runtimes)
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

    def default_runtime(self, name: str) -> str:
        """What `name` runs on unless told: on a CPU its fastest there (the registry's
        measured choice) where offered, else torch (and always torch on a GPU)."""
        fastest = spec(name).cpu_runtime
        return fastest if self.device.type == "cpu" and fastest in self.runtimes else "torch"

    def runtime_for(self, name: str, runtime: str | None) -> str:
        """`runtime` itself, or for None and AUTO_RUNTIME the default for `name` here."""
        return self.default_runtime(name) if runtime in (None, AUTO_RUNTIME) else runtime

    def check_runtime(self, name: str, runtime: str) -> None:
        """ValueError unless `name` runs on `runtime` and it is offered here."""
        spec(name).check_runtime(runtime)
        if runtime not in self.runtimes:
            raise ValueError(f"{runtime!r} is not offered here; choose {', '.join(self.runtimes)}")

    def get(self, name: str, runtime: str = "torch") -> Pipeline:
        self.check_runtime(name, runtime)
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
                if self.device.type == "cpu":  # (on ZeroGPU the decoder needs a GPU call)
                    # The first frame needs them: RAR-B's take 14 s on one AMD EPYC core.
                    threading.Thread(
                        target=self.patches, args=(self._pipelines[key],), daemon=True
                    ).start()
            return self._pipelines[key]

    def patches(self, pipe: Pipeline) -> Tensor:
        """The model's per-code preview patches, built on first use rather than at load time:
        on ZeroGPU the decoder runs only inside a GPU call.
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
    orders: tuple[str, ...]  # the orders compared ...
    steps: tuple[int, ...]  # ... at each of these sampler step counts (L: one token per step)
    permutations: Tensor  # (B, L) each panel's order, built once (random drawn from the seed)
    seed: int
    sampling: SamplingConfig  # with steps left None: each panel takes its own
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
    def names(self) -> list[str]:
        """The panels' labels, one per row of `permutations`."""
        return panel_names(self.orders, self.steps)

    def sampling_for(self, steps: int) -> SamplingConfig:
        """The sampler settings of the panels that take `steps` steps."""
        one_per_step = steps == self.permutations.shape[1]
        return self.sampling.with_(steps=None if one_per_step else steps)

    def rows(self, steps: int) -> Tensor:
        """The panels (rows of `permutations`) that take `steps` steps."""
        return torch.tensor(
            [i for i, (_, n) in enumerate(panels(self.orders, self.steps)) if n == steps]
        )

    def step_sizes(self, steps: int) -> list[int]:
        """Tokens per sampler step of the panels that take `steps` steps (an edit with fewer
        cells to generate takes one per cell)."""
        L = self.permutations.shape[1]
        return step_sizes(self.sampling_for(steps), L, self.kept_cells)

    @property
    def short_name(self) -> str:
        return self.class_name.split(",")[0]  # ImageNet names list synonyms after a comma


def panels(orders: Sequence[str], steps: Sequence[int]) -> list[tuple[str, int]]:
    """The panels of `orders` x `steps`, as (order, step count): each order at each count, in
    that order. The one definition of the panels' layout."""
    return [(order, n) for order in orders for n in steps]


def panel_names(orders: Sequence[str], steps: Sequence[int]) -> list[str]:
    """The panels' labels: just the order's name where every panel takes the same steps."""
    if len(steps) <= 1:
        return list(orders)
    return [f"{order} · {n} steps" for order, n in panels(orders, steps)]


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
    runtime: str | None = None,
    steps: object = None,
    schedule: str = DEFAULT_SCHEDULE,
    image: object = None,
    mask: object = None,
    load: bool = True,
) -> Request | None:
    """Checks raw inputs into a Request, or raises InputError (naming the input) or
    hub.WeightsUnavailable with a message meant for the user. Sampler settings left as None
    take the model's own defaults; top_k 0 turns top-k filtering off. With load False, a model
    not loaded yet is not loaded: only what needs no model is checked, and None returned.

    `steps`: a sampler step count, or several to compare: each order is then shown at each
    (None: one token per step). An edit gives `image` (a picture: path, bytes, array or PIL
    image) and `mask` (a preset name of masks.MASK_PRESETS or a mask picture, see
    masks.edit_source). `runtime` None or AUTO_RUNTIME: the cache's default for the model."""
    entry = _field("model", lambda: spec(model))
    runtime = cache.runtime_for(model, runtime)
    _field("runtime", lambda: cache.check_runtime(model, runtime))
    orders = tuple(orders or ())
    if not orders:
        raise InputError("orders", "choose at least one generation order")
    if len(set(orders)) < len(orders):
        raise InputError("orders", "each order can be chosen only once")
    for name in orders:
        _field("orders", lambda name=name: check_order_name(name))
    L = entry.generator.image_seq_len
    step_counts = _step_counts(steps, L)
    count = len(orders) * len(step_counts)
    if count > MAX_PANELS and len(step_counts) == 1:
        raise InputError("orders", f"choose at most {MAX_PANELS} orders, got {len(orders)}")
    if count > MAX_PANELS:
        raise InputError(
            "steps",
            f"at most {MAX_PANELS} panels: {len(orders)} orders x {len(step_counts)} step "
            f"counts make {count}",
        )
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
    checked = _field("schedule", lambda: sampling.with_(schedule=schedule))
    if any(n < L for n in step_counts):  # one token per step has no schedule: keep the default
        sampling = checked
    if not load and not cache.has(model, runtime):
        return None

    pipe = cache.get(model, runtime)
    class_id = _field("class_name", lambda: pipe.class_id("" if class_name is None else class_name))
    pixels = regenerate = None
    panel_orders = [order for order, _ in panels(orders, step_counts)]
    if image is None and mask is None:
        permutations = pipe.orders(panel_orders, int(seed))
    else:
        pixels, regenerate = _edit_source(pipe, image, mask, int(seed))
        permutations = _field("mask", lambda: pipe.edit_orders(regenerate, panel_orders, int(seed)))
        cells = int(regenerate.sum())
        if sum(n >= cells for n in step_counts) > 1:
            raise InputError(
                "steps",
                f"this edit regenerates {cells} cells, so every step count from {cells} up "
                "takes one token per cell: choose only one of those",
            )
    return Request(
        model,
        class_id,
        pipe.class_names[class_id],
        orders,
        step_counts,
        permutations,
        int(seed),
        sampling,
        float(speed),
        runtime,
        pixels,
        regenerate,
    )


def _step_counts(steps: object, L: int) -> tuple[int, ...]:
    """`steps` (a count, several, or None: L) as distinct whole numbers in [1, L], most first
    (the panels' order does not depend on the order they were ticked in)."""
    values = list(steps) if isinstance(steps, list | tuple) else [] if steps is None else [steps]
    if not values:
        return (L,)
    counts = []
    for value in values:
        n = _number("steps", "steps", value, (1, L))
        if n != int(n):
            raise InputError("steps", f"steps must be a whole number, got {n}")
        if int(n) in counts:
            raise InputError("steps", "each step count can be chosen only once")
        counts.append(int(n))
    return tuple(sorted(counts, reverse=True))


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
    panels: dict[str, np.ndarray] | Keep = KEEP  # panel name -> (H, W, 3) uint8, shown live
    finals: dict[str, np.ndarray] | Keep | None = KEEP  # the finished images, to keep
    animation: str | Keep | None = KEEP  # a file path
    order_plot: bytes | Keep | None = KEEP  # PNG
    stats_plot: bytes | Keep | None = KEEP  # PNG
    frame: bool = False  # a live frame: a page may show it a moment late, with the next ones


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


@dataclass(frozen=True)
class Progress:
    """The newest state of a run's panels."""

    tick: int  # 0-based: the sampler steps taken by the panels that take the most
    num_ticks: int
    canvas: Tensor  # (B, L) tokens by raster position, -1 where not generated yet
    newest: Tensor  # (B,) each panel's newest cell, -1 once it is finished
    done: bool  # every panel finished


class _Group:
    """Panels that take the same number of sampler steps: one batched stream, which places
    counts[i] tokens at its step i."""

    def __init__(self, rows: Tensor, events: Iterator[StepEvent], counts: list[int]) -> None:
        self.rows, self.events, self.counts = rows, events, counts
        self.latest: StepEvent | None = None
        self.probs: list[Tensor] = []  # every token's, as the stats plot shows them
        self.entropy: list[Tensor] = []

    @property
    def finished(self) -> bool:
        return self.latest is not None and self.latest.done

    def advance(self, tick: int) -> None:
        """Takes the events of sampler step `tick` (one per token it places), if it has one."""
        for _ in range(self.counts[tick] if tick < len(self.counts) else 0):
            self.latest = next(self.events)
            self.probs.append(self.latest.probs)
            self.entropy.append(self.latest.entropy)


class Sampling(threading.Thread):
    """A batch's sampler, paced, in a thread of its own: the newest `Progress`, every token's
    probability and entropy, and whether it has finished (or failed, or was stopped).

    Each group of panels (a step count) is a stream of its own; all take their sampler steps
    in lockstep, so panels with fewer steps finish sooner, as they would alone."""

    def __init__(
        self,
        groups: list[tuple[Tensor, Iterator[StepEvent], list[int]]],
        steps_per_s: float,
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        """groups: (panel rows, their sampler stream, tokens per sampler step) each;
        `on_finish` is called from the thread once it has finished."""
        super().__init__(daemon=True, name="rar-sampling")
        self.groups = [_Group(*group) for group in groups]
        self.num_ticks = max(len(g.counts) for g in self.groups)
        self.pacer = Pacer(steps_per_s)
        self.stop = threading.Event()
        self.latest: Progress | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.on_finish = on_finish
        self._changed = threading.Condition()

    def run(self) -> None:
        try:
            for tick in range(self.num_ticks):
                for group in self.groups:
                    group.advance(tick)
                self.pacer.wait(tick)
                progress = self._progress(tick)
                with self._changed:
                    self.latest = progress
                    self._changed.notify_all()
                if self.stop.is_set():
                    break
        except BaseException as err:  # handed to the consumer, which raises it
            self.error = err
        finally:
            try:
                for group in self.groups:
                    group.events.close()  # the sampler's KV cache goes with it
            finally:
                with self._changed:
                    self.finished = True
                    self._changed.notify_all()
                if self.on_finish is not None:
                    self.on_finish()

    def _progress(self, tick: int) -> Progress:
        first = self.groups[0].latest
        B = sum(len(g.rows) for g in self.groups)
        canvas = torch.empty((B, first.canvas.shape[1]), dtype=torch.long)
        newest = torch.empty(B, dtype=torch.long)
        for g in self.groups:
            canvas[g.rows] = g.latest.canvas
            newest[g.rows] = -1 if g.finished else g.latest.positions
        done = all(g.finished for g in self.groups)
        return Progress(tick, self.num_ticks, canvas, newest, done)

    def stats(self) -> tuple[Tensor, Tensor]:
        """(tokens, B) probability and entropy of every token each panel placed."""
        B = sum(len(g.rows) for g in self.groups)
        out = torch.empty(2, len(self.groups[0].probs), B)
        for g in self.groups:
            out[0][:, g.rows] = torch.stack(g.probs)
            out[1][:, g.rows] = torch.stack(g.entropy)
        return out[0], out[1]

    def newer_than(self, tick: int, timeout: float | None = None) -> Progress | None:
        """Waits for progress past `tick` (or the end); returns the newest, None if none."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.finished or (self.latest and self.latest.tick > tick), timeout
            )
            return self.latest

    def wait_finished(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.finished, max(0.0, timeout))


def _batch_key(request: Request) -> tuple | None:
    """What runs must share to be sampled in one batch; None: never shared (an edit, whose
    kept cells the batch's rows would all have to share)."""
    if request.pixels is not None:
        return None
    return request.model, request.runtime, request.sampling, request.steps, request.speed


@dataclass(eq=False)
class _Batch:
    """Runs sampled together: their panels are consecutive rows of one sampler."""

    key: tuple | None
    requests: list[Request] = field(default_factory=list)
    prompt: Tensor | None = None  # a lone edit's kept tokens
    sampling: Sampling | None = None  # once started
    error: Exception | None = None  # why it could not start
    active: int = 0  # runs that have not left

    @property
    def panels(self) -> int:
        return sum(len(r.names) for r in self.requests)


def _sampling(
    cache: ModelCache, batch: _Batch, on_finish: Callable[[], None] | None = None
) -> Sampling:
    """The batch's sampler, not started: per step count, one stream over every run's panels
    of that count, each row with its run's class, order and seed."""
    first = batch.requests[0]  # all share the key: model, sampling, steps, speed
    pipe = cache.get(first.model, first.runtime)
    bases = np.cumsum([0] + [len(r.names) for r in batch.requests])[:-1].tolist()  # first rows
    groups = []
    for steps in first.steps:
        parts = [(r, r.rows(steps), base) for r, base in zip(batch.requests, bases, strict=True)]
        rows = torch.cat([local + base for _, local, base in parts])
        labels = torch.cat([torch.full((len(local),), r.class_id) for r, local, _ in parts])
        orders = torch.cat([r.permutations[local] for r, local, _ in parts])
        seeds = [r.seed for r, local, _ in parts for _ in local]
        prompt = None if batch.prompt is None else batch.prompt[rows]
        events = pipe.stream(labels, orders, seeds, first.sampling_for(steps), prompt)
        groups.append((rows, events, first.step_sizes(steps)))
    return Sampling(groups, first.speed, on_finish)


class Lease:
    """A run's place in a batch: the rows of its panels, and the batch's sampler once the
    batch has started."""

    def __init__(self, batcher: Batcher, batch: _Batch, rows: Tensor) -> None:
        self.batcher, self.batch, self.rows = batcher, batch, rows
        self.left = False

    def sampling(self, timeout: float) -> Sampling | None:
        """The batch's sampler, waiting up to `timeout` s for it to start; None if it has not."""
        return self.batcher.started(self.batch, timeout)

    def view(self, progress: Progress) -> Progress:
        """The batch's progress, as this run's panels see it."""
        return replace(
            progress, canvas=progress.canvas[self.rows], newest=progress.newest[self.rows]
        )

    def stats(self) -> tuple[Tensor, Tensor]:
        """As Sampling.stats, for this run's panels."""
        probs, entropy = self.batch.sampling.stats()
        return probs[:, self.rows], entropy[:, self.rows]

    def leave(self) -> None:
        """Done with the batch: the last run to leave stops its sampler (and waits for it)."""
        if not self.left:
            self.left = True
            self.batcher.leave(self.batch)


class Batcher:
    """Runs the samplers of many requests, at most `slots` batches at once. A request joins
    the waiting batch of its kind (same model, runtime, sampler settings, steps and speed;
    edits go alone) while it has room for its panels, and a batch starts as soon as a slot is
    free: alone at once when nothing else runs, together when requests queue up. Each
    panel keeps its own class, order and seed, so it comes out as it would alone (up to
    floating-point rounding across batch sizes). Thread-safe."""

    def __init__(
        self, cache: ModelCache, slots: int = BATCH_SLOTS, max_panels: int = MAX_BATCH_PANELS
    ) -> None:
        if slots < 1 or max_panels < MAX_PANELS:
            raise ValueError(f"need slots >= 1 and max_panels >= {MAX_PANELS}")
        self.cache, self.slots, self.max_panels = cache, slots, max_panels
        self._waiting: list[_Batch] = []
        self._running: list[_Batch] = []
        self._changed = threading.Condition()

    @property
    def runs(self) -> int:
        """Runs waiting or sampling now."""
        with self._changed:
            return sum(b.active for b in self._waiting + self._running)

    @property
    def sampling_runs(self) -> int:
        """Runs whose batch samples now (whose frames share the cores)."""
        with self._changed:
            return sum(b.active for b in self._running)

    def ahead(self, batch: _Batch) -> int:
        """Runs that will sample before `batch` starts: the running ones, and the waiting ones
        queued before it."""
        with self._changed:
            if batch not in self._waiting:
                return 0
            earlier = self._waiting[: self._waiting.index(batch)]
            return sum(b.active for b in self._running + earlier)

    def join(self, request: Request, prompt: Tensor | None = None) -> Lease:
        """A place for `request` (with an edit's `prompt`, see Request.prompt) in a batch."""
        key, panels = _batch_key(request), len(request.names)
        with self._changed:
            batch = next(
                (
                    b
                    for b in self._waiting
                    if key is not None and b.key == key and b.panels + panels <= self.max_panels
                ),
                None,
            )
            if batch is None:
                batch = _Batch(key, prompt=prompt)
                self._waiting.append(batch)
            rows = torch.arange(batch.panels, batch.panels + panels)
            batch.requests.append(request)
            batch.active += 1
            self._schedule()
        return Lease(self, batch, rows)

    def started(self, batch: _Batch, timeout: float) -> Sampling | None:
        with self._changed:
            self._changed.wait_for(lambda: batch.sampling or batch.error, timeout)
            if batch.error is not None:
                raise RuntimeError("the run could not start") from batch.error
            return batch.sampling

    def leave(self, batch: _Batch) -> None:
        with self._changed:
            batch.active -= 1
            if batch.active or batch.sampling is None:
                if not batch.active and batch in self._waiting:
                    self._waiting.remove(batch)  # every run left before it started
                return
            sampling = batch.sampling
        sampling.stop.set()
        sampling.join()

    def _schedule(self) -> None:
        # Called with the lock held. A batch that cannot start hands its error to its runs.
        while self._waiting and len(self._running) < self.slots:
            batch = self._waiting.pop(0)
            try:
                sampling = _sampling(self.cache, batch, lambda b=batch: self._finished(b))
                sampling.start()
            except Exception as err:
                batch.error = err
            else:
                batch.sampling = sampling
                self._running.append(batch)
            self._changed.notify_all()

    def _finished(self, batch: _Batch) -> None:
        with self._changed:
            self._running.remove(batch)
            self._schedule()


class Renderer:
    """Frames of a growing canvas at a bounded decoding cost.

    A full decode starts only once the time since the previous one reaches its cost divided
    by DECODE_SHARE, so however slow the decoder, it takes at most that share of the run; in
    between, cells filled since the last decode are pasted from per-code preview patches. The
    first frames are patches only: a decode of a nearly empty canvas would show little.

    With `background`, a due decode runs in a thread of its own and frames keep coming from
    patches meanwhile (RAR-B's decoder takes 3.7 s on one AMD EPYC core); it shows from the
    first frame after it is done. Call close() at the end of a run.
    """

    def __init__(
        self,
        cache: ModelCache,
        pipe: Pipeline,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self.cache, self.pipe, self.clock = cache, pipe, clock
        self.live: LiveFrames | None = None  # from the last full decode (or first preview)
        # Until a decode has been timed, the first is due FIRST_DECODE_S after the first frame.
        self.decoded_at, self.decode_cost = -math.inf, FIRST_DECODE_S * DECODE_SHARE
        self.background = background
        self._pool: ThreadPoolExecutor | None = None  # made by the first background decode
        self._pending: tuple[Future, Tensor] | None = None  # a decode running, of that canvas

    def __call__(self, canvas: Tensor, newest: Tensor | None, decode: bool = False) -> np.ndarray:
        """(B, L) canvas, (B,) newest positions -> (B, H, W, 3) uint8 marked frames; `decode`
        decodes this canvas first, whatever the time."""
        patches = self.cache.patches(self.pipe)
        if decode:
            self._adopt(self._decode(canvas), canvas, patches)
        elif self.live is None:
            pixels = preview(canvas, patches, self.pipe.grid)
            self.live = LiveFrames(pixels, canvas, patches, self.pipe.grid)
            self.decoded_at = self.clock()
        else:
            if self._pending is not None and self._pending[0].done():
                (future, decoded), self._pending = self._pending, None
                self._adopt(future.result(), decoded, patches)
            due = self.clock() - self.decoded_at >= self.decode_cost / DECODE_SHARE
            if due and self._pending is None:
                snapshot = canvas.clone()  # the sampler's canvas moves on meanwhile
                if self.background:
                    self._pool = self._pool or ThreadPoolExecutor(1, "rar-decode")
                    self._pending = self._pool.submit(self._decode, snapshot), snapshot
                else:
                    self._adopt(self._decode(snapshot), snapshot, patches)
        return self.live(canvas, newest)

    def _decode(self, canvas: Tensor) -> tuple[Tensor, float, float]:
        """(B, 3, H, W) pixels of `canvas`, and when the decode started and ended."""
        start = self.clock()
        pixels = self.pipe.decode(canvas)
        return pixels, start, self.clock()

    def _adopt(self, decoded: tuple[Tensor, float, float], canvas: Tensor, patches: Tensor) -> None:
        pixels, start, end = decoded
        self.live = LiveFrames(pixels, canvas, patches, self.pipe.grid)
        self.decoded_at, self.decode_cost = end, end - start

    def close(self) -> None:
        """Waits for a decode still running (at most one): none outlives its run, which on
        ZeroGPU is a GPU call."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending = None

    def blank(self, batch: int) -> np.ndarray:
        """The frame before the first step: every cell pending, no decoder run."""
        h, w = self.pipe.grid
        side = self.pipe.tokenizer.config.resolution
        canvas = torch.full((batch, h * w), -1, dtype=torch.long)
        return mark_progress(torch.zeros(batch, 3, side, side), canvas, None, self.pipe.grid)


def _describe(request: Request) -> str:
    s = request.sampling
    top_k = f" · top-k {s.top_k}" if s.top_k else ""
    several = any(n < request.permutations.shape[1] for n in request.steps)
    steps = f" · {' / '.join(map(str, request.steps))} steps ({s.schedule})" if several else ""
    runtime = f" · {request.runtime}" if request.runtime != "torch" else ""
    edit = f"edit of {request.edited_cells} cells · " if request.edited_cells else ""
    return (
        f"{edit}{request.short_name} (class {request.class_id}) · seed {request.seed}"
        f" · CFG {s.guidance_scale:g} (power {s.guidance_power:g}) · T {s.temperature:g}{top_k}"
        f"{steps}{runtime}"
    )


def _animation_path(request: Request) -> Path:
    """A fresh file for a run's animation (short name, unique folder); old runs' files are
    swept away here, by one run at a time (runs of a batch finish together)."""
    cutoff = time.time() - ANIMATION_TTL_S
    with _SWEEPING:
        for old in ANIMATION_DIR.glob("*/*.webp"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
                    old.parent.rmdir()
            except OSError:  # gone already, or not ours to remove: leave it
                continue
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
    sampling = request.sampling_for(request.steps[0])
    canvas = generate(pipe.executor, labels, orders, sampling, request.seed, prompt)
    image = to_uint8(pipe.decode(canvas))[0]
    scale = display_scale(image.shape[0])
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def run(
    cache: ModelCache,
    request: Request,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    batcher: Batcher | None = None,
) -> Iterator[Update]:
    """Streams a request: a first update with blank panels, frames of the newest canvas (at
    most MAX_FPS a second, however fast the sampler runs beside it), then one update with
    everything: final images, animation, plots. Setting `stop` ends the run with a "Stopped"
    update; closing the iterator leaves the batch at once. Panels of one step count share a
    batch; several step counts run side by side, one sampler step each per step of the run.

    With a shared `batcher` the run may wait for a free slot ("Waiting" updates; stopped
    then, it ends "Stopped before it started"), and its panels may be sampled in one batch
    with other runs', whose sampler stops when the last of them leaves; without a batcher it
    starts at once."""
    pipe = cache.get(request.model, request.runtime)
    names = request.names
    render = Renderer(cache, pipe)
    about = _describe(request)
    # An edit shows the cells it keeps from the start.
    prompt = request.prompt(pipe, len(names))
    batcher = batcher or Batcher(cache)
    lease = batcher.join(request, prompt)
    try:
        yield from _leased_run(pipe, request, lease, render, prompt, about, stop, clock)
    finally:
        lease.leave()
        render.close()


def _leased_run(
    pipe: Pipeline,
    request: Request,
    lease: Lease,
    render: Renderer,
    prompt: Tensor | None,
    about: str,
    stop: threading.Event | None,
    clock: Callable[[], float],
) -> Iterator[Update]:
    names = request.names
    stopped = stop.is_set if stop is not None else lambda: False
    first = render.blank(len(names)) if prompt is None else render(prompt, None, decode=True)
    distinct = request.permutations[request.rows(request.steps[0])]  # each order once
    # Drawn while the sampler (already started, unless it waits for a slot) takes its first steps.
    order_plot = plots.png(
        plots.order_heatmaps(request.orders, distinct, pipe.grid, request.kept_cells)
    )
    yield Update(
        status=f"**Starting** · {about}",
        panels=dict(zip(names, first, strict=True)),
        finals=None,
        animation=None,
        order_plot=order_plot,
        stats_plot=None,
    )
    waiting = ""
    while (sampling := lease.sampling(timeout=0.1)) is None:
        if stopped():
            lease.leave()
            yield Update(status=f"**Stopped before it started** · {about}")
            return
        ahead = lease.batcher.ahead(lease.batch)
        busy = f"**Waiting** for a free slot ({ahead} runs ahead) · {about}"
        if busy != waiting:
            waiting = busy
            yield Update(status=busy)
    start = clock()
    # Half the page's upscaling: a quarter of the pixels to encode at the end of the run.
    scale = max(1, display_scale(pipe.tokenizer.config.resolution) // 2)
    recorded: list[tuple[int, Image.Image]] = []  # (steps taken, sheet): the animation
    shown = -1
    while not sampling.finished and not stopped():
        latest = sampling.newer_than(shown, timeout=0.1)  # wakes to check `stop`
        if latest is None or latest.tick <= shown or latest.done:
            continue  # the last step shows as the final images
        frame_start = clock()
        progress = lease.view(latest)
        frames = render(progress.canvas, progress.newest)
        shown, taken = progress.tick, progress.tick + 1
        step = f"{taken} / {progress.num_ticks}"
        if not recorded or taken - recorded[-1][0] >= progress.num_ticks / ANIMATION_FRAMES:
            recorded.append((taken, sheet(frames, names, scale, f"step {step}")))
        yield Update(
            status=f"**Step {step}** · {about}",
            panels=dict(zip(names, frames, strict=True)),
            frame=True,
        )
        # At most MAX_FPS frames (what a browser could show anyway), and fewer while many
        # runs share the cores: all their frames together take at most FRAME_SHARE of one.
        cost = clock() - frame_start
        pause = max(1 / MAX_FPS, cost * lease.batcher.sampling_runs / FRAME_SHARE) - cost
        sampling.wait_finished(pause)
    if stopped():
        lease.leave()  # the last of the batch to leave stops its sampler: report where
    if sampling.error is not None:  # shared by the batch's runs: each raises its own
        raise RuntimeError("sampling failed") from sampling.error

    latest, seconds = sampling.latest, clock() - start
    if latest is None or not latest.done or stopped():
        taken = 0 if latest is None else latest.tick + 1
        yield Update(status=f"**Stopped at step {taken} / {sampling.num_ticks}** · {about}")
        return
    progress = lease.view(latest)
    # The decoder lets go of the GIL: it runs beside drawing the plot, on the core the
    # sampler has just left.
    with ThreadPoolExecutor(1, thread_name_prefix="rar-final") as pool:
        decoded = pool.submit(pipe.decode, progress.canvas)
        stats = plots.png(plots.step_curves(names, *lease.stats()))
        finals = to_uint8(decoded.result())
    final_panels = dict(zip(names, finals, strict=True))
    steps = " / ".join(str(len(g.counts)) for g in sampling.groups)
    summary = f"**Done**: {steps} steps in {seconds:.1f} s · {about}"
    yield Update(status=f"{summary} · preparing the animation…", panels=final_panels)

    sheets = [s for _, s in recorded]
    sheets.append(sheet(finals, names, scale, f"{request.short_name}, seed {request.seed}"))
    path = str(save_animation(sheets, _animation_path(request)))
    # Everything at once: an API client's result() is this last update.
    yield Update(
        status=summary,
        panels=final_panels,
        finals=final_panels,
        animation=path,
        order_plot=order_plot,
        stats_plot=stats,
    )
