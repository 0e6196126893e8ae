"""The on-disk cache of tokenised splits: `load_features` = `encode_examples(load_examples(...))`, tokenised once.

WordPiece over a whole split is the same work every epoch and every run (teacher, PTP, each student), so it is done
once and the ids are stored in a single `.npz`: all ids concatenated into one flat array plus `offsets` (example i is
`ids[offsets[i]:offsets[i+1]]`). The cache key holds everything the ids depend on: task, split,
`tokenizer.fingerprint` (vocabulary + casing), `max_length`, the label vocabulary, a format version and the sha256 of
the source TSV, so editing the data, switching tokenizer or truncation length rebuilds it. A cache file that cannot be
read or does not match its key is rebuilt with a log line, never trusted and never fatal. Writes are atomic
(pea_kd.storage.write_atomic), so an interrupted run cannot leave half a file behind. The inputs' and labels'
digests (`Features.digest`, run identity) are stored in the file, so a later run never hashes the examples again.
"""
from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from .features import Features, encode_examples
from .glue import get_task, load_examples, split_path
from .glue_files import PROJECT_ROOT
from .identity import file_digest
from .storage import write_atomic

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = PROJECT_ROOT / "data" / "cache" / "features"
CACHE_ENV = "PEA_KD_CACHE_DIR"
FORMAT_VERSION = 2  # bump when the encoding or the file layout changes: old caches are then rebuilt (2: digest)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The features cache directory: the argument, else $PEA_KD_CACHE_DIR, else <project root>/data/cache/features."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else DEFAULT_CACHE_DIR


def load_features(task, split: str, tokenizer, max_length: int = 128, data_dir=None, cache_dir=None) -> Features:
    """`encode_examples(load_examples(task, split, data_dir), tokenizer, max_length)`, cached on disk.

    The cache file is <cache_dir>/<task>-<split>-<tokenizer fingerprint>-L<max_length>.npz; its stored key also holds
    the sha256 of the source TSV (found with `glue.split_path`), the label vocabulary and FORMAT_VERSION. A file
    whose key differs (data edited) or that cannot be read (corrupt, truncated) is rebuilt and overwritten.
    """
    spec = get_task(task)
    split = spec.resolve_split(split)
    source = split_path(spec, split, data_dir)
    if not source.is_file():
        load_examples(spec, split, data_dir)  # raises FileNotFoundError saying where it looked and how to download
    key = {"version": FORMAT_VERSION, "task": spec.directory, "split": split, "tokenizer": tokenizer.fingerprint,
           "max_length": int(max_length), "labels": None if spec.labels is None else list(spec.labels),
           "source_sha256": file_digest(source)}  # remembered per process: every stage reads it
    path = resolve_cache_dir(cache_dir) / f"{spec.directory}-{split}-{tokenizer.fingerprint}-L{max_length}.npz"
    if path.is_file():
        try:
            features = _read_cache(path, key)
            log.debug("features: loaded %d %s %s examples from %s", len(features), spec.name, split, path)
            return features
        except _StaleCache as err:
            log.info("features: rebuilding %s (%s)", path, err)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning("features: cache file %s is unreadable (%s: %s); rebuilding it",
                        path, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
    features = encode_examples(load_examples(spec, split, data_dir), tokenizer, max_length)
    try:
        _write_cache(path, key, features)
    except OSError as err:  # caching is an optimisation: a read-only disk must not stop training
        log.warning("features: could not write cache %s (%s); continuing without it", path, err)
    return features


class _StaleCache(ValueError):
    """The cache file is readable but was built for another key (e.g. the data file changed)."""


def _write_cache(path: Path, key: dict, features: Features) -> None:
    """Store features as flat `ids`, `types`, `offsets` (N+1), optional `labels`, the JSON `key`, the inputs' `digest`
    and the `labels_digest` (computed here, once: later runs read them instead of hashing every example again);
    atomically. The digest
    describes the arrays written with it in the same file; a file replaced by another cache brings its own."""
    lengths = features.lengths
    offsets = np.zeros(len(features) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    arrays = {
        "key": np.array(json.dumps(key, sort_keys=True)),
        "ids": np.concatenate(features.input_ids) if len(features) else np.zeros(0, np.int32),
        "types": np.concatenate(features.token_type_ids) if len(features) else np.zeros(0, np.int8),
        "offsets": offsets,
        "digest": np.array(features.digest),
        "labels_digest": np.array(features.labels_digest),
    }
    if features.labels is not None:
        arrays["labels"] = features.labels
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.savez(f, **arrays))


def _read_cache(path: Path, key: dict) -> Features:
    """Read a cache file; _StaleCache if its key differs, ValueError/KeyError/... if it is damaged."""
    with np.load(path, allow_pickle=False) as z:
        stored = json.loads(str(z["key"]))
        if not isinstance(stored, dict):
            raise ValueError("the stored key is not a JSON object")
        if stored != key:
            changed = sorted(k for k in key.keys() | stored.keys() if stored.get(k) != key.get(k))
            raise _StaleCache(f"built for a different {', '.join(changed)}")
        ids, types, offsets = z["ids"], z["types"], z["offsets"]
        digest, labels_digest = str(z["digest"]), str(z["labels_digest"])
        labels = z["labels"] if "labels" in z.files else None
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    if (n < 0 or offsets[0] != 0 or offsets[-1] != len(ids) or len(types) != len(ids) or np.any(lengths < 0)
            or (labels is not None and labels.shape != (n,)) or ids.dtype != np.int32):
        raise ValueError("inconsistent arrays (ids/types/offsets/labels)")
    bounds = list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))  # views, not copies; 5x faster than np.split
    features = Features([ids[a:b] for a, b in bounds], [types[a:b] for a, b in bounds], labels)
    features._digest, features._labels_digest = digest, labels_digest  # recorded when written: nothing is hashed
    features._lengths = lengths
    return features


if __name__ == "__main__":  # python -m pea_kd.feature_cache mrpc sst2 : padding statistics of the train splits
    import sys

    from bert_mini import load_tokenizer

    from .padding_report import padding_stats

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tok = load_tokenizer("minilm-l6")
    for name in sys.argv[1:] or ["mrpc", "sst2"]:
        stats = padding_stats(load_features(name, "train", tok), batch_size=32, max_length=128)
        print(get_task(name).name, json.dumps({k: round(v, 4) for k, v in stats.items()}))
