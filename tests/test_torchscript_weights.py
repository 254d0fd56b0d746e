"""OpenAI's CLIP `.pt` files are TorchScript archives: their weights are read without running anything they carry."""
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCH
from hostile import Payload

from strhub.models.clip import build_clip, load_pretrained_clip, read_clip_state_dict
from strhub.models.safe_load import InvalidCheckpointError
from strhub.models.torchscript_weights import read_torchscript_weights


def script_tiny_clip(path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    clip = build_clip(TINY_ARCH).eval()
    with torch.no_grad():  # the blocks' forward is ours, which computes QuickGELU in place out of autograd
        scripted = torch.jit.trace_module(clip, {"encode_image": torch.zeros(1, 3, 32, 64)})
    scripted.save(str(path))
    return clip


def test_a_torchscript_clip_is_read_back_equal_without_torch_jit(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ViT-tiny.pt"
    clip = script_tiny_clip(path)
    expected = torch.jit.load(str(path), map_location="cpu").state_dict()  # the archive is ours: safe to run here
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: pytest.fail("torch.jit.load ran the archive"))
    state_dict = read_torchscript_weights(path)
    assert state_dict.keys() == expected.keys()
    assert all(torch.equal(state_dict[key], expected[key]) for key in expected)
    assert torch.equal(state_dict["visual.proj"], clip.visual.proj)
    assert torch.equal(state_dict["attn_mask"], clip.attn_mask)  # a buffer; tensors the classes do not declare are not


def test_a_half_precision_torchscript_clip_loads_into_clip(tmp_path: Path) -> None:
    path = tmp_path / "ViT-tiny-fp16.pt"
    script_tiny_clip(path)
    torch.jit.load(str(path)).half().save(str(path))  # stored in float16, as OpenAI's archives are
    clip, arch = load_pretrained_clip(path, image_size=[32, 64])
    assert arch == TINY_ARCH
    assert torch.equal(clip.visual.proj, torch.jit.load(str(path)).visual.proj.float())


def write_archive(path: Path, data_pkl: bytes) -> None:
    """A zip laid out as TorchScript lays out an archive, with `data_pkl` as its pickled data."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", data_pkl)
        archive.writestr("evil/constants.pkl", pickle.dumps(()))
        archive.writestr("evil/code/__torch__/model.py", "class CLIP(Module):\n  __parameters__ = []\n")
        archive.writestr("evil/version", "3\n")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_hostile_torchscript_archive_is_refused_without_running_it(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "ViT-B-16.pt"
    write_archive(path, pickle.dumps({"visual.proj": Payload(marker)}, protocol=protocol))
    with pytest.raises(InvalidCheckpointError, match=r"^refusing to load .*ViT-B-16\.pt: .*the global (io|builtins)\.open is not") as error:
        read_clip_state_dict(path)
    assert "\n" not in str(error.value) and not marker.exists()


def test_a_torchscript_archive_with_a_missing_storage_is_refused_naming_it(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    script_tiny_clip(good)
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            if not item.filename.endswith("/data/0"):
                target.writestr(item, source.read(item))
    with pytest.raises(InvalidCheckpointError, match=r"broken\.pt.*data/0"):
        read_clip_state_dict(broken)
