"""Released checkpoints brought into the cache: downloaded once with a progress bar, resumed with an HTTP Range
request after an interruption (the bytes so far wait in `<file>.part`), checked against the hash prefix their name
carries, and moved into place only then. A download that fails the check is deleted and named; the cache never
holds it. `hf://owner/repo/file` addresses go through huggingface_hub (its cache, its offline mode).

The cache is `$STRHUB_CACHE`, else `~/.cache/strhub`. Offline (`STRHUB_OFFLINE=1` or `HF_HUB_OFFLINE=1`) nothing is
asked of the network: a cached file is used, and a missing one gets one line saying where to put it by hand."""
import fcntl
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from tqdm import tqdm

from strhub.hub.catalogue import Released

CACHE_ENV = "STRHUB_CACHE"
OFFLINE_ENVS = ("STRHUB_OFFLINE", "HF_HUB_OFFLINE")
TIMEOUT_S = 60  # seconds without a byte before a connection is given up (then resumed)
RESUMES = 3  # connections cut short that one download resumes before giving up (the .part file stays)
CHUNK = 1 << 20


class CheckpointUnavailable(FileNotFoundError):
    """A released checkpoint that cannot be had now (offline and not cached, every address failed, or the downloads
    were corrupt); the message, one line, says why and where to put the file by hand."""


class _Failed(Exception):
    """One address that did not give a good file; its message names the address and what went wrong."""


def cache_dir() -> Path:
    """Where released checkpoints are kept: `$STRHUB_CACHE`, else `~/.cache/strhub`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "strhub").expanduser()


def offline() -> bool:
    """Whether downloads are off (`STRHUB_OFFLINE` or `HF_HUB_OFFLINE` set to 1/true/yes/on)."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENVS)


def digest_mismatch(path: Path, entry: Released) -> Optional[str]:
    """None when one of the entry's digests of the file starts with its hash (or it has none), else the digests."""
    if not entry.hash:
        return None
    hashes = [hashlib.new(name) for name in entry.digests]
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            for digest in hashes:
                digest.update(chunk)
    found = [f"{digest.name} {digest.hexdigest()[:len(entry.hash) + 6]}..." for digest in hashes]
    if any(digest.hexdigest().startswith(entry.hash) for digest in hashes):
        return None
    return ", ".join(found)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds `<path>.lock` so that two processes never write the same download."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open(url: str, offset: int) -> Tuple[Optional[http.client.HTTPResponse], int]:
    """The response to a GET of `url` from byte `offset`, and the offset it starts at (0 when the server sends the
    whole file); (None, offset) when the server says the range is past the end (the part is complete)."""
    headers = {"User-Agent": "strhub"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return None, offset
        raise _Failed(f"{url} answered HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise _Failed(f"cannot reach {url} ({getattr(err, 'reason', err)})") from None
    return response, offset if response.status == 206 else 0


def _fetch_http(url: str, entry: Released, target: Path) -> None:
    """Downloads `url` into `<target>.part` (resuming it), checks it and moves it to `target`."""
    part = target.with_name(target.name + ".part")
    for _ in range(RESUMES + 1):
        response, offset = _open(url, part.stat().st_size if part.exists() else 0)
        if response is None:
            break
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with response, open(part, "ab" if offset else "wb") as out, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.file,
                     disable=None, leave=False) as progress:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    progress.update(len(chunk))
            except (OSError, http.client.HTTPException):
                pass  # a connection cut short: resumed below from what was written
        size = part.stat().st_size
        if total is None or size >= total:
            break
    else:
        raise _Failed(f"{url}: the connection broke {RESUMES + 1} times, at {size} of {total} bytes "
                      f"(kept in {part}: the next try resumes it)")
    mismatch = digest_mismatch(part, entry)
    if mismatch:
        part.unlink()
        raise _Failed(f"{url} gave a corrupt file: its digest ({mismatch}) does not start with {entry.hash}, "
                      f"the hash in the release's name; deleted")
    os.replace(part, target)


def _fetch_hf(url: str, entry: Released) -> Path:
    """The file of an `hf://owner/repo/file` address in huggingface_hub's cache, checked once (the check is noted in
    the strhub cache beside where the file would go, `<file>.verified`)."""
    from huggingface_hub import hf_hub_download

    parts = url[len("hf://"):].split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise _Failed(f"{url} is not an address of the form hf://owner/repo/file")
    try:
        path = Path(hf_hub_download(f"{parts[0]}/{parts[1]}", parts[2], local_files_only=offline()))
    except Exception as err:  # noqa: BLE001 - huggingface_hub's errors (HTTP, not cached offline, disk): one meaning
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if offline():
            reason = "not in huggingface_hub's cache, and downloads are off (STRHUB_OFFLINE or HF_HUB_OFFLINE)"
        raise _Failed(f"{url}: {reason}") from None
    blob = path.resolve()
    note = cache_dir() / f"{entry.file}.verified"
    stamp = f"{blob} {blob.stat().st_size} {blob.stat().st_mtime_ns}"
    if note.is_file() and note.read_text() == stamp:
        return path
    mismatch = digest_mismatch(blob, entry)
    if mismatch:
        blob.unlink()
        path.unlink(missing_ok=True)
        raise _Failed(f"{url} gave a corrupt file: its digest ({mismatch}) does not start with {entry.hash}, "
                      f"the hash in the release's name; deleted from huggingface_hub's cache")
    note.write_text(stamp)
    return path


def fetch(entry: Released) -> Path:
    """The cached file of a released checkpoint, downloaded from its addresses in turn if it is not there yet;
    CheckpointUnavailable when none gives a good file (or offline, when it is not cached)."""
    cache = cache_dir()
    target = cache / entry.file
    if target.is_file():
        return target
    by_hand = f"download it by hand from {(entry.pages or entry.urls or ('its release page',))[0]} and put it at " \
              f"{target}, or give its path"
    cache.mkdir(parents=True, exist_ok=True)  # so that the folder the messages name is there
    urls = [url for url in entry.urls if url.startswith("hf://") or not offline()]
    if not urls:
        why = " and downloads are off (STRHUB_OFFLINE or HF_HUB_OFFLINE)" if entry.urls else \
            " and has no direct download address"
        raise CheckpointUnavailable(f"released checkpoint {entry.name} is not in the cache{why}: {by_hand}")
    failures: List[str] = []
    with _locked(target):
        if target.is_file():  # another process finished it while this one waited
            return target
        for url in urls:
            try:
                if url.startswith("hf://"):
                    return _fetch_hf(url, entry)
                _fetch_http(url, entry, target)
                return target
            except _Failed as failure:
                failures.append(str(failure))
    raise CheckpointUnavailable(f"released checkpoint {entry.name} could not be downloaded: {'; '.join(failures)}; "
                                f"{by_hand}")
