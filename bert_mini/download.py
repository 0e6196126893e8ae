"""Download checkpoint files over HTTP(S): resumable, checksum-verified, atomic. Standard library only.

Two entry points:

    download_file(url, dest, sha256=None)        one file -> dest
    fetch_model("bert-base-uncased")             a hub checkpoint -> <cache>/bert-base-uncased/

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
* **Cache location.** ``cache_dir`` argument, else ``$PEA_KD_CACHE``, else ``~/.cache/pea_kd/models``; hub names
  map to one directory each, ``org/name`` becoming ``org--name``. The hub URL is ``base_url``, else
  ``$PEA_KD_HUB_URL``, else https://huggingface.co; files are read from ``{base}/{name}/resolve/main/{file}``.
* **No network?** Every failure to connect becomes one ``DownloadError`` line saying which URL failed and what to do
  instead: download the files elsewhere, put them in a local directory and pass that directory's path.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

DEFAULT_HUB_URL = "https://huggingface.co"
CHECKPOINT_FILES = ("config.json", "vocab.txt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # first one the server has wins
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


def download_file(url: str, dest, sha256: Optional[str] = None, timeout: float = 60, progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming `dest.part` if present; verify `sha256` (when given); return `dest`.

    `dest` appears only when complete and verified (os.replace of the .part). Raises DownloadError (network, HTTP,
    interrupted transfer: the .part is kept for resuming), NotFoundError (404) or ChecksumError (.part deleted).
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
    os.replace(part, dest)
    return dest


def default_cache_dir() -> Path:
    """$PEA_KD_CACHE if set, else ~/.cache/pea_kd/models."""
    env = os.environ.get("PEA_KD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pea_kd" / "models"


def _is_complete(directory: Path) -> bool:
    return all((directory / f).is_file() for f in CHECKPOINT_FILES) and any(
        (directory / f).is_file() for f in WEIGHT_FILES
    )


def fetch_model(name: str, cache_dir=None, base_url: Optional[str] = None, progress: bool = True) -> Path:
    """Download hub checkpoint `name` (config.json, vocab.txt, weights) once; return its cache directory.

    `name` is a hub id such as "bert-base-uncased" or "google/bert_uncased_L-4_H-256_A-4". Weights: model.safetensors,
    or pytorch_model.bin when the server answers 404 for it. A complete cache entry is returned without any request.
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
        return final
    if final.exists():
        raise DownloadError(f"{final} exists but is not a complete checkpoint; delete it and run again")

    staging = final.with_name(final.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for filename in CHECKPOINT_FILES:
            if not (staging / filename).is_file():
                download_file(f"{base}/{name}/resolve/main/{filename}", staging / filename, progress=progress)
        if not any((staging / f).is_file() for f in WEIGHT_FILES):
            for i, filename in enumerate(WEIGHT_FILES):
                try:
                    download_file(f"{base}/{name}/resolve/main/{filename}", staging / filename, progress=progress)
                    break
                except NotFoundError:
                    if i == len(WEIGHT_FILES) - 1:
                        raise NotFoundError(
                            f"{name}: the hub at {base} has none of {', '.join(WEIGHT_FILES)}"
                        ) from None
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
