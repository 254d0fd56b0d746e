"""Released checkpoints by name (strhub.hub): the shipped catalogue, and downloads from an HTTP server on 127.0.0.1
that the tests start: a good file, a corrupt one, one cut halfway (resumed with a Range request), 404 and 500
answers, offline use. The cache never holds a bad file."""
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import yaml
from hub_server import FileServer

from strhub.config import experiments
from strhub.hub import CheckpointUnavailable, resolve_checkpoint
from strhub.hub.catalogue import CATALOGUE, load_catalogue
from strhub.keys import ConfigError
from strhub.models.checkpoint import checkpoint_file, load_model
from strhub.models.registry import build_random
from strhub.tools.create_lmdb import write_lmdb

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
# The names in the README's table of released checkpoints (name, then family).
README_NAMES = re.findall(r"^\| `([\w.-]+)`(?: \(Zenodo\))? \| `(?:vl4str|str_adapter|parseq)` \|",
                          (REPO / "README.md").read_text(), re.M)


def entry(name: str, file: str, data: bytes, urls: List[str], **extra) -> Dict:
    return {"name": name, "family": "vl4str", "experiment": "tiny", "title": name, "file": file,
            "hash": hashlib.sha256(data).hexdigest()[:10], "urls": urls, **extra}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A catalogue file and an empty cache in tmp_path, downloads on; `hub(entries)` writes the catalogue."""
    cache = tmp_path / "cache"
    catalogue = tmp_path / "catalogue.yaml"
    monkeypatch.setenv("STRHUB_CACHE", str(cache))
    monkeypatch.setenv("STRHUB_CATALOGUE", str(catalogue))
    for name in ("STRHUB_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)

    def write(entries: List[Dict]) -> Path:
        catalogue.write_text(yaml.safe_dump(entries))
        return cache
    return write


def cache_files(cache: Path) -> List[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


def test_the_shipped_catalogue_holds_every_released_name_of_the_readme() -> None:
    entries = load_catalogue(CATALOGUE)
    assert len(README_NAMES) == 11
    assert set(README_NAMES) <= {name for entry in entries for name in entry.names}
    for entry in entries:
        assert entry.name.isidentifier() and entry.experiment in experiments()  # a torch.hub entry each
        assert entry.hash and entry.hash in entry.file, entry.name
        assert all(url.startswith(("https://", "hf://")) for url in entry.urls) and entry.pages
    parseq = {entry.name: entry for entry in entries if entry.family == "parseq"}
    assert set(parseq) == {"parseq", "parseq_tiny", "parseq_patch16_224"}
    assert all(entry.digests == ("sha256",) and f"-{entry.hash}.pt" in entry.file for entry in parseq.values())


def test_a_good_download_is_cached_once_and_then_used_without_the_network(hub, monkeypatch) -> None:
    with FileServer({"good.pt": PAYLOAD}) as server:
        cache = hub([entry("good_model", "good-model.pt", PAYLOAD, [server.url("good", "good.pt")])])
        path = resolve_checkpoint("good_model")
        assert path == cache / "good-model.pt" and path.read_bytes() == PAYLOAD
        assert resolve_checkpoint("good-model.pt") == path == resolve_checkpoint("good-model")
        monkeypatch.setenv("STRHUB_OFFLINE", "1")
        assert resolve_checkpoint("good_model") == path
        assert server.requests == [("/good/good.pt", None)]
    assert cache_files(cache) == ["good-model.pt"]


def test_a_corrupt_download_is_named_deleted_and_never_used(hub) -> None:
    with FileServer({"model.pt": PAYLOAD}) as server:
        url = server.url("corrupt", "model.pt")
        cache = hub([entry("model", "model.pt", PAYLOAD, [url])])
        with pytest.raises(CheckpointUnavailable) as error:
            resolve_checkpoint("model")
    message = str(error.value)
    assert "\n" not in message
    assert f"{url} gave a corrupt file: its digest (sha256 " in message
    assert f"does not start with {hashlib.sha256(PAYLOAD).hexdigest()[:10]}" in message
    assert f"put it at {cache / 'model.pt'}" in message
    assert cache_files(cache) == []


def test_a_download_cut_halfway_is_resumed_with_a_range_request(hub) -> None:
    with FileServer({"model.pt": PAYLOAD}) as server:
        cache = hub([entry("model", "model.pt", PAYLOAD, [server.url("cut", "model.pt")])])
        assert resolve_checkpoint("model").read_bytes() == PAYLOAD
        assert server.requests == [("/cut/model.pt", None), ("/cut/model.pt", f"bytes={len(PAYLOAD) // 2}-")]
    assert cache_files(cache) == ["model.pt"]


def test_a_part_left_by_an_earlier_run_is_resumed_or_restarted_when_the_server_ignores_ranges(hub) -> None:
    with FileServer({"model.pt": PAYLOAD}) as server:
        cache = hub([entry("resumed", "resumed.pt", PAYLOAD, [server.url("good", "model.pt")]),
                     entry("restarted", "restarted.pt", PAYLOAD, [server.url("norange", "model.pt")])])
        cache.mkdir()
        for name in ("resumed.pt", "restarted.pt"):
            (cache / f"{name}.part").write_bytes(PAYLOAD[:1000])
        assert resolve_checkpoint("resumed").read_bytes() == PAYLOAD
        assert resolve_checkpoint("restarted").read_bytes() == PAYLOAD
        assert server.requests == [("/good/model.pt", "bytes=1000-"), ("/norange/model.pt", "bytes=1000-")]
    assert cache_files(cache) == ["restarted.pt", "resumed.pt"]


def test_404_and_500_are_named_and_the_next_address_is_tried(hub) -> None:
    with FileServer({"model.pt": PAYLOAD}) as server:
        failing = [server.url("404", "model.pt"), server.url("500", "model.pt")]
        cache = hub([entry("failing", "failing.pt", PAYLOAD, failing),
                     entry("mirrored", "mirrored.pt", PAYLOAD, [*failing, server.url("good", "model.pt")])])
        with pytest.raises(CheckpointUnavailable) as error:
            resolve_checkpoint("failing")
        assert resolve_checkpoint("mirrored").read_bytes() == PAYLOAD
    assert str(error.value) == (
        f"released checkpoint failing could not be downloaded: {failing[0]} answered HTTP 404 Not Found; "
        f"{failing[1]} answered HTTP 500 Internal Server Error; download it by hand from {failing[0]} and put it at "
        f"{cache / 'failing.pt'}, or give its path")
    assert cache_files(cache) == ["mirrored.pt"]


def test_offline_a_missing_file_is_named_with_where_to_put_it_and_nothing_is_asked(hub, monkeypatch) -> None:
    with FileServer({"model.pt": PAYLOAD}) as server:
        cache = hub([entry("model", "model.pt", PAYLOAD, [server.url("good", "model.pt")], pages=["https://x.org/m"])])
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(CheckpointUnavailable) as error:
            resolve_checkpoint("model")
        assert server.requests == []
    assert str(error.value) == (
        f"released checkpoint model is not in the cache and downloads are off (STRHUB_OFFLINE or HF_HUB_OFFLINE): "
        f"download it by hand from https://x.org/m and put it at {cache / 'model.pt'}, or give its path")
    (cache / "model.pt").write_bytes(PAYLOAD)  # put there by hand
    assert resolve_checkpoint("model") == cache / "model.pt"


def test_paths_are_taken_as_they_are_and_unknown_names_get_the_closest(hub, tmp_path: Path) -> None:
    hub([entry("clip4str_tiny_0123456789", "tiny.pt", PAYLOAD, [])])
    assert resolve_checkpoint(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match=r"^checkpoint not found: clip4str_tiny_012345678 is neither a path "
                                                r"from here nor the name of a released checkpoint; did you mean "
                                                r"clip4str_tiny_0123456789\?$"):
        resolve_checkpoint("clip4str_tiny_012345678")


def test_hf_addresses_go_through_huggingface_hub_and_its_cache(hub, monkeypatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    hf_cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    with FileServer({"model.pt": PAYLOAD}) as server:
        template = server.base + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        cache = hub([entry("good", "good.pt", PAYLOAD, ["hf://good/repo/model.pt"]),
                     entry("bad", "bad.pt", PAYLOAD, ["hf://corrupt/repo/model.pt"])])
        path = resolve_checkpoint("good")
        assert path.read_bytes() == PAYLOAD and hf_cache in path.parents
        asked = len(server.requests)
        monkeypatch.setenv("STRHUB_OFFLINE", "1")
        assert resolve_checkpoint("good") == path and len(server.requests) == asked
        with pytest.raises(CheckpointUnavailable, match=r"hf://corrupt/repo/model.pt: not in huggingface_hub's cache"):
            resolve_checkpoint("bad")
        assert len(server.requests) == asked
        monkeypatch.delenv("STRHUB_OFFLINE")
        with pytest.raises(CheckpointUnavailable, match=r"hf://corrupt/repo/model.pt gave a corrupt file: its digest "
                                                        r"\(sha256 [0-9a-f]{16}\.\.\.\) does not start with"):
            resolve_checkpoint("bad")
    blobs = sorted(p.name for p in hf_cache.rglob("blobs/*"))
    assert blobs == [hashlib.sha256(PAYLOAD).hexdigest()]  # the corrupt one deleted
    assert cache_files(cache) == ["good.pt.verified"]


@pytest.mark.parametrize("records, message", [
    ([{"name": "x"}], r"entry 1: missing family, experiment, title, file$"),
    ([{"name": "x", "family": "f", "experiment": "e", "title": "t", "file": "x.pt", "hashh": "ab"}],
     r"unknown field in .*entry 1: 'hashh' \(did you mean 'hash'\?\)"),
    ([{"name": "x", "family": "f", "experiment": "e", "title": "t", "file": "x.pt", "hash": "XY"}],
     r"hash must be lowercase hex digits, got 'XY'"),
    ([{"name": "x", "family": "f", "experiment": "e", "title": "t", "file": "x.pt"},
      {"name": "y", "family": "f", "experiment": "e", "title": "t", "file": "x.pt"}],
     r"the name '.*' is given to both x and y"),
])
def test_a_malformed_catalogue_is_named(records, message, tmp_path: Path) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(records))
    with pytest.raises(ConfigError, match=message):
        load_catalogue(path)


def plain_state_dict(experiment: str) -> Dict[str, torch.Tensor]:
    """A random model of `experiment` as the original releases it: a plain state dict."""
    torch.manual_seed(0)
    return build_random(experiment).state_dict()


@pytest.fixture(scope="module")
def released_files(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Dict[str, bytes]:
    """A PARSeq file named as baudm/parseq's (a plain state dict) and our tiny Lightning checkpoint."""
    path = tmp_path_factory.mktemp("released") / "parseq.pt"
    torch.save(plain_state_dict("parseq-mini"), path)
    return {"parseq.pt": path.read_bytes(), "tiny.ckpt": checkpoint.read_bytes()}


def released_catalogue(server: FileServer, files: Dict[str, bytes]) -> List[Dict]:
    parseq_hash = hashlib.sha256(files["parseq.pt"]).hexdigest()[:8]
    return [{**entry("parseq", f"parseq-{parseq_hash}.pt", files["parseq.pt"], [server.url("good", "parseq.pt")]),
             "family": "parseq", "experiment": "parseq-mini", "hash": parseq_hash, "default": True},
            entry("clip4str_tiny_released", "clip4str_tiny.ckpt", files["tiny.ckpt"], [server.url("cut", "tiny.ckpt")])]


def test_released_names_work_wherever_a_checkpoint_is_taken(hub, released_files, checkpoint: Path) -> None:
    with FileServer(released_files) as server:
        cache = hub(released_catalogue(server, released_files))
        model = load_model("clip4str_tiny_released")
        expected = load_model(checkpoint)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))
        parseq_hash = hashlib.sha256(released_files["parseq.pt"]).hexdigest()[:8]
        assert checkpoint_file("parseq") == cache / f"parseq-{parseq_hash}.pt"
        torch.hub.load(str(REPO), "parseq", source="local", pretrained=True)  # cached now: no request
        assert len(server.requests) == 3  # the cut download, its resumption, and parseq's
    hub_model = torch.hub.load(str(REPO), "parseq", source="local", pretrained=True)
    expected = plain_state_dict("parseq-mini")
    assert all(torch.equal(a, b) for a, b in zip(hub_model.state_dict().values(), expected.values()))


def test_the_hub_builds_every_small_experiment_with_random_weights() -> None:
    for name in ("tiny", "parseq_mini", "str_adapter_mini"):
        model = torch.hub.load(str(REPO), name, source="local", pretrained=False)
        assert not model.training and hasattr(model, "tokenizer")
    with pytest.raises(ValueError, match=r"^experiment 'tiny' has no released weights; pretrained=False builds it"):
        torch.hub.load(str(REPO), "tiny", source="local", pretrained=True)


def test_read_py_and_test_py_take_a_released_name(hub, released_files, checkpoint: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    images = REPO / "misc" / "test_images"
    with FileServer(released_files) as server:
        hub(released_catalogue(server, released_files))
        by_name, by_path = [subprocess.Popen([sys.executable, "read.py", str(name), str(images), "--device", "cpu"],
                                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                            for name in ("clip4str_tiny_released", checkpoint)]  # side by side: 2 cores
        (out, err), (expected, _) = by_name.communicate(timeout=600), by_path.communicate(timeout=600)
        assert by_name.returncode == 0, err
        assert out == expected and len(out.splitlines()) == 10
        lines = (images / "labels.tsv").read_text().splitlines()
        write_lmdb(tmp_path / "data" / "test" / "SVT",
                   [((images / name).read_bytes(), label) for name, label in (line.split("\t") for line in lines)])
        proc = subprocess.run([sys.executable, "test.py", "parseq", "--data_root", str(tmp_path / "data"), "--device",
                               "cpu", "--num_workers", "0", "--batch_size", "4"],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"^\| SVT      \|        10 \|", proc.stdout, re.M)
        cached = checkpoint_file("parseq")
        cached.unlink()
        monkeypatch.setenv("STRHUB_OFFLINE", "1")
        with pytest.raises(CheckpointUnavailable, match=f"put it at {re.escape(str(cached))}, or give its path$"):
            checkpoint_file("parseq")
        assert [path for path, _ in server.requests] == ["/cut/tiny.ckpt", "/cut/tiny.ckpt", "/good/parseq.pt"]


def test_the_shell_scripts_pass_a_released_name_on(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "STRHUB_CATALOGUE"}
    env.update(STRHUB_CACHE=str(tmp_path), STRHUB_OFFLINE="1", OUTPUTS=str(tmp_path))
    proc = subprocess.run(["bash", "scripts/read.sh", "cpu", "parseq", "misc/test_images"], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "read.py: error: released checkpoint parseq is not in the cache and downloads are off (STRHUB_OFFLINE or "
        f"HF_HUB_OFFLINE): download it by hand from https://github.com/baudm/parseq/releases/tag/v1.0.0 and put it "
        f"at {tmp_path / 'parseq-bb5792a6.pt'}, or give its path")
