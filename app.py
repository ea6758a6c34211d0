"""RAR Studio: pick a class and up to four generation orders, then watch RAR paint each panel
token by token. `python app.py` serves it; this file is only the UI, the engine (model cache,
request checks, paced frames, results) is rar_demo/studio.py.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import inspect
import io
import logging
import math
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gradio as gr
import numpy as np
import torch
from gradio.components.plot import PlotData
from PIL import Image

from rar_demo import studio
from rar_demo.config import SCHEDULES
from rar_demo.hub import WeightsUnavailable
from rar_demo.masks import MASK_PRESETS
from rar_demo.orders import ORDER_NAMES
from rar_demo.pipeline import Pipeline
from rar_demo.registry import MODEL_NAMES

try:  # ZeroGPU on Hugging Face Spaces: a GPU is attached only while a decorated call runs.
    import spaces

    gpu = spaces.GPU(duration=120)
    GPU_CALLS = "spaces.GPU"
except ImportError:

    def gpu(fn: Callable) -> Callable:
        return fn

    GPU_CALLS = "plain calls (no spaces package)"


# On ZeroGPU torch reports CUDA at start-up, so models load onto it there, as it expects. On
# a GPU each decode step replays a CUDA graph, captured inside the first call; RAR_DEMO_COMPILE=1
# also compiles it first (a dedicated GPU only: ZeroGPU does not allow compiling).
CACHE = studio.ModelCache(
    "cuda" if torch.cuda.is_available() else "cpu",
    compile=os.environ.get("RAR_DEMO_COMPILE") == "1",
    runtimes=studio.runtimes(os.environ),
)
# Runs that queue up share batches; on ZeroGPU each run is a GPU call of its own (a forked
# worker), so each samples alone there.
BATCHER = None if studio.zero_gpu(os.environ) else studio.Batcher(CACHE)
# Generate and both edits share one pool: 16 runs reach the batcher (which samples 2 batches
# at once), or 2 at once where each runs alone.
RUNS = {"concurrency_id": "runs", "concurrency_limit": 2 if BATCHER is None else 16}
# Gradio's queue looks for new events every millisecond while it has none waiting: a thousand
# wake-ups a second, each taking the GIL from the sampler (8% of a core with the app idle).
# 20 ms more before a run starts is not felt.
QUEUE_POLL_S = 0.02
# Live frames go out a few at a time, in one message about every FLIP_S, and the page plays
# each message's frames back at their own pace: Gradio and every client pay several ms of
# CPU per message, on the cores the sampler needs (25 messages a second made a run 1.28x the
# engine's time, 5 a second 1.05x).
FLIP_S = 0.2
DEFAULT_ORDERS = ["raster", "random"]
CSS = """
/* Generate and Stop stay in reach: above everything on a desktop, at the bottom on a phone
   (Gradio's page container clips overflow, which would stop them sticking). */
.gradio-container { overflow: clip !important; }
.action-bar { position: sticky; top: 0; z-index: 100; background: var(--background-fill-primary); }
@media (max-width: 640px) {
  .action-bar { position: fixed; top: auto; bottom: 0; left: 0; right: 0; padding: 8px;
                flex-wrap: nowrap; }
  .gradio-container { padding-bottom: 72px !important; }  /* room above the bar */
}
#status { min-height: 1.6em; }
/* Live panels: small models make 64 px images, scaled up crisply. */
.live { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 12px; }
.live figure { margin: 0; }
.live figcaption { font-weight: 600; margin-bottom: 4px; }
.live img { width: 100%; aspect-ratio: 1; image-rendering: pixelated; display: block; }
/* A message's frames stack in each panel; each shows at its animation-delay (see FLIP_S).
   Gradio patches the page's nodes in place, and a kept node restarts its animation only when
   the animation's name changes: so messages take turns between two names. */
.live .flip { display: grid; }
.live .flip > img { grid-area: 1 / 1; }
.live .flip > img + img { visibility: hidden; animation: rar-flip-0 1ms forwards; }
.live.turn-1 .flip > img + img { animation-name: rar-flip-1; }
@keyframes rar-flip-0 { to { visibility: visible; } }
@keyframes rar-flip-1 { to { visibility: visible; } }
"""
# System fonts: the default theme would fetch its fonts from Google, which offline use lacks.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)
# The MCP server makes generate_image (and generate) tools for LLM clients.
LAUNCH_OPTIONS: dict[str, Any] = {"css": CSS, "theme": THEME, "mcp_server": True}
LOG = logging.getLogger("rar_studio")
STOPS: dict[str, threading.Event] = {}  # session -> its run's stop flag


def _load(model: str, runtime: str | None) -> Pipeline | None:
    """The model for the controls, or None after a warning: an error would cover them up,
    and Generate reports the same problem as an error anyway."""
    try:
        return CACHE.get(model, CACHE.runtime_for(model, runtime))
    except (ValueError, WeightsUnavailable) as err:
        gr.Warning(str(err))
        return None


@gpu
def _run(request: studio.Request, stop: threading.Event) -> Iterator[studio.Update]:
    yield from studio.run(CACHE, request, stop, batcher=BATCHER)


def _data_uri(frame: np.ndarray) -> str:
    # Lossless for small frames; JPEG for 256 px ones, a tenth of PNG's encoding time.
    image, buffer = Image.fromarray(frame), io.BytesIO()
    if frame.shape[0] <= 128:
        image.save(buffer, format="PNG", compress_level=1)
        kind = "png"
    else:
        image.save(buffer, format="JPEG", quality=90)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def panels_html(
    panels: Mapping[str, np.ndarray],
    later: Sequence[tuple[float, Mapping[str, np.ndarray]]] = (),
    turn: int = 0,
) -> str:
    """The live panels as one HTML block of inline images: no file per frame in any cache.
    `later` frames, (delay in seconds, panels), stack on the first and show at their delays;
    consecutive messages differ in `turn` (0 or 1) so that the page replays them (see CSS)."""
    frames = [(0.0, panels), *later]
    figures = []
    for name in panels:
        label = html.escape(name)
        images = "".join(
            f'<img alt="{label}" src="{_data_uri(frame[name])}"'
            + (f' style="animation-delay: {round(delay * 1000)}ms"' if delay else "")
            + ">"
            for delay, frame in frames
        )
        figures.append(
            f'<figure class="panel"><figcaption>{label}</figcaption>'
            f'<div class="flip">{images}</div></figure>'
        )
    return f'<div class="live turn-{turn}">{"".join(figures)}</div>'


class Flipbook:
    """Live frames held back and sent a few at a time, about every FLIP_S (see there)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.held: list[tuple[float, Mapping[str, np.ndarray]]] = []  # (when it came, panels)
        self.sent_at = -math.inf
        self.sent = 0  # messages

    def add(self, panels: Mapping[str, np.ndarray]) -> bool:
        """Holds a frame; True when the frames held are due to go out."""
        now = self.clock()
        self.held.append((now, panels))
        return now - self.sent_at >= FLIP_S

    def discard(self) -> None:
        """Forgets the frames held (newer panels replace them), without encoding them."""
        self.held.clear()

    def take(self) -> str | None:
        """The frames held as one HTML block, each at its delay after the first (None when
        none are), and the wait for the next message starts now. A message never plays for
        longer than FLIP_S: after a gap (a slow step, a decode taken up) its frames are
        already late, so they play faster rather than later still."""
        if not self.held:
            return None
        (start, first), *later = held = self.held
        self.held, self.sent_at = [], self.clock()
        self.sent += 1
        scale = min(1.0, FLIP_S / max(held[-1][0] - start, 1e-9))
        delays = [((t - start) * scale, panels) for t, panels in later]
        return panels_html(first, delays, self.sent % 2)


def _plot(png: bytes | studio.Keep | None) -> Any:
    """A PNG plot as the Plot component sends a figure; None and KEEP stay as they are."""
    if png is None or png is studio.KEEP:
        return png
    uri = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    return PlotData(type="matplotlib", plot=uri)


def _outputs(update: studio.Update, panels: str | studio.Keep) -> list:
    """An Update as values for (status, live panels, final images, animation, order plot,
    stats plot), its panels as given (HTML); studio.KEEP where it leaves one as it was."""
    finals = update.finals
    if isinstance(finals, dict):
        finals = [(image, name) for name, image in finals.items()]
    return [
        update.status,
        panels,
        finals,
        update.animation,
        _plot(update.order_plot),
        _plot(update.stats_plot),
    ]


def _postprocessed(fn: Callable[..., Iterator[tuple]], outputs: list) -> Callable:
    """fn's streamed values as Gradio sends them, for an event with postprocess=False: each
    output's postprocess runs here, once per new value. Gradio would run it for every output
    of every frame, each in a worker thread of its own (6 thread hops a frame, 15% of a run's
    time on 2 cores). Unchanged values are the same objects frame to frame (see _stream)."""

    @functools.wraps(fn)
    def streamed(*args: Any, **kwargs: Any) -> Iterator[tuple]:
        sent: list[tuple[Any, Any]] = [(object(), None)] * len(outputs)  # (value, as sent)
        # closing: a run closed early (Stop, a client gone) leaves its batch at once.
        with contextlib.closing(fn(*args, **kwargs)) as stream:
            for values in stream:
                for i, (component, value) in enumerate(zip(outputs, values, strict=True)):
                    if value is not sent[i][0]:
                        out = component.postprocess(value)
                        sent[i] = (value, out.model_dump() if hasattr(out, "model_dump") else out)
                yield tuple(out for _, out in sent)

    return streamed


def _user_error(err: Exception) -> gr.Error:
    LOG.info("rejected: %s", err)  # one line, no traceback: the user's input, not a bug
    return gr.Error(str(err), print_exception=False)


def _parsed(*values: Any, **edit: Any) -> studio.Request:
    """studio.parse of an event's inputs, its errors as one message for the user."""
    try:
        return studio.parse(CACHE, *values, **edit)
    except (ValueError, WeightsUnavailable) as err:
        raise _user_error(err) from None


def check_inputs(*values: Any) -> list[dict]:
    """Gradio's validator for Generate, which gets generate's inputs: a message by the
    offending field, before anything runs or any result is cleared. Checks what needs no
    model download."""
    try:
        studio.parse(CACHE, *values, load=False)
    except studio.InputError as err:
        LOG.info("rejected %s: %s", err.field, err)
        return [gr.validate(name != err.field, str(err)) for name in GENERATE_INPUTS]
    return [gr.validate(True, "") for _ in GENERATE_INPUTS]


def generate(
    model: str,
    class_name: str,
    orders: list[str],
    seed: float,
    cfg_scale: float | None = None,
    cfg_power: float | None = None,
    temperature: float | None = None,
    top_k: float | None = None,
    speed: float = studio.DEFAULT_SPEED,
    runtime: str | None = None,
    steps: float | list[float] = studio.STEP_CHOICES[0],
    schedule: str = studio.DEFAULT_SCHEDULE,
    request: gr.Request | None = None,
) -> Iterator[tuple]:
    """Generates one image of a class per order, side by side in one batch with the same seed,
    streaming the panels token by token; with several step counts, each order at each.

    Args:
        model: "bundled" (offline, emoji) or an official RAR model: rar_b, rar_l, rar_xl, rar_xxl.
        class_name: a class name ("golden retriever"; "Flags" on "bundled"), its id, or, for
            models whose classes are emoji, the emoji itself.
        orders: 1 to 4 generation orders: raster, random, spiral, center-out, zigzag, column,
            diagonal, checkerboard.
        seed: a whole number; the same seed gives the same images (on one runtime).
        cfg_scale: classifier-free guidance scale; empty for the model's default.
        cfg_power: power of the guidance schedule; empty for the model's default.
        temperature: sampling temperature; empty for the model's default.
        top_k: keep only the k likeliest tokens (0 = off); empty for the model's default.
        speed: at most this many steps per second.
        runtime: "auto" (the fastest here: on a CPU "onnx int8" for the official models and
            "onnx" for bundled, on a GPU torch), "torch", "onnx" or "onnx int8" (official
            models only).
        steps: sampler steps for the 256 tokens: 256 is one token per step; fewer decode
            several tokens per step (parallel decoding, on every runtime). A list compares
            step counts: each order is shown at each (at most 4 panels in all).
        schedule: how many tokens each step takes when steps < 256: "cosine" (few first,
            more later) or "constant".

    Returns:
        The status line, the live panels (HTML), the final images, the run's animation (WebP),
        the order heatmaps and the per-step confidence plot.
    """
    # No gr.Progress here: with one, a cancelled run marks every output "Error" in the page.
    # Downloads show their progress when the model is picked (select_model) instead.
    parsed = _parsed(
        model, class_name, orders, seed, cfg_scale, cfg_power, temperature, top_k, speed,
        runtime, steps, schedule,
    )  # fmt: skip
    yield from _stream(parsed, request)


def _stream(parsed: studio.Request, request: gr.Request | None) -> Iterator[tuple]:
    """A checked request's run as values for the outputs, stoppable by this session's Stop."""
    stop = threading.Event()
    session = request.session_hash if request is not None else None
    if session:
        STOPS[session] = stop
    # Every update carries a real value for every output: a gr.skip() would make Gradio
    # rebuild that component's config (about 10 ms each, per frame), while a value it sent
    # already costs nothing (outputs go out as diffs).
    shown: list = [None] * 6
    book = Flipbook()
    try:
        for update in _run(parsed, stop):
            if update.frame:
                if not book.add(update.panels):
                    continue  # goes out with the frames after it
                panels = book.take()
            elif update.panels is studio.KEEP:  # e.g. Stopped: the frames held still show
                panels = book.take() or studio.KEEP
            else:  # newer panels than any held
                book.discard()
                panels = panels_html(update.panels)
            for i, value in enumerate(_outputs(update, panels)):
                if value is not studio.KEEP:
                    shown[i] = value
            yield tuple(shown)
    finally:
        if session and STOPS.get(session) is stop:
            del STOPS[session]


def edit(
    model: str,
    image: Image.Image | None,
    mask: str,
    class_name: str,
    orders: list[str],
    seed: float,
    mask_image: Image.Image | None = None,
    cfg_scale: float | None = None,
    cfg_power: float | None = None,
    temperature: float | None = None,
    top_k: float | None = None,
    speed: float = studio.DEFAULT_SPEED,
    runtime: str | None = None,
    steps: float | list[float] | None = None,
    schedule: str = studio.DEFAULT_SCHEDULE,
    request: gr.Request | None = None,
) -> Iterator[tuple]:
    """Edits a picture: keeps its tokens outside the mask and regenerates the cells inside it
    as `class_name`, in each of the orders side by side (inpainting, outpainting, re-class).

    Args:
        model: "bundled" (offline, emoji) or an official RAR model: rar_b, rar_l, rar_xl, rar_xxl.
        image: the picture to edit (any size; centre-cropped to a square).
        mask: what to regenerate: left, right, top, bottom, center, border, outpaint (shrinks
            the picture into the centre and fills the border) or random; empty to use
            mask_image.
        class_name: the class of the regenerated cells, as for generate.
        orders: 1 to 4 generation orders for the regenerated cells (the kept cells go first).
        seed: a whole number; the same seed gives the same images (on one runtime).
        mask_image: a mask picture (white or opaque = regenerate), at the picture's size, the
            model's or the 16x16 token grid's; used when mask is empty.
        cfg_scale: classifier-free guidance scale; empty for the model's default.
        cfg_power: power of the guidance schedule; empty for the model's default.
        temperature: sampling temperature; empty for the model's default.
        top_k: keep only the k likeliest tokens (0 = off); empty for the model's default.
        speed: at most this many steps per second.
        runtime: "auto" (the fastest here: on a CPU "onnx int8" for the official models and
            "onnx" for bundled, on a GPU torch), "torch", "onnx" or "onnx int8" (official
            models only).
        steps: sampler steps for the regenerated cells (256 or empty: one token per step),
            or a list of step counts to compare.
        schedule: "cosine" or "constant", when steps < 256.

    Returns:
        As generate: status, live panels, final images, animation and plots.
    """
    parsed = _parsed(
        model, class_name, orders, seed, cfg_scale, cfg_power, temperature, top_k, speed,
        runtime, steps, schedule, image=image, mask=mask if (mask or "").strip() else mask_image,
    )  # fmt: skip
    yield from _stream(parsed, request)


BRUSH = "brush"  # the Edit tab's mask choice that reads the painted strokes


def editor_source(editor: dict | None, preset: str) -> tuple[Any, Any]:
    """(picture, mask) from the Edit tab: the editor's background, and the preset, or the
    union of its brush layers (painted = regenerate)."""
    if not editor or editor.get("background") is None:
        return None, preset if preset != BRUSH else None
    picture = editor["background"]
    if preset != BRUSH:
        return picture, preset
    layers = [layer for layer in editor.get("layers") or [] if layer is not None]
    if not layers:
        return picture, np.zeros(picture.shape[:2], dtype=np.uint8)
    painted = np.max([layer[..., 3] for layer in layers], axis=0)  # RGBA: alpha where painted
    return picture, painted


def edit_from_editor(
    model: str,
    editor: dict | None,
    preset: str,
    class_name: str,
    orders: list[str],
    seed: float,
    cfg_scale: float | None,
    cfg_power: float | None,
    temperature: float | None,
    top_k: float | None,
    speed: float,
    runtime: str,
    steps: list[float],
    schedule: str,
    request: gr.Request,
) -> Iterator[tuple]:
    """The Edit tab's button: `edit` with the editor's picture and its preset or strokes.
    (Parameters spelled out, not *values: Gradio injects gr.Request by signature.)"""
    picture, mask = editor_source(editor, preset)
    parsed = _parsed(
        model, class_name, orders, seed, cfg_scale, cfg_power, temperature, top_k, speed,
        runtime, steps, schedule, image=picture, mask=mask,
    )  # fmt: skip
    yield from _stream(parsed, request)


def edit_preview(model: str, runtime: str, editor: dict | None, preset: str, seed: float) -> Any:
    """The picture as the model sees it, the cells an edit would regenerate hatched."""
    picture, mask = editor_source(editor, preset)
    pipe = _load(model, runtime)
    if picture is None or pipe is None:
        return None
    try:
        return studio.edit_preview(pipe, picture, mask, int(seed or 0))
    except ValueError:
        return None


@gpu
def _still(request: studio.Request) -> np.ndarray:
    return studio.still(CACHE, request)


def generate_image(model: str, class_name: str, order: str, seed: float) -> np.ndarray:
    """Generates one image of a class with RAR, token by token in the given order, and returns
    the finished picture.

    Args:
        model: "bundled" (offline, emoji) or an official RAR model: rar_b, rar_l, rar_xl, rar_xxl.
        class_name: a class name ("golden retriever"; "Flags" on "bundled"), its id, or, for
            models whose classes are emoji, the emoji itself.
        order: the generation order: raster, random, spiral, center-out, zigzag, column,
            diagonal or checkerboard.
        seed: a whole number; the same seed gives the same image.

    Returns:
        The generated image (256 px; the model's own defaults for sampling).
    """
    return _still(_parsed(model, class_name, [order], seed))


# Generate's inputs by name, in order (the API's parameter names; InputError.field is one).
GENERATE_INPUTS = [p for p in inspect.signature(generate).parameters if p != "request"]


def stop_run(request: gr.Request) -> None:
    """Ends this session's run; it shows where it stopped."""
    if (stop := STOPS.get(request.session_hash)) is not None:
        stop.set()


def select_model(
    model: str,
    runtime: str,
    class_name: str,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
) -> tuple:
    """Loads `model` on `runtime` (downloading or exporting it if needed): its classes and
    its sampler defaults."""
    runtime = CACHE.runtime_for(model, runtime)
    if runtime != "torch" and not CACHE.has(model, runtime):
        progress(0, desc="Preparing the ONNX export (built on first use, then cached)")
    pipe = _load(model, runtime)
    if pipe is None:
        return (gr.skip(),) * 5
    classes = gr.Dropdown(choices=pipe.class_choices(), value=studio.keep_class(pipe, class_name))
    return classes, *studio.sampler_values(pipe.sampling)


def runtime_choices(model: str) -> list[tuple[str, str]]:
    """The Runtime choices for `model`, "auto" naming the runtime it stands for here."""
    auto = (f"auto: {CACHE.default_runtime(model)}", studio.AUTO_RUNTIME)
    return [auto, *((name, name) for name in CACHE.runtimes)]


def pick_model(
    model: str,
    runtime: str,
    class_name: str,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
) -> tuple:
    """A model picked: `select_model`, with "auto" relabelled for it, and back to auto where
    the runtime chosen before does not run it."""
    try:
        CACHE.check_runtime(model, CACHE.runtime_for(model, runtime))
    except ValueError:
        runtime = studio.AUTO_RUNTIME
    choice = gr.Radio(choices=runtime_choices(model), value=runtime)
    return choice, *select_model(model, runtime, class_name, progress)


def random_class(model: str, runtime: str, current: str) -> str | dict:
    """Any class but the current one, so that the dice always visibly changes something."""
    pipe = _load(model, runtime)
    if pipe is None:
        return gr.skip()
    return random.choice([c for c in pipe.class_names if c != current] or pipe.class_names)


def edit_this(selected: gr.SelectData) -> tuple:
    """A final image, clicked: into the editor, and the Edit tab opens."""
    path = selected.value["image"]["path"]
    return {"background": path, "layers": [], "composite": path}, gr.Tabs(selected="edit")


def random_seed() -> int:
    return random.randrange(1_000_000)  # short enough to read and retype


def blank_panels(
    model: str, orders: list[str], steps: list[int] | None = None, runtime: str | None = None
) -> str | dict:
    """Hatched, labelled panels for the chosen orders and step counts: shown the moment they
    change or Generate is pressed, so no earlier picture stands under a new label."""
    names = studio.panel_names(list(orders or []), list(steps or []))
    runtime = CACHE.runtime_for(model, runtime)
    if not names or len(names) > studio.MAX_PANELS or not CACHE.has(model, runtime):
        return gr.skip()  # Generate says what is wrong
    render = studio.Renderer(CACHE, CACHE.get(model, runtime))
    return panels_html(dict(zip(names, render.blank(len(names)), strict=True)))


def clear_panels(*values: Any) -> str | dict:
    """`blank_panels` for Generate's inputs (the validator's)."""
    inputs = dict(zip(GENERATE_INPUTS, values, strict=True))
    return blank_panels(inputs["model"], inputs["orders"], inputs["steps"], inputs["runtime"])


def fill_defaults(model: str, runtime: str, *values: float | None) -> list:
    """The model's sampler defaults into the boxes still empty when the page has loaded;
    what someone typed meanwhile stays."""
    pipe = _load(model, runtime)
    if pipe is None:
        return [gr.skip()] * len(values)
    defaults = studio.sampler_values(pipe.sampling)
    # An empty box reads 0 in the page (None through the API), so 0 counts as not typed.
    return [d if not v else gr.skip() for d, v in zip(defaults, values, strict=True)]


def _sampler_box(label: str, step: float, precision: int | None = None) -> gr.Number:
    # No initial value: left empty, a setting takes the model's default, which is also what
    # an API call that omits it gets. The page fills the defaults in (fill_defaults).
    return gr.Number(
        label=label, step=step, precision=precision, placeholder="model default", min_width=100
    )


def _starting_pipeline(model: str) -> Pipeline:
    """`model` on its default runtime here, or the bundled model where its weights are out of
    reach (offline): the page always opens."""
    try:
        return CACHE.get(model, CACHE.default_runtime(model))
    except WeightsUnavailable as err:
        warnings.warn(f"{err} Starting with the bundled model instead.", stacklevel=3)
        return CACHE.get("bundled", CACHE.default_runtime("bundled"))


def create_demo(model: str | None = None) -> gr.Blocks:
    model = model or studio.default_model(os.environ)
    pipe = _starting_pipeline(model)
    model = pipe.name
    private: dict[str, Any] = {"api_visibility": "private"}

    with gr.Blocks(title="RAR Studio", delete_cache=(600, 1800)) as demo:
        gr.Markdown(
            "# RAR Studio\n"
            "[RAR](https://github.com/bytedance/1d-tokenizer) generates a 16×16 grid of image "
            "tokens one token per step, and was trained to do so in *any* order. Pick a class "
            "and up to four orders: each panel is generated in its own order, side by side, "
            "with the same seed. Pick several step counts to see each order also decoded "
            "several tokens per step. Hatched cells are not generated yet; the pink square is "
            "the newest token."
        )
        with gr.Row(elem_classes="action-bar"):
            go = gr.Button("Generate", variant="primary", scale=3)
            stop = gr.Button("Stop", variant="stop", scale=1)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                with gr.Row():
                    model_box = gr.Dropdown(list(MODEL_NAMES), value=model, label="Model")
                    runtime_box = gr.Radio(
                        runtime_choices(model),
                        value=studio.AUTO_RUNTIME,
                        label="Runtime",
                        info="auto: the fastest here",
                        visible=len(CACHE.runtimes) > 1,
                    )
                with gr.Tabs() as mode_tabs:
                    with gr.Tab("Generate", id="generate"):
                        gr.Markdown("Pick a class and up to four orders, then **Generate**.")
                    with gr.Tab("Edit a picture", id="edit"):
                        gr.Markdown(
                            "Upload a picture (or click a final image), then paint the cells "
                            "to regenerate or pick a mask. The kept cells go first, as given; "
                            "each order fills the rest as the class below."
                        )
                        editor = gr.ImageEditor(
                            label="Picture",
                            type="numpy",
                            image_mode="RGBA",
                            sources=("upload", "clipboard"),
                            transforms=(),
                            layers=False,
                            brush=gr.Brush(colors=["#ff2bd6"], color_mode="fixed", default_size=24),
                            height=320,
                            elem_id="editor",
                        )
                        mask_box = gr.Radio(
                            [BRUSH, *MASK_PRESETS], value="center", label="Cells to regenerate"
                        )
                        preview = gr.Image(
                            label="What Edit keeps (hatched cells are regenerated)",
                            interactive=False,
                            format="png",
                            height=256,
                            elem_id="edit-preview",
                        )
                        edit_go = gr.Button("Edit", variant="primary", elem_id="edit-go")
                with gr.Row(equal_height=True):
                    class_box = gr.Dropdown(
                        pipe.class_choices(),  # shown as "🦊 fox", searchable; value: "fox"
                        value=pipe.class_names[0],
                        label="Class",
                        filterable=True,
                        allow_custom_value=True,  # ids, emoji and synonyms work too
                        scale=5,
                    )
                    class_dice = gr.Button("Any", scale=0, min_width=64, size="sm")
                order_box = gr.CheckboxGroup(
                    list(ORDER_NAMES), value=DEFAULT_ORDERS, label="Generation orders (1 to 4)"
                )
                with gr.Row(equal_height=True):
                    # No precision: 1.5 is refused, not silently rounded.
                    seed_box = gr.Number(0, label="Seed", scale=5, elem_id="seed")
                    seed_dice = gr.Button("New", scale=0, min_width=64, size="sm")
                speed_box = gr.Slider(
                    *studio.SPEED_RANGE,
                    value=studio.DEFAULT_SPEED,
                    step=4,
                    label="Speed (steps per second)",
                )
                with gr.Row():
                    steps_box = gr.CheckboxGroup(
                        list(studio.STEP_CHOICES),
                        value=[studio.STEP_CHOICES[0]],
                        label="Steps (256: one token per step)",
                        info="fewer decode several tokens per step, zero-shot; pick several "
                        "to see each order at each",
                    )
                    schedule_box = gr.Radio(
                        list(SCHEDULES), value=studio.DEFAULT_SCHEDULE, label="Tokens per step"
                    )
                with gr.Accordion("Sampler (the model's paper defaults)", open=True):
                    with gr.Row():
                        cfg_box = _sampler_box("CFG scale", step=0.5)
                        power_box = _sampler_box("CFG schedule power", step=0.05)
                    with gr.Row():
                        temperature_box = _sampler_box("Temperature", step=0.01)
                        top_k_box = _sampler_box("Top-k (0 = off)", step=1, precision=0)
            with gr.Column(scale=3):
                status = gr.Markdown("Press **Generate**.", elem_id="status", container=False)
                live = gr.HTML(blank_panels(model, DEFAULT_ORDERS), elem_id="live", container=False)
                finals = gr.Gallery(
                    label="Final images (click one to edit it)",
                    columns=4,
                    height="auto",
                    object_fit="contain",
                    elem_id="finals",
                    format="png",  # lossless: the pictures as generated
                    buttons=["download", "fullscreen"],
                )
                with gr.Row():
                    order_plot = gr.Plot(format="png", show_label=False, elem_id="order-plot")
                stats_plot = gr.Plot(format="png", show_label=False, elem_id="stats-plot")
                # A row of its own: in a column beside the plot Gradio cut its name to "smile…".
                animation = gr.File(label="Animation of the run (WebP)", elem_id="animation")
        gr.Examples(
            studio.examples(model),
            inputs=[model_box, class_box, order_box, seed_box, steps_box],
            label="Examples",
        )

        outputs = [status, live, finals, animation, order_plot, stats_plot]
        streamed = {"postprocess": False}  # done by _postprocessed
        sampler_boxes = [cfg_box, power_box, temperature_box, top_k_box]
        inputs = [model_box, class_box, order_box, seed_box, *sampler_boxes, speed_box, runtime_box]
        inputs += [steps_box, schedule_box]
        # Blank the panels at once, and only for a valid request (the validator keeps the last
        # results while it shows what is wrong).
        # preprocess=False: raw values reach parse, which words every error (Gradio's own
        # choice checks would fail inside the validator with a bare "400 Bad Request").
        go.click(clear_panels, inputs, live, validator=check_inputs, preprocess=False, **private)
        go.click(
            _postprocessed(generate, outputs),
            inputs=inputs,
            outputs=outputs,
            validator=check_inputs,
            preprocess=False,
            api_name="generate",
            **RUNS,
            **streamed,
        )
        stop.click(stop_run, None, None, queue=False, **private)
        # One finished image, no streaming: what an MCP client (a tool call) wants.
        single_order = gr.Dropdown(list(ORDER_NAMES), value="raster", visible=False)
        still = gr.Image(visible=False, format="png")
        gr.Button(visible=False).click(
            generate_image,
            [model_box, class_box, single_order, seed_box],
            still,
            preprocess=False,
            api_name="generate_image",
        )
        edit_inputs = [editor, mask_box, class_box, order_box, seed_box, *sampler_boxes]
        edit_inputs += [speed_box, runtime_box, steps_box, schedule_box]
        edit_go.click(
            _postprocessed(edit_from_editor, outputs),
            [model_box, *edit_inputs],
            outputs,
            **private,
            **RUNS,
            **streamed,
        )
        # The API's edit: a picture file and a preset name, or a mask picture.
        # Pictures arrive decoded (never as server paths); image_mode None keeps their
        # transparency, which goes onto white as the editor's does.
        api_image = gr.Image(type="pil", image_mode=None, visible=False)
        api_mask = gr.Textbox(visible=False)
        api_mask_image = gr.Image(type="pil", image_mode=None, visible=False)
        api_inputs = [model_box, api_image, api_mask, class_box, order_box, seed_box]
        # Steps as JSON: a count or a list of counts (a CheckboxGroup would take lists only).
        api_steps = gr.JSON(visible=False)
        api_inputs += [api_mask_image, *sampler_boxes, speed_box, runtime_box, api_steps]
        api_inputs += [schedule_box]
        gr.Button(visible=False).click(
            _postprocessed(edit, outputs), api_inputs, outputs, api_name="edit", **RUNS, **streamed
        )
        gr.on(
            [editor.change, editor.upload, editor.apply, mask_box.change, seed_box.change],
            edit_preview,
            [model_box, runtime_box, editor, mask_box, seed_box],
            preview,
            trigger_mode="always_last",
            **private,
        )
        finals.select(edit_this, None, [editor, mode_tabs], **private)
        demo.load(fill_defaults, [model_box, runtime_box, *sampler_boxes], sampler_boxes, **private)
        choice = [model_box, runtime_box, class_box]
        model_box.change(pick_model, choice, [runtime_box, class_box, *sampler_boxes], **private)
        # .input: a person's pick only (pick_model selects the model itself, runtime included).
        runtime_box.input(select_model, choice, [class_box, *sampler_boxes], **private)
        class_dice.click(random_class, [model_box, runtime_box, class_box], class_box, **private)
        seed_dice.click(random_seed, None, seed_box, **private)
        gr.on(
            [order_box.change, steps_box.change],
            blank_panels,
            [model_box, order_box, steps_box, runtime_box],
            live,
            **private,
        )
    demo.queue(default_concurrency_limit=2)
    demo._queue.sleep_when_free = QUEUE_POLL_S  # see QUEUE_POLL_S; tests check it is Gradio's
    return demo


if __name__ == "__main__":
    where = f"cpu, {studio.leave_a_core()} sampler threads" if CACHE.device.type == "cpu" else ""
    print(f"RAR Studio on {where or CACHE.device}; generation runs through {GPU_CALLS}", flush=True)
    create_demo().launch(**LAUNCH_OPTIONS)
