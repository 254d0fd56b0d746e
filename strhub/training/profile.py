"""The activations of a training step, counted on the meta device: the model is built there (no memory, no
arithmetic, so CLIP4STR-H is profiled on any machine) and the forward pass of one training step runs on it while the
tensors that autograd saves for the backward pass are counted, each storage once and by the block or decoder layer
that saved it. From that one pass follow the activations with and without activation checkpointing: a checkpointed
block keeps only its inputs, and the backward pass recomputes one block at a time."""
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from strhub.models.decoder_layers import DecoderLayer
from strhub.training.measure import training_labels

ENCODER, DECODER = "encoder", "decoder"


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype of the matrix products at `precision` (a unified name: `32-true`, `bf16-mixed`, ...)."""
    return {"16": torch.float16, "bf16": torch.bfloat16}.get(precision.split("-")[0], torch.float32)


class DeviceEmulation(TorchFunctionMode):
    """What `device_type` does that the meta device does not, for the tensors it saves for the backward pass:

    - fused attention: CUDA always runs `scaled_dot_product_attention` in a fused kernel (it keeps the output and the
      log-sum-exp, not the L x L probabilities), a CPU whenever there is no dropout; the meta device never does;
    - autocast (when `dtype` is given), which leaves meta tensors alone: matrix products, convolutions and attention
      take 16-bit inputs (a parameter is cast once per step, as autocast caches it), and on CUDA normalisations,
      softmax and losses 32-bit ones (on a CPU only the losses); everything else runs in the dtype of its inputs.
      `copies` holds the parameters' casts.
    """

    LOWER = {F.linear, torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.mm, torch.bmm, torch.addmm,
             torch.baddbmm, F.conv2d, F.scaled_dot_product_attention}
    FULL = {"cuda": {F.layer_norm, F.group_norm, F.softmax, F.log_softmax, F.cross_entropy, Tensor.softmax,
                     Tensor.log_softmax},
            "cpu": {F.cross_entropy}}

    def __init__(self, dtype: Optional[torch.dtype], device_type: str = "cuda") -> None:
        super().__init__()
        self.dtype = dtype
        self.device_type = device_type
        self.full = self.FULL[device_type]
        self.copies: Dict[int, Tuple[Tensor, Tensor]] = {}

    def __torch_function__(self, func: Callable, types: Any, args: Sequence[Any] = (),
                           kwargs: Optional[Mapping[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        if self.dtype is not None and func in self.LOWER:
            args, kwargs = tree_map(lambda value: self.cast(value, self.dtype), (args, kwargs))
        elif self.dtype is not None and func in self.full:
            args, kwargs = tree_map(lambda value: self.cast(value, torch.float32), (args, kwargs))
        if func is F.scaled_dot_product_attention:
            return self.attention(*args, **kwargs)
        return func(*args, **kwargs)

    def attention(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                  dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None) -> Tensor:
        if dropout_p and self.device_type == "cpu":
            return F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, is_causal, attn_mask=attn_mask, scale=scale)[0]

    def cast(self, value: Any, dtype: torch.dtype) -> Any:
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dtype == dtype:
            return value
        if not (value.is_leaf and value.requires_grad):
            return value.to(dtype)
        if id(value) not in self.copies:
            self.copies[id(value)] = (value, value.to(dtype))
        return self.copies[id(value)][1]


@dataclass
class Region:
    """One call of a block or decoder layer: the storages it saved first (its activations) and those it was given."""

    kind: str
    inputs: Set[StorageWeakRef] = field(default_factory=set)
    saved: Set[StorageWeakRef] = field(default_factory=set)


@dataclass
class Activations:
    """What a training step's forward pass saved for the backward pass: the bytes of each storage, those saved
    outside any block or decoder layer, each region's, and which storages are autocast's parameter copies."""

    sizes: Dict[StorageWeakRef, int]
    outside: Set[StorageWeakRef]
    regions: List[Region]
    copies: Set[StorageWeakRef]

    def kept(self, checkpointed: Set[str] = frozenset(), copies: bool = True) -> int:
        """The bytes kept from the forward pass to the backward pass when the regions of the kinds in `checkpointed`
        are recomputed (they keep their inputs, and one of them at a time is recomputed), without autocast's
        parameter copies unless `copies`."""
        dropped = set() if copies else self.copies
        kept = set(self.outside)
        recomputed = [region for region in self.regions if region.kind in checkpointed]
        for region in self.regions:
            if region.kind not in checkpointed:
                kept |= region.saved
        inputs = set().union(*(region.inputs for region in recomputed)) - kept
        largest = max((self.bytes(region.saved - dropped) for region in recomputed), default=0)
        return self.bytes((kept | inputs) - dropped) + largest

    def bytes(self, keys: Set[StorageWeakRef]) -> int:
        return sum(self.sizes[key] for key in keys if key in self.sizes)


@contextmanager
def saved_tensors(parameters: Sequence[Tensor], regions: Mapping[nn.Module, str]) -> Iterator[Activations]:
    """Counts the tensors that autograd saves inside the block: every storage once (parameters left out), by the
    call of one of the `regions` modules (module -> kind) that saved it first. The tensors are kept alive until the
    block ends, so that a storage is never taken for another one."""
    params = {StorageWeakRef(p.untyped_storage()) for p in parameters}
    activations = Activations({}, set(), [], set())
    stack: List[Region] = []
    alive: List[Tensor] = []

    def storages(values: Any) -> Set[StorageWeakRef]:
        tensors = [value for value in tree_flatten(values)[0] if isinstance(value, Tensor)]
        alive.extend(tensors)
        return {StorageWeakRef(t.untyped_storage()) for t in tensors} - params

    def pack(tensor: Tensor) -> Tensor:
        for key in storages(tensor):
            if key in activations.sizes:
                if not stack:
                    activations.outside.add(key)
                continue
            activations.sizes[key] = tensor.untyped_storage().nbytes()
            (stack[-1].saved if stack else activations.outside).add(key)
        return tensor

    def enter(module: nn.Module, args: Any, kwargs: Any) -> None:
        stack.append(Region(regions[module], storages((args, kwargs))))
        activations.regions.append(stack[-1])

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    with ExitStack() as hooks:
        for module in regions:
            hooks.enter_context(module.register_forward_pre_hook(enter, with_kwargs=True))
            hooks.enter_context(module.register_forward_hook(leave))
        hooks.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor))
        yield activations
    for region in activations.regions:
        region.saved -= activations.outside


def profile_activations(system: nn.Module, batch_size: int, precision: str, device_type: str = "cuda") -> Activations:
    """The activations of one training step of `system` (built on the meta device) at `batch_size` and `precision`
    (as `device_type` computes it), with activation checkpointing off (`Activations.kept` derives it on): labels as
    long as allowed."""
    model = system.model
    model.set_grad_checkpointing(False, False)
    height, width = system.hparams.img_size
    images = torch.empty(batch_size, 3, height, width, device="meta")
    length = system.hparams.max_label_length
    labels = training_labels(system.hparams.charset_train, batch_size, length, lengths=[length])
    tgt = system.tokenizer.encode(labels, images.device)
    regions = {**{block: ENCODER for block in model.blocks()},
               **{layer: DECODER for layer in model.modules() if isinstance(layer, DecoderLayer)}}
    dtype = compute_dtype(precision)
    if precision.endswith("-true"):
        system.to(dtype)
        images = images.to(dtype)
    emulation = DeviceEmulation(dtype if precision.endswith("-mixed") else None, device_type)
    with emulation, saved_tensors(list(system.parameters()), regions) as activations:
        system.train()
        system.permutation_step(images, tgt, system.gen_tgt_perms(tgt))
    system.to(torch.float32)
    activations.copies = {StorageWeakRef(copy.untyped_storage()) for _, copy in emulation.copies.values()}
    return activations
