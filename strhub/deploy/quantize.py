"""int8 graphs for an ONNX export: ONNX Runtime's quantization of the image encoder and of CLIP4STR's caption graph.

The weights of their matrix products (and of the patch convolution) are quantized per output channel (int8). The
image encoder's inputs to them are quantized per tensor (uint8) with ranges calibrated on a few images: the user's,
or words rendered with the model's charset (`strhub.app.export` renders them). The caption graph's are quantized
dynamically (their ranges measured at each run). The products of two activations (attention) stay float32, as do
the decoding graphs, whose few rows per step gain little. The quantized graphs are written beside the float32 ones,
and the manifest names them, so `OnnxReader` reads the export as before.
"""
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
from PIL import Image

from strhub.data.transforms import get_transform
from strhub.deploy.runtime import MANIFEST, read_manifest

INT8_FILES = {"encoder": "encoder_int8.onnx", "caption": "caption_int8.onnx"}
QUANTIZATION = {"encoder": "static", "caption": "dynamic"}
CALIBRATION_BATCH = 8


def folder_images(paths: Sequence[Path], count: int) -> List[Image.Image]:
    """Up to `count` of the images `paths`, in order (a file that is not an image is named in a ValueError)."""
    images = []
    for path in paths[:count]:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError as err:
            raise ValueError(f"--calibration: {path} is not a readable image ({err})") from None
    return images


class CalibrationReader:
    """ONNX Runtime's calibration data reader: the images as the encoder's input, a batch at a time."""

    def __init__(self, batches: List[np.ndarray]) -> None:
        self.batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        batch = next(self.batches, None)
        return None if batch is None else {"images": batch}


def kept_in_float32(graph: Path) -> List[str]:
    """The matrix products of a graph that stay float32: those whose second factor is not a weight (attention's),
    which ONNX Runtime's QDQ quantizer would quantize too (it ignores `MatMulConstBOnly`), and those after the last
    layer norm (the projection of the encoder's output and the decoders' keys and values of it), whose error the
    decoders' attention would read directly: on a tiny CLIP4STR that reads 1,024 words, int8 kept 518 instead of 508
    of the 531 strings it reads right."""
    import onnx

    nodes = onnx.load(str(graph), load_external_data=False).graph
    weights = {tensor.name for tensor in nodes.initializer}
    norms = [index for index, node in enumerate(nodes.node) if node.op_type == "LayerNormalization"]
    tail = norms[-1] if norms else len(nodes.node)
    return [node.name for index, node in enumerate(nodes.node)
            if node.op_type == "MatMul" and (node.input[1] not in weights or index > tail)]


def quantize_export(export: Path, images: List[Image.Image], source: str) -> Dict[str, Any]:
    """Writes the int8 graphs of the export in `export` and points its manifest at them; returns the manifest. The
    image encoder is quantized statically, calibrated on `images` (`source` says where they came from); CLIP4STR's
    caption graph (its text encoder) dynamically: its activations' ranges are measured at each run, as captions
    are what a calibration set cannot foresee."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    folder, manifest = read_manifest(export)
    transform = get_transform(tuple(manifest["image_size"]), mean=manifest["mean"], std=manifest["std"])
    tensors = np.stack([transform(image).numpy() for image in images]).astype(np.float32)
    batches = [tensors[start:start + CALIBRATION_BATCH] for start in range(0, len(tensors), CALIBRATION_BATCH)]
    float_files = float_graph_files(manifest)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = prepare(folder / float_files["encoder"], Path(scratch))
        quantize_static(str(prepared), str(folder / INT8_FILES["encoder"]), CalibrationReader(batches),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=kept_in_float32(prepared))
        if "caption" in manifest["graphs"]:
            prepared = prepare(folder / float_files["caption"], Path(scratch))
            quantize_dynamic(str(prepared), str(folder / INT8_FILES["caption"]), per_channel=True,
                             weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                             nodes_to_exclude=kept_in_float32(prepared))
    methods = {graph: QUANTIZATION[graph] for graph in float_files}
    manifest["quantized"] = {"graphs": methods, "float_files": float_files, "calibration": source,
                             "calibration_images": len(images)}
    for graph in float_files:
        manifest["graphs"][graph]["file"] = INT8_FILES[graph]
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def float_graph_files(manifest: Dict[str, Any]) -> Dict[str, str]:
    """The float32 files of the graphs that `--int8` quantizes, whether the export is quantized already or not."""
    quantized = manifest.get("quantized", {})
    return {graph: quantized.get("float_files", {}).get(graph, spec["file"])
            for graph, spec in manifest["graphs"].items() if graph in INT8_FILES}


def prepare(graph: Path, scratch: Path) -> Path:
    """ONNX Runtime's pre-processing before quantization (shape inference, graph optimisation) into `scratch`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / graph.name
    quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
    return prepared


def same_strings(model: Any, export: Path, images: List[Image.Image]) -> int:
    """How many of `images` the export in `export` reads as the PyTorch `model` (float32) does."""
    import torch

    from strhub.deploy.runtime import OnnxReader

    transform = get_transform(model.image_size)
    with torch.inference_mode():
        logits = model(torch.stack([transform(image) for image in images]))
    expected = model.tokenizer.decode(logits.softmax(-1))[0]
    actual = OnnxReader(export, device="cpu").read(images, batch_size=len(images))[0]
    return sum(a == b for a, b in zip(actual, expected))
