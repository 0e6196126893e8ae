"""When the teacher cache is reused, extended or recomputed, and what a request for one may ask.

`reuse_or_recompute` returns the cache when it matches this data and teacher and holds the layers asked for; a
valid cache that lacks some layers is recomputed with its layers and the new ones (students with different layer
maps share one cache); anything else is recomputed. Recomputing holds the teacher directory's lock, so a second
process waits and then reads the first one's cache. pea_kd.teacher calls these by one line each. Machinery: skip on
a first reading.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

from . import distributed
from .storage import directory_lock
from .teacher_cache import CLS_DTYPES, MissingTeacherLayers, StaleTeacherCache, load_teacher_outputs

log = logging.getLogger(__name__)


def check_cls_dtype(cls_dtype: str) -> None:
    """Refuse a storage dtype for cls_hidden that is not one of CLS_DTYPES."""
    if cls_dtype not in CLS_DTYPES:
        raise ValueError(f"cache_teacher_outputs: cls_dtype must be one of {', '.join(CLS_DTYPES)}, got {cls_dtype!r}")


def checked_layers(layers: Optional[Sequence[int]], num_layers: int) -> list[int]:
    """The sorted layers to cache (None: every layer 0..num_layers), refusing one the teacher does not have."""
    layers = sorted(set(range(num_layers + 1) if layers is None else (int(x) for x in layers)))
    if layers and not 0 <= layers[0] <= layers[-1] <= num_layers:
        raise ValueError(f"cache_teacher_outputs: layers {layers} out of range for a {num_layers}-layer teacher "
                         f"(0 = embeddings .. {num_layers})")
    return layers


def check_teacher_head(model, model_dir, spec) -> None:
    """Refuse a checkpoint without a fine-tuned head for this task (one that bert_mini had to initialise afresh)."""
    if model.load_report.newly_initialized:
        raise ValueError(f"{model_dir}: no fine-tuned {spec.name} head with {spec.num_labels} outputs; "
                         "is this a teacher for another task?")


def reuse_or_recompute(path, args: tuple, teacher_dir, layers: Optional[Sequence[int]], cls_dtype: Optional[str],
                       recompute: Callable) -> dict:
    """load_teacher_outputs(path, *args) when it is valid; else recompute(keep_layers, cls_dtype) under the teacher
    directory's lock, then load it. Under torchrun rank 0 checks (or recomputes) it, the others then read."""
    with distributed.main_process_first():
        try:
            return load_teacher_outputs(path, *args)
        except StaleTeacherCache as err:
            if path.is_file():  # a cache that exists but no longer matches is worth a warning; a first run is not
                log.warning("%s; recomputing it", err)
            else:
                log.info("computing the teacher cache %s", path)
        with directory_lock(teacher_dir, wait=True):
            try:  # another process may have computed it while this one waited
                return load_teacher_outputs(path, *args)
            except MissingTeacherLayers as err:  # valid, but for students with other layer maps: keep theirs too
                keep, dtype = (None if layers is None else sorted(set(layers) | set(err.stored))), err.cls_dtype
            except StaleTeacherCache:
                keep, dtype = layers, cls_dtype or "float32"
            recompute(keep, dtype)
        return load_teacher_outputs(path, *args)
