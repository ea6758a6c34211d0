"""Shared by the whole suite: offline and single-threaded settings, the parity fixtures'
location, tiny configs for unit tests, and the app served in-process."""

import contextlib
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

# Tests never reach the network: every Hub lookup must come from local files or fail fast.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no version check over the network

from rar_demo.config import RARConfig, SamplingConfig, VQGANConfig
from rar_demo.data import EmojiDataset
from rar_demo.registry import ModelSpec

# The test models are tiny: one intra-op thread beats two that wait on each other, and keeps
# the suite steady when the machine is busy.
torch.set_num_threads(1)

# The official code's outputs (tests/fixtures/README.md); RAR_PARITY_FIXTURES points elsewhere.
FIXTURES = Path(
    os.environ.get("RAR_PARITY_FIXTURES", Path(__file__).resolve().parent / "fixtures/parity")
)


def parity_fixtures(kind: str) -> list[Path]:
    """The fixture files of one kind ("rar", "vqgan"), sorted; none is an error, not a skip."""
    files = [
        p for p in sorted(FIXTURES.glob("*.safetensors")) if read_fixture(p)[0]["kind"] == kind
    ]
    if not files:
        raise FileNotFoundError(f"no {kind!r} parity fixture in {FIXTURES}")
    return files


def read_fixture(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(spec, tensors) of one fixture file (tests/fixtures/README.md)."""
    with safe_open(path, "pt") as f:
        spec = json.loads(f.metadata()["spec"])
        return spec, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def fixture_model(
    model_cls: type[torch.nn.Module],
    config: object,
    tensors: dict[str, torch.Tensor],
    dtype: torch.dtype = torch.float64,
) -> torch.nn.Module:
    """The fixture's network with its official weights (strict), in eval mode."""
    state = {
        k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")
    }
    model = model_cls(config).to(dtype).eval()
    model.load_state_dict(state, strict=True)
    return model


# Every code path, milliseconds per model.
TINY_RAR = RARConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    codebook_size=64,
    image_seq_len=16,
    condition_num_classes=5,
)
TINY_VQGAN = VQGANConfig(
    channel_mult=(1, 2),
    hidden_channels=32,
    num_res_blocks=1,
    resolution=8,
    z_channels=8,
    codebook_size=64,
)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`model` in eval mode with distinct seeded weights everywhere (not the zero inits)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def tiny_spec(generator: RARConfig = TINY_RAR, **changes: object) -> ModelSpec:
    """A registry entry for test models, which never load from their weights fields."""
    spec = ModelSpec(
        name="tiny",
        about="a test model",
        generator=generator,
        tokenizer=TINY_VQGAN,
        generator_weights=Path("/nonexistent/generator.safetensors"),
        tokenizer_weights=Path("/nonexistent/tokenizer.safetensors"),
        classes=None,
        sampling=SamplingConfig(greedy=True),
        gpu_dtype=torch.float32,
        runtimes=("torch", "onnx"),
        cpu_runtime="torch",
        examples=(),
    )
    return replace(spec, **changes)


# ---- the app, served in this process ----------------------------------------------------------

STEP = re.compile(r"Step (\d+) / (\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """The app on the bundled model, served in this process; yields its URL."""
    import app

    demo = app.create_demo("bundled")
    _, local_url, _ = demo.launch(
        prevent_thread_lock=True, server_port=_free_port(), quiet=True, **app.LAUNCH_OPTIONS
    )
    try:
        yield local_url
    finally:
        demo.close()


@pytest.fixture
def count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every step the app's bundled pipeline (on its default runtime) takes, wherever
    it is driven from."""
    import app

    pipe = app.CACHE.get("bundled", app.CACHE.default_runtime("bundled"))
    steps: list[int] = []
    real_stream = pipe.stream

    def counted(*args, **kwargs) -> Iterator:
        for event in real_stream(*args, **kwargs):
            steps.append(event.step)
            yield event

    monkeypatch.setattr(pipe, "stream", counted)
    return steps


def random_emoji_data(classes: tuple, n: int, heldout_every: int, path: Path) -> Path:
    """A dataset file of `n` random 64 px images cycling over `classes` and the three artwork
    sets, every `heldout_every`-th one held out."""
    rng = np.random.default_rng(0)
    EmojiDataset(
        images=rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
        labels=np.arange(n) % len(classes),
        styles=np.arange(n) % 3,
        heldout=np.arange(n) % heldout_every == 0,
        classes=classes,
    ).save(path)
    return path
