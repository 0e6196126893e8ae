"""Download checkpoint files over HTTP(S): resumable, checksum-verified, atomic. Standard library only.

Two entry points:

    download_file(url, dest, sha256=None)        one file -> dest
    fetch_model("bert-base-uncased")             a hub checkpoint -> <cache>/bert-base-uncased/
                                                 config.json, vocab.txt (or a WordPiece tokenizer.json), weights

Design
------
* **Resume.** Bytes arrive in ``dest.part``. If a ``.part`` is already there (an earlier run was interrupted), the
  request carries ``Range: bytes=N-`` with N = its size. A ``206 Partial Content`` answer is appended to it; a
  ``200 OK`` answer (server ignores ranges) or a ``416`` (the part is unusable) restarts the file from scratch.
  A network failure keeps the ``.part``, so simply running the same command again resumes.
* **Atomicity.** ``dest`` only ever appears complete: after the last byte (and the SHA-256 check, when a hash is
  given) the ``.part`` is flushed to disk and renamed onto ``dest`` with ``os.replace``, which is atomic on one
  file system. A checksum mismatch deletes the ``.part`` (its bytes are wrong, resuming them would not help).
* **Model directories.** ``fetch_model`` downloads into a sibling staging directory ``<cache>/<dir>.partial/`` and
  renames it to ``<cache>/<dir>/`` once every file is there (strategy "temporary sibling directory + rename").
  So the final directory is never half-written, its existence alone means "complete", and a cache hit touches no
  network. The staging directory has a fixed name, so an interrupted fetch resumes file by file (complete files are
  kept, a ``.part`` is resumed). If nothing at all was downloaded, the staging directory is removed again.
* **Validation.** A server can answer 200 with an HTML error page, or close a body without Content-Length early.
  So each file is checked for what it claims to be before it is renamed into place (``check_file``: config.json
  and tokenizer.json parse as JSON objects, vocab.txt is UTF-8 text and not HTML, model.safetensors has a readable
  header and exactly the size it announces, pytorch_model.bin is a zip or pickle); a failing file is deleted and the
  fetch fails with one line. A cache hit is checked the same way (cheap: headers and sizes), so a corrupt entry names
  its directory and how to refresh it instead of failing later inside the loader.
* **Tokenizer.** vocab.txt, or where the hub has none (404) tokenizer.json, the file transformers 5 writes instead.
  bert_mini reads BERT's WordPiece only (``BertTokenizer.from_tokenizer_json``): a tokenizer.json of another kind
  (BPE, Unigram) is refused in one line before any weights are fetched, and nothing is cached.
* **Cache location.** ``cache_dir`` argument, else ``$PEA_KD_CACHE``, else ``~/.cache/pea_kd/models``; hub names
  map to one directory each, ``org/name`` becoming ``org--name``. The hub URL is ``base_url``, else
  ``$PEA_KD_HUB_URL``, else https://huggingface.co; files are read from ``{base}/{name}/resolve/main/{file}``.
* **No network?** Every failure to connect becomes one ``DownloadError`` line saying which URL failed and what to do
  instead: download the files elsewhere, put them in a local directory and pass that directory's path.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import struct
import re
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

DEFAULT_HUB_URL = "https://huggingface.co"
CHECKPOINT_FILES = ("config.json",)
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")  # first one the server has wins
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # idem
_CHUNK = 1 << 20  # 1 MiB per read
_USER_AGENT = "pea-kd-downloader/1.0 (+urllib)"
# A hub name: "name" or "org/name"; each part starts with a letter or digit, so "..", "." and "/abs" are refused.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class DownloadError(RuntimeError):
    """A file could not be downloaded (no network, HTTP error, interrupted transfer)."""


class NoNetworkError(DownloadError):
    """The server could not be reached at all (DNS failure, refused connection, timeout)."""


class NotFoundError(DownloadError):
    """The server answered 404 Not Found."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected SHA-256."""


class UnsupportedCheckpointError(DownloadError):
    """The hub's files are well formed but bert_mini cannot use them (e.g. a BPE tokenizer.json)."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _no_network(url: str, reason: object) -> NoNetworkError:
    return NoNetworkError(
        f"cannot download {url} ({reason}): there seems to be no network connection; download the files on a machine "
        f"with access, put them in a local directory and pass that directory's path instead"
    )


def _open(url: str, offset: int, timeout: float):
    """Send the GET (with a Range header when resuming) and return the response; map failures to DownloadError."""
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:  # a subclass of URLError: test it first
        err.close()
        if err.code == 404:
            raise NotFoundError(f"cannot download {url}: HTTP 404 Not Found (check the name)") from None
        if err.code == 416:
            return None  # Range Not Satisfiable: the caller restarts from byte 0
        hint = " (the repository may not exist, or it is gated and needs a login)" if err.code in (401, 403) else ""
        raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}{hint}") from None
    except urllib.error.URLError as err:
        raise _no_network(url, err.reason) from None
    except (socket.timeout, TimeoutError, ConnectionError) as err:
        raise _no_network(url, err or "timed out") from None


def _progress_bar(enabled: bool, total: Optional[int], initial: int, name: str):
    """A tqdm bar when enabled and tqdm is importable, else a do-nothing stand-in."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name)
        except ImportError:
            pass

    class _Silent:
        def update(self, n: int) -> None:
            pass

        def close(self) -> None:
            pass

    return _Silent()


def check_file(path: Path, name: Optional[str] = None) -> None:
    """ValueError (the reason) unless `path` looks like the checkpoint file `name` (default: its own name) says."""
    name = name or path.name
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.lstrip()[:15].lower().startswith((b"<!doctype", b"<html")):
        raise ValueError("an HTML page")
    if name in ("config.json", "tokenizer.json"):
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"not valid JSON ({err.__class__.__name__})") from None
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
    elif name == "vocab.txt":
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(head) - 4:  # a multi-byte character cut by the 64 KiB read is fine
                raise ValueError("not UTF-8 text") from None
        if not head.strip():
            raise ValueError("empty")
    elif name == "model.safetensors":
        if size < 8:
            raise ValueError(f"{size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head[:8])
        try:
            with open(path, "rb") as f:
                f.seek(8)
                header = json.loads(f.read(n)) if 8 + n <= size else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
        if not isinstance(header, dict):
            raise ValueError("no readable safetensors header")
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError(f"{size} bytes, but its header describes {8 + n + end} (cut short?)")
    elif name == "pytorch_model.bin" and not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ValueError("neither a zip nor a pickle file")


def download_file(url: str, dest, sha256: Optional[str] = None, timeout: float = 60, progress: bool = True,
                  check: Optional[Callable[[Path, str], None]] = None) -> Path:
    """Download `url` to `dest`, resuming `dest.part` if present; verify `sha256` (when given); return `dest`.

    `dest` appears only when complete and verified (os.replace of the .part). Raises DownloadError (network, HTTP,
    interrupted transfer: the .part is kept for resuming), NotFoundError (404) or ChecksumError (.part deleted).
    check(path, name): raises ValueError(reason) when the complete .part is not what `dest` should be (deleted, then a
    DownloadError naming the reason).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0

    response = _open(url, offset, timeout)
    if response is not None and offset:
        start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if response.status != 206:
            offset = 0  # 200 OK: the server ignored the Range header and sends the whole file
        elif not start or int(start.group(1)) != offset:  # some other range: do not guess, start over
            response.close()
            response = None
    if response is None:  # also after 416 Range Not Satisfiable: the .part cannot be continued
        offset = 0
        response = _open(url, 0, timeout)
        if response is None:
            raise DownloadError(f"cannot download {url}: HTTP 416 without a Range request")
    with response:
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        bar = _progress_bar(progress, expected, offset, dest.name)
        received = offset
        try:
            with open(part, "ab" if offset else "wb") as fh:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        except (OSError, http.client.HTTPException) as err:  # timeouts, resets, IncompleteRead
            raise DownloadError(
                f"download of {url} was interrupted after {received} bytes ({err.__class__.__name__}: {err}); "
                f"run the same command again to resume from {part}"
            ) from None
        finally:
            bar.close()
    if expected is not None and received != expected:
        raise DownloadError(
            f"download of {url} stopped at {received} of {expected} bytes; run the same command again to resume"
        )
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise ChecksumError(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}")
    if check is not None:
        try:
            check(part, dest.name)
        except ValueError as err:
            part.unlink()
            raise DownloadError(f"{url} returned {err}, not a valid {dest.name}; nothing was kept, try again "
                                "later or download the files by hand into a local directory") from None
    os.replace(part, dest)
    return dest


def default_cache_dir() -> Path:
    """$PEA_KD_CACHE if set, else ~/.cache/pea_kd/models."""
    env = os.environ.get("PEA_KD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pea_kd" / "models"


def _is_complete(directory: Path) -> bool:
    return all((directory / f).is_file() for f in CHECKPOINT_FILES) and all(
        any((directory / f).is_file() for f in choices) for choices in (TOKENIZER_FILES, WEIGHT_FILES)
    )


def _first_available(choices: tuple[str, ...], base: str, name: str, staging: Path, progress: bool) -> Path:
    """The first of `choices` already in `staging` or that the hub has (a 404 tries the next one)."""
    for filename in choices:
        if (staging / filename).is_file():
            return staging / filename
    for filename in choices:
        try:
            return download_file(f"{base}/{name}/resolve/main/{filename}", staging / filename, progress=progress,
                                 check=check_file)
        except NotFoundError:
            continue
    raise NotFoundError(f"{name}: the hub at {base} has none of {', '.join(choices)}")


def _check_wordpiece(path: Path, name: str, url: str) -> None:
    """UnsupportedCheckpointError (one line) unless `path`, a tokenizer.json, is one bert_mini reads."""
    from .tokenization import BertTokenizer  # needs `tokenizers`; only checkpoints without vocab.txt come here

    try:
        BertTokenizer.from_tokenizer_json(path)
    except ValueError as err:
        reason = str(err).removeprefix(f"{path}: ")
        raise UnsupportedCheckpointError(f"{name}: the hub has no vocab.txt and its tokenizer.json ({url}) is refused: "
                                         f"{reason}; nothing was kept") from None


def fetch_model(name: str, cache_dir=None, base_url: Optional[str] = None, progress: bool = True) -> Path:
    """Download hub checkpoint `name` (config.json, tokenizer, weights) once; return its cache directory.

    `name` is a hub id such as "bert-base-uncased" or "google/bert_uncased_L-4_H-256_A-4". Tokenizer: vocab.txt, or a
    WordPiece tokenizer.json when the server answers 404 for vocab.txt (UnsupportedCheckpointError for another kind).
    Weights: model.safetensors, or pytorch_model.bin when the server answers 404 for it. A complete cache entry is
    returned without any request.
    """
    if not isinstance(name, str) or not _HUB_NAME.match(name):
        raise ValueError(
            f"invalid model name {name!r}: expected a hub id like 'bert-base-uncased' or 'org/name' "
            f"(use a directory path for local checkpoints)"
        )
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    base = (base_url or os.environ.get("PEA_KD_HUB_URL") or DEFAULT_HUB_URL).rstrip("/")
    final = cache_dir / name.replace("/", "--")
    if _is_complete(final):
        present = [next(f for f in choices if (final / f).is_file()) for choices in (TOKENIZER_FILES, WEIGHT_FILES)]
        for f in (*CHECKPOINT_FILES, *present):
            try:
                check_file(final / f)
            except ValueError as err:
                raise DownloadError(f"{final / f} is corrupt ({err}); delete {final} (rm -r) and run again to "
                                    "download it afresh") from None
        return final
    if final.exists():
        raise DownloadError(f"{final} exists but is not a complete checkpoint; delete it and run again")

    staging = final.with_name(final.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for filename in CHECKPOINT_FILES:
            if not (staging / filename).is_file():
                download_file(f"{base}/{name}/resolve/main/{filename}", staging / filename, progress=progress,
                              check=check_file)
        tokenizer = _first_available(TOKENIZER_FILES, base, name, staging, progress)
        if tokenizer.name == "tokenizer.json":  # checked before the weights, the large download, are fetched
            _check_wordpiece(tokenizer, name, f"{base}/{name}/resolve/main/{tokenizer.name}")
        _first_available(WEIGHT_FILES, base, name, staging, progress)
    except UnsupportedCheckpointError:
        shutil.rmtree(staging)  # this checkpoint can never be used here: nothing to resume
        raise
    except BaseException:
        if not any(staging.iterdir()):  # nothing worth resuming: leave no trace
            staging.rmdir()
        raise
    for leftover in staging.glob("*.part"):  # e.g. a safetensors .part from a run before the 404 fallback
        leftover.unlink()
    try:
        os.rename(staging, final)
    except OSError:
        if not _is_complete(final):  # lost a race with another process that finished first? fine; else re-raise
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return final
