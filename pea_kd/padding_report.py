"""What dynamic padding and length bucketing save, measured: the token positions one epoch computes.

Notebook 02 and `python -m pea_kd.feature_cache` print it for real splits; pea_kd.features makes the batches it
counts. Machinery: skip on a first reading.
"""
from __future__ import annotations

import numpy as np

from .features import Features, make_batches


def padding_stats(features: Features | np.ndarray, batch_size: int, max_length: int = 128, seed: int = 0,
                  bucket_size_multiplier: int = 50) -> dict[str, float]:
    """How many token positions one epoch computes under three padding schemes.

    fixed:    every example padded to max_length                  -> N * max_length positions
    random:   dynamic padding, random batches                     -> sum over batches of B * T_max
    bucketed: dynamic padding, length-bucketed batches (training) -> sum over batches of B * T_max
    `*_pad` = positions that are padding; `saving_vs_*` = 1 - bucketed positions / that scheme's positions;
    `attention_saving_vs_fixed` compares sum B * T_max^2 (the size of the attention score matrices).
    """
    lengths = features.lengths if isinstance(features, Features) else np.asarray(features, dtype=np.int64)
    if len(lengths) and lengths.max() > max_length:
        raise ValueError(f"padding_stats: an example has {lengths.max()} tokens > max_length={max_length}")
    real = int(lengths.sum())
    fixed = len(lengths) * max_length
    perm = np.random.default_rng([seed, 0]).permutation(len(lengths))
    random_batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    bucketed = make_batches(lengths, batch_size, True, seed, 0, bucket_size_multiplier)

    def positions(batches, power=1):
        return int(sum(len(b) * int(lengths[b].max()) ** power for b in batches))

    stats = {"examples": len(lengths), "batches": len(bucketed), "real_tokens": real,
             "mean_length": real / max(len(lengths), 1)}
    for name, slots in (("fixed", fixed), ("random", positions(random_batches)), ("bucketed", positions(bucketed))):
        stats[f"{name}_positions"] = slots
        stats[f"{name}_pad"] = slots - real
    stats["saving_vs_fixed"] = 1 - stats["bucketed_positions"] / max(fixed, 1)
    stats["saving_vs_random"] = 1 - stats["bucketed_positions"] / max(stats["random_positions"], 1)
    stats["attention_saving_vs_fixed"] = 1 - positions(bucketed, 2) / max(len(lengths) * max_length ** 2, 1)
    return stats
