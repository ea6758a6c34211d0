"""ONNX export of the generator and the VQGAN decoder, and their ONNX Runtime executors.

An export directory holds:

    modulation.onnx       (U,) labels -> (T, U, M) adaLN table, once per generation
    decode_step.onnx      one token per sample against a static KV cache (`RAR.step`)
    decoder.onnx          (B, N) codes -> (B, 3, H, W) pixels
    *.int8.onnx           (optional: --int8) the modulation and decode step with dynamically
                          quantized int8 weights; the decoder statically quantized (QLinearConv)
    export.json           configs and format version; written last, so it marks a whole export

The decode step reads the cache and returns only the new slot's keys and values; the executor
writes them into its cache buffers in place, and IO binding hands ONNX Runtime those buffers, so
no step copies the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor, nn

from ..config import RARConfig
from ..model import PREFIX, RAR, KVCache, Modulation
from ..vqgan import VQGAN

FORMAT = 3  # bump when the graphs change (inputs, outputs, semantics, speed): invalidates caches
OPSET = 18
MODULATION_FILE = "modulation.onnx"
STEP_FILE = "decode_step.onnx"
DECODER_FILE = "decoder.onnx"
# The generator's GEMMs quantize their activations per call (dynamic). Convolutions do not: ONNX
# Runtime's ConvInteger is several times slower than fp32 on CPU, while QLinearConv with
# activation ranges calibrated ahead of time (static) is 2.4x faster than fp32 (RAR-B's decoder).
DYNAMIC = (MODULATION_FILE, STEP_FILE)
QUANTIZED = (*DYNAMIC, DECODER_FILE)
CALIBRATION_GRIDS = 8


def int8_name(file: str) -> str:
    return file.removesuffix(".onnx") + ".int8.onnx"


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "rar_demo" / "onnx"


# --- export --------------------------------------------------------------------------------


class _DecodeStep(nn.Module):
    """`RAR.step` for one token per sample, with every slot's input as three table rows so that
    cls (slot 0), condition (slot 1) and image tokens all run through one graph.

    ids index the embeddings with the cls token appended (-1 = cls); target_rows index the
    target-aware table with a zero row appended (-1 = no target).
    """

    def __init__(self, model: RAR) -> None:
        super().__init__()
        self.model = model
        table = model.target_aware_pos_embed[0]
        self.register_buffer("inputs", torch.cat([model.embeddings.weight, model.cls_token[0]]))
        self.register_buffer("targets", torch.cat([table, table.new_zeros(1, table.shape[1])]))

    def forward(
        self,
        ids: Tensor,  # (B,)
        pos_rows: Tensor,  # (B,)
        target_rows: Tensor,  # (B,)
        slot: Tensor,  # (1,)
        rows: Tensor,  # (B,) each sample's row in the table
        table: Tensor,  # (T, U, M)
        *caches: Tensor,  # every layer's k (B, H, T, hd), then every layer's v
    ) -> tuple[Tensor, Tensor, Tensor]:
        model = self.model
        x = self.inputs[ids] + model.pos_embed[0, pos_rows] + self.targets[target_rows]  # (B, D)
        mods = model.split_modulation(Modulation(table, rows).at(slot))
        layers = len(model.blocks)
        logits, k, v = model.step(x[:, None], mods, caches[:layers], caches[layers:], slot)
        return logits, k[:, :, :, 0], v[:, :, :, 0]  # k, v: (layers, B, H, hd)


class _ModulationTable(nn.Module):
    def __init__(self, model: RAR) -> None:
        super().__init__()
        self.model = model

    def forward(self, labels: Tensor) -> Tensor:
        return self.model.modulation_table(labels)


class _Decode(nn.Module):
    def __init__(self, tokenizer: VQGAN) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, codes: Tensor) -> Tensor:
        return self.tokenizer.decode(codes)


def _export(
    module: nn.Module, args: tuple[Tensor, ...], path: Path, dynamic: dict[str, dict[int, str]]
) -> None:
    names = list(dynamic)
    n_in = len(args)
    # Past protobuf's 2 GB (RAR-XL and up) the exporter writes one file per weight beside the
    # model: export into a scratch directory, then keep one model file and at most one data file.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        tmp = Path(scratch) / path.name
        with warnings.catch_warnings():
            # The TorchScript exporter (no onnxscript dependency) is deprecated in favour of the
            # torch.export one; it exports these static graphs fine.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                str(tmp),
                input_names=names[:n_in],
                output_names=names[n_in:],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
        if len(list(Path(scratch).iterdir())) == 1:
            os.replace(tmp, path)
        else:
            data = f"{path.name}.data"
            onnx.save_model(onnx.load(tmp), path, save_as_external_data=True, location=data)


def _cache_names(layers: int) -> list[str]:
    return [f"{kv}_cache.{i}" for kv in "kv" for i in range(layers)]


def export_generator(model: RAR, out: Path) -> None:
    """Writes modulation.onnx and decode_step.onnx for `model` (fp32) into `out`."""
    cfg = model.config
    B = 2
    cache = model.new_cache(B, device=torch.device("cpu"))
    labels = torch.tensor([0, cfg.null_class])
    table = model.modulation_table(labels)
    zeros = torch.zeros(B, dtype=torch.long)
    batch = {0: "batch"}
    with torch.no_grad():
        _export(
            _ModulationTable(model),
            (labels,),
            out / MODULATION_FILE,
            {"labels": {0: "labels"}, "table": {1: "labels"}},
        )
        _export(
            _DecodeStep(model),
            (zeros, zeros, zeros, torch.tensor([2]), torch.arange(B), table, *cache.k, *cache.v),
            out / STEP_FILE,
            {
                "ids": batch,
                "pos_rows": batch,
                "target_rows": batch,
                "slot": {},
                "rows": batch,
                "table": {1: "labels"},
                **{name: batch for name in _cache_names(cfg.num_hidden_layers)},
                "logits": batch,
                "k": {1: "batch"},
                "v": {1: "batch"},
            },
        )


def export_decoder(tokenizer: VQGAN, out: Path) -> None:
    """Writes decoder.onnx: (B, N) codes -> (B, 3, H, W) pixels in [0, 1]."""
    codes = torch.zeros(1, tokenizer.config.grid_size**2, dtype=torch.long)
    with torch.no_grad():
        _export(
            _Decode(tokenizer),
            (codes,),
            out / DECODER_FILE,
            {"codes": {0: "batch"}, "pixels": {0: "batch"}},
        )


class _RandomCodes(CalibrationDataReader):
    """Uniformly random code grids. Measured on the bundled tokenizer: decoding held-out emoji
    with ranges calibrated this way lands 39.5 dB from fp32; with ranges from real emoji tokens,
    44.5 dB. Random codes need no data and work for any tokenizer."""

    def __init__(self, tokenizer: VQGAN) -> None:
        rng = np.random.default_rng(0)
        shape = (1, tokenizer.config.grid_size**2)
        V = tokenizer.config.codebook_size
        self._grids = iter([{"codes": rng.integers(0, V, shape)} for _ in range(CALIBRATION_GRIDS)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._grids, None)


def _quantize_decoder(src: Path, dst: Path, tokenizer: VQGAN) -> None:
    """int8 convolutions, per output channel; everything else (norms, upsampling) stays fp32."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(src, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            dst,
            _RandomCodes(tokenizer),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def _no_preprocess_hint(record: logging.LogRecord) -> bool:
    # onnxruntime.quantization logs a hint to pre-process through the root logger on every call.
    return "pre-process" not in record.getMessage()


def quantize(out: Path, tokenizer: VQGAN) -> None:
    """Adds the *.int8.onnx files that are missing (see `QUANTIZED`)."""
    root = logging.getLogger()
    root.addFilter(_no_preprocess_hint)
    try:
        for file in QUANTIZED:
            if (out / int8_name(file)).is_file():
                continue
            tmp = out / f"{int8_name(file)}.tmp-{os.getpid()}"  # two processes may both get here
            if file in DYNAMIC:
                quantize_dynamic(out / file, tmp, weight_type=QuantType.QInt8, per_channel=True)
            else:
                _quantize_decoder(out / file, tmp, tokenizer)
            os.replace(tmp, out / int8_name(file))
    finally:
        root.removeFilter(_no_preprocess_hint)


def write_manifest(out: Path, model: RAR, tokenizer: VQGAN) -> None:
    manifest = {
        "format": FORMAT,
        "generator": model.config.to_dict(),
        "tokenizer": tokenizer.config.to_dict(),
    }
    (out / "export.json").write_text(json.dumps(manifest, indent=1) + "\n")


def export_all(model: RAR, tokenizer: VQGAN, out: Path, int8: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    export_generator(model, out)
    export_decoder(tokenizer, out)
    if int8:
        quantize(out, tokenizer)
    write_manifest(out, model, tokenizer)


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
    if not (out / "export.json").is_file():
        # Export next to the final place, then move it there in one step: an interrupted
        # export never looks complete, and two processes cannot interleave their files.
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        export_all(model, tokenizer, tmp, int8)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first: keep its export
            shutil.rmtree(tmp)
    elif int8:
        quantize(out, tokenizer)
    return out


# --- runtime -------------------------------------------------------------------------------


def providers() -> list[str]:
    """CUDA where onnxruntime-gpu and a GPU are present, else CPU."""
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=providers())


def _device(sess: ort.InferenceSession) -> torch.device:
    cuda = sess.get_providers()[0] == "CUDAExecutionProvider"
    return torch.device("cuda" if cuda else "cpu")


def _run(sess: ort.InferenceSession, inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
    """Runs `sess` on torch tensors in place: no copies in or out."""
    binding = sess.io_binding()
    inputs = {name: t.contiguous() for name, t in inputs.items()}  # alive until the run ends
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
    sess.run_with_iobinding(binding)


class OnnxExecutor:
    """The generator's ONNX export as an `Executor` (see rar_demo.backends)."""

    def __init__(self, directory: Path, int8: bool = False, threads: int | None = None) -> None:
        manifest = json.loads((directory / "export.json").read_text())
        self.config = RARConfig.from_dict(manifest["generator"])
        files = [int8_name(f) if int8 else f for f in (MODULATION_FILE, STEP_FILE)]
        self._modulation, self._step = (session(directory / f, threads) for f in files)
        self.device = _device(self._step)

    def new_cache(self, batch_size: int) -> KVCache:
        return KVCache.empty(self.config, batch_size, self.device, torch.float32)

    def prefill(self, cache: KVCache, labels: Tensor, first_positions: Tensor) -> Tensor:
        cfg = self.config
        distinct, rows = labels.unique(return_inverse=True)
        T, M = cfg.image_seq_len + 1, self._modulation.get_outputs()[0].shape[-1]
        table = torch.empty(T, len(distinct), M, device=self.device)
        _run(self._modulation, {"labels": distinct}, {"table": table})
        cache.modulation = Modulation(table, rows)
        none = torch.full_like(labels, -1)  # cls input, no target
        self._step_run(cache, 0, none, torch.zeros_like(labels), none)
        cond = labels + cfg.codebook_size + 1
        return self._step_run(cache, 1, cond, torch.ones_like(labels), PREFIX + first_positions)

    def decode_step(
        self,
        cache: KVCache,
        step: int,
        tokens: Tensor,
        positions: Tensor,
        next_positions: Tensor,
        labels: Tensor,
    ) -> Tensor:
        return self._step_run(cache, step + 1, tokens, PREFIX + positions, PREFIX + next_positions)

    def _step_run(
        self, cache: KVCache, slot: int, ids: Tensor, pos_rows: Tensor, target_rows: Tensor
    ) -> Tensor:
        assert cache.modulation is not None, "prefill first"
        layers, B, H, _, hd = cache.k.shape
        logits = torch.empty(B, self.config.codebook_size, device=self.device)
        k, v = torch.empty(2, layers, B, H, hd, device=self.device)
        inputs = {
            "ids": ids,
            "pos_rows": pos_rows,
            "target_rows": target_rows,
            "slot": torch.tensor([slot], device=self.device),
            "rows": cache.modulation.rows,
            "table": cache.modulation.table,
            **dict(zip(_cache_names(layers), [*cache.k, *cache.v], strict=True)),
        }
        _run(self._step, inputs, {"logits": logits, "k": k, "v": v})
        cache.k[:, :, :, slot] = k
        cache.v[:, :, :, slot] = v
        return logits


class OnnxDecoder:
    """The VQGAN decoder's ONNX export: `decode(codes)` as `VQGAN.decode`."""

    def __init__(self, directory: Path, int8: bool = False, threads: int | None = None) -> None:
        manifest = json.loads((directory / "export.json").read_text())
        self.resolution = manifest["tokenizer"]["resolution"]
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
