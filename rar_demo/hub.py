"""Where weights come from: the official checkpoints on the Hub, or the bundled offline model.

Every load builds the network on the `meta` device (no memory, no init) and assigns the
checkpoint's tensors, loaded with `weights_only=True` or from safetensors.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import RAR_PRESETS, VQGAN_PRESETS, RARConfig, VQGANConfig
from .model import RAR
from .vqgan import VQGAN

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_DIR = ASSETS / "bundled"
IMAGENET_CLASSES = ASSETS / "imagenet_classes.json"


class WeightsUnavailable(RuntimeError):
    """Weights could not be found or fetched; the message says what is missing and how to fix."""


@dataclass(frozen=True)
class Checkpoint:
    repo_id: str
    filename: str
    preset: str

    def how_to_get(self) -> str:
        return (
            f"download it with `hf download {self.repo_id} {self.filename}` on a machine "
            "with network access (it lands in the Hugging Face cache), or pass its local path"
        )


GENERATORS: dict[str, Checkpoint] = {
    name: Checkpoint("yucornetto/RAR", f"{name}.bin", name)
    for name in ("rar_b", "rar_l", "rar_xl", "rar_xxl")
}
TOKENIZER = Checkpoint(
    "fun-research/TiTok", "maskgit-vqgan-imagenet-f16-256.bin", "maskgit_vqgan_f16_256"
)
MODEL_NAMES: tuple[str, ...] = ("bundled", *GENERATORS)


def _hub_resolves() -> bool:
    # Without DNS for the Hub, hf_hub_download retries with backoff for ~25 s; fail fast instead.
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True


def _offline_requested() -> bool:
    # Parsed like huggingface_hub does: "0", "false" or "" mean online, not offline.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def fetch(checkpoint: Checkpoint) -> Path:
    """Local path of an official file, downloading it (with a progress bar) if needed."""
    repo, name = checkpoint.repo_id, checkpoint.filename
    try:
        return Path(hf_hub_download(repo, name, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    offline = _offline_requested() or not _hub_resolves()
    try:
        if offline:
            raise LocalEntryNotFoundError("the Hub cannot be reached from here")
        return Path(hf_hub_download(repo, name))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise WeightsUnavailable(
            f"{repo}/{name} is not in the local cache and could not be downloaded "
            f"({'offline' if offline else type(err).__name__}). To use it, "
            f"{checkpoint.how_to_get()}."
        ) from err


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        with safe_open(path, "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def build(
    model_cls: type[nn.Module],
    config: object,
    state: dict[str, torch.Tensor],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Builds `model_cls(config)` on the meta device and assigns `state` (strict)."""
    with torch.device("meta"):
        model = model_cls(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def save_bundled(model: RAR | VQGAN, path: Path, **metadata: object) -> None:
    """Saves a bundled model as fp16 safetensors with its config in the metadata."""
    tensors = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "config": json.dumps(model.config.to_dict()),
        **{k: json.dumps(v) for k, v in metadata.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata=meta)


def read_bundled(path: Path) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise WeightsUnavailable(
            f"bundled weights missing: {path}. They ship with the repository; restore them "
            "with `git checkout -- assets/bundled`, or retrain (see assets/bundled/MODEL_CARD.md)."
        )
    with safe_open(path, "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        return meta, {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118


def load_generator(
    name: str,
    weights: Path | str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[RAR, tuple[str, ...]]:
    """A generator and its class names, by model name ("bundled", "rar_b", ...)."""
    if name == "bundled":
        meta, state = read_bundled(Path(weights or BUNDLED_DIR / "generator.safetensors"))
        config = RARConfig.from_dict(meta["config"])
        classes = tuple(meta["class_names"])
    elif name in GENERATORS:
        state = read_state_dict(weights or fetch(GENERATORS[name]))
        config = RAR_PRESETS[name]
        classes = tuple(json.loads(IMAGENET_CLASSES.read_text()))
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return build(RAR, config, state, device, dtype), classes


def load_tokenizer(
    name: str,
    weights: Path | str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VQGAN:
    """The tokenizer that goes with generator `name`."""
    if name == "bundled":
        meta, state = read_bundled(Path(weights or BUNDLED_DIR / "tokenizer.safetensors"))
        config = VQGANConfig.from_dict(meta["config"])
    elif name in GENERATORS:
        state = read_state_dict(weights or fetch(TOKENIZER))
        config = VQGAN_PRESETS[TOKENIZER.preset]
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return build(VQGAN, config, state, device, dtype)
