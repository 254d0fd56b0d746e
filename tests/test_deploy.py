"""ONNX export and the ONNX Runtime reader (strhub.deploy, export.py, read.py --backend onnx).

Tiny models of every family, built by the fixtures of the equivalence tests (tests/reference/weights.py and
family_weights.py: weights whose decoding stops early at different steps for the batch of 24 and for single
images), are exported and read with ONNX Runtime. Its logits must be within 1e-4 of PyTorch's and of the original
code's outputs, for the batch and for each image alone, with the same strings and confidences.
"""
import json
import re
import runpy
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import onnxruntime  # the onnx extra; CI installs it
import pytest
import torch
from PIL import Image
from test_equivalence import weights  # the fixtures' weight makers
from test_equivalence_families import family_weights

from strhub.data.transforms import get_transform
from strhub.deploy import OnnxReader
from strhub.deploy.export import ExportError, check_export, export_onnx
from strhub.deploy.runtime import ExportNotFoundError
from strhub.models.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "tests" / "reference"
LOGIT_ATOL = 1e-4
CONFIDENCE_ATOL = 1e-5


CHARSETS = {36: weights.CHARSET_36, 94: weights.CHARSET_94}
FAMILY_VARIANTS = ("str_adapter_ladder_pruning", "baudm_parseq")


def _run(script: str, args: Sequence[object], monkeypatch, capsys) -> Tuple[int, str, str]:
    """Runs a command-line script of the repository in this process (its imports are already done):
    exit status, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    monkeypatch.syspath_prepend(str(REPO))  # as `python script.py` has it
    status = 0
    try:
        runpy.run_path(str(REPO / script), run_name="__main__")
    except SystemExit as exit:
        status = exit.code or 0
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _images(names: List[str], size) -> torch.Tensor:
    transform = get_transform(size)
    return torch.stack([transform(Image.open(REFERENCE_DIR / "images" / name).convert("RGB")) for name in names])


def _confidences(model, logits: torch.Tensor) -> torch.Tensor:
    return torch.tensor([float(p.double().prod()) for p in model.tokenizer.decode(logits.softmax(-1))[1]],
                        dtype=torch.float64)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = float((actual.float() - expected.float()).abs().max())
    assert difference <= LOGIT_ATOL, f"{what}: max |difference| {difference:.3g}"


def _assert_reads_like_pytorch_and_original(reader: OnnxReader, model, images: torch.Tensor, ref: Dict,
                                            what: str) -> None:
    """The batch, then each image alone: ONNX Runtime against PyTorch (logits, strings, confidences) and
    against the original's outputs `ref`."""
    with torch.inference_mode():
        runs = {"batch": (reader(images), model(images))}
        alone = [(reader(images[i:i + 1]), model(images[i:i + 1])) for i in range(len(images))]
    for i, (onnx_logits, torch_logits) in enumerate(alone):
        _assert_close(onnx_logits, torch_logits, f"{what}, image {i} alone, against PyTorch")
        _assert_close(onnx_logits[0], ref["alone_logits"][i], f"{what}, image {i} alone, against the original")
    runs["alone"] = tuple(torch.cat(logits) for logits in zip(*alone))
    _assert_close(runs["batch"][0], runs["batch"][1], f"{what}, batch, against PyTorch")
    _assert_close(runs["batch"][0], ref["batch_logits"], f"{what}, batch, against the original")
    for run, (onnx_logits, torch_logits) in runs.items():
        strings = reader.tokenizer.decode(onnx_logits.softmax(-1))[0]
        assert strings == model.tokenizer.decode(torch_logits.softmax(-1))[0] == ref[f"{run}_strings"], f"{what}, {run}"
        confidences = _confidences(model, onnx_logits)
        torch.testing.assert_close(confidences, _confidences(model, torch_logits), atol=CONFIDENCE_ATOL, rtol=0)
        torch.testing.assert_close(confidences, torch.tensor(ref[f"{run}_confidences"], dtype=torch.float64),
                                   atol=CONFIDENCE_ATOL, rtol=1e-5)


@pytest.fixture(scope="module")
def clip4str_files(tmp_path_factory) -> Dict[str, Path]:
    pt_path, ckpt_path = weights.write_weights(tmp_path_factory.mktemp("clip4str_fixture"))
    return {"pt": pt_path, "ckpt": ckpt_path}


@pytest.fixture(scope="module")
def reference() -> Dict:
    return torch.load(REFERENCE_DIR / "original_outputs.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("charset", [36, 94])
def test_clip4str_fixture_reads_as_the_original(clip4str_files, reference, tmp_path, charset):
    """CLIP4STR: the caption of each visual pass is tokenised in Python between the graphs, the cross branch
    decodes as many steps as the visual one, and the early stop is the batch's."""
    model = load_model(clip4str_files["ckpt"], charset_test=CHARSETS[charset]).eval()
    manifest = export_onnx(model, tmp_path, opset=17, atol=LOGIT_ATOL)
    assert set(manifest["graphs"]) == {"encoder", "caption", "step", "refine", "cross_step", "cross_refine"}
    reader = OnnxReader(tmp_path, device="cpu")
    images = _images(reference["image_names"], reader.image_size)
    _assert_reads_like_pytorch_and_original(reader, model, images, reference["test"][charset],
                                            f"CLIP4STR, charset {charset}")


def test_a_greedy_step_reads_the_memory_keys_in_place(clip4str_files, tmp_path):
    """The step graphs multiply the queries by the memory's keys as they come (ONNX Runtime takes them transposed):
    no node of a step copies or rescales the whole memory at every step (a Transpose or a Mul of the keys), which
    doubled the time of a step at batch 32."""
    import onnx

    model = load_model(clip4str_files["ckpt"]).eval()
    export_onnx(model, tmp_path, opset=17, atol=LOGIT_ATOL)
    for graph in ("step", "cross_step"):
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{graph}_as_run.onnx")
        onnxruntime.InferenceSession(str(tmp_path / f"{graph}.onnx"), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
        readers = {node.op_type for node in nodes if "memory_key_0" in node.input} - {"Shape"}
        assert readers == {"FusedMatMul"}, f"{graph}: ONNX Runtime gives the memory keys to {readers}"


def test_a_caption_that_a_refinement_pass_repeats_is_encoded_once(clip4str_files, tmp_path):
    """The reader runs the caption graph on the first pass's captions, then only on the rows whose caption a later
    pass changed; the other rows keep their memory, as a full run would give it."""
    model = load_model(clip4str_files["ckpt"]).eval()
    export_onnx(model, tmp_path, opset=17, atol=LOGIT_ATOL)
    reader = OnnxReader(tmp_path, device="cpu")
    images = _images(["00.png", "05.png", "11.png"], reader.image_size)
    image_memory = {name: value for name, value in reader.run("encoder", {"images": images.numpy()}).items()
                    if name.startswith("image_")}
    first = torch.randn(3, 8, len(reader.tokenizer) - 2, generator=torch.Generator().manual_seed(0))
    second = first.clone()
    second[1, 0] = -second[1, 0]  # the second row reads another first character
    rows = []
    run = reader.run
    reader.run = lambda graph, feeds: rows.append(len(feeds["caption_ids"])) or run(graph, feeds)
    memories = reader._cross_memories(image_memory, [first, first.clone(), second])
    assert rows == [3, 1]
    assert memories[1] is memories[0]
    full = run("caption", {"caption_ids": reader._caption_ids(second), **image_memory})
    for name, value in full.items():
        torch.testing.assert_close(torch.from_numpy(memories[2][name]), torch.from_numpy(value), atol=1e-6, rtol=0)
        assert not torch.equal(torch.from_numpy(memories[2][name][1]), torch.from_numpy(memories[0][name][1]))


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_families_read_as_the_original(tmp_path, monkeypatch, capsys, variant):
    """STR-Adapter (pruned ladder) exported in-process, PARSeq with export.py: the command checks its export
    and says so."""
    ckpt = family_weights.write_weights(tmp_path, [variant])[variant][1]
    ref = torch.load(REFERENCE_DIR / family_weights.OUTPUT_FILES[variant], weights_only=True)[variant]
    model = load_model(ckpt).eval()
    out = tmp_path / "export"
    if variant.startswith("str_adapter"):
        export_onnx(model, out, opset=17, atol=LOGIT_ATOL)
    else:
        status, stdout, stderr = _run("export.py", [ckpt, "--out", out, "--opset", 18], monkeypatch, capsys)
        assert status == 0, stderr
        assert "batch 3: logits within" in stdout and "3 of 3 strings the same" in stdout and f"done: {out}" in stdout
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["opset"] == (17 if variant.startswith("str_adapter") else 18)
    assert set(manifest["graphs"]) == {"encoder", "step", "refine"}
    reader = OnnxReader(out / "encoder.onnx")  # any graph of the folder names the export
    images = _images(ref["image_names"], reader.image_size)
    _assert_reads_like_pytorch_and_original(reader, model, images, ref["test"][94], variant)


def test_nar_decoding_and_two_refinement_passes(clip4str_files, tmp_path):
    """Without AR decoding the branches run their `parallel` graphs; two refinement passes give the cross
    branch three caption memories. The manifest holds what a runtime needs."""
    model = load_model(clip4str_files["ckpt"], decode_ar=False, refine_iters=2).eval()
    manifest = export_onnx(model, tmp_path, opset=17, atol=LOGIT_ATOL)
    assert set(manifest["graphs"]) == {"encoder", "caption", "parallel", "refine", "cross_parallel", "cross_refine"}
    assert manifest["special_tokens"] == {"eos": 0, "bos": 95, "pad": 96}
    assert manifest["image_size"] == [weights.IMAGE_SIZE] * 2 and manifest["mean"] == manifest["std"] == [0.5]
    assert manifest["caption"]["context_length"] == model.context_length
    step_inputs = [spec["name"] for spec in manifest["graphs"]["refine"]["inputs"]]
    assert step_inputs == ["previous_logits", "memory_key_0", "memory_value_0"]
    results = check_export(model, tmp_path, batches=[4, 1], seed=1, atol=LOGIT_ATOL)
    assert [(r.batch, r.same_strings) for r in results] == [(4, 4), (1, 1)]
    texts, confidences = OnnxReader(tmp_path).read([REFERENCE_DIR / "images" / "00.png", REFERENCE_DIR / "images" /
                                                    "01.png"], batch_size=1)
    with torch.inference_mode():
        logits = [model(_images([name], model.image_size)) for name in ("00.png", "01.png")]
    assert texts == [model.tokenizer.decode(x.softmax(-1))[0][0] for x in logits]
    assert confidences == pytest.approx([float(_confidences(model, x)[0]) for x in logits], abs=CONFIDENCE_ATOL)


def test_read_py_onnx_backend_prints_what_the_torch_backend_prints(clip4str_files, tmp_path, monkeypatch, capsys):
    model = load_model(clip4str_files["ckpt"]).eval()
    export_onnx(model, tmp_path / "export", opset=17, atol=LOGIT_ATOL)
    images = [str(REFERENCE_DIR / "images" / name) for name in ("00.png", "05.png", "11.png")]
    outputs = {}
    for backend, path in (("torch", clip4str_files["ckpt"]), ("onnx", tmp_path / "export")):
        status, stdout, stderr = _run("read.py", [path, *images, "--json", "--batch_size", 2, "--backend", backend],
                                      monkeypatch, capsys)
        assert status == 0, stderr
        outputs[backend] = json.loads(stdout)
    assert [r["text"] for r in outputs["onnx"]] == [r["text"] for r in outputs["torch"]]
    assert [r["confidence"] for r in outputs["onnx"]] == pytest.approx([r["confidence"] for r in outputs["torch"]],
                                                                       abs=CONFIDENCE_ATOL)
    status, _, stderr = _run("read.py", [tmp_path / "export", *images, "--backend", "onnx", "refine_iters:int=2"],
                             monkeypatch, capsys)
    assert status == 2 and "refine_iters cannot be overridden" in stderr


def test_unsupported_opset_is_named(clip4str_files, tmp_path, monkeypatch, capsys):
    model = load_model(clip4str_files["ckpt"]).eval()
    with pytest.raises(ExportError, match=r"--opset 13 is not supported.*opset 14 or newer"):
        export_onnx(model, tmp_path, opset=13, atol=LOGIT_ATOL)
    assert not list(tmp_path.iterdir())
    status, _, stderr = _run("export.py", [clip4str_files["ckpt"], "--out", tmp_path, "--opset", 21],
                             monkeypatch, capsys)
    assert status == 2 and "--opset 21 is not supported" in stderr and "at most 20" in stderr


def test_fp16_export_is_checked_against_the_float16_model(clip4str_files, tmp_path):
    """--fp16 graphs run float16 end to end; weights of another dtype are refused, naming it."""
    model = load_model(clip4str_files["ckpt"]).eval().half()
    manifest = export_onnx(model, tmp_path, opset=17, atol=5e-2)
    assert manifest["dtype"] == "float16"
    assert {spec["dtype"] for spec in manifest["graphs"]["encoder"]["outputs"]} == {"float16"}
    results = check_export(model, tmp_path, batches=[3], seed=0, atol=5e-2, exact=False)
    assert results[0].max_difference <= 5e-2
    with pytest.raises(ExportError, match=r"weights are torch.bfloat16.*--fp16"):
        export_onnx(model.bfloat16(), tmp_path / "bf16", opset=17, atol=5e-2)


def test_a_folder_without_the_manifest_says_what_is_missing(tmp_path, monkeypatch, capsys):
    (tmp_path / "encoder.onnx").write_bytes(b"")
    with pytest.raises(ExportNotFoundError, match=r"holds encoder.onnx but no model.json \(the charset, image size"):
        OnnxReader(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportNotFoundError, match="holds no .onnx graph"):
        OnnxReader(tmp_path / "empty")
    (tmp_path / "model.json").write_text(json.dumps({"format": "strhub-onnx", "format_version": 1,
                                                     "graphs": {"step": {"file": "step.onnx"}}}))
    with pytest.raises(ExportNotFoundError, match="names graphs that are not there: step.onnx"):
        OnnxReader(tmp_path)
    status, _, stderr = _run("read.py", [tmp_path / "empty", REFERENCE_DIR / "images", "--backend", "onnx"],
                             monkeypatch, capsys)
    assert status == 2 and "no model.json" in stderr


def test_bench_onnx_times_both_backends_on_the_same_weights(monkeypatch, capsys):
    status, stdout, stderr = _run("bench.py", ["onnx", "--experiment", "parseq-mini", "--batches", 1, 2, "--warmup", 0,
                                                    "--repeats", 1], monkeypatch, capsys)
    assert status == 0, stderr
    lines = [line for line in stdout.splitlines() if line.startswith("batch ")]
    assert [line.split(":")[0] for line in lines] == ["batch   1", "batch   2"]
    for line in lines:
        pytorch, onnx_runtime = (float(part.split()[-2]) for part in line.split("|")[:2])
        ratio = float(line.split("|")[2].split()[-1])
        assert pytorch > 0 and onnx_runtime > 0 and ratio == pytest.approx(pytorch / onnx_runtime, rel=0.02)
        assert float(line.split("within")[1]) <= LOGIT_ATOL


def test_int8_export_quantizes_the_encoders_and_the_reader_reads_them(clip4str_files, tmp_path, monkeypatch, capsys):
    """export.py --int8: an int8 image encoder calibrated on the images of --calibration and an int8 caption graph,
    named by model.json, read by OnnxReader (and read.py --backend onnx) with no option; `float_graphs=True` reads
    the float32 ones. The products of two activations (attention's) stay float32, as do those after the last layer
    norm (the projections of the output)."""
    import onnx

    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for name in ("00.png", "05.png", "11.png"):
        shutil.copy(REFERENCE_DIR / "images" / name, calibration / name)
    out = tmp_path / "export"
    status, stdout, stderr = _run("export.py", [clip4str_files["ckpt"], "--out", out, "--int8", "--calibration",
                                                calibration], monkeypatch, capsys)
    assert status == 0, stderr
    assert re.search(r"encoder_int8\.onnx: encoder, int8 \(static\), [0-9.]+ MiB", stdout)
    assert re.search(r"caption_int8\.onnx: caption, int8 \(dynamic\), [0-9.]+ MiB", stdout)
    assert re.search(rf"int8 calibrated on {re.escape(str(calibration))}: it reads [0-3] of 3 of them as PyTorch "
                     r"does in float32", stdout)
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["graphs"]["encoder"]["file"] == "encoder_int8.onnx"
    assert manifest["graphs"]["caption"]["file"] == "caption_int8.onnx"
    assert manifest["quantized"] == {"graphs": {"encoder": "static", "caption": "dynamic"},
                                     "float_files": {"encoder": "encoder.onnx", "caption": "caption.onnx"},
                                     "calibration": str(calibration), "calibration_images": 3}
    for graph, quantized_ops in (("encoder", {"QuantizeLinear", "DequantizeLinear"}),
                                 ("caption", {"DynamicQuantizeLinear", "MatMulInteger"})):
        nodes = onnx.load(str(out / f"{graph}_int8.onnx")).graph.node
        assert quantized_ops <= {node.op_type for node in nodes}, graph
        made_by = {output: node.op_type for node in nodes for output in node.output}
        float_products = [node for node in nodes if node.op_type == "MatMul"
                          and "DequantizeLinear" not in {made_by.get(name) for name in node.input}]
        softmaxes = [node for node in nodes if node.op_type == "Softmax"]
        last_norm = max(index for index, node in enumerate(nodes) if node.op_type == "LayerNormalization")
        tail = [node for node in list(nodes)[last_norm:] if node.op_type == "MatMul"]  # the output's projections
        assert softmaxes and tail and len(float_products) == 2 * len(softmaxes) + len(tail), graph
        assert {node.name for node in tail} <= {node.name for node in float_products}, graph
    assert (out / "encoder_int8.onnx").stat().st_size < 0.5 * (out / "encoder.onnx").stat().st_size

    model = load_model(clip4str_files["ckpt"]).eval()
    images = _images(["00.png", "05.png", "11.png"], model.image_size)
    with torch.inference_mode():
        expected = model(images)
    _assert_close(OnnxReader(out, device="cpu", float_graphs=True)(images), expected, "float32 graphs")
    files = OnnxReader(out, device="cpu", float_graphs=["caption"]).files
    assert (files["encoder"], files["caption"]) == ("encoder_int8.onnx", "caption.onnx")
    int8 = OnnxReader(out, device="cpu")(images)
    assert int8.shape[0] == 3 and torch.isfinite(int8).all() and not torch.equal(int8[:, :1], expected[:, :1])
    status, stdout, stderr = _run("read.py", [out, calibration, "--backend", "onnx"], monkeypatch, capsys)
    assert status == 0 and len(stdout.splitlines()) == 3, stderr

    status, _, stderr = _run("export.py", [clip4str_files["ckpt"], "--out", tmp_path / "x", "--int8", "--fp16"],
                             monkeypatch, capsys)
    assert status == 2 and "--int8 quantizes a float32 export's encoder: drop --fp16" in stderr
    (tmp_path / "empty").mkdir()
    status, _, stderr = _run("export.py", [clip4str_files["ckpt"], "--out", tmp_path / "x", "--int8", "--calibration",
                                           tmp_path / "empty"], monkeypatch, capsys)
    assert status == 2 and stderr.count("\n") == 1 and "no .png, .jpg or .jpeg image in it" in stderr
    assert not (tmp_path / "x").exists()


def test_a_failed_export_leaves_nothing_and_keeps_the_previous_one(clip4str_files, tmp_path, monkeypatch, capsys):
    """export.py writes in a hidden folder moved into place when checked: a check that fails after model.json is
    written leaves no folder the reader opens, and a previous export whole."""
    out = tmp_path / "export"
    status, stdout, stderr = _run("export.py", [clip4str_files["ckpt"], "--out", out], monkeypatch, capsys)
    assert status == 0, stderr
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    real_check = check_export

    def failing_check(model, folder, *args, **kwargs):
        assert (folder / "model.json").is_file()  # the whole export is written: only the end-to-end check fails
        real_check(model, folder, *args, **kwargs)
        raise ExportError(f"{folder}: at batch 1 ONNX Runtime reads a and PyTorch b")

    monkeypatch.setattr("strhub.deploy.export.check_export", failing_check)
    for target in (out, tmp_path / "new"):
        status, _, stderr = _run("export.py", [clip4str_files["ckpt"], "--out", target], monkeypatch, capsys)
        assert status == 1 and stderr.strip().splitlines() == [
            f"error: {target}: at batch 1 ONNX Runtime reads a and PyTorch b"]
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]  # no hidden folder left either
    with pytest.raises(ExportNotFoundError):
        OnnxReader(tmp_path / "new")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    status, _, stderr = _run("export.py", [clip4str_files["ckpt"], "--out", tmp_path / "notes"], monkeypatch, capsys)
    assert status == 1 and "notes holds other files than a previous export" in stderr
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_compare_precisions_times_and_compares_the_four_variants(checkpoint, real_root, tmp_path):
    """scripts/compare_precisions.py: the speed table (fp32, bf16, int8 ONNX, fp32 ONNX) and the agreement with
    fp32 on LMDB test sets, in which the float32 export reads every string as PyTorch does."""
    import subprocess

    from strhub.app.export import rendered_images
    from strhub.deploy.quantize import quantize_export

    model = load_model(checkpoint).eval()
    export_onnx(model, tmp_path, opset=17, atol=LOGIT_ATOL)
    quantize_export(tmp_path, rendered_images(model.tokenizer.charset, 4), "4 rendered words")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_precisions.py"), str(checkpoint),
                             str(tmp_path), "--batches", "1", "--rounds", "1", "--threads", "1", "--agreement",
                             str(real_root / "test"), "--limit", "6"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.search(r"matmul rate \(best of every round\): fp32 \d+ GFLOP/s, bf16 \d+ GFLOP/s, int8 \d+ GOP/s",
                     result.stdout)
    for variant in ("fp32", "bf16", "int8 ONNX", "fp32 ONNX"):
        assert any(re.match(rf"\s+1 {variant}\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+%", line)
                   for line in lines), variant
    rows = {line.split()[0]: line for line in lines[-5:]}
    assert set(rows) == {"CUTE80", "IIIT5k", "SVT", "SVTP", "all"}
    header = next(line for line in lines if line.startswith("test set"))
    columns = re.findall(r"(\w+(?: ONNX| image)?) = fp32", header)
    assert columns == ["bf16", "int8 ONNX", "fp32 ONNX", "int8 image"]
    assert rows["all"].split()[1] == "24"  # 6 images of each set
    assert re.findall(r"(\d+\.\d+)% \(", rows["all"])[columns.index("fp32 ONNX")] == "100.00"
