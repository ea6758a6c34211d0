"""ONNX export of a generator's decode step and its VQGAN decoder, and int8 quantization: the
files backends.onnx runs (its `ensure_export` keeps them cached on disk).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
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

from ..model import (
    RAR,
    SlotInputs,
    cache_bias,
    cat_inputs,
    prefill_inputs,
    query_inputs,
    round_slots,
)
from ..vqgan import VQGAN
from .onnx import (
    DECODER_FILE,
    FORMAT,
    MANIFEST_FILE,
    MODULATION_FILE,
    QUANTIZED,
    STEP_FILE,
    cache_names,
    int8_name,
    mod_names,
)

OPSET = 18
# The generator's GEMMs quantize their activations per call (dynamic), with 7-bit weights
# (reduce_range): without VNNI, x86 int8 kernels sum u8 x s8 pairs into int16 with saturation,
# which cost the fixture's logits 0.980 min cosine on an AVX2 EPYC; 7 bits gave 0.9998 there.
# Convolutions do not quantize per call: ONNX Runtime's ConvInteger is several times slower
# than fp32 on CPU, while QLinearConv with activation ranges calibrated ahead of time (static)
# is 2.4x faster than fp32 (RAR-B's decoder).
DYNAMIC = (MODULATION_FILE, STEP_FILE)
CALIBRATION_GRIDS = 8


class _DecodeStep(nn.Module):
    """`RAR.step` for N new slots per sample (a decode step, a prefill, or a round of parallel
    decoding with its queries), inputs given as `SlotInputs` rows, so that cls, condition and
    image tokens all run through one graph. The caller gathers the inputs' adaLN outputs from
    the generation's table and builds the attention bias, so the graph has no indexing or mask
    arithmetic of its own: gathering (B, N) rows of the table in the graph, and splitting them
    per block, cost ONNX Runtime about 0.7 ms per new input on RAR-B, a third of its per-input
    cost in a round of parallel decoding."""

    def __init__(self, model: RAR) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        ids: Tensor,  # (B, N)
        pos_rows: Tensor,  # (B, N)
        target_rows: Tensor,  # (B, N)
        bias: Tensor,  # (N, T + N) see model.cache_bias
        # The K adaLN outputs (B, N, D) of model.Modulation.at, then every layer's k
        # (B, H, T, hd), then every layer's v.
        *tensors: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        model = self.model
        layers = len(model.blocks)
        mods, caches = tensors[: 6 * layers + 2], tensors[6 * layers + 2 :]
        x = model.embed(SlotInputs(ids, pos_rows, target_rows))
        return model.step(  # logits (B, N, V)
            x, model.split_modulation(mods), caches[:layers], caches[layers:], bias
        )


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


def export_generator(model: RAR, out: Path) -> None:
    """Writes modulation.onnx and decode_step.onnx for `model` (fp32) into `out`."""
    net = model.config
    B = 2
    cache = model.new_cache(B, device=torch.device("cpu"))
    labels = torch.tensor([0, net.null_class])
    modulation = model.precompute_modulation(labels)
    # Traced on a prefill with one query (N = 3): batch and N distinct, neither 1.
    first = torch.zeros(B, dtype=torch.long)
    real = prefill_inputs(net, labels, first)
    inputs = cat_inputs(real, query_inputs(real, first[:, None] + 1))
    slots, mod_slots = round_slots(0, 2, 1, torch.device("cpu"))
    bias = cache_bias(net.image_seq_len + 1, slots, torch.float32, queries=1)
    new, cached = {0: "batch", 1: "new"}, {0: "batch", 2: "cached"}
    with torch.no_grad():
        _export(
            _ModulationTable(model),
            (labels,),
            out / MODULATION_FILE,
            {"labels": {0: "labels"}, "table": {1: "labels"}},
        )
        _export(
            _DecodeStep(model),
            (*inputs, bias, *modulation.at(mod_slots), *cache.k, *cache.v),
            out / STEP_FILE,
            {
                "ids": new,
                "pos_rows": new,
                "target_rows": new,
                "bias": {0: "new", 1: "attended"},
                **{name: new for name in mod_names(net.num_hidden_layers)},
                **{name: cached for name in cache_names(net.num_hidden_layers)},
                "logits": new,
                "k": {1: "batch", 3: "new"},
                "v": {1: "batch", 3: "new"},
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
                quantize_dynamic(
                    out / file,
                    tmp,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    reduce_range=True,
                )
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
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def export_all(model: RAR, tokenizer: VQGAN, out: Path, int8: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    export_generator(model, out)
    export_decoder(tokenizer, out)
    if int8:
        quantize(out, tokenizer)
    write_manifest(out, model, tokenizer)
