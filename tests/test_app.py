"""The app served in-process and driven through gradio_client, exactly as an API user would."""

from __future__ import annotations

import base64
import io
import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import STEP, serve
from gradio_client import Client
from gradio_client.client import Job
from PIL import Image

from rar_demo import studio
from rar_demo.render import HIGHLIGHT

ORDERS = ["raster", "random"]
# render.mark_progress draws a pending cell as 0.25 * picture + 0.75 * grey, grey 0.80 or 0.88
# by hatch stripe: every channel of a pending pixel lies in this band, whatever the picture.
PENDING_BAND = (np.floor(0.60 * 255), np.ceil(0.91 * 255))


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve() as local_url:
        yield local_url


@pytest.fixture(scope="module")
def client(url: str) -> Client:
    return Client(url, verbose=False, analytics_enabled=False)


DATA_URI = re.compile(r'src="data:image/\w+;base64,([^"]+)"')
FIGURE = re.compile(r'<figure class="panel">.*?</figure>', re.S)


def _flips(panels_html: str) -> list[list[np.ndarray]]:
    """Each live panel's frames in one message (its inline images), in the order they show."""
    return [
        [
            np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
            for b64 in DATA_URI.findall(figure)
        ]
        for figure in FIGURE.findall(panels_html)
    ]


def _panels(out: tuple) -> list[np.ndarray]:
    """The live panels as an update leaves them once its frames have played: each one's last."""
    return [frames[-1] for frames in _flips(out[1])]


def _finals(out: tuple) -> list[np.ndarray]:
    images = [item["image"] for item in out[2]]
    return [_image(i if isinstance(i, str) else i["path"]) for i in images]


@pytest.fixture(scope="module")
def run_job(client: Client) -> Job:
    """One finished bundled-model run, raster beside random, paced to 2 s: on ONNX at full
    speed it can end within a second, a couple of dozen frames."""
    job = client.submit(
        model="bundled",
        class_name="Animals & Nature",
        orders=ORDERS,
        seed=0,
        speed=128,
        api_name="/generate",
    )
    job.result(timeout=300)
    return job


@pytest.fixture(scope="module")
def run_outputs(run_job: Job) -> list[tuple]:
    """Every streamed update of that run."""
    return run_job.outputs()


def _image(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _steps(outputs: list[tuple]) -> list[tuple[int, tuple]]:
    return [(int(m[1]), out) for out in outputs if (m := STEP.search(out[0]))]


def test_generation_streams_many_changing_frames(run_outputs: list[tuple]) -> None:
    steps = _steps(run_outputs)
    numbers = [s for s, _ in steps]
    assert numbers == sorted(set(numbers)) and numbers[-1] < 256
    # Every frame of every message, as the page plays them: several frames to a message.
    frames = [frame for _, out in steps for frame in zip(*_flips(out[1]), strict=True)]
    assert len(frames) >= 40 and len(frames) > 2 * len(steps), (len(frames), len(steps))
    for before, after in itertools.pairwise(frames):
        assert len(before) == len(after) == 2  # raster, random
        for a, b in zip(before, after, strict=True):  # each frame shows at least one new token
            assert not np.array_equal(a, b)
    first = run_outputs[0]
    assert not first[2] and first[3] is None  # the last run's results are cleared


def test_halfway_raster_frame_shows_done_rows_above_pending_rows(run_outputs: list[tuple]) -> None:
    step, out = min(_steps(run_outputs), key=lambda s: abs(s[0] - 128))
    frame = _panels(out)[0]  # the raster panel, 64 x 64: 16 x 16 cells of 4 px
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


def test_the_result_holds_distinct_finals_an_animation_and_plots(run_job: Job) -> None:
    """What a client that only asks for the result gets: everything, not "update" markers."""
    import app

    result = run_job.result()
    assert result[0].startswith("**Done**")
    raster, random = _finals(result)
    assert [item["caption"] for item in result[2]] == ORDERS
    assert raster.shape == random.shape == (64, 64, 3)
    assert not np.array_equal(raster, random)
    lo, hi = PENDING_BAND
    assert not ((raster >= lo) & (raster <= hi)).all()  # finals are not greyed
    runtime = app.CACHE.default_runtime("bundled")  # the run took the fastest here
    assert (f"· {runtime}" in result[0]) == (runtime != "torch")
    live = _panels(result)  # the live panels end on the finals, unhatched
    assert len(live) == 2 and all(map(np.array_equal, live, (raster, random)))
    with Image.open(result[3]) as animation:
        assert animation.format == "WEBP" and animation.n_frames > 20
    for plot in result[4:]:  # order heatmaps, per-step confidence
        assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png")


def test_a_run_leaves_a_handful_of_files_in_gradios_cache(client: Client) -> None:
    from gradio.utils import get_upload_folder

    def files() -> set[Path]:
        return {p for p in Path(get_upload_folder()).rglob("*") if p.is_file()}

    before = files()
    job = client.submit(
        model="bundled", class_name="Flags", orders=ORDERS, seed=5, speed=128, api_name="/generate"
    )
    job.result(timeout=300)
    frames = sum(len(_flips(out[1])[0]) for _, out in _steps(job.outputs()))
    assert frames >= 20  # many frames, in a few messages
    added = files() - before
    assert 0 < len(added) <= 6, sorted(p.name for p in added)  # finals and the animation


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


def test_the_onnx_runtime_paints_the_same_picture(client: Client) -> None:
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
        result = client.submit(**inputs, runtime=runtime).result(timeout=300)
        runs.append((_finals(result)[0], result[0]))
    (torch_image, torch_status), (onnx_image, onnx_status) = runs
    assert onnx_status.startswith("**Done**") and "· onnx" in onnx_status
    assert "onnx" not in torch_status
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
    client: Client, count_steps: list[int]
) -> None:
    steps = count_steps
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
    assert optional["runtime"]["parameter_default"] == "auto"  # the fastest here


def test_the_mcp_server_offers_an_image_tool(url: str) -> None:
    import asyncio

    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    tools = {t["name"]: t for t in httpx.get(f"{url}gradio_api/mcp/schema").json()}
    assert {"image", "mask", "class_name"} <= set(tools["edit"]["inputSchema"]["properties"])
    tool = tools["generate_image"]
    assert "Returns: The generated image" in tool["description"]
    assert set(tool["inputSchema"]["properties"]) == {"model", "class_name", "order", "seed"}

    async def call() -> list:
        async with (
            streamablehttp_client(f"{url}gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            arguments = {"model": "bundled", "class_name": "Flags", "order": "spiral", "seed": 1}
            return (await session.call_tool("generate_image", arguments)).content

    content = asyncio.run(call())
    images = [c for c in content if c.type == "image"]
    assert len(images) == 1 and images[0].mimeType.startswith("image/")
    with Image.open(io.BytesIO(base64.b64decode(images[0].data))) as image:
        assert image.size == (256, 256)


def test_the_app_starts_as_a_space_does(tmp_path) -> None:
    """`python app.py` with the real `spaces` package and a Space's environment: one
    generation through the spaces.GPU-decorated path (on the bundled model: no download)."""
    pytest.importorskip("spaces")
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "SPACE_ID": "rar-studio/demo",
        "SYSTEM": "spaces",
        "RAR_DEMO_MODEL": "bundled",  # the Space's default, rar_b, cannot be fetched here
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
    }
    root = Path(__file__).resolve().parents[1]
    log = (tmp_path / "space.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "app.py"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "space.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.5)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        status = client.predict(
            model="bundled", class_name="Flags", orders=["raster"], seed=0, speed=512,
            api_name="/generate",
        )[0]  # fmt: skip
        assert status.startswith("**Done**")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "generation runs through spaces.GPU" in (tmp_path / "space.log").read_text()


def test_fewer_steps_decode_several_tokens_per_step(client: Client) -> None:
    job = client.submit(
        model="bundled", class_name="Flags", orders=["random"], seed=0, speed=512, steps=32,
        api_name="/generate",
    )  # fmt: skip
    result = job.result(timeout=300)
    assert result[0].startswith("**Done**: 32 steps") and "32 steps (cosine)" in result[0]
    numbers = [int(m[1]) for out in job.outputs() if (m := STEP.search(out[0]))]
    assert numbers and all(n <= 32 for n in numbers)
    for changes, message in (
        ({"steps": 300}, "steps must be between 1 and 256"),
        ({"steps": 64, "schedule": "linear"}, "schedule"),
    ):
        with pytest.raises(Exception, match=message):
            client.predict(
                model="bundled", class_name="Flags", orders=["random"], seed=0,
                api_name="/generate", **changes,
            )  # fmt: skip


def test_step_counts_side_by_side_through_the_api(client: Client, picture: Path) -> None:
    """Each order at each step count: the panels are labelled so, and the 32-step panels
    come out different from the 256-step ones of the same order and seed."""
    from gradio_client import handle_file

    out = client.predict(
        model="bundled", class_name="Flags", orders=["random", "raster"], seed=2, speed=512,
        steps=[256, 32], api_name="/generate",
    )  # fmt: skip
    assert out[0].startswith("**Done**: 256 / 32 steps")
    captions = [item["caption"] for item in out[2]]
    assert captions == [f"{o} · {n} steps" for o in ("random", "raster") for n in (256, 32)]
    finals = _finals(out)
    assert np.abs(finals[0].astype(int) - finals[1]).max() > 50
    edit = client.predict(
        model="bundled", image=handle_file(str(picture)), mask="right", class_name="0",
        orders=["random"], seed=2, speed=512, steps=[128, 16], api_name="/edit",
    )  # fmt: skip
    assert edit[0].startswith("**Done**: 128 / 16 steps") and len(edit[2]) == 2
    with pytest.raises(Exception, match="at most 4 panels: 3 orders x 2 step counts make 6"):
        client.predict(
            model="bundled", class_name="Flags", orders=["random", "raster", "spiral"], seed=2,
            steps=[256, 64], api_name="/generate",
        )  # fmt: skip


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    """A 200x120 picture: white, a dark blue block left of centre (centre-cropped to 120)."""
    pixels = np.full((120, 200, 3), 255, dtype=np.uint8)
    pixels[30:90, 60:110] = (20, 40, 160)
    path = tmp_path_factory.mktemp("edit") / "picture.png"
    Image.fromarray(pixels).save(path)
    return path


def test_edit_through_the_api_keeps_the_pictures_cells(client: Client, picture: Path) -> None:
    from gradio_client import handle_file

    job = client.submit(
        model="bundled",
        image=handle_file(str(picture)),
        mask="right",
        class_name="0",
        orders=ORDERS,
        seed=2,
        speed=512,
        api_name="/edit",
    )
    out = job.result(timeout=300)
    assert out[0].startswith("**Done**: 128 steps") and "edit of 128 cells" in out[0]
    finals = _finals(out)
    assert len(finals) == 2
    first = _panels(job.outputs()[0])
    kept = np.asarray(Image.open(picture).convert("RGB").crop((40, 0, 160, 120)).resize((64, 64)))
    for image in (*finals, *first):
        small = np.asarray(Image.fromarray(image).resize((64, 64), Image.NEAREST)).astype(int)
        # The left half is the picture (through the tokenizer): its blue block included.
        assert np.abs(small[:, :32] - kept[:, :32]).mean() < 30


def test_edit_with_a_mask_picture_and_bad_masks(client: Client, picture: Path, tmp_path) -> None:
    from gradio_client import handle_file

    mask = np.zeros((120, 200), dtype=np.uint8)
    mask[:, 40:100] = 255  # the left half of the crop
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    args = {"model": "bundled", "image": handle_file(str(picture)), "class_name": "0"}
    args |= {"orders": ["raster"], "seed": 0, "speed": 512, "api_name": "/edit"}
    out = client.predict(mask="", mask_image=handle_file(str(mask_path)), **args)
    assert out[0].startswith("**Done**: 128 steps")
    for bad, message in [("sideways", "unknown mask 'sideways'"), ("", "paint the cells")]:
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(mask=bad, **args)


def test_a_transparent_picture_reaches_the_edit_on_white(client: Client, tmp_path) -> None:
    from gradio_client import handle_file

    rgba = np.zeros((64, 64, 4), dtype=np.uint8)  # transparent black, an opaque blue block
    rgba[16:48, 16:48] = (20, 40, 160, 255)
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba).save(path)
    out = client.predict(
        model="bundled", image=handle_file(str(path)), mask="left", class_name="0",
        orders=["raster"], seed=0, speed=512, api_name="/edit",
    )  # fmt: skip
    final = np.asarray(Image.fromarray(_finals(out)[0]).resize((64, 64), Image.NEAREST))
    assert final[:, 56:].mean() > 200  # the kept right edge is white, not black


def test_streamed_values_are_postprocessed_once_each() -> None:
    """The run events skip Gradio's postprocess: _postprocessed does it, once per new value,
    into what Gradio sends (a Gallery's JSON, a file's FileData)."""
    import gradio as gr

    import app

    with gr.Blocks():
        status, gallery = gr.Markdown(), gr.Gallery(format="png")
    calls: list[object] = []
    markdown = status.postprocess
    status.postprocess = lambda value: calls.append(value) or markdown(value)
    image = np.zeros((4, 4, 3), np.uint8)
    finals = [(image, "raster")]

    def run() -> Iterator[tuple]:
        step = 1
        for _ in range(2):  # equal strings, but new objects: postprocessed each time
            yield f"  **Step {step}**", None
        yield (done := "**Done**"), finals
        yield done, finals  # the same objects: nothing postprocessed

    out = list(app._postprocessed(run, [status, gallery])())
    assert [o[0] for o in out] == ["**Step 1**", "**Step 1**", "**Done**", "**Done**"]
    assert calls == ["  **Step 1**", "  **Step 1**", "**Done**"]
    sent = out[-1][1]
    assert sent is out[-2][1] and sent[0]["caption"] == "raster"
    assert Path(sent[0]["image"]["path"]).is_file()


def test_the_queue_polls_at_the_apps_pace() -> None:
    """create_demo slows Gradio's idle queue poll through an attribute of Gradio's own (a
    rename in a new Gradio would otherwise leave a dead setting)."""
    import gradio as gr

    import app

    with gr.Blocks() as plain:
        gr.Markdown()
    assert hasattr(plain.queue()._queue, "sleep_when_free")
    assert app.create_demo("bundled")._queue.sleep_when_free == app.QUEUE_POLL_S


def test_the_run_events_postprocess_their_own_outputs() -> None:
    import app

    demo = app.create_demo("bundled")
    runs = [fn for fn in demo.fns.values() if fn.concurrency_id == "runs"]
    wrapped = {fn.fn.__wrapped__ for fn in runs if not fn.postprocess}
    assert wrapped == {app.generate, app.edit, app.edit_from_editor}


def test_a_flipbook_sends_its_frames_in_messages_with_their_delays() -> None:
    import app

    now = [0.0]
    book = app.Flipbook(clock=lambda: now[0])
    frames = [
        {"raster": np.full((8, 8, 3), 10 * i, np.uint8), "random": np.full((8, 8, 3), 5, np.uint8)}
        for i in range(4)
    ]
    assert book.add(frames[0])  # nothing sent yet: out at once
    first = book.take()
    for t, frame in zip((0.05, 0.1), frames[1:3], strict=True):
        now[0] = t
        assert not book.add(frame)  # held: within FLIP_S of the last message
    now[0] = 0.25
    assert book.add(frames[3])
    message = book.take()
    assert [[f[0, 0, 0] for f in fs] for fs in _flips(first)] == [[0], [5]]
    shown = _flips(message)
    assert [[f[0, 0, 0] for f in fs] for fs in shown] == [[10, 20, 30], [5, 5, 5]]
    assert re.findall(r"animation-delay: (\d+)ms", message) == ["50", "200"] * 2
    assert 'class="live turn-1"' in first and 'class="live turn-0"' in message  # replayed
    assert book.take() is None
    # After a gap the frames held are late already: they play within FLIP_S, not later still.
    now[0] = 0.3
    assert not book.add(frames[0])
    now[0] = 1.0
    assert book.add(frames[1])
    assert re.findall(r"animation-delay: (\d+)ms", book.take()) == [str(int(app.FLIP_S * 1000))] * 2


def test_held_frames_go_out_with_a_stop_and_give_way_to_newer_panels(monkeypatch) -> None:
    import app

    monkeypatch.setattr(app, "FLIP_S", 60.0)  # every frame after the first message is held
    blank, *frames = ({"raster": np.full((8, 8, 3), v, np.uint8)} for v in (255, 1, 2, 3))
    live = [studio.Update(status=f"Step {i}", panels=p, frame=True) for i, p in enumerate(frames)]
    start = studio.Update(status="Starting", panels=blank)
    stopped = studio.Update(status="Stopped at step 3")
    monkeypatch.setattr(app, "_run", lambda request, stop: iter([start, *live, stopped]))
    out = list(app._stream(None, None))
    # The first frame goes out at once; the next two wait and go out with the stop.
    assert [o[0] for o in out] == ["Starting", "Step 0", "Stopped at step 3"]
    assert [f[0, 0, 0] for f in _flips(out[2][1])[0]] == [2, 3]  # the frames held, played
    done = studio.Update(status="Done", panels={"raster": np.full((8, 8, 3), 9, np.uint8)})
    monkeypatch.setattr(app, "_run", lambda request, stop: iter([start, *live, done]))
    out = list(app._stream(None, None))
    assert [o[0] for o in out] == ["Starting", "Step 0", "Done"]
    assert [f[0, 0, 0] for f in _flips(out[2][1])[0]] == [9]  # the finals, not stale frames


def test_picking_a_model_picks_its_fastest_runtime_here() -> None:
    import app

    quiet = {"progress": lambda *a, **k: None}
    runtime, classes, *sampler = app.pick_model("bundled", "onnx int8", "Flags", **quiet)
    assert runtime.value == "auto"  # int8 does not run the bundled model: back to auto
    stands_for = app.CACHE.default_runtime("bundled")  # onnx on a CPU, torch on a GPU
    assert dict(runtime.choices)[f"auto: {stands_for}"] == "auto"
    assert classes.value == "Flags" and len(sampler) == 4
    assert app.pick_model("bundled", "torch", "Flags", **quiet)[0].value == "torch"  # kept
