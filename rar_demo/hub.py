"""Loading a registered model's weights: from the Hugging Face Hub (downloaded once), from the
files bundled with the repository, or from local files; and seeded random ones at real sizes.

Every load builds the network on the `meta` device (no memory, no init) and assigns the
checkpoint's tensors, loaded with `weights_only=True` or from safetensors.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import RARConfig, VQGANConfig
from .model import RAR
from .registry import HubFile, ModelSpec, imagenet_classes, spec
from .vqgan import VQGAN


class WeightsUnavailable(RuntimeError):
    """Weights could not be found or fetched; the message says what is missing and how to fix."""


def hf_hub_download(repo_id: str, filename: str, **kwargs: Any) -> str:
    """huggingface_hub's, imported on first use: importing it took 0.2-0.3 s of every start-up
    (2-core AMD EPYC), and the bundled model never downloads."""
    from huggingface_hub import hf_hub_download as download

    return download(repo_id, filename, **kwargs)


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


def fetch(file: HubFile) -> Path:
    """Local path of a Hub file, downloading it (with a progress bar) if needed."""
    repo, name = file.repo_id, file.filename
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
            f"{file.how_to_get()}."
        ) from err


def _metadata(f: object) -> dict[str, object]:
    """An open safetensors file's metadata, each value JSON-decoded."""
    return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def read_weights(path: Path | str) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    """(metadata, state dict) of a safetensors file (its metadata JSON-decoded) or of a torch
    checkpoint (no metadata), loaded without running any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        with safe_open(path, "pt") as f:
            return _metadata(f), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return {}, torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def materialize(
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


def save_bundled(model: nn.Module, path: Path, **metadata: object) -> None:
    """Saves a bundled network (one with a `config`) as fp16 safetensors, its config in the
    metadata; integer buffers (batch-norm counters) keep their type."""
    tensors = {
        k: (v.detach().half() if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    meta = {
        "config": json.dumps(model.config.to_dict()),
        **{k: json.dumps(v) for k, v in metadata.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata=meta)


def _read(
    source: HubFile | Path, weights: Path | str | None
) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    if weights is not None:
        return read_weights(weights)
    if isinstance(source, HubFile):
        return read_weights(fetch(source))
    if not source.is_file():
        raise WeightsUnavailable(
            f"bundled weights missing: {source}. They ship with the repository; restore them "
            "with `git checkout -- assets/bundled`, or retrain (see assets/bundled/MODEL_CARD.md)."
        )
    return read_weights(source)


def load_generator(
    name: str,
    weights: Path | str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[RAR, tuple[str, ...]]:
    """Model `name`'s generator and its class names. `weights`: a local file instead; one
    saved by `save_bundled` brings its own config and classes."""
    entry = spec(name)
    meta, state = _read(entry.generator_weights, weights)
    config = RARConfig.from_dict(meta["config"]) if "config" in meta else entry.generator
    names, _, _ = _classes(entry, meta, weights or entry.generator_weights)
    return materialize(RAR, config, state, device, dtype), names


ClassTable = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # names, glyphs, groups


def _classes(entry: ModelSpec, meta: dict, source: object) -> ClassTable:
    """A generator's classes from its file's metadata (bundled weights name theirs, with the
    emoji and their Unicode groups), else the registry's list (no glyphs or groups)."""
    if "class_names" in meta:
        glyphs, groups = meta.get("class_glyphs", []), meta.get("class_groups", [])
        return tuple(meta["class_names"]), tuple(glyphs), tuple(groups)
    if entry.classes is not None:
        return imagenet_classes(entry.classes), (), ()
    raise WeightsUnavailable(f"{source} names no classes")


def class_table(name: str, weights: Path | str | None = None) -> ClassTable:
    """(names, glyphs, groups) of model `name`'s classes, reading no weights: only a local
    safetensors file's header, and never the Hub."""
    entry = spec(name)
    source = Path(weights) if weights is not None else entry.generator_weights
    meta = {}
    if isinstance(source, Path) and source.suffix == ".safetensors" and source.is_file():
        with safe_open(source, "pt") as f:
            meta = _metadata(f)
    return _classes(entry, meta, source)


def load_tokenizer(
    name: str,
    weights: Path | str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VQGAN:
    """Model `name`'s tokenizer (`weights`: a local file instead)."""
    entry = spec(name)
    meta, state = _read(entry.tokenizer_weights, weights)
    config = VQGANConfig.from_dict(meta["config"]) if "config" in meta else entry.tokenizer
    return materialize(VQGAN, config, state, device, dtype)


def random_models(name: str, seed: int = 0) -> tuple[RAR, VQGAN]:
    """Generator and tokenizer of model `name` at their real sizes, with seeded random weights
    (seeded, so that an ONNX export of them is found in the cache next time). Speed does not
    depend on the weights' values, so benchmarks and exports need no download."""
    entry = spec(name)
    torch.manual_seed(seed)
    model = RAR(entry.generator).eval()
    # The official init zeroes the adaLN weights; trained ones are not, and identical zero
    # matrices would be merged into one by the ONNX exporter.
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
    return model, VQGAN(entry.tokenizer).eval()
