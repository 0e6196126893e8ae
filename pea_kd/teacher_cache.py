"""The teacher cache file, teacher_outputs.pt: written once with the digests of its rows, then only read and checked.

    write_teacher_cache(path, header, splits)   the file, atomically; row_digests of every split computed here, as
                                                its rows are written (what run identities are later made of)
    load_teacher_outputs(path, ...)             the file, memory-mapped, after checking it belongs to this task,
                                                tokenizer, max_length, data, teacher weights and precision and holds
                                                the layers asked for; else StaleTeacherCache, one line saying why
    verify_teacher_outputs(path)                re-read every row and compare it with the digests recorded

The teacher (pea_kd.teacher) computes the rows; this module writes and reads them; pea_kd.teacher_rows is what a
run sees of one split; the trainer reads those rows. Nothing here runs a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from .glue import get_task
from .identity import rows_digest
from .storage import write_atomic

CACHE_FILE = "teacher_outputs.pt"
CLS_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}  # cls_hidden storage
CACHE_VERSION = 3  # 2: teacher identified by its weights' digest, precision recorded; 3: chosen layers, row digests


class StaleTeacherCache(ValueError):
    """teacher_outputs.pt is missing, unreadable or was computed for other data, tokenizer, task or max_length."""


class MissingTeacherLayers(StaleTeacherCache):
    """The teacher cache is valid but lacks [CLS] layers a loss reads; `stored` lists the layers it has, `cls_dtype`
    their storage dtype."""

    def __init__(self, message: str, stored, cls_dtype: str):
        super().__init__(message)
        self.stored, self.cls_dtype = list(stored), cls_dtype


def layer_key(layer: int) -> str:
    """The row_digests key of one stored layer of cls_hidden."""
    return f"cls_hidden/{layer}"


def row_digests(logits: Optional[torch.Tensor], cls_hidden: Optional[torch.Tensor], layers) -> dict:
    """{"logits": digest, "cls_hidden/<layer>": digest for each stored layer}: what a cache records when written."""
    digests = {} if logits is None else {"logits": rows_digest(logits)}
    if cls_hidden is not None:
        digests.update({layer_key(layer): rows_digest(cls_hidden[:, k]) for k, layer in enumerate(layers)})
    return digests


def write_teacher_cache(path, header: dict, splits: dict) -> Path:
    """Write the cache atomically: `header` (task, teacher, layers, ...; see teacher.cache_teacher_outputs) and
    `splits` {split: {"logits", "cls_hidden", "labels"}}, with each split's row_digests computed here."""
    digests = {split: row_digests(rows["logits"], rows["cls_hidden"], header["layers"])
               for split, rows in splits.items()}
    path = Path(path)
    write_atomic(path, lambda f: torch.save({**header, "version": CACHE_VERSION, "row_digests": digests,
                                             "splits": splits}, f))
    return path


def load_teacher_outputs(path, task, max_length: int, tokenizer_fingerprint: str, split_sizes: dict,
                         digests: Optional[dict] = None, teacher_weights: Optional[str] = None,
                         precision: Optional[str] = None, layers: Optional[Sequence[int]] = None,
                         cls_dtype: Optional[str] = None) -> dict:
    """Read a teacher cache and refuse it (StaleTeacherCache, one line saying what differs) unless it matches.

    split_sizes: {split: N expected}; digests: optional {split: features_digest(...)} for an exact data check;
    teacher_weights: optional file_digest of the model.safetensors the cache must come from (the weights, not the
    path: a retrained teacher is another teacher, a moved one the same); precision: optional "fp32"/"bf16"/"fp16";
    layers: the teacher layers the caller reads (None = every layer); a cache holding fewer raises
    MissingTeacherLayers; cls_dtype: optional storage dtype of cls_hidden ("float32", ...). Nothing is re-read to
    check it: the comparisons use what the file recorded.
    """
    path = Path(path)
    cache = _open_cache(path)
    spec = get_task(task)
    expected = {"version": CACHE_VERSION, "task": spec.name, "max_length": max_length,
                "tokenizer": tokenizer_fingerprint, **({"teacher_weights": teacher_weights} if teacher_weights else {}),
                **({"precision": precision} if precision else {}), **({"cls_dtype": cls_dtype} if cls_dtype else {})}
    for key, value in expected.items():
        if cache.get(key) != value:
            raise StaleTeacherCache(f"{path}: stale teacher cache: {key} is {cache.get(key)!r}, expected {value!r}")
    for split, n in split_sizes.items():
        if split not in cache["splits"]:
            raise StaleTeacherCache(f"{path}: stale teacher cache: no {split!r} split "
                                    f"(has {', '.join(cache['splits'])})")
        rows = {k: len(v) for k, v in cache["splits"][split].items() if v is not None}
        if cache["num_examples"][split] != n or any(r != n for r in rows.values()):
            raise StaleTeacherCache(f"{path}: stale teacher cache: {split} has {cache['num_examples'][split]} "
                                    f"examples, the data has {n}")
        if digests and split in digests and cache["digests"].get(split) != digests[split]:
            raise StaleTeacherCache(f"{path}: stale teacher cache: the {split} inputs changed (data or tokenisation)")
    wanted = range(cache["num_layers"] + 1) if layers is None else layers
    absent = sorted(set(wanted) - set(cache["layers"]))
    if absent:
        raise MissingTeacherLayers(f"{path}: the teacher cache holds layers {cache['layers']} of "
                                   f"0..{cache['num_layers']}, not {absent}", cache["layers"], cache["cls_dtype"])
    return cache


def _open_cache(path: Path) -> dict:
    """torch.load the cache memory-mapped (pages shared between processes, read on demand); StaleTeacherCache when
    it is missing or unreadable."""
    if not path.is_file():
        raise StaleTeacherCache(f"{path}: no teacher cache; run `python -m pea_kd cache-teacher`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated, corrupt or not a torch file
        raise StaleTeacherCache(f"{path}: unreadable teacher cache ({type(err).__name__}); recompute it") from None


def verify_teacher_outputs(path) -> dict:
    """Re-read every row of a teacher cache and compare it with the digests recorded when it was written:
    {split: [keys whose rows changed]} (empty lists: intact). What runs skip, for a file someone may have edited."""
    cache = _open_cache(Path(path))
    if cache.get("version") != CACHE_VERSION:
        raise StaleTeacherCache(f"{path}: a version {cache.get('version')} teacher cache records no row digests; "
                                "recompute it")
    changed = {}
    for split, rows in cache["splits"].items():
        now = row_digests(rows["logits"], rows.get("cls_hidden"), cache["layers"])
        changed[split] = sorted(k for k in now.keys() | cache["row_digests"][split].keys()
                                if now.get(k) != cache["row_digests"][split].get(k))
    return changed
