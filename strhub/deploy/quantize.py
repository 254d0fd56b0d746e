"""An int8 image encoder for an ONNX export: ONNX Runtime's static quantization of the encoder graph.

The weights of its matrix products and of the patch convolution are quantized per output channel (int8), their
inputs per tensor (uint8) with ranges calibrated on a few images: the user's, or words rendered with the model's
charset (`strhub.app.export` renders them). The products of two activations (attention) stay float32, as do the
decoding graphs, whose few rows per step gain nothing. The quantized graph is written beside the float32 one, and
the manifest names it, so `OnnxReader` reads the export as before.
"""
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
from PIL import Image

from strhub.data.transforms import get_transform
from strhub.deploy.runtime import MANIFEST, read_manifest

INT8_ENCODER = "encoder_int8.onnx"
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


def quantize_encoder(export: Path, images: List[Image.Image], source: str) -> Dict[str, Any]:
    """Writes the int8 encoder of the export in `export`, calibrated on `images`, and points its manifest at it
    (recording `source`, where the calibration images came from); returns the manifest."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder, manifest = read_manifest(export)
    transform = get_transform(tuple(manifest["image_size"]), mean=manifest["mean"], std=manifest["std"])
    tensors = np.stack([transform(image).numpy() for image in images]).astype(np.float32)
    batches = [tensors[start:start + CALIBRATION_BATCH] for start in range(0, len(tensors), CALIBRATION_BATCH)]
    float_encoder = folder / manifest.get("quantized", {}).get("float_encoder", manifest["graphs"]["encoder"]["file"])
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "encoder.onnx"
        quant_pre_process(str(float_encoder), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(folder / INT8_ENCODER), CalibrationReader(batches),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"MatMulConstBOnly": True})
    manifest["graphs"]["encoder"]["file"] = INT8_ENCODER
    manifest["quantized"] = {"encoder": "int8", "float_encoder": float_encoder.name, "calibration": source,
                             "calibration_images": len(images)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


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
