"""Reading word images with an ONNX export (`export.py`) on ONNX Runtime.

`OnnxReader` runs the same algorithm as the PyTorch models' `forward` in test mode, with the graphs
doing the arithmetic: the encoder, greedy decoding through the step graph (`greedy_decode` itself,
with its early stop once every sample of the batch has produced EOS; the content cache is carried
from step to step), the refinement passes and, for CLIP4STR, the cross branch: each visual pass's
prediction becomes a caption (`Tokenizer.captions` and the test charset, then CLIP's BPE, both in
Python: they cannot live in a graph), the caption graph gives the cross decoder's memory, and the
cross branch decodes as many steps as the visual one did, then refines over the next passes' memories.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from strhub.data.transforms import get_transform
from strhub.models.decoder import greedy_decode
from strhub.models.towers.clip import CaptionTokenizer
from strhub.tokenizer import CharsetAdapter, Tokenizer

MANIFEST = "model.json"
FORMAT = "strhub-onnx"
FORMAT_VERSION = 1
ImageInput = Union[str, Path, Image.Image]
Arrays = Dict[str, np.ndarray]


class ExportNotFoundError(FileNotFoundError):
    """A path that holds no readable export; the message says what is missing."""


def read_manifest(path: Union[str, Path]) -> Tuple[Path, Dict[str, Any]]:
    """The folder of an export and its `model.json`. `path` is the folder, its `model.json` or one of
    its `.onnx` graphs."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise ExportNotFoundError(f"{path} does not exist")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        graphs = sorted(p.name for p in folder.glob("*.onnx"))
        found = f"it holds {', '.join(graphs)} but" if graphs else "it holds no .onnx graph and"
        raise ExportNotFoundError(f"{folder} is not an ONNX export of strhub: {found} no {MANIFEST} (the charset, "
                                  f"image size, normalisation, special tokens and graphs that a runtime needs); "
                                  f"write one with `python export.py CHECKPOINT --out {folder}`")
    try:
        config = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportNotFoundError(f"{manifest} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportNotFoundError(f"{manifest} is not the manifest of a strhub ONNX export "
                                  f"(no \"format\": \"{FORMAT}\")")
    if config.get("format_version") != FORMAT_VERSION:
        raise ExportNotFoundError(f"{manifest}: format_version {config.get('format_version')!r}; this reader reads "
                                  f"version {FORMAT_VERSION}: export the checkpoint again")
    missing = [spec["file"] for spec in config["graphs"].values() if not (folder / spec["file"]).is_file()]
    if missing:
        raise ExportNotFoundError(f"{folder}: {MANIFEST} names graphs that are not there: {', '.join(missing)}")
    return folder, config


def providers_for(device: Union[str, None]) -> List[str]:
    """ONNX Runtime's execution providers for `device` (`cpu`, `cuda`, or None: CUDA when this
    onnxruntime has it)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device is None:
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    kind = torch.device(device).type
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ValueError(f"device {device!r}: this onnxruntime has no CUDAExecutionProvider (it has "
                             f"{', '.join(available)}); install onnxruntime-gpu instead of onnxruntime")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device {device!r}: the ONNX backend runs on cpu or cuda")


def graph_options(threads: int) -> Any:
    """ONNX Runtime's options for a graph. Its threads do not spin-wait between runs: on CPUs that other work shares,
    a spinning thread takes a core from the next graph's threads (and from PyTorch's): B/16 read 1.6x (batch 1) and
    1.1x (batch 8) faster so, with the load at 2 to 3 on 2 cores. `threads`: intra-op threads (0: ONNX Runtime's
    default), the greedy steps' too: on an idle 2-core machine two threads read B/16 as fast as one at batch 8 and
    faster at batches 1 and 32 (170 against 193 ms, 4.08 against 4.14 s)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about float16 constant folding are noise
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class GraphDecoder:
    """A decoder whose greedy steps run an exported step graph: `start` and `step` for `greedy_decode`.
    The state is the graph's feeds: the memory, the token, the position and the content caches, which
    each step's outputs replace."""

    def __init__(self, reader: "OnnxReader", graph: str) -> None:
        self.reader, self.graph = reader, graph
        self.caches = [spec for spec in reader.config["graphs"][graph]["inputs"] if spec["name"].startswith("cache_")]

    def start(self, memory: Arrays, num_steps: int) -> Arrays:
        """Empty caches of every position of the export (a pass of fewer steps leaves the rest unread)."""
        batch = len(next(iter(memory.values())))
        caches = {spec["name"]: np.zeros([batch, *spec["shape"][1:]], dtype=self.reader.dtype) for spec in self.caches}
        return {**memory, **caches}

    def step(self, state: Arrays, token: Tensor, position: int) -> Tensor:
        state["token"] = np.ascontiguousarray(token.numpy())
        state["position"] = np.array(position, dtype=np.int64)
        outputs = self.reader.run(self.graph, state)
        state.update({spec["name"]: outputs[f"next_{spec['name']}"] for spec in self.caches})
        return torch.from_numpy(outputs["logits"])


class OnnxReader:
    """Reads word images with an ONNX export on ONNX Runtime (CPU, or CUDA with onnxruntime-gpu).

        reader = OnnxReader("exports/clip4str_base")     # the folder, its model.json or one of its graphs
        texts, confidences = reader.read(["word.png", "crop.jpg"])

    `read` takes image files or PIL images and returns the raw predictions over the training charset and
    their confidences (the product of the character and EOS probabilities); `reader(images)` gives the
    logits (N, L, C) of a normalised batch (N, 3, H, W), as the PyTorch model's `forward` does in test
    mode. `device`: `cpu`, `cuda`, or None (CUDA when available); `threads`: ONNX Runtime's intra-op
    threads (0: its default); `float_graphs`: an export with int8 graphs (`export.py --int8`) is read with its
    float32 ones instead (True: all of them; or the names of those to read in float32, e.g. `["caption"]`)."""

    def __init__(self, path: Union[str, Path], device: Union[str, None] = None, threads: int = 0,
                 float_graphs: Union[bool, Sequence[str]] = False) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ImportError("the ONNX backend needs onnxruntime: pip install -e \".[onnx]\"") from None
        self.folder, self.config = read_manifest(path)
        config = self.config
        providers = providers_for(device)
        files = {name: spec["file"] for name, spec in config["graphs"].items()}
        float_files = config.get("quantized", {}).get("float_files", {})
        files.update({name: float_files[name] for name in (float_files if float_graphs is True else float_graphs or ())
                      if name in float_files})
        self.files = files  # the graph file each session runs
        self.sessions = {name: onnxruntime.InferenceSession(str(self.folder / file), graph_options(threads),
                                                            providers=providers)
                         for name, file in files.items()}
        self.inputs = {name: [spec["name"] for spec in graph["inputs"]] for name, graph in config["graphs"].items()}
        self.outputs = {name: [spec["name"] for spec in graph["outputs"]] for name, graph in config["graphs"].items()}
        self.dtype = np.dtype(config["dtype"])
        self.tokenizer = Tokenizer(config["charset_train"])
        self.charset_adapter = CharsetAdapter(config["charset_test"])
        caption = config.get("caption")
        self.caption_tokenizer = CaptionTokenizer(caption["context_length"]) if caption else None
        self.transform = get_transform(self.image_size, mean=config["mean"], std=config["std"])

    @property
    def image_size(self) -> Tuple[int, int]:
        """The input size (height, width)."""
        return tuple(self.config["image_size"])

    @property
    def providers(self) -> List[str]:
        """The execution providers the graphs run on."""
        return self.sessions["encoder"].get_providers()

    def run(self, graph: str, feeds: Arrays) -> Arrays:
        """The outputs of `graph` by name, given feeds that hold (at least) its inputs."""
        outputs = self.sessions[graph].run(None, {name: feeds[name] for name in self.inputs[graph]})
        return dict(zip(self.outputs[graph], outputs))

    def __call__(self, images: Tensor) -> Tensor:
        """Logits (N, L, C) of the final branch for normalised images (N, 3, H, W)."""
        config = self.config
        num_steps = config["max_label_length"] + 1
        encoded = self.run("encoder", {"images": images.numpy().astype(self.dtype, copy=False)})
        memory = _select(encoded, "memory_")
        tokens = torch.full((len(images), num_steps), self.tokenizer.pad_id, dtype=torch.long)
        tokens[:, 0] = self.tokenizer.bos_id
        logits = self._first_pass("", memory, tokens, num_steps, stop_early=True)
        passes = [logits]
        for _ in range(config["refine_iters"]):
            passes.append(self._refine("", memory, passes[-1]))
        if "caption" not in config["graphs"]:
            return passes[-1]
        cross_memories = self._cross_memories(_select(encoded, "image_"), passes)
        cross_steps = logits.shape[1] if config["decode_ar"] else num_steps
        cross_logits = self._first_pass("cross_", cross_memories[0], tokens, cross_steps, stop_early=False)
        for cross_memory in cross_memories[1:]:
            cross_logits = self._refine("cross_", cross_memory, cross_logits)
        return cross_logits

    def read(self, images: Sequence[ImageInput], batch_size: int = 0) -> Tuple[List[str], List[float]]:
        """The text of each image (a file or a PIL image) and its confidence, `batch_size` images per
        pass (0: all at once). As in PyTorch, the early stop is decided per pass."""
        texts: List[str] = []
        confidences: List[float] = []
        step = batch_size or max(len(images), 1)
        for start in range(0, len(images), step):
            batch = torch.stack([self._load(image) for image in images[start:start + step]])
            batch_texts, batch_confidences = self.tokenizer.read(self(batch).float().softmax(-1))
            texts += batch_texts
            confidences += batch_confidences
        return texts, confidences

    def _load(self, image: ImageInput) -> Tensor:
        if isinstance(image, Image.Image):
            return self.transform(image)
        with Image.open(image) as opened:
            return self.transform(opened)

    def _first_pass(self, prefix: str, memory: Arrays, tokens: Tensor, num_steps: int, stop_early: bool) -> Tensor:
        if self.config["decode_ar"]:
            stop_at = self.tokenizer.eos_id if stop_early else None
            return greedy_decode(GraphDecoder(self, f"{prefix}step"), memory, tokens, num_steps, stop_at)
        return torch.from_numpy(self.run(f"{prefix}parallel", memory)["logits"])

    def _refine(self, prefix: str, memory: Arrays, logits: Tensor) -> Tensor:
        feeds = {"previous_logits": np.ascontiguousarray(logits.numpy()), **memory}
        return torch.from_numpy(self.run(f"{prefix}refine", feeds)["logits"])

    def _cross_memories(self, image_memory: Arrays, passes: List[Tensor]) -> List[Arrays]:
        """The cross decoder's memory for each visual pass. A sample whose caption is the previous pass's keeps its
        rows: a refinement pass mostly repeats the captions of the pass before (PyTorch's text encoder computes each
        distinct caption prefix once: `clip_blocks.encode_text_tokens`)."""
        caption_ids = self._caption_ids(passes[0])
        memories = [self.run("caption", {"caption_ids": caption_ids, **image_memory})]
        for logits in passes[1:]:
            previous_ids, caption_ids = caption_ids, self._caption_ids(logits)
            changed = np.flatnonzero((caption_ids != previous_ids).any(axis=1))
            memory = memories[-1]
            if len(changed):
                rows = self.run("caption", {"caption_ids": caption_ids[changed],
                                            **{name: value[changed] for name, value in image_memory.items()}})
                memory = {name: value.copy() for name, value in memory.items()}
                for name, value in memory.items():
                    value[changed] = rows[name]
            memories.append(memory)
        return memories

    def _caption_ids(self, logits: Tensor) -> np.ndarray:
        """CLIP token ids of the captions that a pass's logits spell (as `CLIP4STR.caption_kv`)."""
        captions = self.tokenizer.captions(logits.max(-1).indices, self.charset_adapter)
        return self.caption_tokenizer(captions, self.config["caption"]["context_length"]).numpy()


def _select(outputs: Arrays, prefix: str) -> Arrays:
    return {name: value for name, value in outputs.items() if name.startswith(prefix)}
