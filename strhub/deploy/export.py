"""Exporting a model of any family as ONNX graphs and the `model.json` a runtime needs, and checking
the export against PyTorch.

The graphs (`strhub.deploy.graphs`) are traced with PyTorch's TorchScript-based exporter
(`torch.onnx.export(dynamo=False)`): on these graphs it is as exact as the dynamo exporter (both within 1e-5
of PyTorch on the tiny models) and exports in a fraction of its time, with no onnxscript to install.
A tracer keeps Python values as constants, so the traced code reads batch sizes from `tensor.shape`,
and every export is checked at two batch sizes before it is called done.
"""
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from strhub.data.transforms import get_transform
from strhub.deploy.graphs import CaptionGraph, EncoderGraph, ParallelGraph, RefineGraph, StepGraph, decoders, kv_names
from strhub.deploy.runtime import FORMAT, FORMAT_VERSION, MANIFEST, OnnxReader
from strhub.host import atomic_directory
from strhub.models.clip4str.model import CLIP4STR
from strhub.models.recognizer import Recognizer
from strhub.models.registry import FAMILIES
from strhub.models.towers import CLIPTextTower

MIN_OPSET = 14  # scaled_dot_product_attention
MAX_OPSET = 20  # the TorchScript exporter's newest
BATCH, LENGTH = "batch", "length"
EXPORT_FILE = re.compile(r".+\.onnx(\.data)?|model\.json")  # what a previous export may hold, to be replaced


class ExportError(ValueError):
    """An export that cannot be made, or that does not match PyTorch; the message names the option or graph."""


@dataclass
class Graph:
    """A module to export with example inputs (by name, in order), its output names and the dynamic
    axes of each input and output (the batch, unless listed in `dynamic`)."""

    name: str
    module: nn.Module
    inputs: Dict[str, Tensor]
    outputs: List[str]
    dynamic: Dict[str, Dict[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The exporter puts a module back in the mode it found it in: eval, or the whole model would train.
        self.module.eval()

    def axes(self) -> Dict[str, Dict[int, str]]:
        axes = {name: {0: BATCH} for name in [*self.inputs, *self.outputs] if name != "position"}
        for name, extra in self.dynamic.items():
            axes[name] = {**axes[name], **extra}
        return axes


def family_name(model: Recognizer) -> str:
    """The registered family of a plain model."""
    for family in FAMILIES.values():
        if type(model).__module__ == f"{family.package}.model":
            return family.name
    raise ExportError(f"{type(model).__name__} belongs to no registered model family ({', '.join(FAMILIES)})")


def graphs(model: Recognizer, images: Tensor) -> List[Graph]:
    """The graphs of `model`, with example inputs computed from `images` (a batch of at least two, so
    that no size is 1 while tracing)."""
    num_steps = model.num_steps()
    tokenizer = model.tokenizer
    encoder = EncoderGraph(model)
    encoded = encoder(images)
    parts = decoders(model)
    memory_names = kv_names("memory", len(parts[0][1].layers))
    image_names = kv_names("image", len(parts[1][1].layers)) if len(parts) > 1 else []
    result = [Graph("encoder", encoder, {"images": images}, memory_names + image_names)]
    memories = {"": dict(zip(memory_names, encoded))}
    if len(parts) > 1:
        caption = CaptionGraph(model)
        captions = [tokenizer.charset[:i + 1] for i in range(len(images))]
        token_ids = model.caption_tokenizer(captions, model.context_length)
        image_memory = dict(zip(image_names, encoded[len(memory_names):]))
        cross_names = kv_names("memory", len(parts[1][1].layers))
        memories["cross_"] = dict(zip(cross_names, caption(token_ids, *image_memory.values())))
        result.append(Graph("caption", caption, {"caption_ids": token_ids, **image_memory}, cross_names))
    for prefix, decoder in parts:
        memory = memories[prefix]
        if model.decode_ar:
            key = next(iter(memory.values()))
            cache = key.new_zeros(len(images), 2, key.shape[1], num_steps, key.shape[3])
            caches = {f"cache_{i}": cache for i in range(len(decoder.layers))}
            inputs = {"token": torch.full((len(images),), tokenizer.bos_id), "position": torch.tensor(1), **memory,
                      **caches}
            result.append(Graph(f"{prefix}step", StepGraph(decoder, num_steps), inputs,
                                ["logits", *(f"next_{name}" for name in caches)]))
        else:
            result.append(Graph(f"{prefix}parallel", ParallelGraph(decoder, num_steps, tokenizer.bos_id), memory,
                                ["logits"]))
        if model.refine_iters:
            logits = torch.randn(len(images), num_steps - 1, len(tokenizer) - 2, dtype=images.dtype)
            result.append(Graph(f"{prefix}refine", RefineGraph(decoder, num_steps, tokenizer.bos_id, tokenizer.eos_id),
                                {"previous_logits": logits, **memory}, ["logits"],
                                dynamic={"previous_logits": {1: LENGTH}}))
    return result


def _spec(name: str, tensor: Tensor, dynamic: Dict[int, str]) -> Dict[str, Any]:
    shape = [dynamic.get(axis, size) for axis, size in enumerate(tensor.shape)]
    return {"name": name, "shape": shape, "dtype": str(tensor.dtype).removeprefix("torch.")}


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset} is not supported: the graphs need opset {MIN_OPSET} or newer "
                          f"(scaled dot-product attention), and PyTorch's exporter writes at most {MAX_OPSET}")


def export_onnx(model: Recognizer, out: Path, opset: int, atol: float, source: Optional[str] = None) -> Dict[str, Any]:
    """Writes the graphs of `model` (in eval mode, float32 or float16 as its weights are) and `model.json`
    into `out`, and checks each graph on ONNX Runtime against PyTorch on its example inputs (within
    `atol`); returns the manifest. `source` (the checkpoint's name) is recorded in it."""
    check_opset(opset)
    family = family_name(model)
    if isinstance(model, CLIP4STR) and model.use_language_model and not isinstance(model.text_tower, CLIPTextTower):
        raise ExportError("this CLIP4STR reads its captions with a Hugging Face text tower (model.text_tower), which "
                          "the ONNX export does not support: the ONNX reader tokenises captions with CLIP's BPE")
    model.eval()
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.float16):
        raise ExportError(f"the model's weights are {dtype}: export float32 weights, or float16 ones with --fp16")
    height, width = model.image_size
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0)).clamp(-1, 1).to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    manifest_graphs = {}
    with torch.inference_mode(False), torch.no_grad():
        for graph in tqdm(graphs(model, images), desc="exporting", unit="graph", disable=None):
            path = out / f"{graph.name}.onnx"
            axes = graph.axes()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                torch.onnx.export(graph.module, tuple(graph.inputs.values()), str(path), input_names=list(graph.inputs),
                                  output_names=graph.outputs, opset_version=opset, dynamic_axes=axes, dynamo=False)
            outputs = graph.module(*graph.inputs.values())
            outputs = [outputs] if isinstance(outputs, Tensor) else outputs
            check_graph(path, graph, outputs, atol)
            manifest_graphs[graph.name] = {
                "file": path.name,
                "inputs": [_spec(name, tensor, axes.get(name, {})) for name, tensor in graph.inputs.items()],
                "outputs": [_spec(name, tensor, axes.get(name, {})) for name, tensor in zip(graph.outputs, outputs)],
            }
    normalize = get_transform(model.image_size).transforms[-1]
    tokenizer = model.tokenizer
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "family": family, "model": type(model).__name__,
        "source": source, "opset": opset, "dtype": str(dtype).removeprefix("torch."),
        "image_size": [height, width],
        "mean": normalize.mean.flatten().tolist(), "std": normalize.std.flatten().tolist(),
        "charset_train": tokenizer.charset, "charset_test": model.charset_adapter.charset,
        "max_label_length": model.max_label_length, "decode_ar": model.decode_ar, "refine_iters": model.refine_iters,
        "special_tokens": {"eos": tokenizer.eos_id, "bos": tokenizer.bos_id, "pad": tokenizer.pad_id},
        "num_classes": len(tokenizer) - 2,
        "caption": {"context_length": model.context_length,
                    "tokenizer": "CLIP BPE (strhub.models.clip.CaptionTokenizer)"}
        if isinstance(model, CLIP4STR) and model.use_language_model else None,
        "graphs": manifest_graphs,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def check_graph(path: Path, graph: Graph, expected: Sequence[Tensor], atol: float) -> None:
    """Runs an exported graph on ONNX Runtime with the example inputs: each output must be within `atol`
    of PyTorch's."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    actual = session.run(None, {name: tensor.numpy() for name, tensor in graph.inputs.items()})
    for name, value, reference in zip(graph.outputs, actual, expected):
        difference = float((torch.from_numpy(value).float() - reference.float()).abs().max())
        if not difference <= atol:
            raise ExportError(f"{path}: output {name} of ONNX Runtime differs from PyTorch's by up to {difference:.3g} "
                              f"(more than {atol:g})")


@dataclass
class CheckResult:
    """An end-to-end comparison at one batch size."""

    batch: int
    max_difference: float  # of the logits (inf when the decoded lengths differ)
    same_strings: int


def check_export(model: Recognizer, out: Path, batches: Sequence[int], seed: int, atol: float,
                 exact: bool = True) -> List[CheckResult]:
    """Reads random images in batches of each size with the export in `out` and with `model`. With
    `exact`, the logits must agree within `atol` and the strings be the same (ExportError otherwise);
    without (float16, where a near tie of two characters can change a caption and so the cross branch),
    the comparison is only returned."""
    reader = OnnxReader(out, device="cpu")
    model = model.eval()
    dtype = next(model.parameters()).dtype
    height, width = model.image_size
    generator = torch.Generator().manual_seed(seed)
    results = []
    for batch in batches:
        images = torch.randn(batch, 3, height, width, generator=generator).clamp(-1, 1).to(dtype)
        with torch.inference_mode():
            expected = model(images).float()
            actual = reader(images).float()
        same_shape = actual.shape == expected.shape
        difference = float((actual - expected).abs().max()) if same_shape else float("inf")
        strings = [model.tokenizer.decode(logits.softmax(-1))[0] for logits in (actual, expected)]
        result = CheckResult(batch, difference, sum(a == b for a, b in zip(*strings)))
        if exact and not same_shape:
            raise ExportError(f"{out}: at batch {batch} ONNX Runtime decoded {actual.shape[1]} steps and PyTorch "
                              f"{expected.shape[1]}")
        if exact and not difference <= atol:
            raise ExportError(f"{out}: at batch {batch} the logits of ONNX Runtime and PyTorch differ by up to "
                              f"{difference:.3g} (more than {atol:g})")
        if exact and result.same_strings < batch:
            raise ExportError(f"{out}: at batch {batch} ONNX Runtime reads {strings[0]} and PyTorch {strings[1]}")
        results.append(result)
    return results


def write_export(model: Recognizer, out: Path, opset: int, atol: float, batches: Sequence[int], seed: int,
                 exact: bool = True, source: Optional[str] = None) -> Tuple[Dict[str, Any], List[CheckResult]]:
    """`export_onnx` then `check_export`, in a hidden folder beside `out` that takes `out`'s place only when checked:
    a failed export leaves nothing under `out` and a previous export there whole. `out` must be new, empty or a
    previous export (graphs and model.json only): nothing else is ever replaced."""
    if out.exists() and (not out.is_dir() or any(item.is_dir() or not EXPORT_FILE.fullmatch(item.name)
                                                 for item in out.iterdir())):
        raise ExportError(f"--out {out} holds other files than a previous export's graphs and model.json: "
                          f"choose a new or empty folder")
    try:
        with atomic_directory(out, overwrite=True) as partial:
            manifest = export_onnx(model, partial, opset, atol, source)
            results = check_export(model, partial, batches, seed, atol, exact)
    except ExportError as err:
        raise ExportError(str(err).replace(str(partial), str(out))) from None
    return manifest, results
