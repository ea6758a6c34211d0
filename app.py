"""RAR Studio: pick a class and up to four generation orders, then watch RAR paint each panel
token by token. `python app.py` serves it; this file is only the UI, the engine (model cache,
request checks, paced frames, results) is rar_demo/studio.py.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import torch

from rar_demo import studio
from rar_demo.hub import WeightsUnavailable
from rar_demo.orders import ORDER_NAMES
from rar_demo.pipeline import Pipeline
from rar_demo.registry import MODEL_NAMES

try:  # ZeroGPU on Hugging Face Spaces: a GPU is attached only while a decorated call runs.
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:

    def gpu(fn: Callable) -> Callable:
        return fn


# On ZeroGPU torch reports CUDA at start-up, so models load onto it there, as it expects. On
# a GPU each decode step replays a CUDA graph, captured inside the first call; RAR_DEMO_COMPILE=1
# also compiles it first (a dedicated GPU only: ZeroGPU does not allow compiling).
CACHE = studio.ModelCache(
    "cuda" if torch.cuda.is_available() else "cpu",
    compile=os.environ.get("RAR_DEMO_COMPILE") == "1",
)
RUNTIME_CHOICES = studio.runtimes(os.environ)
DEFAULT_ORDERS = ["raster", "random"]
CSS = """
/* Small models make 64 px images: scale them up crisply to fill the panel. */
.panel img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
/* Keep the order's label and the buttons above the picture rather than over its top row. */
.panel .image-container { padding-top: 32px; box-sizing: border-box; }
#status { min-height: 1.6em; }
"""
# System fonts: the default theme would fetch its fonts from Google, which offline use lacks.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)
LAUNCH_OPTIONS: dict[str, Any] = {"css": CSS, "theme": THEME}


def _load(model: str, runtime: str) -> Pipeline | None:
    """The model for the controls, or None after a warning: an error would cover them up,
    and Generate reports the same problem as an error anyway."""
    try:
        return CACHE.get(model, runtime)
    except (ValueError, WeightsUnavailable) as err:
        gr.Warning(str(err))
        return None


@gpu
def _run(request: studio.Request) -> Iterator[studio.Update]:
    yield from studio.run(CACHE, request)


def _or_skip(value: Any) -> Any:
    return gr.skip() if value is studio.KEEP else value


def _outputs(update: studio.Update) -> tuple:
    """An Update as values for (status, 4 panels, animation, order plot, stats plot). Panels
    are plain images (None when unused) so API clients get files; their labels and
    visibility follow the chosen orders (panel_layout)."""
    if update.panels is studio.KEEP:
        panels = [gr.skip()] * studio.MAX_ORDERS
    else:
        panels = [*update.panels.values()]
        panels += [None] * (studio.MAX_ORDERS - len(panels))
    return (
        update.status,
        *panels,
        _or_skip(update.animation),
        _or_skip(update.order_plot),
        _or_skip(update.stats_plot),
    )


def generate(
    model: str,
    class_name: str,
    orders: list[str],
    seed: int,
    cfg_scale: float | None = None,
    cfg_power: float | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    speed: float = studio.DEFAULT_SPEED,
    runtime: str = "torch",
) -> Iterator[tuple]:
    """Generates one image of `class_name` (a name or an id) per order in `orders` (1 to 4),
    in one batch with the same seed, streaming (status, 4 panels, animation, order plot,
    stats plot). Sampler settings left empty take the model's paper defaults; top_k 0 = off.
    runtime: "torch", "onnx" or "onnx int8" (official models only).
    """
    # No gr.Progress here: with one, a cancelled run marks every output "Error" in the page.
    # Downloads show their progress when the model is picked (select_model) instead.
    try:
        request = studio.parse(
            CACHE,
            model,
            class_name,
            orders,
            seed,
            cfg_scale,
            cfg_power,
            temperature,
            top_k,
            speed,
            runtime,
        )
    except (ValueError, WeightsUnavailable) as err:
        raise gr.Error(str(err)) from None
    for update in _run(request):
        yield _outputs(update)


def select_model(
    model: str,
    runtime: str,
    class_name: str,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
) -> tuple:
    """Loads `model` on `runtime` (downloading or exporting it if needed): its classes and
    its sampler defaults."""
    if runtime != "torch" and not CACHE.has(model, runtime):
        progress(0, desc="Preparing the ONNX export (built on first use, then cached)")
    pipe = _load(model, runtime)
    if pipe is None:
        return (gr.skip(),) * 5
    classes = gr.Dropdown(choices=list(pipe.class_names), value=studio.keep_class(pipe, class_name))
    return classes, *studio.sampler_values(pipe.sampling)


def random_class(model: str, runtime: str, current: str) -> str | dict:
    """Any class but the current one, so that the dice always visibly changes something."""
    pipe = _load(model, runtime)
    if pipe is None:
        return gr.skip()
    return random.choice([c for c in pipe.class_names if c != current] or pipe.class_names)


def random_seed() -> int:
    return random.randrange(1_000_000)  # short enough to read and retype


def panel_layout(orders: list[str]) -> list[dict]:
    """Shows one empty, labelled panel per chosen order before a run starts."""
    names = list(orders or [])[: studio.MAX_ORDERS]
    shown = [gr.update(label=name, visible=True) for name in names]
    return shown + [gr.update(visible=False)] * (studio.MAX_ORDERS - len(shown))


def _sampler_box(label: str, step: float, precision: int | None = None) -> gr.Number:
    # No initial value: left empty, a setting takes the model's default, which is also what
    # an API call that omits it gets; the page fills the defaults in when it loads. Ranges are
    # checked in studio.parse, whose errors name the setting.
    return gr.Number(
        label=label, step=step, precision=precision, placeholder="model default", min_width=100
    )


def create_demo(model: str | None = None) -> gr.Blocks:
    model = model or studio.default_model(os.environ)
    try:
        pipe = CACHE.get(model)
    except WeightsUnavailable as err:
        warnings.warn(f"{err} Starting with the bundled model instead.", stacklevel=2)
        model, pipe = "bundled", CACHE.get("bundled")
    private: dict[str, Any] = {"api_visibility": "private"}

    with gr.Blocks(title="RAR Studio", delete_cache=(600, 1800)) as demo:
        gr.Markdown(
            "# RAR Studio\n"
            "[RAR](https://github.com/bytedance/1d-tokenizer) generates a 16×16 grid of image "
            "tokens one token per step, and was trained to do so in *any* order. Pick a class "
            "and up to four orders: each panel is generated in its own order, side by side, "
            "with the same seed. Grey hatched cells are not generated yet; the pink square is "
            "the newest token."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                with gr.Row():
                    model_box = gr.Dropdown(list(MODEL_NAMES), value=model, label="Model")
                    runtime_box = gr.Radio(
                        RUNTIME_CHOICES,
                        value="torch",
                        label="Runtime",
                        visible=len(RUNTIME_CHOICES) > 1,
                    )
                with gr.Row(equal_height=True):
                    class_box = gr.Dropdown(
                        list(pipe.class_names),
                        value=pipe.class_names[0],
                        label="Class",
                        filterable=True,
                        allow_custom_value=True,  # ids and synonyms work too
                        scale=5,
                    )
                    class_dice = gr.Button("🎲", scale=0, min_width=48)
                order_box = gr.CheckboxGroup(
                    list(ORDER_NAMES), value=DEFAULT_ORDERS, label="Generation orders (1 to 4)"
                )
                with gr.Row(equal_height=True):
                    seed_box = gr.Number(0, label="Seed", precision=0, scale=5)
                    seed_dice = gr.Button("🎲", scale=0, min_width=48)
                speed_box = gr.Slider(
                    *studio.SPEED_RANGE,
                    value=studio.DEFAULT_SPEED,
                    step=4,
                    label="Speed (steps per second)",
                )
                with gr.Accordion("Sampler (the model's paper defaults)", open=True):
                    with gr.Row():
                        cfg_box = _sampler_box("CFG scale", step=0.5)
                        power_box = _sampler_box("CFG schedule power", step=0.05)
                    with gr.Row():
                        temperature_box = _sampler_box("Temperature", step=0.01)
                        top_k_box = _sampler_box("Top-k (0 = off)", step=1, precision=0)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary")
                    stop = gr.Button("Stop", variant="stop")
            with gr.Column(scale=3):
                status = gr.Markdown("Press **Generate**.", elem_id="status")
                with gr.Row():
                    panels = [
                        gr.Image(
                            label=name,
                            visible=i < len(DEFAULT_ORDERS),
                            format="png",  # lossless: frames are small and exact
                            interactive=False,
                            height=300,
                            min_width=200,
                            elem_classes="panel",
                            buttons=["download", "fullscreen"],
                        )
                        for i, name in enumerate(
                            DEFAULT_ORDERS + [""] * (studio.MAX_ORDERS - len(DEFAULT_ORDERS))
                        )
                    ]
                with gr.Row():
                    order_plot = gr.Plot(format="png", show_label=False, elem_id="order-plot")
                with gr.Row():
                    stats_plot = gr.Plot(
                        format="png", show_label=False, scale=2, elem_id="stats-plot"
                    )
                    animation = gr.File(
                        label="Animation of the run (WebP)", scale=1, elem_id="animation"
                    )
        gr.Examples(
            studio.examples(model),
            inputs=[model_box, class_box, order_box, seed_box],
            label="Examples",
        )

        sampler_boxes = [cfg_box, power_box, temperature_box, top_k_box]
        run = go.click(
            generate,
            inputs=[
                model_box,
                class_box,
                order_box,
                seed_box,
                *sampler_boxes,
                speed_box,
                runtime_box,
            ],
            outputs=[status, *panels, animation, order_plot, stats_plot],
            api_name="generate",
        )
        stop.click(None, cancels=[run])
        gr.on(
            [demo.load, model_box.change, runtime_box.change],
            select_model,
            [model_box, runtime_box, class_box],
            [class_box, *sampler_boxes],
            **private,
        )
        class_dice.click(random_class, [model_box, runtime_box, class_box], class_box, **private)
        seed_dice.click(random_seed, None, seed_box, **private)
        order_box.change(panel_layout, order_box, panels, **private)
    demo.queue(default_concurrency_limit=2)
    return demo


if __name__ == "__main__":
    create_demo().launch(**LAUNCH_OPTIONS)
