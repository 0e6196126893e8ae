"""The cached teacher outputs of one split, as the trainer reads them (pea_kd.teacher computes them,
pea_kd.teacher_cache writes, reads and checks the file teacher_outputs.pt; this module is what a run sees of it).

    rows = TeacherRows.from_cache(cache, "train")   tensors memory-mapped, digests recorded when the file was written
    rows.logits            z_t (N, C)
    rows.cls_hidden        (N, K, H_t): the [CLS] vectors of the K stored teacher layers, rows.layers[k] = the layer
                           of column k (0 = embeddings, 1..L_t). PKD reads only its layer map (2 to 5 of 13 layers
                           for a 12-layer teacher), so the cache it needs holds only those columns.
    rows.cls_rows(index)   (B, L_t + 1, H_t): the LossInputs layout every loss indexes by teacher layer; the stored
                           layers filled in, the others NaN (a loss never reads them: the trainer checks first)
    rows.identity(...)     what a run records of its teacher: a digest of the recorded digests of exactly the rows
                           its loss reads, those layers, and their storage dtype

Digests, one per tensor and per stored layer (teacher_cache.row_digests), are computed once, when the cache is
written. A run's identity names only the rows it reads, so adding layers to a cache for another student changes
nothing for the runs that read the old ones. Rows made in memory (a dict of tensors with every layer, e.g. in a
test) are hashed when they are wrapped (from_tensors): nothing recorded them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Optional

import torch

from .identity import derived_digest
from .runtime import non_blocking
from .teacher_cache import layer_key, row_digests

Tensor = torch.Tensor


@dataclass(frozen=True)
class TeacherRows:
    """One split of the teacher cache, rows in example order (row i = example i); see the module docstring.

    logits: (N, C) or None.   cls_hidden: (N, K, H_t) or None, column k = teacher layer layers[k].
    num_layers: L_t, the teacher's layer count.   digests: row_digests(...), recorded when the rows were written.
    labels: (N,) gold labels (PTP splits on them), or None.
    """

    logits: Optional[Tensor]
    cls_hidden: Optional[Tensor]
    layers: tuple
    num_layers: int
    digests: dict
    labels: Optional[Tensor] = None

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        sizes = {len(t) for t in (self.logits, self.cls_hidden, self.labels) if t is not None}
        if len(sizes) > 1:
            raise ValueError(f"TeacherRows: logits, cls_hidden and labels have different row counts {sorted(sizes)}")
        if self.cls_hidden is not None and (self.cls_hidden.dim() != 3 or self.cls_hidden.shape[1] != len(self.layers)
                                            or list(self.layers) != sorted(set(self.layers))
                                            or not 0 <= min(self.layers, default=0) <= max(self.layers, default=0)
                                            <= self.num_layers):
            raise ValueError(f"TeacherRows: cls_hidden {tuple(self.cls_hidden.shape)} must be (N, K, H) with K = "
                             f"{len(self.layers)} sorted teacher layers in 0..{self.num_layers}, got {self.layers}")

    @classmethod
    def from_tensors(cls, logits: Optional[Tensor] = None, cls_hidden: Optional[Tensor] = None,
                     labels: Optional[Tensor] = None) -> "TeacherRows":
        """Rows made in memory, cls_hidden (N, L_t + 1, H_t) holding every layer; hashed now (they have no record)."""
        layers = range(cls_hidden.shape[1]) if cls_hidden is not None else ()
        return cls(logits, cls_hidden, tuple(layers), max(len(layers) - 1, 0),
                   row_digests(logits, cls_hidden, layers), labels)

    @classmethod
    def from_cache(cls, cache: dict, split: str) -> "TeacherRows":
        """The rows of `split` in a loaded teacher cache (teacher_cache.load_teacher_outputs), with its records."""
        rows = cache["splits"][split]
        return cls(rows["logits"], rows.get("cls_hidden"), tuple(cache["layers"]), cache["num_layers"],
                   cache["row_digests"][split], rows.get("labels"))

    def __len__(self) -> int:
        return len(self.logits if self.logits is not None else self.cls_hidden)

    @property
    def hidden_size(self) -> Optional[int]:
        """H_t, or None without cls_hidden."""
        return None if self.cls_hidden is None else int(self.cls_hidden.shape[-1])

    def head(self, n: int) -> "TeacherRows":
        """Rows 0..n-1 (those of Features.head(n)); their digests derived from the recorded ones, nothing is read."""
        if n >= len(self):
            return self
        cut = {f: None if t is None else t[:n] for f, t in
               (("logits", self.logits), ("cls_hidden", self.cls_hidden), ("labels", self.labels))}
        digests = {k: derived_digest(d, b"head", str(n).encode()) for k, d in self.digests.items()}
        return dataclasses.replace(self, **cut, digests=digests)

    def missing_layers(self, layers) -> list[int]:
        """The teacher layers among `layers` that these rows do not hold."""
        return sorted(set(layers) - set(self.layers)) if self.cls_hidden is not None else sorted(set(layers))

    def cls_rows(self, index: Tensor, device) -> Tensor:
        """(B, L_t + 1, H_t) [CLS] rows of the examples `index` on `device`: only the stored columns are moved; a
        layer the cache does not hold is NaN (the trainer refuses, before training, a loss that reads one)."""
        rows = self.cls_hidden.index_select(0, index).to(device, non_blocking=non_blocking(device))  # (B, K, H_t)
        if len(self.layers) == self.num_layers + 1:  # every layer stored: already the LossInputs layout
            return rows
        full = rows.new_full((len(index), self.num_layers + 1, rows.shape[-1]), float("nan"))
        full[:, list(self.layers)] = rows  # column k -> teacher layer layers[k]
        return full

    def identity(self, fields, layers) -> dict:
        """The teacher part of a run identity when its loss reads `fields` ("logits", "cls_hidden") and, of
        cls_hidden, the teacher `layers`: {"teacher_targets": digest of those rows' recorded digests,
        "teacher_layers": [...] or None, "teacher_dtype": cls_hidden's storage dtype or None}."""
        keys = (["logits"] if "logits" in fields else []) + \
            ([layer_key(t) for t in sorted(set(layers))] if "cls_hidden" in fields else [])
        read = {k: self.digests[k] for k in keys}
        return {"teacher_targets": hashlib.sha256(json.dumps(read, sort_keys=True).encode()).hexdigest()[:16],
                "teacher_layers": sorted(set(layers)) if "cls_hidden" in fields else None,
                "teacher_dtype": str(self.cls_hidden.dtype).removeprefix("torch.") if "cls_hidden" in fields
                else None}
