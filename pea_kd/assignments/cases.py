"""Random, reproducible inputs on which the checkers grade a student's loss (float64, small, with padding).

Each builder returns a LossInputs shaped like what the trainer passes: hidden states with index 0 = embeddings,
attentions with index i-1 = layer i, an attention_mask of 1 (real) / 0 (padding) with at least one padded example,
and a layer_map from pkd_layer_map. Teacher tensors can be made to require grad, to test that a loss detaches them.
"""

from __future__ import annotations

import torch

from pea_kd.losses import INPUT_FIELDS, LossConfig, LossInputs, pkd_layer_map

DTYPE = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + seed)


def padding_mask(B: int, n: int, g: torch.Generator) -> torch.Tensor:
    """(B, n) long: example 0 is full length, example 1 has 2 padded positions, the rest random lengths >= 2."""
    lengths = [n, n - 2] + [int(torch.randint(2, n + 1, (), generator=g)) for _ in range(B - 2)]
    return (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention probabilities softmax_k(scores[b,a,q,k]) with padded keys k at exactly 0 (as in BERT)."""
    return scores.masked_fill(mask[:, None, None, :] == 0, float("-inf")).softmax(-1)


def attention_scores(B: int, n: int, h: int, L_s: int, L_t: int, seed: int):
    """Student and teacher attention *scores* (pre-softmax) and the mask, for a student with L_s effective layers."""
    g = _gen(seed)
    mask = padding_mask(B, n, g)
    student = [torch.randn(B, h, n, n, generator=g, dtype=DTYPE) * 1.5 for _ in range(L_s)]
    teacher = [torch.randn(B, h, n, n, generator=g, dtype=DTYPE) * 1.5 for _ in range(L_t)]
    return student, teacher, mask


def attention_inputs(student_scores, teacher_scores, mask, teacher_grad: bool = False) -> LossInputs:
    """LossInputs with student_attentions / teacher_attentions = masked softmax of the scores."""
    L_s, L_t = len(student_scores), len(teacher_scores)
    a_t = tuple(masked_softmax(s, mask) for s in teacher_scores)
    if teacher_grad:
        a_t = tuple(a.detach().requires_grad_() for a in a_t)
    B, _, n, _ = student_scores[0].shape
    return LossInputs(student_logits=torch.zeros(B, 2, dtype=DTYPE),
                      student_attentions=tuple(masked_softmax(s, mask) for s in student_scores),
                      teacher_attentions=a_t, attention_mask=mask,
                      config=LossConfig(layer_map=pkd_layer_map(L_t, L_s)))


ATTENTION_SHAPES = [(2, 5, 2, 3, 6), (3, 6, 2, 4, 8), (3, 4, 3, 2, 4), (4, 6, 2, 3, 12)]  # (B, n, h, L_s, L_t)


def hidden_inputs(B: int, n: int, H_s: int, H_t: int, L_s: int, L_t: int, beta: float, seed: int,
                  teacher_grad: bool = False) -> LossInputs:
    """Student hidden states (L_s + 1 of (B, n, H_s)) and teacher [CLS] states (B, L_t + 1, H_t)."""
    g = _gen(seed)
    states = tuple(torch.randn(B, n, H_s, generator=g, dtype=DTYPE) for _ in range(L_s + 1))
    teacher = torch.randn(B, L_t + 1, H_t, generator=g, dtype=DTYPE) * 3 + 0.5
    if teacher_grad:
        teacher.requires_grad_()
    return LossInputs(student_logits=torch.zeros(B, 2, dtype=DTYPE), student_hidden_states=states,
                      teacher_cls_hidden=teacher, attention_mask=padding_mask(B, n, g),
                      config=LossConfig(beta=beta, layer_map=pkd_layer_map(L_t, L_s)))


# (B, n, L_s, L_t, beta)
HIDDEN_SHAPES = [(2, 4, 3, 6, 100.0), (3, 5, 4, 8, 100.0), (4, 3, 2, 12, 7.5), (3, 4, 6, 12, 100.0)]
H_S, H_T = 6, 10


def logit_inputs(B: int, C: int, temperature: float, alpha: float, reduction: str, seed: int,
                 teacher_grad: bool = False) -> LossInputs:
    """Student/teacher logits (B, C) on the scale of real ones and integer labels, for the KD-type losses."""
    g = _gen(seed)
    z_s = torch.randn(B, C, generator=g, dtype=DTYPE) * 3
    z_t = torch.randn(B, C, generator=g, dtype=DTYPE) * 5
    if teacher_grad:
        z_t.requires_grad_()
    y = torch.randint(0, C, (B,), generator=g)
    return LossInputs(student_logits=z_s, labels=y, teacher_logits=z_t,
                      config=LossConfig(alpha=alpha, temperature=temperature, kl_reduction=reduction))


# one (B, C, alpha, kl_reduction) per training step k = 0..6; T_0 = 8, T_end = 2, N = 4 (so k = 5, 6 are past N)
ANNEAL_STEPS = [(4, 3, 0.7, "batchmean"), (3, 2, 0.5, "batchmean"), (5, 3, 0.7, "mean"), (4, 4, 0.9, "batchmean"),
                (3, 3, 0.7, "mean"), (4, 2, 0.6, "batchmean"), (2, 3, 0.7, "batchmean")]
ANNEAL_T0, ANNEAL_T_END, ANNEAL_N = 8.0, 2.0, 4

# (step k, T_0, T_end, N_anneal) for the schedule alone: start, inside, the end point, past the end
SCHEDULE_CASES = [(0, 10.0, 1.0, 100), (1, 10.0, 1.0, 100), (50, 10.0, 1.0, 100), (99, 10.0, 1.0, 100),
                  (100, 10.0, 1.0, 100), (150, 10.0, 1.0, 100), (0, 4.0, 2.0, 10), (3, 4.0, 2.0, 10),
                  (25, 4.0, 2.0, 10)]


def cls_pairs(B: int, H: int, noise: float, seed: int, dtype=DTYPE):
    """Student and teacher [CLS] vectors (B, H); the teacher's are the student's plus noise (positives are close)."""
    g = _gen(seed)
    h_s = torch.randn(B, H, generator=g, dtype=torch.float64) * 2 + 0.3
    h_t = 1.5 * h_s + noise * torch.randn(B, H, generator=g, dtype=torch.float64)
    return h_s.to(dtype), h_t.to(dtype)


NCE_CASES = [(4, 8, 1.0, 0.1), (3, 8, 2.0, 0.5), (5, 6, 0.5, 0.07), (6, 8, 3.0, 0.25)]  # B, H, noise, tau


# ---------------------------------------------------------------- the fixed cases of each checker

def attention_cases():
    """(raw scores per case, LossInputs per case) of the attention-KD checker."""
    raw = [attention_scores(*shape, seed=seed) for seed, shape in enumerate(ATTENTION_SHAPES)]
    return raw, [attention_inputs(*r) for r in raw]


def projection_cases():
    """LossInputs per case of the projection checker."""
    return [hidden_inputs(B, n, H_S, H_T, L_s, L_t, beta, seed)
            for seed, (B, n, L_s, L_t, beta) in enumerate(HIDDEN_SHAPES)]


def projection_weights():
    """The W (H_t, H_s) and b (H_t,) the projection checker copies into the student's module before grading.

    Fresh random values, so that an accidental identity-like W cannot hide a mistake.
    """
    g = torch.Generator().manual_seed(7)
    return torch.randn(H_T, H_S, generator=g, dtype=DTYPE) * 0.5, torch.randn(H_T, generator=g, dtype=DTYPE) * 0.3


def annealed_cases():
    """LossInputs of the training calls k = 0..6 of the annealed-KD checker."""
    return [logit_inputs(B, Cn, ANNEAL_T0, a, red, seed) for seed, (B, Cn, a, red) in enumerate(ANNEAL_STEPS)]


def info_nce_cases():
    """(h_s, h_t, tau) per case of the InfoNCE checker."""
    return [(*cls_pairs(B, H, noise, seed), tau) for seed, (B, H, noise, tau) in enumerate(NCE_CASES)]


def info_nce_hot_case():
    """float32 pairs with cos ~ 1 for tau = 0.01 (cos / tau ~ 100 overflows exp in float32)."""
    return cls_pairs(8, 16, 0.05, seed=30, dtype=torch.float32)


def fingerprint(*items) -> float:
    """sum |x| over every tensor in items (tensors, numbers, tuples, LossInputs): identifies a case's inputs.

    expected.json stores it per case, so a change to the cases (or to torch's random generator) is reported as
    out-of-date fixtures rather than blamed on the student.
    """
    total = 0.0
    for item in items:
        if torch.is_tensor(item):
            x = item.detach().double()
            total += float((x.abs() + x * x).sum())  # not just sum |x|: each attention row sums to 1
        elif isinstance(item, (int, float)):
            total += abs(float(item))
        elif isinstance(item, (tuple, list)):
            total += fingerprint(*item)
        elif isinstance(item, LossInputs):
            total += fingerprint(*(getattr(item, f) for f in INPUT_FIELDS if f != "config"
                                   and getattr(item, f) is not None), list(item.config.layer_map))
    return total


def describe(item) -> str:
    """A one-line description of a case's inputs for a failure message: shapes, padding, layer map, settings."""
    if isinstance(item, LossInputs):
        cfg, parts = item.config, []
        if item.student_attentions is not None:
            B, h, n, _ = item.student_attentions[0].shape
            parts.append(f"B={B}, n={n}, heads h={h}, L_s={len(item.student_attentions)}, "
                         f"L_t={len(item.teacher_attentions)}")
        elif item.student_hidden_states is not None:
            B, n, H_s = item.student_hidden_states[0].shape
            parts.append(f"B={B}, n={n}, H_s={H_s}, H_t={item.teacher_cls_hidden.shape[-1]}, "
                         f"L_s={len(item.student_hidden_states) - 1}, L_t={item.teacher_cls_hidden.shape[1] - 1}, "
                         f"beta={cfg.beta:g}")
        else:
            B, Cn = item.student_logits.shape
            parts.append(f"B={B}, C={Cn}, T_0={cfg.temperature:g}, alpha={cfg.alpha:g}, "
                         f"kl_reduction='{cfg.kl_reduction}'")
        if cfg.layer_map:
            parts.append(f"layer_map={[tuple(p) for p in cfg.layer_map]}")
        if item.attention_mask is not None and item.student_attentions is not None:
            parts.append(f"real lengths={item.attention_mask.sum(1).tolist()} of n")
        return ", ".join(parts)
    h_s, h_t, tau = item
    return f"B={h_s.shape[0]}, H={h_s.shape[1]}, tau={tau:g}"
