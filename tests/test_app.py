"""The studio: its engine (pacing, rendering, request checks) and the app served in-process and
driven through gradio_client, exactly as an API user would."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no version check over the network

import numpy as np
import pytest
import torch
from gradio_client import Client
from PIL import Image

import app
from rar_demo import studio
from rar_demo.hub import IMAGENET_CLASSES
from rar_demo.render import HIGHLIGHT

ORDERS = ["raster", "random"]
STEP = re.compile(r"Step (\d+) / (\d+)")
# render.mark_progress draws a pending cell as 0.25 * picture + 0.75 * grey, grey 0.80 or 0.88
# by hatch stripe: every channel of a pending pixel lies in this band, whatever the picture.
PENDING_BAND = (np.floor(0.60 * 255), np.ceil(0.91 * 255))


# ---- the engine, without a server -------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_holds_steps_to_the_requested_speed() -> None:
    clock = FakeClock()
    pacer = studio.Pacer(steps_per_s=10, max_fps=1000, clock=clock, sleep=clock.sleep)
    shown = [pacer.frame_due(step) for step in range(5)]  # an infinitely fast model
    assert shown == [True] * 5
    assert clock.now == pytest.approx(0.5)  # 5 steps at 10 steps/s


def test_pacer_coalesces_a_fast_model_into_at_most_max_fps_frames() -> None:
    clock = FakeClock()
    pacer = studio.Pacer(steps_per_s=1e6, max_fps=25, clock=clock, sleep=clock.sleep)
    frames = []
    for step in range(1000):  # 1000 steps of 1 ms each
        clock.now += 0.001
        if pacer.frame_due(step):
            frames.append(step)
    assert 24 <= len(frames) <= 26  # one second: ~25 frames
    assert min(np.diff(frames)) >= 39  # frames at least 40 ms apart


def test_pacer_does_not_burst_to_make_up_for_a_slow_step() -> None:
    clock = FakeClock()
    pacer = studio.Pacer(steps_per_s=10, max_fps=1000, clock=clock, sleep=clock.sleep)
    pacer.frame_due(0)
    clock.now += 2.0  # the model stalls for two seconds
    pacer.frame_due(1)
    before = clock.now
    pacer.frame_due(2)
    assert clock.now - before == pytest.approx(0.1)  # still one step per 0.1 s


@pytest.fixture(scope="module")
def cache() -> studio.ModelCache:
    return app.CACHE  # shared with the served app: the bundled model loads once


def test_model_cache_loads_each_model_once_across_threads(cache: studio.ModelCache) -> None:
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("bundled"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(p is got[0] for p in got)
    with pytest.raises(ValueError, match="unknown model"):
        cache.get("rar_zz")
    with pytest.raises(ValueError, match="unknown runtime"):
        cache.get("bundled", "tensorrt")


def test_renderer_bounds_decoding_and_previews_in_between(
    cache: studio.ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    render = studio.Renderer(cache, cache.get("bundled"), clock=clock)
    pipe = render.pipe
    decodes = []
    real_decode = pipe.decode

    def slow_decode(canvas: torch.Tensor) -> torch.Tensor:
        decodes.append(clock.now)
        clock.now += 0.1  # every full decode "takes" 100 ms
        return real_decode(canvas)

    monkeypatch.setattr(pipe, "decode", slow_decode)
    frames = []
    for event in itertools.islice(pipe.stream(0, ORDERS, seed=0), 100):
        clock.now += 0.04  # one frame every 40 ms
        frames.append(render(event.canvas, event.positions))
    # 100 ms decodes may take a DECODE_SHARE of the time: one every 0.4 s at most.
    assert len(decodes) >= 2
    assert min(np.diff(decodes)) >= 0.1 / studio.DECODE_SHARE - 1e-9
    assert all(f.shape == (2, 64, 64, 3) and f.dtype == np.uint8 for f in frames)
    # Previews still move: every frame differs from the one before.
    assert all((a != b).any() for a, b in itertools.pairwise(frames))


def test_parse_fills_model_defaults_and_checks_ranges(cache: studio.ModelCache) -> None:
    request = studio.parse(cache, "bundled", "2", ORDERS, 7)
    assert request.class_id == 2 and request.seed == 7
    assert request.sampling == cache.get("bundled").sampling
    tuned = studio.parse(cache, "bundled", "Flags", ORDERS, 7, cfg_scale=5, top_k=0)
    assert tuned.sampling.guidance_scale == 5 and tuned.sampling.top_k is None
    assert studio.parse(cache, "bundled", "Flags", ORDERS, 7, top_k=40).sampling.top_k == 40
    with pytest.raises(ValueError, match="each order"):
        studio.parse(cache, "bundled", "Flags", ["raster", "raster"], 7)
    with pytest.raises(ValueError, match="temperature"):
        studio.parse(cache, "bundled", "Flags", ORDERS, 7, temperature=0)


def test_default_model_follows_the_environment() -> None:
    assert studio.default_model({}) == "bundled"
    assert studio.default_model({"SPACE_ID": "someone/rar"}) == "rar_b"
    assert studio.default_model({"SPACE_ID": "x", "RAR_DEMO_MODEL": "rar_xl"}) == "rar_xl"
    with pytest.raises(ValueError, match="RAR_DEMO_MODEL"):
        studio.default_model({"RAR_DEMO_MODEL": "big"})


def test_zero_gpu_offers_the_torch_runtime_only() -> None:
    assert studio.runtimes({}) == ["torch", "onnx", "onnx int8"]
    assert studio.runtimes({"SPACES_ZERO_GPU": "true"}) == ["torch"]
    assert studio.runtimes({"SPACES_ZERO_GPU": "false"}) == ["torch", "onnx", "onnx int8"]


def test_examples_are_valid_for_their_model(cache: studio.ModelCache) -> None:
    for model, class_name, orders, seed in studio.examples("bundled"):
        studio.parse(cache, model, class_name, orders, seed)
    imagenet = json.loads(IMAGENET_CLASSES.read_text())
    for model, class_name, orders, seed in studio.examples("rar_b"):
        assert model == "rar_b" and class_name in imagenet
        assert 1 <= len(orders) <= studio.MAX_ORDERS and seed >= 0


def count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every step the bundled pipeline's sampler takes, wherever it is driven from."""
    pipe = app.CACHE.get("bundled")
    steps: list[int] = []
    real_stream = pipe.stream

    def counted(*args, **kwargs) -> Iterator:
        for event in real_stream(*args, **kwargs):
            steps.append(event.step)
            yield event

    monkeypatch.setattr(pipe, "stream", counted)
    return steps


def test_closing_a_run_stops_the_sampler(
    cache: studio.ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = count_steps(monkeypatch)
    run = studio.run(cache, studio.parse(cache, "bundled", 0, ORDERS, 0, speed=512))
    for _ in range(4):
        next(run)
    run.close()
    taken = len(steps)
    assert 0 < taken < 256
    time.sleep(0.2)
    assert len(steps) == taken  # nothing runs on after close


# ---- the served app, through gradio_client ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """The app on the bundled model, served in this process; yields its URL."""
    demo = app.create_demo("bundled")
    _, local_url, _ = demo.launch(
        prevent_thread_lock=True, server_port=_free_port(), quiet=True, **app.LAUNCH_OPTIONS
    )
    try:
        yield local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve() as local_url:
        yield local_url


@pytest.fixture(scope="module")
def client(url: str) -> Client:
    return Client(url, verbose=False, analytics_enabled=False)


@pytest.fixture(scope="module")
def run_outputs(client: Client) -> list[tuple]:
    """Every streamed update of one bundled-model run, raster beside random, at full speed."""
    job = client.submit(
        model="bundled",
        class_name="Animals & Nature",
        orders=ORDERS,
        seed=0,
        speed=studio.SPEED_RANGE[1],
        api_name="/generate",
    )
    job.result(timeout=300)
    return job.outputs()


def _image(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _steps(outputs: list[tuple]) -> list[tuple[int, tuple]]:
    return [(int(m[1]), out) for out in outputs if (m := STEP.search(out[0]))]


def test_generation_streams_many_changing_frames(run_outputs: list[tuple]) -> None:
    steps = _steps(run_outputs)
    assert len(steps) >= 20, f"only {len(steps)} intermediate updates"
    numbers = [s for s, _ in steps]
    assert numbers == sorted(set(numbers)) and numbers[-1] < 256
    for (_, before), (_, after) in itertools.pairwise(steps):
        for panel in (1, 2):  # raster, random: each frame shows at least one new token
            assert not np.array_equal(_image(before[panel]), _image(after[panel]))
    assert run_outputs[0][3] is None and run_outputs[0][4] is None  # panels 3 and 4 unused


def test_halfway_raster_frame_shows_done_rows_above_pending_rows(run_outputs: list[tuple]) -> None:
    step, out = min(_steps(run_outputs), key=lambda s: abs(s[0] - 128))
    frame = _image(out[1])  # the raster panel, 64 x 64: 16 x 16 cells of 4 px
    cell = frame.shape[0] // 16
    full_rows = step // 16  # raster: rows above this are complete, rows below untouched
    top = frame[: full_rows * cell]
    bottom = frame[(full_rows + 1) * cell :]
    lo, hi = PENDING_BAND
    assert ((bottom >= lo) & (bottom <= hi)).all(), "a not-yet-generated row is not greyed"
    out_of_band = ((top < lo) | (top > hi)).any(-1).mean()
    assert out_of_band > 0.25, "the generated rows look greyed out"
    # The newest token (raster position step - 1) is outlined.
    row, col = divmod(step - 1, 16)
    assert tuple(frame[row * cell, col * cell]) == HIGHLIGHT


def test_run_ends_with_distinct_finals_an_animation_and_plots(run_outputs: list[tuple]) -> None:
    *_, finals, last = run_outputs
    assert last[0].startswith("**Done**")
    raster, random = _image(finals[1]), _image(finals[2])
    assert raster.shape == random.shape == (64, 64, 3)
    assert not np.array_equal(raster, random)
    lo, hi = PENDING_BAND
    assert not ((raster >= lo) & (raster <= hi)).all()  # finals are not greyed
    with Image.open(last[5]) as animation:
        assert animation.format == "WEBP" and animation.n_frames > 20
    order_plot = run_outputs[0][6]
    stats_plot = last[7]
    for plot in (order_plot, stats_plot):
        assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png")


def test_class_by_id_and_sampler_overrides_work(client: Client) -> None:
    job = client.submit(
        model="bundled",
        class_name="4",
        orders=["spiral"],
        seed=3,
        cfg_scale=0,
        temperature=0.5,
        top_k=10,
        speed=studio.SPEED_RANGE[1],
        api_name="/generate",
    )
    status = job.result(timeout=300)[0]
    assert "Travel & Places (class 4)" in status and "CFG 0" in status and "top-k 10" in status


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_name": "9"}, "out of range"),
        ({"class_name": "volcano"}, "unknown class"),
        ({"orders": []}, "at least one"),
        ({"orders": ["raster", "random", "spiral", "zigzag", "column"]}, "at most 4"),
        ({"seed": -1}, "seed must be between"),
        ({"seed": 2**40}, "seed must be between"),
        ({"cfg_scale": 25}, "CFG scale must be between"),
        ({"cfg_scale": -1}, "CFG scale must be between"),
        ({"model": "rar_zz"}, "rar_zz"),
        ({"orders": ["raster", "sideways"]}, "sideways"),
        ({"runtime": "tensorrt"}, "tensorrt"),  # Gradio checks the choices
        ({"runtime": "onnx int8"}, "int8 changes the bundled model's pictures"),
    ],
)
def test_invalid_inputs_are_rejected_with_a_clear_error(
    client: Client, changes: dict, message: str
) -> None:
    inputs = {"model": "bundled", "class_name": "Flags", "orders": ORDERS, "seed": 0, **changes}
    with pytest.raises(Exception, match=re.escape(message)) as err:
        client.predict(**inputs, api_name="/generate")
    assert "Traceback" not in str(err.value)


def test_the_onnx_runtime_paints_the_same_picture(
    client: Client, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the export is cached under it
    inputs = {
        "model": "bundled",
        "class_name": "Flags",
        "orders": ["raster"],
        "seed": 0,
        "temperature": studio.TEMPERATURE_RANGE[0],  # all but greedy: no ties to break apart
        "speed": studio.SPEED_RANGE[1],
        "api_name": "/generate",
    }
    runs = []  # (final panel, last status) of each runtime
    for runtime in ("torch", "onnx"):
        job = client.submit(**inputs, runtime=runtime)
        job.result(timeout=300)
        *_, finals, last = job.outputs()
        runs.append((_image(finals[1]), last[0]))
    (torch_image, torch_status), (onnx_image, onnx_status) = runs
    assert onnx_status.startswith("**Done**") and "· onnx" in onnx_status
    assert "onnx" not in torch_status
    assert list(tmp_path.glob("rar_demo/onnx/bundled-*/export.json"))
    diff = np.abs(onnx_image.astype(int) - torch_image)
    assert diff.mean() < 0.5  # the same tokens; decoders differ by at most a level here and there


def test_an_unreachable_hub_model_gives_a_clear_error(client: Client) -> None:
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("yucornetto/RAR", "rar_b.bin"), str):
        pytest.skip("rar_b is in the local Hugging Face cache")
    with pytest.raises(Exception, match="could not be downloaded"):
        client.predict(
            model="rar_b", class_name="volcano", orders=ORDERS, seed=0, api_name="/generate"
        )


def test_cancelling_stops_the_generation_on_the_server(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = count_steps(monkeypatch)
    job = client.submit(
        model="bundled", class_name="Flags", orders=ORDERS, seed=0, speed=8, api_name="/generate"
    )
    deadline = time.monotonic() + 60
    while len(steps) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()  # what the Stop button's `cancels=` does too
    time.sleep(1.0)
    taken = len(steps)
    time.sleep(1.5)  # at 8 steps/s a live run would take ~12 more steps
    assert 8 <= taken < 256 and len(steps) == taken


def test_the_api_is_named_and_documents_its_parameters(client: Client) -> None:
    info = client.view_api(print_info=False, return_format="dict")
    params = info["named_endpoints"]["/generate"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert names[:4] == ["model", "class_name", "orders", "seed"]
    optional = {p["parameter_name"]: p for p in params if p["parameter_has_default"]}
    for name in ("cfg_scale", "cfg_power", "temperature", "top_k"):
        assert optional[name]["parameter_default"] is None  # None = the model's default
    assert optional["speed"]["parameter_default"] == studio.DEFAULT_SPEED
    assert optional["runtime"]["parameter_default"] == "torch"
