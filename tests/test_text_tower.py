"""CLIP4STR with a Hugging Face text tower (model.text_tower): a tiny XLM-RoBERTa built here with random weights and
a tokenizer trained here runs the whole model and a training step, and its checkpoint loads in a fresh process
without the folder (load_model, load_from_checkpoint, read.py); captions are read with the tower's tokenizer and
attention mask; the architecture is open_clip's."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MULTILINGUAL_WORDS, TINY_HF_ARCH, make_hf_folder
from safetensors.torch import load_file
from torch import nn

from strhub.deploy.export import MIN_OPSET, ExportError, export_onnx
from strhub.models.clip import arch_from_name
from strhub.models.clip_blocks import mlp
from strhub.models.utils import create_model

REPO = Path(__file__).resolve().parents[1]
CHARSET = "".join(sorted(set("".join(MULTILINGUAL_WORDS))))
CPU = torch.device("cpu")


def _hf_system(folder: Path, **overrides):
    settings = dict(img_size=[32, 64], clip_arch=TINY_HF_ARCH, text_tower={"hf_path": str(folder)},
                    charset_train=CHARSET, charset_test=CHARSET, dec_num_heads=4, text_freeze_nlayer=1)
    return create_model("tiny", **{**settings, **overrides})


def test_hf_tower_trains_and_its_checkpoint_loads_without_the_folder(tmp_path, checkpoint):
    folder = make_hf_folder(tmp_path / "xlmr")
    torch.manual_seed(0)
    system = _hf_system(folder, dropout=0.0, perm_num=2)
    clip = system.model.clip_model
    assert torch.equal(clip.text.transformer.embeddings.word_embeddings.weight,
                       load_file(folder / "model.safetensors")["embeddings.word_embeddings.weight"])

    frozen = {name for name, param in clip.named_parameters() if not param.requires_grad}
    assert frozen == {"logit_scale", *(f"text.transformer.{name}" for name, _ in
                                       clip.text.transformer.named_parameters()
                                       if name.startswith(("embeddings.", "encoder.layer.0.")))}
    system.train()
    assert not clip.text.transformer.embeddings.training and not clip.text.transformer.encoder.layer[0].training
    assert clip.text.transformer.encoder.layer[1].training

    images = torch.rand(8, 3, 32, 64, generator=torch.Generator().manual_seed(1))
    labels = MULTILINGUAL_WORDS[:8]
    before = {name: param.detach().clone() for name, param in system.named_parameters()}
    optimizer = torch.optim.AdamW([param for param in system.parameters() if param.requires_grad], lr=1e-3)
    loss = system.training_step((images, labels), 0)
    loss.backward()
    optimizer.step()
    changed = {name for name, param in system.named_parameters() if not torch.equal(param, before[name])}
    assert changed and not changed & {f"model.clip_model.{name}" for name in frozen}
    assert {"model.clip_model.text.proj.weight",
            "model.clip_model.text.transformer.encoder.layer.1.attention.self.query.weight"} <= changed
    assert any(name.startswith("model.cross_decoder.") for name in changed)

    system.eval()
    with torch.inference_mode():
        logits = system(images)
    saved = tmp_path / "hf.ckpt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, saved)
    torch.save((images, logits), tmp_path / "expected.pt")
    shutil.rmtree(folder)
    script = ("import sys, torch\n"
              "from strhub.models.checkpoint import load_model\n"
              "load_model(sys.argv[1])\n"
              "assert 'strhub.models.towers.hf' not in sys.modules, 'an English model imported the HF tower'\n"
              "from strhub.models.utils import load_from_checkpoint\n"
              "images, expected = torch.load(sys.argv[3])\n"
              "with torch.inference_mode():\n"
              "    for model in (load_model(sys.argv[2]).eval(), load_from_checkpoint(sys.argv[2]).eval()):\n"
              "        assert torch.allclose(model(images), expected, atol=1e-5, rtol=0)\n"
              "print('same logits')\n"
              "import runpy\n"
              "sys.argv = ['read.py', sys.argv[2], sys.argv[4], '--json']\n"
              "runpy.run_path('read.py', run_name='__main__')\n")
    image = REPO / "misc" / "test_images" / "cute-184.jpg"
    proc = subprocess.run([sys.executable, "-c", script, str(checkpoint), str(saved), str(tmp_path / "expected.pt"),
                           str(image)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0 and "same logits" in proc.stdout, proc.stderr[-3000:]
    (read,) = json.loads(proc.stdout.split("same logits", 1)[1])  # read.py too
    assert read["file"] == str(image) and isinstance(read["text"], str)


def test_captions_are_read_with_the_towers_tokenizer_and_attention_mask(hf_folder):
    torch.manual_seed(0)
    model = _hf_system(hf_folder).model.eval()
    tower = model.text_tower
    ids = tower.tokenize(["東京 мир hello", "東京" * 30], CPU)
    assert ids.shape == (2, 16)
    length = ids[0].tolist().index(2) + 1  # <s> caption </s>, then <pad>
    assert ids[0, 0] == 0 and length >= 5 and ids[0, length:].eq(1).all()
    assert ids[1, 0] == 0 and ids[1, -1] == 2 and not ids[1].eq(1).any()  # truncated, </s> kept
    labels = tower.token_labels(["東京 мир hello"])[0]  # what explain.py names the memory's text tokens
    assert len(labels) == 16 and labels[0] == "<s>" and labels[length - 1] == "</s>" and not any(labels[length:])
    assert "".join(labels[1:length - 1]).replace("▁", " ").strip() == "東京 мир hello"

    text = tower.clip.text
    with torch.no_grad():
        features = tower.token_features(ids[:1])
        alone = text.proj(text.transformer(input_ids=ids[:1, :length]).last_hidden_state)
        assert torch.allclose(features[:, :length], alone, atol=1e-5)  # the padding is masked out
        later = ids[:1].clone()
        later[0, length - 2] = ids[0, 1]
        assert not torch.allclose(tower.token_features(later)[:, 1], features[:, 1])  # no causal mask
        assert torch.allclose(tower.pooled_features(ids[:1])[:, 0], features[0, :length].mean(0), atol=1e-5)
        assert model.encode_captions(["東京"], CPU).shape == (1, 16, 64)
        assert tower.token_embeddings(ids).shape == (2, 16, 64)
        block = tower.clip.visual.transformer.resblocks[0]  # an image tower with GELU: inference = autograd path
        x = torch.randn(2, 9, 64)
        assert isinstance(block.mlp.gelu, nn.GELU) and torch.allclose(mlp(block, x), block.mlp(x), atol=1e-6)


def test_an_open_clip_file_gives_the_whole_clip(tmp_path, hf_folder):
    torch.manual_seed(0)
    source = _hf_system(hf_folder).model.clip_model.state_dict()
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({**source, "text.transformer.embeddings.position_ids": torch.arange(40)[None]}, weights)  # older files
    torch.manual_seed(1)
    system = _hf_system(make_hf_folder(tmp_path / "config_only", weights=False), clip_pretrained=str(weights))
    loaded = system.model.clip_model.state_dict()
    assert loaded.keys() == source.keys() and all(torch.equal(loaded[key], source[key]) for key in source)
    assert system.hparams["clip_arch"]["text_cfg"] == TINY_HF_ARCH["text_cfg"]


def test_the_xlmr_experiment_builds_open_clips_multilingual_clip(tmp_path):
    folder = make_hf_folder(tmp_path, weights=False, vocab_size=250002, hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514)
    with torch.device("meta"):
        system = create_model("vl4str-xlmr", clip_pretrained=None, text_tower={"hf_path": str(folder)})
    clip = system.model.clip_model
    # open_clip's docs/model_profile.csv: 366.12 M parameters, 87.85 M in the image tower, 278.27 M in the text tower
    assert [round(sum(p.numel() for p in part.parameters()) / 1e6, 2) for part in (clip, clip.visual, clip.text)] == [
        366.12, 87.85, 278.27]
    assert isinstance(clip.visual.transformer.resblocks[0].mlp.gelu, nn.GELU) and clip.text.transformer.pooler is None
    assert system.model.text_tower.embed_dim == 512 and len(system.model.text_tower.blocks) == 12
    # open_clip's image towers as they were pretrained: ViT-H/14 with 80-wide heads, QuickGELU where they had it
    assert arch_from_name("xlm-roberta-large-ViT-H-14")["vision_cfg"]["head_width"] == 80
    assert arch_from_name("roberta-ViT-B-32")["quick_gelu"] and not arch_from_name("ViT-H-14").get("quick_gelu")


def test_the_onnx_export_refuses_a_hugging_face_tower(tmp_path, hf_folder):
    with pytest.raises(ExportError, match="Hugging Face text tower .* the ONNX reader tokenises captions with CLIP's"):
        export_onnx(_hf_system(hf_folder).model, tmp_path, opset=MIN_OPSET, atol=1e-4)
    assert not list(tmp_path.iterdir())


def test_text_tower_settings_are_checked(tmp_path, hf_folder):
    with pytest.raises(ValueError, match="clip_arch 'xlm-roberta-base-ViT-B-32' has a Hugging Face text tower: set "
                                         "model.text_tower"):
        create_model("vl4str-xlmr", clip_pretrained=None, text_tower=None)
    with pytest.raises(ValueError, match="model.text_tower is set but model.clip_arch .* has CLIP's own text tower"):
        create_model("tiny", text_tower={"hf_path": str(hf_folder)})
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'} is not a folder with a Hugging Face config"):
        _hf_system(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"model.text_tower takes \{hf_path\} .*got \{path\}"):
        _hf_system(hf_folder, text_tower={"path": str(hf_folder)})
    with pytest.raises(ValueError, match="tokenizer pads with id 1 .* pad_token_id=0"):
        _hf_system(make_hf_folder(tmp_path / "bad_pad", weights=False, pad_token_id=0))
