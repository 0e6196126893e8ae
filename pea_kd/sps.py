"""SPS, Shuffled Parameter Sharing (Pea-KD, Cho & Kang): more effective depth for the same parameters.

A student has L transformer layers of parameters, Layer_0 .. Layer_{L-1}. SPS runs them twice:

    Step 1, paired parameter sharing. Double the depth and let the upper half reuse the bottom half's modules:
        x_0    = Emb(ids)
        x_i    = Layer_{i-1}(x_{i-1})                       i = 1..L         (bottom half: 0, 1, .., L-1)
        x_{L+i} = Layer'_{i-1}(x_{L+i-1})                   i = 1..L         (upper half: 0', 1', .., (L-1)')
    so there are 2L *effective* layers e_1 .. e_2L, and e_i and e_{L+i} share every parameter. The order is
    "stacked" (0, 1, 2, 0', 1', 2'), not adjacent (0, 0', 1, 1', ...).

    Step 2, shuffling. In the upper copy Layer'_j the Query and Key projections trade places, weights *and* biases:
        Layer_j :  Q = x W_q + b_q,   K = x W_k + b_k,   A = softmax(Q K^T / sqrt(d_k) + M) V
        Layer'_j:  Q = x W_k + b_k,   K = x W_q + b_q    (everything else - V, output dense, LayerNorms, FFN - as is)
    Since K Q^T = (Q K^T)^T (biases included, they live inside Q and K), on the same input the upper copy's
    pre-softmax scores are exactly the transpose of its twin's; only the row-wise softmax makes the attention maps
    differ. That is how SPS gives the shared layer a different job.

Properties a reader can check in `tests/test_sps.py`:
  * nothing is random: the swap is fixed, always in the upper copy, in training and evaluation alike;
  * no parameters are added: an SPS-L student has exactly the parameters of a plain L-layer student;
  * each shared tensor is used twice per forward pass, so its gradient is the *sum* of both uses' gradients;
  * 6-layer student ("sps6", the authors' code, docs/method.md#the-6-layer-student): layers 0..5 run normally, then
    only 3', 4', 5' run again (9 effective layers, not 12).

In `bert_mini` the encoder runs an explicit plan, a list of `(layer_index, swap_qk)` steps; a variant is just a plan:

    original        [(0,F), (1,F), (2,F)]                          plain L-layer BERT
    sps_no_shuffle  [(0,F), (1,F), (2,F), (0,F), (1,F), (2,F)]     Step 1 only (ablation)
    sps             [(0,F), (1,F), (2,F), (0,T), (1,T), (2,T)]     Step 1 + Step 2
    sps6            [(0,F), .., (5,F), (3,T), (4,T), (5,T)]        authors' 6-layer student
"""
from __future__ import annotations

from torch import nn

from .plan_table import describe_plan  # noqa: F401  (notebook 05 and docs/api.md import it from here)

Plan = list[tuple[int, bool]]

VARIANTS = ("original", "sps_no_shuffle", "sps", "sps6")


def make_plan(num_layers: int, variant: str) -> Plan:
    """The execution plan of a `variant` (one of `VARIANTS`, case-insensitive) for `num_layers` real layers."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"make_plan: num_layers must be a positive integer, got {num_layers!r}")
    key = str(variant).lower()
    bottom = [(i, False) for i in range(num_layers)]  # e_1 .. e_L: the real layers, as in plain BERT
    if key == "original":
        return bottom
    if key == "sps_no_shuffle":
        return bottom + [(i, False) for i in range(num_layers)]  # Step 1: the same modules again
    if key == "sps":
        return bottom + [(i, True) for i in range(num_layers)]  # Step 1 + Step 2: again, with Q <-> K
    if key == "sps6":
        if num_layers != 6:
            raise ValueError(f"make_plan: variant 'sps6' is the authors' 6-layer student and needs num_layers=6, "
                             f"got {num_layers} (use 'sps' for other depths)")
        return bottom + [(i, True) for i in range(3, 6)]  # 0..5 then 3', 4', 5': 9 effective layers
    raise ValueError(f"make_plan: unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def get_encoder(model: nn.Module) -> nn.Module:
    """The `BertEncoder` of a `BertForSequenceClassification` (model.bert.encoder) or a bare `BertModel`."""
    if hasattr(model, "bert") and hasattr(model.bert, "encoder"):
        return model.bert.encoder
    if hasattr(model, "encoder") and hasattr(model.encoder, "plan"):
        return model.encoder
    raise TypeError(f"expected a bert_mini BertModel or BertForSequenceClassification, got {type(model).__name__}")


def apply_plan(model: nn.Module, variant: str) -> Plan:
    """Set the encoder's plan to `variant` for the layers the model has; returns the plan."""
    encoder = get_encoder(model)
    plan = make_plan(len(encoder.layer), variant)
    encoder.plan = plan
    return plan


def variant_of(model: nn.Module) -> str | None:
    """The name of the variant whose plan the model runs now, or None for a custom plan."""
    encoder = get_encoder(model)
    for variant in VARIANTS:
        try:
            if make_plan(len(encoder.layer), variant) == encoder.plan:
                return variant
        except ValueError:  # sps6 on a non-6-layer model
            continue
    return None
