"""Generation speed, tokens to pixels: `python -m rar_demo.bench [--device cpu|cuda]`.

Prints one JSON line per measurement. Weights are random at the real sizes, so nothing is
downloaded; speed does not depend on their values. Each measurement runs in a process of its own,
so its peak memory and thread settings are its own. Path "eager" is the reference algorithm (the
official generate: adaLN from the weights at every step); the others are in PATHS. The app runs
"fast" on a CPU and "graph" on a GPU. With REF=path/to/1d-tokenizer set, the CPU run also
times the official code's generate() (path "reference"; tokens only, it has no decode; needs timm,
omegaconf and antlr4-python3-runtime).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from .backends import Executor, TorchExecutor
from .backends.graphs import GraphExecutor
from .config import SamplingConfig
from .hub import random_models
from .masks import preset_mask
from .model import RAR
from .orders import kept_first, make_order
from .pipeline import DTYPES
from .registry import spec
from .sampler import generate, stream


@dataclass(frozen=True)
class Case:
    model: str
    backend: str  # torch | onnx | official (REF's code)
    dtype: str  # fp32 | bf16 | int8 (weights of the decode step)
    path: str  # eager | fast | graph | compiled | reference, see PATHS
    orders: int  # images side by side, one generation order each: the batch
    reps: int = 1
    threads: int | None = None  # intra-op threads (torch and ONNX Runtime); None: torch's default
    order: str = "random"  # every panel's order kind (random: a different one per panel)
    streaming: bool = False  # consume every step's event, as the app does
    steps: int = 256  # sampler steps; fewer than the 256 tokens: parallel decoding (cosine)
    edit: str | None = None  # a mask preset: an edit that keeps the other cells (prefilled)


PATHS = {
    "eager": "the reference algorithm: adaLN from the weights at every step",
    "fast": "adaLN precomputed for every slot at prefill (TorchExecutor)",
    "graph": "fast, each step replayed from a CUDA graph (GraphExecutor)",
    "compiled": "graph, the step first compiled by torch.compile",
    "reference": "the official code's generate() from the 1d-tokenizer checkout REF names",
}
CPU_CASES = [
    Case("rar_b", "torch", "fp32", "eager", 1),
    Case("rar_b", "torch", "fp32", "fast", 1),
    Case("rar_b", "torch", "bf16", "fast", 1),
    Case("rar_b", "torch", "int8", "fast", 1),
    Case("rar_b", "onnx", "fp32", "fast", 1),
    Case("rar_b", "onnx", "int8", "fast", 1),
    # Parallel decoding: the same image in fewer sampler steps, on every runtime.
    *(Case("rar_b", "torch", "fp32", "fast", 1, steps=n) for n in (128, 64, 32)),
    *(Case("rar_b", "onnx", "int8", "fast", 1, steps=n) for n in (128, 64, 32)),
    *(Case("bundled", "torch", "fp32", "fast", 4, reps=3, steps=n) for n in (128, 64, 32)),
    *(Case("bundled", "onnx", "fp32", "fast", 4, reps=3, steps=n) for n in (128, 64, 32)),
    # Edits: the kept cells prefilled in one round, only the masked ones sampled.
    *(Case("bundled", "torch", "fp32", "fast", 4, reps=3, edit=m) for m in ("center", "left")),
    Case("bundled", "torch", "fp32", "eager", 4, reps=3),
    Case("bundled", "torch", "fp32", "fast", 4, reps=3),
    Case("bundled", "onnx", "fp32", "fast", 4, reps=3),
    # A model this small is bound by per-op overhead, where a second thread only costs.
    Case("bundled", "torch", "fp32", "fast", 4, reps=3, threads=1),
    Case("bundled", "onnx", "fp32", "fast", 4, reps=3, threads=1),
]
CUDA_CASES = [
    *(
        case
        for name in ("rar_b", "rar_l", "rar_xl", "rar_xxl")
        for case in (
            Case(name, "torch", "fp32", "eager", 1),  # the reference's algorithm and precision
            Case(name, "torch", "bf16", "eager", 1),
            Case(name, "torch", "bf16", "fast", 1, reps=3),
            Case(name, "torch", "bf16", "graph", 1, reps=5),
            *(Case(name, "torch", "bf16", "graph", 1, reps=5, steps=n) for n in (128, 64, 32)),
            Case(name, "torch", "bf16", "graph", 1, reps=5, order="raster"),
            Case(name, "torch", "bf16", "graph", 1, reps=5, streaming=True),
            Case(name, "torch", "bf16", "graph", 4, reps=5),  # side-by-side panels
            Case(name, "torch", "bf16", "compiled", 1, reps=5),
            Case(name, "torch", "fp32", "eager", 64),
            Case(name, "torch", "bf16", "graph", 64, reps=3),
        )
    ),
    Case("bundled", "torch", "fp32", "graph", 4, reps=5, streaming=True),
    Case("rar_b", "onnx", "fp32", "fast", 1),  # ONNX Runtime's CUDA execution provider
]
CASES = {"cpu": CPU_CASES, "cuda": CUDA_CASES}
# Beside the torch eager line: the same algorithm, as the official code runs it (raster order).
OFFICIAL = Case("rar_b", "official", "fp32", "reference", 1, order="raster")


def cases(device: str, ref: Path | None) -> list[Case]:
    """The device's cases, and on a CPU the official code's where REF names a checkout."""
    return CASES[device] + ([OFFICIAL] if ref and device == "cpu" else [])


def official_ref(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The 1d-tokenizer checkout that REF names, or None; a bad one stops the bench."""
    if not environ.get("REF"):
        return None
    ref = Path(environ["REF"])
    if not ref.is_dir():
        raise SystemExit(f"bench: REF={ref} is not a directory")
    if not (ref / "modeling" / "rar.py").is_file():
        raise SystemExit(f"bench: REF={ref} has no modeling/rar.py: not a 1d-tokenizer checkout")
    needs = ("timm", "omegaconf", "antlr4")  # antlr4-python3-runtime: omegaconf's parser
    if missing := [name for name in needs if importlib.util.find_spec(name) is None]:
        raise SystemExit(f"bench: the official code needs {', '.join(missing)} installed")
    return ref


def _package(name: str, folder: Path) -> ModuleType:
    """Registers `folder` as package `name` without running its __init__.py."""
    package = ModuleType(name)
    package.__path__ = [str(folder)]
    sys.modules[name] = package
    return package


def official_rar(ref: Path) -> type[torch.nn.Module]:
    """The official RAR class, importing only the files sampling runs: the __init__.py of
    modeling.modules imports the training losses (torchvision, accelerate), and timm's imports
    torchvision, which has no build here for the project's CPU torch."""
    (timm,) = importlib.util.find_spec("timm").submodule_search_locations
    layers = _package("timm.layers", Path(timm) / "layers")
    layers.Mlp = importlib.import_module("timm.layers.mlp").Mlp
    _package("modeling", ref / "modeling")
    modules = _package("modeling.modules", ref / "modeling" / "modules")
    modules.BaseModel = importlib.import_module("modeling.modules.base_model").BaseModel
    return importlib.import_module("modeling.rar").RAR  # (timm stays a stub in this process)


def quantize_int8(model: RAR) -> RAR:
    """Dynamic int8 quantization of the blocks' and head's linear layers (torch.ao)."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    # lm_head stays fp32: RAR reads its weight for the device and dtype of new caches.
    spec = {"blocks": default_dynamic_qconfig}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao eager quantization is deprecated for torchao
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def executor_for(case: Case, device: str) -> tuple[Executor, Callable[[Tensor], Tensor]]:
    """The executor and the codes -> pixels function that `case` measures."""
    model, tokenizer = random_models(case.model)
    if case.backend == "onnx":
        from .backends.onnx import ensure_export, open_export

        int8 = case.dtype == "int8"
        return open_export(ensure_export(case.model, model, tokenizer, int8=int8), int8)
    model, tokenizer = model.to(device), tokenizer.to(device)
    model = quantize_int8(model) if case.dtype == "int8" else model.to(DTYPES[case.dtype])
    if case.path in ("graph", "compiled"):
        return GraphExecutor(model, compile=case.path == "compiled"), tokenizer.decode
    return TorchExecutor(model, fast=case.path == "fast"), tokenizer.decode


def reset_peak_mem(device: str) -> None:
    """Starts peak memory afresh, so that what only building needed (say the torch weights an
    ONNX export was made from) does not count."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM


def peak_mem_mb(device: str) -> float:
    """Peak GPU memory allocated, or peak resident memory of the process."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _streamed(
    executor: Executor,
    labels: Tensor,
    orders: Tensor,
    sampling: SamplingConfig,
    seed: int,
    prompt: Tensor | None = None,
) -> Tensor:
    """generate() as the app runs it: every step's event comes to the host."""
    (last,) = deque(stream(executor, labels, orders, sampling, seed, prompt), maxlen=1)
    return last.canvas


@dataclass
class Setup:
    executor: Executor
    decode: Callable[[Tensor], Tensor]
    labels: Tensor
    orders: Tensor
    sampling: SamplingConfig
    run: Callable[..., Tensor]  # generate, or _streamed
    prompt: Tensor | None = None  # an edit's kept tokens
    warmup_s: float = 0.0  # first calls: allocations, kernel selection, graph capture

    def __call__(self, seed: int) -> Tensor:
        return self.run(self.executor, self.labels, self.orders, self.sampling, seed, self.prompt)


def prepare(case: Case, device: str) -> Setup:
    """Builds the case and warms it up (first-call allocations, kernel selection, graph
    capture, compiling) on a few steps, or with several tokens per step on the whole schedule
    (a CUDA graph per round shape), and one decode."""
    if case.threads:
        torch.set_num_threads(case.threads)
    executor, decode = executor_for(case, device)
    side = executor.config.grid_size
    # As in the app: one class, one panel per order.
    labels = torch.ones(case.orders, dtype=torch.long)
    orders = torch.stack([make_order(case.order, side, side, seed=i) for i in range(case.orders)])
    sampling = spec(case.model).sampling
    if case.steps < executor.config.image_seq_len:
        sampling = sampling.with_(steps=case.steps, schedule="cosine")
    prompt = None
    if case.edit:  # random tokens stand in for an encoded picture: the cost is the same
        keep = ~preset_mask(case.edit, side, side).flatten()
        orders = kept_first(orders, keep)
        tokens = torch.randint(0, executor.config.codebook_size, keep.shape)
        prompt = torch.where(keep, tokens, -1).expand(case.orders, -1).clone()
    start = time.perf_counter()
    for event in stream(executor, labels, orders, sampling, 0, prompt):
        if event.step >= event.given + 3 and sampling.steps is None:
            break
    decode(event.canvas.clamp_min(0).to(device))
    _sync(device)
    warmup_s = time.perf_counter() - start
    run = _streamed if case.streaming else generate
    return Setup(executor, decode, labels, orders, sampling, run, prompt, warmup_s)


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_tile")
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "int8": 1}


def cpu_info() -> dict:
    """The CPU's model name and the instruction sets that decide which kernels run."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    return {
        "cpu": names[0] if names else platform.processor(),
        "isa": [f for f in ISA_FLAGS if f in flags],
    }


def read_bandwidth_gbs(megabytes: int = 512, reps: int = 5) -> float:
    """This machine's achievable read bandwidth: the best of `reps` sums of a large array on
    all threads (GB/s)."""
    data = torch.ones(megabytes * 2**20 // 4)
    data.sum()  # fault the pages in
    best = min(_timed(data.sum) for _ in range(reps))
    return data.numel() * 4 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def floor_seconds(model: RAR, dtype: str, steps: int, bandwidth_gbs: float) -> float:
    """The memory-bandwidth floor of one image: every step reads every weight but the adaLN
    ones (precomputed once per generation) and the tables it only indexes."""
    skip = ("adaLN_modulation", "embed", "embeddings")
    weights = sum(p.numel() for n, p in model.named_parameters() if not any(k in n for k in skip))
    return steps * weights * BYTES_PER_WEIGHT[dtype] / (bandwidth_gbs * 1e9)


@torch.inference_mode()
def measure(case: Case, device: str) -> dict:
    setup = prepare(case, device)
    reset_peak_mem(device)
    times = []
    for seed in range(case.reps):
        _sync(device)
        start = time.perf_counter()
        canvas = setup(seed)
        _sync(device)
        generated = time.perf_counter()
        setup.decode(canvas.to(device)).cpu()
        _sync(device)
        times.append((generated - start, time.perf_counter() - generated))
    gen_s, dec_s = sorted(times, key=sum)[len(times) // 2]  # the median run
    return {
        **_row(case, device, _sampled(setup), gen_s, dec_s),
        "warmup_s": round(setup.warmup_s, 3),
        **(_floor(case, _sampled(setup)) if device == "cpu" else {}),
    }


def _row(case: Case, device: str, sampled: int, gen_s: float, dec_s: float | None) -> dict:
    """A measurement's JSON line: the case, its timings (dec_s None: no decode timed) and the
    process's peak memory and threads."""
    return {
        **asdict(case),
        "device": device,
        "batch": case.orders,
        "seconds_per_image": round(gen_s + (dec_s or 0.0), 3),
        "tokens_per_s": round(case.orders * sampled / gen_s, 1),
        "decode_seconds": None if dec_s is None else round(dec_s, 3),
        "generate_seconds": round(gen_s, 3),
        "peak_mem_mb": round(peak_mem_mb(device)),
        "threads": torch.get_num_threads(),
    }


def _sampled(setup: Setup) -> int:
    """Tokens sampled per image: all of them, or the cells an edit regenerates."""
    L = setup.executor.config.image_seq_len
    return L if setup.prompt is None else int((setup.prompt[0] < 0).sum())


def _floor(case: Case, sampled: int) -> dict:
    """CPU lines: the CPU, its read bandwidth and the case's bandwidth floor beside its time
    (a step per sampled token, or per step where there are fewer)."""
    model, _ = random_models(case.model)
    bandwidth = read_bandwidth_gbs()
    floor = floor_seconds(model, case.dtype, min(case.steps, sampled), bandwidth)
    return {**cpu_info(), "read_gbs": round(bandwidth, 1), "floor_s": round(floor, 3)}


@torch.inference_mode()
def measure_official(case: Case, ref: Path) -> dict:
    """The official generate() on a CPU, the model at the real sizes with random weights,
    sampling with the registry's defaults (the official ones); tokens only."""
    from omegaconf import OmegaConf

    if case.threads:
        torch.set_num_threads(case.threads)
    config = spec(case.model).generator
    generator = {**config.to_dict(), "dropout": 0.0, "attn_drop": 0.0}  # off in eval() anyway
    vq_model = {"codebook_size": config.codebook_size}
    official = OmegaConf.create({"model": {"generator": generator, "vq_model": vq_model}})
    model = official_rar(ref)(official).eval()
    sampling = spec(case.model).sampling
    labels = torch.ones(case.orders, dtype=torch.long)
    reset_peak_mem("cpu")
    times = []
    for seed in range(case.reps):
        torch.manual_seed(seed)
        start = time.perf_counter()
        model.generate(
            labels,
            guidance_scale=sampling.guidance_scale,
            randomize_temperature=sampling.temperature,
            guidance_scale_pow=sampling.guidance_power,
        )
        times.append(time.perf_counter() - start)
    gen_s = sorted(times)[len(times) // 2]  # the median run
    # No decode: the official generate() stops at tokens.
    return {**_row(case, "cpu", config.image_seq_len, gen_s, None), **cpu_info()}


@torch.inference_mode()
def profile(
    case: Case, device: str, top: int = 25, window: tuple[int, int] = (64, 96)
) -> list[dict]:
    """Where decoding spends its time per step, by operator (CPU) or kernel (CUDA): the `top`
    costliest over steps [window[0], window[1]) of one streamed generation, most first.
    (A window, not the whole run: the profiler's own bookkeeping grows with every op.)"""
    setup = prepare(case, device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    first, end = window
    schedule = torch.profiler.schedule(wait=first - 1, warmup=1, active=end - first, repeat=1)
    with torch.profiler.profile(activities=activities, schedule=schedule) as prof:
        for _ in stream(
            setup.executor, setup.labels, setup.orders, setup.sampling, 0, setup.prompt
        ):
            prof.step()
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    rows = [(getattr(e, attr), e) for e in prof.key_averages()]
    total = sum(t for t, _ in rows)
    steps = end - first
    return [
        {
            "model": case.model,
            "path": case.path,
            "device": device,
            "op": event.key,
            "calls_per_step": round(event.count / steps, 2),
            "us_per_step": round(t / steps, 1),
            "share": round(t / total, 3),
        }
        for t, event in sorted(rows, key=lambda r: r[0], reverse=True)[:top]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rar_demo.bench", description=__doc__)
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, choices=sorted(CASES))
    parser.add_argument("--model", action="append", help="only these models (repeatable)")
    parser.add_argument("--path", action="append", choices=sorted(PATHS), help="only these paths")
    parser.add_argument("--steps", action="append", type=int, help="only these step counts")
    parser.add_argument(
        "--profile", action="store_true", help="per-operator time per step instead of totals"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args(argv)
    # First, so a bad REF stops the run before any case; profiles time our paths only.
    ref = official_ref() if args.device == "cpu" and not args.profile else None
    if args.case:
        case = Case(**json.loads(args.case))
        if case.backend == "official":
            if ref is None:
                raise SystemExit("bench: the official case runs on a CPU where REF is set")
            rows = [measure_official(case, ref)]
        else:
            rows = profile(case, args.device) if args.profile else [measure(case, args.device)]
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    failed = 0
    for case in cases(args.device, ref):
        if (
            (args.model and case.model not in args.model)
            or (args.path and case.path not in args.path)
            or (args.steps and case.steps not in args.steps)
        ):
            continue
        cmd = [sys.executable, "-m", "rar_demo.bench", "--device", args.device]
        cmd += ["--profile"] * args.profile + ["--case", json.dumps(asdict(case))]
        failed += subprocess.run(cmd, check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
