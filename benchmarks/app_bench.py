"""The app against its engine, on this machine: `python benchmarks/app_bench.py speed|load`.

speed: for each case, the engine alone (the sampler streaming every step, in this process)
and the same run through the served app and gradio_client at speed 512, taking turns
`--repeats` times; one JSON line each with the median wall times, their ratio (and each
pair's), the frames shown per second and the files a run left in Gradio's cache. rar_b runs
with random weights at the real size (nothing downloaded).

load: N gradio_client jobs submitted at once (bundled, 2 orders, speed 512), each timed to
its first frame and to its result; one JSON line per client and a summary. Everything stays
on the loopback interface, and the run is bounded (N <= 32, a timeout per job).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import torch  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from gradio_client import Client  # noqa: E402

import app  # noqa: E402
from rar_demo import studio  # noqa: E402
from rar_demo.bench import cpu_info  # noqa: E402
from rar_demo.hub import random_models  # noqa: E402
from rar_demo.pipeline import Pipeline, torch_executor  # noqa: E402
from rar_demo.registry import imagenet_classes, spec  # noqa: E402

ORDERS = ["raster", "random", "spiral", "checkerboard"]
SPEED_CASES = [("bundled", 2), ("bundled", 4), ("rar_b", 1)]


def _serve(model: str) -> str:
    # Both sides run torch: the served app offers it alone, so it loads nothing else (rar_b's
    # default runtime elsewhere would download the real weights).
    app.CACHE.runtimes = ("torch",)
    if model == "rar_b" and not app.CACHE.has("rar_b"):
        generator, tokenizer = random_models("rar_b")
        pipe = Pipeline(
            spec("rar_b"), generator, tokenizer, imagenet_classes(), torch_executor(generator)
        )
        app.CACHE.put("rar_b", "torch", pipe)
    demo = app.create_demo(model)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.LAUNCH_OPTIONS)
    return url


def _files() -> int:
    return sum(1 for p in Path(get_upload_folder()).rglob("*") if p.is_file())


def speed(repeats: int) -> None:
    studio.leave_a_core()  # as the served app does
    for model, n in SPEED_CASES:
        url = _serve(model)
        pipe = app.CACHE.get(model)
        app.CACHE.patches(pipe)  # built once per served model, not per run
        orders = pipe.orders(ORDERS[:n], 0)
        engine, api, frames, files = [], [], [], _files()
        # Engine and API runs take turns: this VM's speed drifts by 10-30% within minutes.
        for _ in range(repeats):
            start = time.monotonic()
            deque(pipe.stream(0, orders, 0), maxlen=1)
            engine.append(time.monotonic() - start)
            # The client in a process of its own, as any API user's is.
            client = subprocess.run(
                [sys.executable, __file__, "client", url, model, str(n)],
                capture_output=True, text=True, check=True, timeout=1800,
            )  # fmt: skip
            wall, seen = json.loads(client.stdout.splitlines()[-1])
            api.append(wall)
            frames.append(seen)
        e, a = statistics.median(engine), statistics.median(api)
        rates = [f / w for f, w in zip(frames, api, strict=True)]
        row = {
            "case": f"{model} x{n}",
            "engine_s": round(e, 2),
            "api_s": round(a, 2),
            "ratio": round(a / e, 2),  # of the medians
            "ratios": [round(x / y, 2) for x, y in zip(api, engine, strict=True)],
            "frames": round(statistics.median(frames)),
            "frames_per_s": round(statistics.median(rates), 1),
            "cache_files_per_run": round((_files() - files) / repeats, 1),
            "threads": torch.get_num_threads(),
            **cpu_info(),
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(row), flush=True)
        app.gr.close_all()


def client(url: str, model: str, n: int) -> None:
    """One run through the API at speed 512: prints [wall seconds, frames seen]."""
    job = Client(url, verbose=False, download_files=False).submit(
        model=model, class_name="0", orders=ORDERS[:n], seed=0, speed=512, runtime="torch",
        api_name="/generate",
    )  # fmt: skip
    start = time.monotonic()
    job.result(timeout=1800)
    # Each message carries a few frames (app.FLIP_S): count the first panel's images.
    frames = sum(
        out[1].split("</figure>")[0].count("<img")
        for out in job.outputs()
        if out[0].startswith("**Step")
    )
    print(json.dumps([time.monotonic() - start, frames]))


def load(clients: int) -> None:
    if not 1 <= clients <= 32:
        raise SystemExit("--clients must be 1 to 32")
    studio.leave_a_core()
    url = _serve("bundled")
    rows: list[dict] = []

    def one(i: int, start: float) -> None:
        client = Client(url, verbose=False, download_files=False)
        job = client.submit(
            model="bundled", class_name="Flags", orders=ORDERS[:2], seed=i, speed=512,
            runtime="torch", api_name="/generate",
        )  # fmt: skip
        first = None
        for out in job:
            if first is None and out[0].startswith("**Step"):
                first = time.monotonic() - start
        job.result(timeout=900)
        rows.append({"client": i, "first_frame_s": first, "done_s": time.monotonic() - start})

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(i, start)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    for row in sorted(rows, key=lambda r: r["client"]):
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
    firsts = sorted(r["first_frame_s"] for r in rows if r["first_frame_s"] is not None)
    summary = {
        "clients": clients,
        "finished": len(rows),
        "last_first_frame_s": round(firsts[-1], 2) if firsts else None,
        "last_done_s": round(max(r["done_s"] for r in rows), 2) if rows else None,
        **cpu_info(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(summary), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, medians reported")
    p = sub.add_parser("load")
    p.add_argument("--clients", type=int, default=12)
    p = sub.add_parser("client", help=argparse.SUPPRESS)
    p.add_argument("url")
    p.add_argument("model")
    p.add_argument("n", type=int)
    args = parser.parse_args()
    if args.what == "speed":
        speed(args.repeats)
    elif args.what == "client":
        client(args.url, args.model, args.n)
    else:
        load(args.clients)


if __name__ == "__main__":
    main()
