"""The studio's engine without a server: pacing, rendering, model cache, request checks, runs."""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import app
from rar_demo import studio
from rar_demo.pipeline import Pipeline
from rar_demo.registry import imagenet_classes, spec
from rar_demo.render import LiveFrames
from rar_demo.sampler import tokens_per_step

ORDERS = ["raster", "random"]


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
    pacer = studio.Pacer(steps_per_s=10, clock=clock, sleep=clock.sleep)
    for step in range(5):  # an infinitely fast model
        pacer.wait(step)
    assert clock.now == pytest.approx(0.5)  # 5 steps at 10 steps/s


def test_pacer_does_not_burst_to_make_up_for_a_slow_step() -> None:
    clock = FakeClock()
    pacer = studio.Pacer(steps_per_s=10, clock=clock, sleep=clock.sleep)
    pacer.wait(0)
    clock.now += 2.0  # the model stalls for two seconds
    pacer.wait(1)
    before = clock.now
    pacer.wait(2)
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
    render = studio.Renderer(cache, cache.get("bundled"), clock=clock, background=False)
    pipe = render.pipe
    decodes = []
    real_decode = pipe.decode

    def slow_decode(canvas: torch.Tensor) -> torch.Tensor:
        decodes.append(clock.now)
        clock.now += 0.1  # every full decode "takes" 100 ms
        return real_decode(canvas)

    monkeypatch.setattr(pipe, "decode", slow_decode)
    frames = []
    for event in pipe.stream(0, pipe.orders(ORDERS, 0), seed=0):
        clock.now += 0.04  # one frame every 40 ms: 10.24 s in all
        frames.append(render(event.canvas, event.positions))
    # The first frames are patches only; then 100 ms decodes may take a DECODE_SHARE of the
    # time: at most one every 5 s.
    assert len(decodes) >= 2
    assert decodes[0] >= 0.04 + studio.FIRST_DECODE_S - 1e-9
    assert min(np.diff(decodes)) >= 0.1 / studio.DECODE_SHARE - 1e-9
    assert all(f.shape == (2, 64, 64, 3) and f.dtype == np.uint8 for f in frames)
    # Previews still move: every frame differs from the one before.
    assert all((a != b).any() for a, b in itertools.pairwise(frames))


def _hold_decodes(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event, threading.Event]:
    """Makes pipe.decode wait until `release` is set: returns (release, started, finished)."""
    release, started, finished = threading.Event(), threading.Event(), threading.Event()
    real_decode = pipe.decode

    def held_decode(canvas: torch.Tensor) -> torch.Tensor:
        started.set()
        assert release.wait(30)
        pixels = real_decode(canvas)
        finished.set()
        return pixels

    monkeypatch.setattr(pipe, "decode", held_decode)
    return release, started, finished


def test_a_slow_decode_runs_beside_the_frames(
    cache: studio.ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a full decode runs (here: held until released), frames keep coming from patches;
    the first frame after it ends shows the decode, of the canvas it was started on."""
    clock = FakeClock()
    render = studio.Renderer(cache, cache.get("bundled"), clock=clock)
    pipe = render.pipe
    real_decode = pipe.decode
    release, started, _ = _hold_decodes(pipe, monkeypatch)
    events = list(pipe.stream(0, pipe.orders(ORDERS, 0), seed=0))
    try:
        render(events[0].canvas, events[0].positions)  # patches only
        clock.now = studio.FIRST_DECODE_S + 0.1
        render(events[100].canvas, events[100].positions)  # starts the decode
        assert started.wait(30)
        for event in events[101:110]:  # the decode is held: these frames do not wait for it
            render(event.canvas, event.positions)
        release.set()
        render._pending[0].result(timeout=30)  # the decode is done
        frame = render(events[120].canvas, events[120].positions)
    finally:
        release.set()
        render.close()
    # Cells placed by step 100 show the decode; those placed later, their code's patch.
    decoded = LiveFrames(
        real_decode(events[100].canvas), events[100].canvas, cache.patches(pipe), pipe.grid
    )
    np.testing.assert_array_equal(frame, decoded(events[120].canvas, events[120].positions))


def test_closing_a_renderer_waits_for_its_decode(
    cache: studio.ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No decode outlives its run (on ZeroGPU a run is a GPU call)."""
    clock = FakeClock()
    render = studio.Renderer(cache, cache.get("bundled"), clock=clock)
    pipe = render.pipe
    release, _, finished = _hold_decodes(pipe, monkeypatch)
    events = list(itertools.islice(pipe.stream(0, pipe.orders(ORDERS, 0), seed=0), 10))
    render(events[0].canvas, events[0].positions)
    clock.now = studio.FIRST_DECODE_S + 0.1
    render(events[9].canvas, events[9].positions)  # starts the decode
    closer = threading.Thread(target=render.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive()  # held: close waits for it
    release.set()
    closer.join(30)
    assert not closer.is_alive() and finished.is_set()


def test_parse_fills_model_defaults_and_checks_ranges(cache: studio.ModelCache) -> None:
    request = studio.parse(cache, "bundled", "2", ORDERS, 7)
    assert request.class_id == 2 and request.seed == 7
    assert request.sampling == cache.get("bundled").sampling
    tuned = studio.parse(cache, "bundled", "Flags", ORDERS, 7, cfg_scale=5, top_k=0)
    assert tuned.sampling.guidance_scale == 5 and tuned.sampling.top_k is None
    assert studio.parse(cache, "bundled", "Flags", ORDERS, 7, top_k=40).sampling.top_k == 40
    with pytest.raises(studio.InputError, match="each order") as err:
        studio.parse(cache, "bundled", "Flags", ["raster", "raster"], 7)
    assert err.value.field == "orders"
    with pytest.raises(studio.InputError, match="temperature") as err:
        studio.parse(cache, "bundled", "Flags", ORDERS, 7, temperature=0)
    assert err.value.field == "temperature"
    for seed in (1.5, "abc"):
        with pytest.raises(studio.InputError, match="seed must be a") as err:
            studio.parse(cache, "bundled", "Flags", ORDERS, seed)
        assert err.value.field == "seed"
    with pytest.raises(studio.InputError, match="unknown class") as err:
        studio.parse(cache, "bundled", "volcano", ORDERS, 0)
    assert err.value.field == "class_name"


def test_parse_without_loading_checks_only_what_needs_no_model(
    cache: studio.ModelCache,
) -> None:
    assert studio.parse(cache, "rar_xl", "volcano", ORDERS, 0, load=False) is None
    assert not cache.has("rar_xl")
    with pytest.raises(studio.InputError, match="seed") as err:
        studio.parse(cache, "rar_xl", "volcano", ORDERS, -1, load=False)
    assert err.value.field == "seed"
    with pytest.raises(studio.InputError, match="int8") as err:
        studio.parse(cache, "bundled", "Flags", ORDERS, 0, runtime="onnx int8", load=False)
    assert err.value.field == "runtime"


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


def test_a_run_takes_the_fastest_runtime_offered_unless_told(cache: studio.ModelCache) -> None:
    cpu = studio.ModelCache("cpu")
    assert cpu.default_runtime("rar_b") == spec("rar_b").cpu_runtime == "onnx int8"
    assert cpu.default_runtime("bundled") == spec("bundled").cpu_runtime
    assert studio.ModelCache("cuda").default_runtime("rar_b") == "torch"  # CUDA graphs
    zero_gpu = studio.ModelCache("cpu", runtimes=studio.runtimes({"SPACES_ZERO_GPU": "true"}))
    assert zero_gpu.default_runtime("rar_b") == "torch"
    request = studio.parse(cache, "bundled", "Flags", ["raster"], 0)
    assert request.runtime == cache.default_runtime("bundled")
    with pytest.raises(studio.InputError, match="not offered here") as err:
        studio.parse(zero_gpu, "rar_b", "volcano", ["raster"], 0, runtime="onnx", load=False)
    assert err.value.field == "runtime"


def test_examples_are_valid_for_their_model(cache: studio.ModelCache) -> None:
    for model, class_name, orders, seed, steps in studio.examples("bundled"):
        studio.parse(cache, model, class_name, orders, seed, steps=steps)
    imagenet = imagenet_classes()
    examples = studio.examples("rar_b")
    for model, class_name, orders, seed, steps in examples:
        assert model == "rar_b" and class_name in imagenet
        assert 1 <= len(orders) * len(steps) <= studio.MAX_PANELS and seed >= 0
    assert any(len(steps) > 1 for *_, steps in examples)  # parallel decoding, side by side


def test_step_counts_make_panels_of_each_order_at_each(cache: studio.ModelCache) -> None:
    request = studio.parse(cache, "bundled", 0, ["random", "raster"], 4, steps=[256, 64])
    assert request.names == [
        "random · 256 steps",
        "random · 64 steps",
        "raster · 256 steps",
        "raster · 64 steps",
    ]
    # The same order (and the same random draw) at both step counts.
    assert torch.equal(request.permutations[0], request.permutations[1])
    assert torch.equal(request.rows(64), torch.tensor([1, 3]))
    assert request.sampling_for(256).steps is None and request.sampling_for(64).steps == 64
    assert studio.parse(cache, "bundled", 0, ORDERS, 4, steps=[64]).names == ORDERS
    # Most steps first, however they were ticked.
    assert studio.parse(cache, "bundled", 0, ["random"], 4, steps=[64, 256]).steps == (256, 64)
    # An edit of 64 cells: 128 and 256 steps would both take one token per cell.
    edit = {"image": _picture(), "mask": "center"}
    assert studio.parse(cache, "bundled", 0, ["random"], 4, steps=[256, 32], **edit).steps == (
        256,
        32,
    )
    with pytest.raises(studio.InputError, match="regenerates 64 cells") as err:
        studio.parse(cache, "bundled", 0, ["random"], 4, steps=[256, 128], **edit)
    assert err.value.field == "steps"
    assert studio.parse(cache, "bundled", 0, ORDERS, 4, steps=64).steps == (64,)
    for steps, message in [
        ([256, 64, 32], "at most 4 panels: 2 orders x 3 step counts make 6"),
        ([64, 64], "each step count can be chosen only once"),
        ([64, 0], "steps must be between 1 and 256"),
        ([64, 2.5], "steps must be a whole number"),
    ]:
        with pytest.raises(studio.InputError, match=message) as err:
            studio.parse(cache, "bundled", 0, ORDERS, 4, steps=steps)
        assert err.value.field == "steps"


def test_panels_at_fewer_steps_finish_sooner_and_look_as_they_do_alone(
    cache: studio.ModelCache,
) -> None:
    """Side by side, each step count takes its own sampler steps in lockstep: after 32 steps
    of the run the 32-step panel is whole while the 256-step one has 32 tokens; each comes
    out as it does when run alone."""
    request = studio.parse(cache, "bundled", 0, ["random"], 4, speed=512, steps=[256, 32])
    pipe = cache.get("bundled", cache.default_runtime("bundled"))  # as runs
    groups = [
        (
            request.rows(n),
            pipe.stream(0, request.permutations[request.rows(n)], 4, request.sampling_for(n)),
            request.step_sizes(n),
        )
        for n in request.steps
    ]
    sampling = studio.Sampling(groups, steps_per_s=2_000)
    sampling.start()
    placed = list(itertools.accumulate(tokens_per_step("cosine", 32, 256)))
    tick, seen = -1, 0
    while not sampling.finished:
        progress = sampling.newer_than(tick, timeout=1)
        tick, seen = progress.tick, seen + 1
        filled = (progress.canvas >= 0).sum(1).tolist()
        assert filled == [tick + 1, placed[min(tick, 31)]], tick
    sampling.join()
    assert sampling.error is None and progress.done and progress.num_ticks == 256
    assert seen > 10 and filled == [256, 256]
    probs, entropy = sampling.stats()
    assert probs.shape == entropy.shape == (256, 2)

    last = list(studio.run(cache, request))[-1]
    status = last.status
    assert status.startswith("**Done**: 256 / 32 steps") and "256 / 32 steps (cosine)" in status
    assert list(last.finals) == request.names == ["random · 256 steps", "random · 32 steps"]
    for steps, name in zip(request.steps, request.names, strict=True):
        alone = studio.parse(cache, "bundled", 0, ["random"], 4, speed=512, steps=steps)
        *_, single = studio.run(cache, alone)
        # The same tokens; decoding two pictures at once may round a pixel differently.
        assert np.abs(single.finals["random"].astype(int) - last.finals[name]).max() <= 2
    short, long = last.finals.values()
    assert np.abs(short.astype(int) - long).max() > 50


def test_a_run_shows_at_most_max_fps_frames_and_ends_with_everything(
    cache: studio.ModelCache,
) -> None:
    request = studio.parse(cache, "bundled", 0, ORDERS, 0, speed=512)
    start = time.monotonic()
    updates = list(studio.run(cache, request))
    seconds = time.monotonic() - start
    frames = [u for u in updates if u.status.startswith("**Step")]
    assert len(frames) >= 10 and len(frames) <= studio.MAX_FPS * seconds + 1
    last = updates[-1]
    assert last.status.startswith("**Done**")
    assert set(last.finals) == set(ORDERS) and last.animation and last.stats_plot
    assert last.order_plot is updates[0].order_plot  # the API's result() carries it too


def test_stop_ends_a_run_where_it_is(cache: studio.ModelCache, count_steps: list[int]) -> None:
    stop = threading.Event()
    run = studio.run(cache, studio.parse(cache, "bundled", 0, ORDERS, 0, speed=64), stop)
    next(run), next(run)
    stop.set()
    *_, last = run
    taken = len(count_steps)
    assert re.fullmatch(rf"\*\*Stopped at step {taken} / 256\*\* · .*", last.status)
    assert last.panels is studio.KEEP and 0 < taken < 256  # the last frame stays


def test_closing_a_run_stops_the_sampler(cache: studio.ModelCache, count_steps: list[int]) -> None:
    steps = count_steps
    run = studio.run(cache, studio.parse(cache, "bundled", 0, ORDERS, 0, speed=512))
    for _ in range(4):
        next(run)
    run.close()
    taken = len(steps)
    assert 0 < taken < 256
    time.sleep(0.2)
    assert len(steps) == taken  # nothing runs on after close


def _picture() -> np.ndarray:
    """A 64x64 picture: white, a dark blue square in the middle."""
    pixels = np.full((64, 64, 3), 255, dtype=np.uint8)
    pixels[16:48, 16:48] = (20, 40, 160)
    return pixels


def test_an_edit_request_keeps_the_pictures_cells_and_runs_only_the_rest(
    cache: studio.ModelCache,
) -> None:
    request = studio.parse(
        cache, "bundled", 0, ORDERS, 3, speed=512, image=_picture(), mask="center"
    )
    assert request.edited_cells == 64
    pipe = cache.get("bundled", cache.default_runtime("bundled"))  # as runs
    tokens = pipe.encode(_picture())
    prompt = request.prompt(pipe, 2)
    keep = prompt[0] >= 0
    assert torch.equal(prompt[:, keep], tokens[keep].expand(2, -1))
    updates = list(studio.run(cache, request))
    first, last = updates[0], updates[-1]
    assert "edit of 64 cells" in first.status and last.status.startswith("**Done**: 64 steps")
    border = first.panels["raster"][:8, :8]  # a kept corner: the picture's white, not hatched
    assert border.min() > 200
    assert set(last.finals) == set(ORDERS)
    assert (last.finals["raster"][:12, :12] > 200).all()  # kept cells come out as they were


@pytest.mark.parametrize(
    ("image", "mask", "field", "message"),
    [
        (None, "left", "image", "choose a picture"),
        ("image", "", "mask", "paint the cells"),
        ("image", "sideways", "mask", "unknown mask"),
        ("image", "assets/bundled/edits.png", "mask", "unknown mask"),  # never a server file
        (b"not a picture", "left", "image", "not a readable image"),
        ("image", np.zeros((64, 64), dtype=np.uint8), "mask", "the mask is empty"),
        ("image", np.full((64, 64), 255, dtype=np.uint8), "mask", "covers the whole picture"),
        ("image", np.zeros((50, 50), dtype=np.uint8), "mask", "the mask is 50x50"),
    ],
    ids=["no-image", "no-mask", "preset", "path", "unreadable", "empty", "full", "size"],
)
def test_bad_edit_inputs_name_their_field(cache, image, mask, field, message) -> None:
    image = _picture() if isinstance(image, str) else image
    with pytest.raises(studio.InputError, match=message) as info:
        studio.parse(cache, "bundled", 0, ORDERS, 0, image=image, mask=mask)
    assert info.value.field == field


def _final_canvas(lease: studio.Lease) -> torch.Tensor:
    sampling = lease.sampling(timeout=30)
    assert sampling is not None and sampling.wait_finished(120)
    return lease.view(sampling.latest).canvas


def test_runs_that_queue_share_one_batch_and_each_comes_out_as_alone(
    cache: studio.ModelCache,
) -> None:
    batcher = studio.Batcher(cache, slots=1)
    pipe = cache.get("bundled", cache.default_runtime("bundled"))  # as runs
    busy = batcher.join(studio.parse(cache, "bundled", 0, ORDERS, 0, speed=8))  # the slot
    queued = [
        studio.parse(cache, "bundled", "Flags", ["spiral"], 3, speed=8),
        studio.parse(cache, "bundled", 2, ORDERS, 5, speed=8),
    ]
    leases = [batcher.join(r) for r in queued]
    assert busy.sampling(timeout=1) is not None
    assert all(lease.sampling(timeout=0.2) is None for lease in leases)  # waiting for the slot
    assert leases[0].batch is leases[1].batch and batcher.runs == 3
    assert [lease.rows.tolist() for lease in leases] == [[0], [1, 2]]
    busy.leave()  # frees the slot: the queued runs start, together
    for request, lease in zip(queued, leases, strict=True):
        alone = list(pipe.stream(request.class_id, request.permutations, request.seed))[-1]
        assert torch.equal(_final_canvas(lease), alone.canvas)
        lease.leave()
    assert batcher.runs == 0


def test_edits_and_runs_of_another_kind_get_batches_of_their_own(
    cache: studio.ModelCache,
) -> None:
    batcher = studio.Batcher(cache, slots=1)
    busy = batcher.join(studio.parse(cache, "bundled", 0, ORDERS, 0, speed=8))
    kinds = [
        studio.parse(cache, "bundled", 0, ORDERS, 1, speed=16),  # another speed
        studio.parse(cache, "bundled", 0, ORDERS, 1, speed=8, steps=64),  # other steps
        studio.parse(cache, "bundled", 0, ORDERS, 1, image=_picture(), mask="left", speed=8),
        studio.parse(cache, "bundled", 0, ORDERS, 1, image=_picture(), mask="left", speed=8),
    ]
    pipe = cache.get("bundled", cache.default_runtime("bundled"))  # as runs
    leases = [batcher.join(r, r.prompt(pipe, len(r.names))) for r in kinds]
    assert len({id(lease.batch) for lease in leases}) == len(kinds)
    for lease in leases:
        lease.leave()  # left before starting: dropped without sampling
    assert all(lease.batch.sampling is None for lease in leases)
    busy.leave()
    assert batcher.runs == 0


def test_the_last_run_to_leave_stops_the_batch(
    cache: studio.ModelCache, count_steps: list[int]
) -> None:
    batcher = studio.Batcher(cache, slots=1)
    busy = batcher.join(studio.parse(cache, "bundled", 0, ORDERS, 0, speed=512))
    leases = [batcher.join(studio.parse(cache, "bundled", 0, ORDERS, s, speed=64)) for s in (1, 2)]
    busy.leave()
    sampling = leases[0].sampling(timeout=5)
    assert sampling is not None and sampling.newer_than(2, timeout=10) is not None
    leases[0].leave()
    time.sleep(0.2)
    assert not sampling.finished  # the other run still watches it
    leases[1].leave()
    assert sampling.finished and not sampling.latest.done
    taken = len(count_steps)
    time.sleep(0.2)
    assert len(count_steps) == taken  # nothing runs on


def test_a_queued_run_says_it_waits_and_can_be_stopped_before_it_starts(
    cache: studio.ModelCache,
) -> None:
    batcher = studio.Batcher(cache, slots=1)
    busy = batcher.join(studio.parse(cache, "bundled", 0, ORDERS, 0, speed=4))
    stop = threading.Event()
    run = studio.run(cache, studio.parse(cache, "bundled", 0, ORDERS, 1), stop, batcher=batcher)
    assert next(run).status.startswith("**Starting**")
    assert next(run).status.startswith("**Waiting** for a free slot (1 runs ahead)")
    stop.set()
    assert next(run).status.startswith("**Stopped before it started**")
    busy.leave()
    assert batcher.runs == 0


def test_a_batch_that_cannot_start_fails_its_runs_and_frees_the_batcher(
    cache: studio.ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> studio.Sampling:
        raise ValueError("no sampler today")

    monkeypatch.setattr(studio, "_sampling", broken)
    batcher = studio.Batcher(cache, slots=1)
    lease = batcher.join(studio.parse(cache, "bundled", 0, ORDERS, 0))
    with pytest.raises(RuntimeError, match="could not start") as err:
        lease.sampling(timeout=1)
    assert "no sampler today" in str(err.value.__cause__)
    lease.leave()
    assert batcher.runs == 0 and batcher.sampling_runs == 0


def test_runs_finishing_together_sweep_old_animations_without_tripping(
    cache: studio.ModelCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(studio, "ANIMATION_DIR", tmp_path)
    old = time.time() - studio.ANIMATION_TTL_S - 60
    for i in range(40):
        (tmp_path / f"old{i}").mkdir()
        (tmp_path / f"old{i}" / "x.webp").write_bytes(b"")
        os.utime(tmp_path / f"old{i}" / "x.webp", (old, old))
    request = studio.parse(cache, "bundled", 0, ORDERS, 0)
    paths, errors = [], []

    def fresh() -> None:
        try:
            paths.append(studio._animation_path(request))
        except OSError as err:
            errors.append(err)

    threads = [threading.Thread(target=fresh) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 12
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("old")) == []
