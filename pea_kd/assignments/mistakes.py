"""Known-wrong variants of each assignment, each with the message a checker shows when a student's values match it.

Every variant is the reference computation with one "knob" turned the way students typically get it wrong (a missing
T^2, the KL the wrong way round, padded tokens counted, ...). With every knob at its default a variant equals the
reference; tests/test_assignments.py checks that, and that each turned knob is told apart from the reference and
from the other mistakes on the checkers' random cases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
_TINY = 1e-30


def _xlogy_ratio(p: Tensor, q: Tensor) -> Tensor:
    """p log(p / q) elementwise with 0 log(0 / q) = 0."""
    return torch.where(p > 0, p * (torch.log(p.clamp_min(_TINY)) - torch.log(q.clamp_min(_TINY))), torch.zeros_like(p))


# ---------------------------------------------------------------- 1. attention KD

ATTENTION_MISTAKES = {
    "reverse": ("you computed KL(A_s || A_t), the KL the wrong way round. Distillation uses KL(A_t || A_s) = "
                "sum_k A_t log(A_t / A_s): the teacher's distribution weights the log-ratio (as in the 'kd' loss)."),
    "no_query_mask": ("padded positions are not masked: you averaged the KL over all B*T query rows. Average only "
                      "over the rows q of real tokens (attention_mask[b, q] == 1)."),
    "divide_by_all": ("you zeroed the padded query rows but still divided by every position (B*T*heads). Divide by "
                      "the number of real query rows times heads: mask.sum() * A."),
    "keys_mean": ("your loss is T times too small: you averaged over the key axis k as well. The KL of one query row "
                  "sums over k; only the (batch, head, query) rows are averaged."),
    "no_normalisation": ("you forgot to normalise: you summed the row KLs over batch, heads and query rows instead "
                         "of averaging them (divide by the number of real rows times heads)."),
    "layers_sum": ("you summed over the mapped layers; the loss averages them: divide by M = len(layer_map)."),
    "layer_offset": ("wrong layers: attentions[i] is the attention of layer i+1 (no attention for the embeddings), "
                     "so layer s of layer_map is student_attentions[s - 1], teacher_attentions[t - 1]."),
    "cross_entropy": ("you computed the cross-entropy -sum_k A_t log A_s, not the KL: add sum_k A_t log A_t. The "
                      "gradient is the same, but a KL is 0 when the student matches the teacher; yours is not."),
    "sign": "your loss has the wrong sign: KL(A_t || A_s) >= 0 and is minimised.",
}


def attention_kd_variant(inputs, *, reverse=False, no_query_mask=False, divide_by_all=False, keys_mean=False,
                         no_normalisation=False, layers_sum=False, layer_offset=False, cross_entropy=False,
                         sign=False) -> float:
    """The attention-KD value with the named mistakes switched on (all off = the reference)."""
    mask = inputs.attention_mask.to(torch.float64)  # (B, T)
    off = 1 if layer_offset else 0
    per_layer = []
    for s, t in inputs.config.layer_map:
        a_s = inputs.student_attentions[s - 1 + off].double()
        a_t = inputs.teacher_attentions[t - 1 + off].double()
        if cross_entropy:
            rows = -(a_t * torch.log(a_s.clamp_min(_TINY))).sum(-1)
        else:
            rows = (_xlogy_ratio(a_s, a_t) if reverse else _xlogy_ratio(a_t, a_s)).sum(-1)  # (B, A, T)
        if keys_mean:
            rows = rows / rows.shape[-1]
        B, A, T = rows.shape
        w = torch.ones_like(mask) if no_query_mask else mask
        summed = (rows * w[:, None, :]).sum()
        if no_normalisation:
            per_layer.append(summed)
        else:
            per_layer.append(summed / (B * T * A if divide_by_all or no_query_mask else w.sum() * A))
    loss = torch.stack(per_layer).sum() if layers_sum else torch.stack(per_layer).mean()
    return float(-loss if sign else loss)


# ---------------------------------------------------------------- 2. hidden-state MSE with a learned projection

PROJECTION_MISTAKES = {
    "no_normalisation": ("you forgot to normalise: PKD compares unit vectors, u / ||u||_2 and h_t / ||h_t||_2 "
                         "(F.normalize(x, dim=-1)), not the raw hidden states."),
    "student_only": "you normalised only the student's vector; normalise the teacher's h_t[CLS] too.",
    "teacher_only": ("you normalised only the teacher's vector; normalise the projected student vector "
                     "u = W h_s + b too."),
    "batch_dim": ("you normalised over the wrong dimension (the batch): the L2 norm runs over the hidden dimension, "
                  "dim=-1."),
    "no_beta": "your loss is beta times too small: multiply by beta = config.beta (100 by default).",
    "sum_hidden": ("wrong reduction: you summed the squared differences over the hidden dimension; MSE averages "
                   "over batch x layers x hidden (F.mse_loss's default 'mean')."),
    "sum_all": ("wrong reduction: you summed the squared differences; MSE averages over batch x layers x hidden "
                "(F.mse_loss's default 'mean')."),
    "student_offset": ("wrong student layer: student_hidden_states[0] is the embeddings, so layer s of layer_map is "
                       "student_hidden_states[s], not [s - 1]."),
    "teacher_offset": ("wrong teacher layer: teacher_cls_hidden[:, 0] is the embeddings, so layer t is "
                       "teacher_cls_hidden[:, t], not [:, t - 1]."),
    "mean_pool": ("you averaged the student's hidden states over tokens; PKD matches the [CLS] vector, position 0: "
                  "student_hidden_states[s][:, 0]."),
}


def hidden_projection_variant(inputs, W: Tensor, b: Tensor, *, no_normalisation=False, student_only=False,
                              teacher_only=False, batch_dim=False, no_beta=False, sum_hidden=False, sum_all=False,
                              student_offset=False, teacher_offset=False, mean_pool=False) -> float:
    """The projection-loss value with the named mistakes switched on (all off = the reference)."""
    cfg = inputs.config
    hs, ht = [], []
    for s, t in cfg.layer_map:
        states = inputs.student_hidden_states[s - 1 if student_offset else s].double()
        hs.append(states.mean(1) if mean_pool else states[:, 0])
        ht.append(inputs.teacher_cls_hidden[:, t - 1 if teacher_offset else t].double())
    h_s, h_t = torch.stack(hs, 1), torch.stack(ht, 1)  # (B, M, H_s), (B, M, H_t)
    u = h_s @ W.double().T + b.double()  # W h_s + b
    dim = 0 if batch_dim else -1
    if not (no_normalisation or teacher_only):
        u = F.normalize(u, dim=dim)
    if not (no_normalisation or student_only):
        h_t = F.normalize(h_t, dim=dim)
    sq = (u - h_t) ** 2
    loss = sq.sum() if sum_all else sq.sum(-1).mean() if sum_hidden else sq.mean()
    return float(loss if no_beta else cfg.beta * loss)


# ---------------------------------------------------------------- 3. temperature annealing

SCHEDULE_MISTAKES = {
    "backwards": "your schedule runs backwards: it must start at T_0 (n = 0) and decrease to T_end (n >= N).",
    "no_clip": ("your temperature keeps falling after N steps (it goes below T_end, even negative): clip the "
                "progress, min(n / N, 1)."),
    "off_by_one": "off by one: the first step n = 0 must use T_0 exactly; use n / N, not (n + 1) / N.",
    "constant": "your temperature never changes: T_n must move from T_0 towards T_end as n grows.",
}


def temperature_variant(n: int, t0: float, t_end: float, N: int, *, backwards=False, no_clip=False,
                        off_by_one=False, constant=False) -> float:
    """T_n with the named mistakes switched on (all off = T_end + (T_0 - T_end) max(0, 1 - n/N))."""
    if constant:
        return t0
    p = (n + 1 if off_by_one else n) / N
    p = p if no_clip else min(p, 1.0)
    start, end = (t_end, t0) if backwards else (t0, t_end)
    return end + (start - end) * (1.0 - p)


ANNEALED_MISTAKES = {
    "constant": ("your temperature never changes: read the step counter n (self.step) and use T_n from the "
                 "schedule, not config.temperature."),
    "scale_t0": ("you anneal the softmax temperature but scale by T_0^2 (config.temperature ** 2); the factor must "
                 "follow the schedule: T_n^2."),
    "no_t2": ("your soft term is T_n^2 times too small: did you forget the T^2 factor? It keeps the soft-target "
              "gradients (which scale as 1/T^2) comparable across temperatures."),
    "off_by_one": ("off by one: your first training call already uses T_1. Compute the loss with the current n, "
                   "then increment the counter."),
    "no_clip": "after N steps your temperature keeps falling below T_end: clip the progress, min(n / N, 1).",
    "reverse_kl": ("you computed KL(p_s || p_t), the KL the wrong way round; distillation uses "
                   "KL(softmax(z_t/T) || softmax(z_s/T))."),
    "mean_reduction": ("wrong reduction: you divided the KL by B*C ('mean') where config.kl_reduction is "
                       "'batchmean' (divide by B only). Use pea_kd.losses.kl_divergence(..., cfg.kl_reduction)."),
    "batchmean_reduction": ("wrong reduction: you divided the KL by B ('batchmean') where config.kl_reduction is "
                            "'mean' (divide by B*C). Use pea_kd.losses.kl_divergence(..., cfg.kl_reduction)."),
    "no_ce": "you left out the hard-label term (1 - alpha) * CE(z_s, y).",
    "no_alpha": "you forgot the weights: the soft term is multiplied by alpha and the CE by (1 - alpha).",
}


def annealed_kd_variant(inputs, n: int, t_end: float, N: int, *, constant=False, scale_t0=False, no_t2=False,
                        off_by_one=False, no_clip=False, reverse_kl=False, mean_reduction=False,
                        batchmean_reduction=False, no_ce=False, no_alpha=False) -> float:
    """L_n with the named mistakes switched on (all off = the reference at step n)."""
    cfg = inputs.config
    T0 = cfg.temperature
    T = temperature_variant(n, T0, t_end, N, off_by_one=off_by_one, no_clip=no_clip, constant=constant)
    z_s, z_t = inputs.student_logits.double(), inputs.teacher_logits.double()
    log_p_s, log_p_t = F.log_softmax(z_s / T, -1), F.log_softmax(z_t / T, -1)
    kl = (log_p_s.exp() * (log_p_s - log_p_t)).sum() if reverse_kl else (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    reduction = "mean" if mean_reduction else "batchmean" if batchmean_reduction else cfg.kl_reduction
    kl = kl / (z_s.numel() if reduction == "mean" else z_s.shape[0])
    scale = 1.0 if no_t2 else T0 ** 2 if scale_t0 else T ** 2
    a = 1.0 if no_alpha else cfg.alpha
    soft = a * scale * kl
    hard = 0.0 if no_ce else (1.0 if no_alpha else 1.0 - cfg.alpha) * F.cross_entropy(z_s, inputs.labels)
    return float(soft + hard)


# ---------------------------------------------------------------- 4. InfoNCE

INFO_NCE_MISTAKES = {
    "no_normalisation": ("you forgot to normalise: InfoNCE here uses cosine similarity, h_s/||h_s|| . h_t/||h_t||, "
                         "not the raw dot product (F.normalize(x, dim=-1))."),
    "columns": ("the softmax runs over the wrong axis: for each student anchor b the candidates are the teacher "
                "vectors b' (rows of S = cos / tau), i.e. log_softmax(S, dim=1), or F.cross_entropy(S, arange(B))."),
    "symmetric": ("you computed the symmetric (CLIP-style) loss, averaging both directions; this assignment uses the "
                  "student as the anchor only (softmax over the teacher candidates, rows of S)."),
    "tau_ignored": "your loss ignores tau: divide the cosine similarities by the temperature tau.",
    "tau_multiplied": "you multiplied the similarities by tau; divide by it: S = cos(h_s, h_t) / tau.",
    "batch_sum": "wrong reduction: you summed over the batch; average the B anchors' losses (divide by B).",
    "sign": "your loss has the wrong sign: minimise -log p(positive), which is >= 0.",
    "zero_labels": ("wrong positives: the positive of student row b is teacher row b (the diagonal of S), so the "
                    "targets are torch.arange(B), not zeros."),
    "exclude_positive": ("your denominator leaves out the positive pair: sum exp(S[b, b']) over all b' including "
                         "b' = b (that is what makes it a softmax / cross-entropy)."),
}


def info_nce_variant(h_s: Tensor, h_t: Tensor, tau: float, *, no_normalisation=False, columns=False, symmetric=False,
                     tau_ignored=False, tau_multiplied=False, batch_sum=False, sign=False, zero_labels=False,
                     exclude_positive=False) -> float:
    """The InfoNCE value with the named mistakes switched on (all off = the reference)."""
    u, v = h_s.double(), h_t.double()
    if not no_normalisation:
        u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    S = u @ v.T
    S = S if tau_ignored else S * tau if tau_multiplied else S / tau
    B = S.shape[0]
    target = torch.zeros(B, dtype=torch.long) if zero_labels else torch.arange(B)
    if exclude_positive:
        others = S.masked_fill(torch.eye(B, dtype=torch.bool), float("-inf"))
        per_row = -(S.diagonal() - torch.logsumexp(others, dim=1))
    elif symmetric:
        per_row = (F.cross_entropy(S, target, reduction="none") + F.cross_entropy(S.T, target, reduction="none")) / 2
    else:
        per_row = F.cross_entropy(S.T if columns else S, target, reduction="none")
    loss = per_row.sum() if batch_sum else per_row.mean()
    return float(-loss if sign else loss)
