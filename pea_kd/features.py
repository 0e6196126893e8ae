"""From GLUE examples to model-ready batches: tokenise, pad dynamically, bucket by length.

    examples ──encode_examples──> Features (unpadded token ids per example, labels)
             ──make_batches─────> list of index arrays, length-bucketed, reproducible per (seed, epoch)
             ──collate──────────> {input_ids, token_type_ids, attention_mask (B, T_max), labels (B,), index (B,)}
    split_holdout(N, fraction, seed) -> (fit, held-out) indices of train, for choices that must not see dev

Why each step:

* Tokenise once: the stages read a split through `pea_kd.feature_cache.load_features`, which runs
  `encode_examples` once and keeps the ids on disk.
* Dynamic padding. Every example is stored unpadded; a batch is padded only to its own longest member T_max, not to
  the global `max_length`. Self-attention costs O(T^2) per head (the score matrix softmax(Q K^T / sqrt(d_k)) is
  T x T) and the feed-forward layers O(T), and every pad position is computed and then masked away: pure waste.
* Length bucketing. Dynamic padding alone helps little if one long sentence lands in a batch of short ones. So, per
  epoch: shuffle all indices with a generator seeded by (seed, epoch); cut them into buckets of
  batch_size * bucket_size_multiplier examples; sort each bucket by length; cut it into batches; shuffle the batch
  order. Batches then hold similar lengths (little padding) while their content and order stay random from epoch to
  epoch. `pea_kd.padding_report.padding_stats` measures the saving on a real split.

Batches are arrays of example indices; `collate` returns them as `batch["index"]`, which is how predictions are put
back in example order and how cached teacher outputs (rows in example order) are looked up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .glue import Example
from .identity import derived_digest, inputs_digest, rows_digest
from .input_checks import check_feature_lengths, check_uniform_split, checked_indices

# Examples per tokenizer call. One call over MNLI-sized data (400k pairs) held every example's token lists as Python
# objects at once: 2.7 GB peak; in chunks the peak does not grow with N, and the tokenizer still uses all cores.
ENCODE_CHUNK = 8192


@dataclass
class Features:
    """A tokenised split, one entry per example, in example order (row i = the i-th example of the file).

    input_ids:      list of N int32 arrays, [CLS] A [SEP] (B [SEP]), unpadded, each at most max_length long.
    token_type_ids: list of N int8 arrays, segment ids 0 (A) / 1 (B), same lengths as input_ids.
    labels:         (N,) int64 class ids, float32 scores (regression), or None for an unlabeled (test) split.
    The arrays are read-only by convention: `digest` and `lengths` are remembered, not recomputed.
    """

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: Optional[np.ndarray] = None
    # not init fields: dataclasses.replace() forgets them, so a replaced input_ids is hashed again, never misnamed
    _digest: Optional[str] = field(default=None, init=False, repr=False, compare=False)
    _labels_digest: Optional[str] = field(default=None, init=False, repr=False, compare=False)
    _lengths: Optional[np.ndarray] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        check_feature_lengths(len(self.input_ids), self.token_type_ids, self.labels)  # one entry per example

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64 number of real tokens of every example."""
        if self._lengths is None:
            self._lengths = np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64,
                                        count=len(self.input_ids))
        return self._lengths

    @property
    def digest(self) -> str:
        """sha256 (16 hex digits) naming the token and segment ids (not the labels), recorded in the cache file when
        they are encoded: a run never hashes them again; a subset's is derived from its parent's and the indices."""
        if self._digest is None:  # Features built by hand, or by dataclasses.replace
            self._digest = inputs_digest(self.input_ids, self.token_type_ids)
        return self._digest

    @property
    def labels_digest(self) -> str:
        """sha256 (16 hex digits) of the labels (dtype and values; "none" for an unlabeled split), recorded like
        `digest`; relabelled features (with_labels, PTP) hash their new labels once."""
        if self._labels_digest is None:
            self._labels_digest = "none" if self.labels is None else rows_digest(torch.from_numpy(
                np.ascontiguousarray(self.labels)))
        return self._labels_digest

    @property
    def is_regression(self) -> bool:
        return self.labels is not None and np.issubdtype(self.labels.dtype, np.floating)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Features":
        """The examples at `indices`, in that order (e.g. a SMOKE-mode sample or a held-out part of train)."""
        idx = checked_indices(len(self), indices)  # int64, each in [0, N)
        sub = Features([self.input_ids[i] for i in idx], [self.token_type_ids[i] for i in idx],
                       None if self.labels is None else self.labels[idx])
        sub._digest = derived_digest(self.digest, b"subset", idx.tobytes())  # O(len(idx)), no token is read
        sub._labels_digest = derived_digest(self.labels_digest, b"subset", idx.tobytes())
        return sub

    def head(self, n: Optional[int]) -> "Features":
        """The first n examples (all of them when n is None or exceeds the size): `--max-train-examples`. n < 1 is
        refused, never read as "all"."""
        if n is None:
            return self
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"max_train_examples must be a whole number >= 1, got {n!r}")
        return self if n >= len(self) else self.subset(range(n))

    def with_labels(self, labels: np.ndarray) -> "Features":
        """The same inputs (and digest) with other labels, e.g. PTP's 4-way labels."""
        out = Features(self.input_ids, self.token_type_ids, labels)
        out._digest, out._lengths = self._digest, self._lengths
        return out



def encode_examples(examples: Sequence[Example], tokenizer, max_length: int = 128) -> Features:
    """Tokenise examples in batched calls: [CLS] text_a [SEP] (text_b [SEP]), truncated longest-first.

    All examples must agree: all pairs or all single sentences, all labeled or all unlabeled. Labels become int64
    class ids, or float32 when any label is a float (regression, STS-B).
    """
    examples = list(examples)
    check_uniform_split(examples)  # all pairs or all single sentences, all labeled or none
    if not examples:
        return Features([], [], None)
    pair = examples[0].text_b is not None
    input_ids, token_type_ids = [], []
    for start in range(0, len(examples), ENCODE_CHUNK):  # a chunk's Python token lists live only until converted
        chunk = examples[start:start + ENCODE_CHUNK]
        encodings = tokenizer.encode_batch([e.text_a for e in chunk], [e.text_b for e in chunk] if pair else None,
                                           max_length=max_length)
        input_ids += [np.asarray(e.input_ids, dtype=np.int32) for e in encodings]
        token_type_ids += [np.asarray(e.token_type_ids, dtype=np.int8) for e in encodings]
    labels = None
    if examples[0].label is not None:
        regression = any(isinstance(e.label, (float, np.floating)) for e in examples)
        labels = np.array([e.label for e in examples], dtype=np.float32 if regression else np.int64)
    return Features(input_ids, token_type_ids, labels)


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n) into (fit indices, held-out indices), each sorted.

    Used wherever a choice must not look at the dev set: the PTP encoder (ptp_stage) and the teacher recipe
    (teacher_search) are selected on a held-out part of *train*.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, int(round(n * fraction)))
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def make_batches(features: Features | np.ndarray, batch_size: int, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, bucket_size_multiplier: int = 50) -> list[np.ndarray]:
    """Split example indices into batches (int64 index arrays); every example appears exactly once.

    shuffle=True (training): a generator seeded by (seed, epoch) permutes all indices; each bucket of
    batch_size * bucket_size_multiplier consecutive indices is sorted by length and cut into batches; the batch order
    is shuffled. Same (seed, epoch) -> same batches; another epoch -> other batches. Only the last bucket can yield a
    batch smaller than batch_size.
    shuffle=False (evaluation): all examples sorted by length, longest first (a memory problem shows up in the first
    batch), cut into batches. Use batch["index"] to put predictions back in example order.
    `features` may also be a plain (N,) array of lengths.
    """
    lengths = features.lengths if isinstance(features, Features) else np.asarray(features, dtype=np.int64)
    if batch_size < 1 or bucket_size_multiplier < 1:
        raise ValueError(f"make_batches: batch_size and bucket_size_multiplier must be >= 1, got {batch_size} "
                         f"and {bucket_size_multiplier}")
    n = len(lengths)
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if seed < 0 or epoch < 0:
        raise ValueError(f"make_batches: seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    perm = rng.permutation(n)
    bucket = batch_size * bucket_size_multiplier
    batches = []
    for start in range(0, n, bucket):
        chunk = perm[start:start + bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]  # stable: equal lengths keep their random order
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def count_batches(n: int, batch_size: int, shuffle: bool = True, bucket_size_multiplier: int = 50) -> int:
    """len(make_batches(...)) for n examples, without building them (the same for every seed and epoch): buckets of
    batch_size * bucket_size_multiplier examples yield bucket_size_multiplier batches each, the last bucket
    ceil(rest / batch_size). The trainer sizes its schedule with it instead of batching every epoch up front."""
    if not shuffle:
        return -(-n // batch_size)
    full, rest = divmod(n, batch_size * bucket_size_multiplier)
    return full * bucket_size_multiplier + -(-rest // batch_size)


def collate(features: Features, indices: Sequence[int] | np.ndarray, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad the examples at `indices` to their longest member T_max.

    Returns int64 tensors input_ids (pad_token_id after the real tokens), token_type_ids (0 there),
    attention_mask (1 = real token, 0 = padding), all (B, T_max); labels (B,) (int64, or float32 for regression;
    absent for an unlabeled split); index (B,) = the example indices, in batch order.
    """
    idx = checked_indices(len(features), indices)  # int64, each in [0, N)
    if len(idx) == 0:
        raise ValueError("collate: empty batch")
    lengths = [len(features.input_ids[i]) for i in idx]
    shape = (len(idx), max(lengths))
    input_ids = np.full(shape, pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros(shape, dtype=np.int64)
    attention_mask = np.zeros(shape, dtype=np.int64)
    for row, (i, n) in enumerate(zip(idx, lengths)):
        input_ids[row, :n] = features.input_ids[i]
        token_type_ids[row, :n] = features.token_type_ids[i]
        attention_mask[row, :n] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(token_type_ids),
             "attention_mask": torch.from_numpy(attention_mask), "index": torch.from_numpy(idx.copy())}
    if features.labels is not None:
        batch["labels"] = torch.from_numpy(features.labels[idx])
    return batch
