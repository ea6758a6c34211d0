"""ONNX Runtime executors for an ONNX export of the generator and the VQGAN decoder.

An export directory (written by backends.onnx_export) holds:

    modulation.onnx       (U,) labels -> (K, U, T, D) adaLN table, once per generation
    decode_step.onnx      N new slots per sample against a KV cache of any length
                          (`RAR.step`): a decode step, a prefill, or a round of parallel
                          decoding; its inputs are the slots' `model.SlotInputs` rows, an
                          attention bias and each of the K adaLN outputs at those slots
    decoder.onnx          (B, N) codes -> (B, 3, H, W) pixels
    *.int8.onnx           (optional) the modulation and decode step with dynamically
                          quantized int8 weights; the decoder statically quantized (QLinearConv)
    export.json           configs and format version; written last, so it marks a whole export

The decode step reads the cache and returns only the new slots' keys and values; the executor
writes them into its cache buffers in place, and IO binding hands ONNX Runtime those buffers
(and the adaLN outputs, one view each of a single gather), so no step copies the cache: only
growing it does, every CACHE_GROWTH slots. The binding is made once per round shape and cache
length and kept with the generation's cache (`OnnxCache`); each round fills its buffers. The
inputs are built by the model's own `prefill_inputs` / `decode_inputs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RARConfig
from ..model import (
    RAR,
    KVCache,
    Modulation,
    SlotInputs,
    cache_bias,
    decode_inputs,
    prefill_inputs,
    round_slots,
)
from ..vqgan import VQGAN

# The step attends to every slot of the cache it is given, the unwritten ones masked: a cache
# that grows by this many slots as a generation fills it is read about half as much as a
# whole one (RAR-B: 76 MB a step at full length).
CACHE_GROWTH = 32
FORMAT = 8  # bump when the graphs change (inputs, outputs, semantics, speed): invalidates caches
MODULATION_FILE = "modulation.onnx"
STEP_FILE = "decode_step.onnx"
DECODER_FILE = "decoder.onnx"
MANIFEST_FILE = "export.json"
# The files with an int8 version (*.int8.onnx) in an int8 export.
QUANTIZED = (MODULATION_FILE, STEP_FILE, DECODER_FILE)


def int8_name(file: str) -> str:
    return file.removesuffix(".onnx") + ".int8.onnx"


def mod_names(layers: int) -> list[str]:
    """The decode step's adaLN inputs: each block's six outputs, then the head's two."""
    return [f"mod.{k}" for k in range(6 * layers + 2)]


def cache_names(layers: int) -> list[str]:
    """The decode step's cache inputs: every layer's k, then every layer's v."""
    return [f"{kv}_cache.{i}" for kv in "kv" for i in range(layers)]


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_FILE).read_text())


def providers() -> list[str]:
    """CUDA where onnxruntime-gpu and a GPU are present, else CPU."""
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # Idle pool threads sleep instead of spinning: RAR-B int8 on a 2-core AMD EPYC, 256 steps,
    # took 8.3-8.8 s this way and 10.7-11.6 s spinning (2026-12-01), where the spinning
    # threads compete with torch's and the app's.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers())


def _device(sess: ort.InferenceSession) -> torch.device:
    cuda = sess.get_providers()[0] == "CUDAExecutionProvider"
    return torch.device("cuda" if cuda else "cpu")


def _bind(
    sess: ort.InferenceSession, inputs: dict[str, Tensor], outputs: dict[str, Tensor]
) -> ort.IOBinding:
    """An IO binding of `sess` to torch tensors, which must be contiguous and stay alive (and
    in place) as long as the binding runs: no copies in or out."""
    binding = sess.io_binding()
    for bind, tensors in ((binding.bind_input, inputs), (binding.bind_output, outputs)):
        for name, t in tensors.items():
            bind(
                name,
                t.device.type,
                t.device.index or 0,
                np.dtype(str(t.dtype).removeprefix("torch.")),
                tuple(t.shape),
                t.data_ptr(),
            )
    return binding


def _run_bound(sess: ort.InferenceSession, binding: ort.IOBinding, device: torch.device) -> None:
    if device.type == "cuda":
        # ONNX Runtime's CUDA provider runs on a stream of its own: torch's writes come first.
        torch.cuda.current_stream().synchronize()
    sess.run_with_iobinding(binding)


def _run(sess: ort.InferenceSession, inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
    """Runs `sess` once on torch tensors in place."""
    inputs = {name: t.contiguous() for name, t in inputs.items()}  # alive until the run ends
    _run_bound(sess, _bind(sess, inputs, outputs), _device(sess))


@dataclass(eq=False)
class _Round:
    """The step graph's inputs and outputs for one round shape (B, N new inputs, against the
    cache's T slots), bound once: each round of the shape fills the input buffers in place and
    runs. Rebinding some 200 tensors cost 3.7 ms a step from Python (RAR-B int8, 2-core AMD
    EPYC, 28 ms a step in all)."""

    inputs: SlotInputs  # (B, N) each
    bias: Tensor  # (N, T + N)
    mods: Tensor  # (K, B, N, D): every adaLN output at the inputs' slots
    logits: Tensor  # (B, N, V)
    k: Tensor  # (layers, B, H, N, hd): the new inputs' keys, copied into the cache after the run
    v: Tensor
    cache_k: Tensor  # the cache buffers bound: a grown cache needs a new binding
    binding: ort.IOBinding


@dataclass(eq=False)
class OnnxCache(KVCache):
    """A KVCache that also keeps its generation's last round binding (`_Round`)."""

    bound: _Round | None = None


class OnnxExecutor:
    """The generator's ONNX export as an `Executor` (see rar_demo.backends)."""

    def __init__(self, directory: Path, int8: bool = False, threads: int | None = None) -> None:
        self.config = RARConfig.from_dict(read_manifest(directory)["generator"])
        files = [int8_name(f) if int8 else f for f in (MODULATION_FILE, STEP_FILE)]
        self._modulation, self._step = (session(directory / f, threads) for f in files)
        self.device = _device(self._step)

    def new_cache(self, batch_size: int) -> OnnxCache:
        """Room for the first CACHE_GROWTH slots; `decode_round` grows it as slots fill."""
        return OnnxCache.empty(self.config, batch_size, self.device, torch.float32, CACHE_GROWTH)

    def _grow(self, cache: OnnxCache, slots: int) -> None:
        """Makes room for `slots` slots, in multiples of CACHE_GROWTH."""
        have = cache.k.shape[3]
        if slots <= have:
            return
        slots = min(-(-slots // CACHE_GROWTH) * CACHE_GROWTH, self.config.image_seq_len + 1)
        # Zeros: the new slots are masked until written, but read (0 x inf would be nan).
        cache.k, cache.v = (F.pad(t, (0, 0, 0, slots - have)) for t in (cache.k, cache.v))

    def prefill(self, cache: OnnxCache, labels: Tensor, first_positions: Tensor) -> Tensor:
        inputs = prefill_inputs(self.config, labels, first_positions)  # (B, 2): cls, condition
        return self.decode_round(cache, 0, inputs, 0, labels)[:, 0]

    def decode_step(
        self,
        cache: OnnxCache,
        step: int,
        tokens: Tensor,
        positions: Tensor,
        next_positions: Tensor,
        labels: Tensor,
    ) -> Tensor:
        inputs = decode_inputs(tokens, positions, next_positions)
        return self.decode_round(cache, step + 1, inputs, 0, labels)[:, 0]

    def decode_round(
        self, cache: OnnxCache, first_slot: int, inputs: SlotInputs, queries: int, labels: Tensor
    ) -> Tensor:
        """`RAR.decode_round` in one run of the step graph: R real inputs written to the cache
        from `first_slot` on, then Q queries; the first round (slot 0) also builds the adaLN
        table. Returns the (B, 1 + Q, V) logits."""
        if first_slot == 0:
            self._modulation_table(cache, labels)
        elif cache.modulation is None:
            raise ValueError("start a generation with its first round (slot 0) or prefill")
        N = inputs.ids.shape[1]
        R = N - queries
        self._grow(cache, first_slot + R)
        r = self._bound(cache, N)
        slots, mod_slots = round_slots(first_slot, R, queries, self.device)
        for buffer, t in zip(r.inputs, inputs, strict=True):
            buffer.copy_(t)
        r.bias.copy_(cache_bias(cache.k.shape[3], slots, torch.float32, queries))
        cache.modulation.at(mod_slots, out=r.mods)
        _run_bound(self._step, r.binding, self.device)
        cache.k[:, :, :, first_slot : first_slot + R] = r.k[:, :, :, :R]
        cache.v[:, :, :, first_slot : first_slot + R] = r.v[:, :, :, :R]
        return r.logits[:, R - 1 :].clone()  # the buffer is the next round's

    def _bound(self, cache: OnnxCache, N: int) -> _Round:
        """The step graph bound for a round of N inputs against the cache as it is now: the
        last round's binding while neither changed (a grown cache is a new buffer)."""
        r = cache.bound
        if r is not None and r.cache_k is cache.k and r.logits.shape[1] == N:
            return r
        layers, B, H, T, hd = cache.k.shape
        K, _, _, D = cache.modulation.table.shape
        device = self.device
        ids = torch.empty(B, N, dtype=torch.long, device=device)
        inputs = SlotInputs(ids, torch.empty_like(ids), torch.empty_like(ids))
        bias = torch.empty(N, T + N, device=device)
        mods = torch.empty(K, B, N, D, device=device)
        logits = torch.empty(B, N, self.config.codebook_size, device=device)
        k, v = torch.empty(2, layers, B, H, N, hd, device=device)
        feeds = {
            **dict(zip(("ids", "pos_rows", "target_rows"), inputs, strict=True)),
            "bias": bias,
            **dict(zip(mod_names(layers), mods, strict=True)),
            **dict(zip(cache_names(layers), [*cache.k, *cache.v], strict=True)),
        }
        binding = _bind(self._step, feeds, {"logits": logits, "k": k, "v": v})
        r = _Round(inputs, bias, mods, logits, k, v, cache.k, binding)
        cache.bound = r
        return r

    def _modulation_table(self, cache: OnnxCache, labels: Tensor) -> None:
        distinct, rows = labels.to(self.device).unique(return_inverse=True)
        K, _, T, D = self._modulation.get_outputs()[0].shape
        table = torch.empty(K, len(distinct), T, D, device=self.device)
        _run(self._modulation, {"labels": distinct}, {"table": table})
        cache.modulation = Modulation(table, rows)


class OnnxDecoder:
    """The VQGAN decoder's ONNX export: `decode(codes)` as `VQGAN.decode`."""

    def __init__(self, directory: Path, int8: bool = False, threads: int | None = None) -> None:
        self.resolution = read_manifest(directory)["tokenizer"]["resolution"]
        file = int8_name(DECODER_FILE) if int8 else DECODER_FILE
        self._session = session(directory / file, threads)
        self.device = _device(self._session)

    def decode(self, codes: Tensor) -> Tensor:
        """(B, N) codes -> (B, 3, H, W) pixels in [0, 1]."""
        R = self.resolution
        pixels = torch.empty(codes.shape[0], 3, R, R, device=self.device)
        _run(self._session, {"codes": codes.to(self.device).contiguous()}, {"pixels": pixels})
        return pixels


def open_export(
    directory: Path, int8: bool = False
) -> tuple[OnnxExecutor, Callable[[Tensor], Tensor]]:
    """An export's generator executor and its (B, N) codes -> pixels function."""
    return OnnxExecutor(directory, int8=int8), OnnxDecoder(directory, int8=int8).decode


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "rar_demo" / "onnx"


def weights_hash(*modules: nn.Module) -> str:
    """A digest of the modules' configs and weights, naming their export directory."""
    h = hashlib.sha256(f"format {FORMAT}".encode())
    for module in modules:
        h.update(json.dumps(module.config.to_dict(), sort_keys=True).encode())
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().reshape(-1).numpy())
    return h.hexdigest()[:16]


def ensure_export(name: str, model: RAR, tokenizer: VQGAN, int8: bool = False) -> Path:
    """The cached export of these weights, exporting (and quantizing) on first use."""
    out = cache_root() / f"{name}-{weights_hash(model, tokenizer)}"
    exported = (out / MANIFEST_FILE).is_file()
    missing_int8 = int8 and not all((out / int8_name(f)).is_file() for f in QUANTIZED)
    if exported and not missing_int8:
        return out
    # Only a missing file pays for the exporter: it imports onnx, whose ml_dtypes alone took
    # 1.4 s to import on a 2-core AMD EPYC, and ONNX Runtime's quantization tools.
    from .onnx_export import export_all, quantize

    if not exported:
        # Export next to the final place, then move it there in one step: an interrupted
        # export never looks complete, and two processes cannot interleave their files.
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        export_all(model, tokenizer, tmp, int8)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first: keep its export
            shutil.rmtree(tmp)
            if not (out / MANIFEST_FILE).is_file():
                raise
    if int8:  # adds only what is missing (the other process may have exported fp32 only)
        quantize(out, tokenizer)
    return out
