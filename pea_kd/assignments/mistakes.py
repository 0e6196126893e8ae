"""The typical mistakes of each assignment and the message a checker shows when a student's values match one.

Each key names one "knob" of the reference computation turned the way students typically get it wrong (a missing
T^2, the KL the wrong way round, padded tokens counted, ...). The values of every wrong variant on the checkers'
fixed cases are stored next to the reference values in expected.json, written once by the instructor from the
model answers and their wrong variants; the checkers compare with those numbers and never run a solution.
BEGIN INSTRUCTOR (not in the student copy)
The writer: instructor/make_fixtures.py, from instructor/variants.py.
END INSTRUCTOR
"""

ATTENTION_MISTAKES = {
    "reverse": ("you computed KL(A_S || A_T), the KL the wrong way round. Distillation uses KL(A_T || A_S) = "
                "sum_k A_T log(A_T / A_S): the teacher's distribution weights the log-ratio (as in the 'kd' loss)."),
    "no_query_mask": ("padded positions are not masked: you averaged the KL over all B*n query rows. Average only "
                      "over the rows q of real tokens (attention_mask[b, q] == 1)."),
    "divide_by_all": ("you zeroed the padded query rows but still divided by every position (B*n*h). Divide by "
                      "the number of real query rows times heads: mask.sum() * h."),
    "keys_mean": ("your loss is n times too small (n keys): you averaged over the key axis k as well. The KL of "
                  "one query row sums over k; only the (batch, head, query) rows are averaged."),
    "no_normalisation": ("you forgot to normalise: you summed the row KLs over batch, heads and query rows instead "
                         "of averaging them (divide by the number of real rows times heads)."),
    "layers_sum": ("you summed over the mapped layers; the loss averages them: divide by M = len(layer_map)."),
    "layer_offset": ("wrong layers: attentions[i] is the attention of layer i+1 (no attention for the embeddings), "
                     "so the pair (i, j) of layer_map is student_attentions[i - 1], teacher_attentions[j - 1]."),
    "cross_entropy": ("you computed the cross-entropy -sum_k A_T log A_S, not the KL: add sum_k A_T log A_T. The "
                      "gradient is the same, but a KL is 0 when the student matches the teacher; yours is not."),
    "sign": "your loss has the wrong sign: KL(A_T || A_S) >= 0 and is minimised.",
    "no_heads": ("your loss is h (number of heads) times too large: you divided the summed row KLs by the number of "
                 "real query rows only. Every head has its own rows: divide by (real rows) x heads = mask.sum() * h."),
    "kl_div_batchmean": ("you used the textbook F.kl_div(log A_S, A_T, reduction='batchmean'): it sums over heads, "
                         "every query row (padded ones too) and keys, then divides by the batch size B only. This "
                         "loss averages the row KLs over (batch, head, real query q): mask the query rows, sum over "
                         "keys only, divide by mask.sum() * h."),
}


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
    "student_offset": ("wrong student layer: student_hidden_states[0] is the embeddings, so student layer i of "
                       "layer_map is student_hidden_states[i], not [i - 1]."),
    "teacher_offset": ("wrong teacher layer: teacher_cls_hidden[:, 0] is the embeddings, so teacher layer j is "
                       "teacher_cls_hidden[:, j], not [:, j - 1]."),
    "mean_pool": ("you averaged the student's hidden states over tokens; PKD matches the [CLS] vector, position 0: "
                  "student_hidden_states[i][:, 0]."),
}


SCHEDULE_MISTAKES = {
    "backwards": "your schedule runs backwards: it must start at T_0 (k = 0) and decrease to T_end (k >= N_anneal).",
    "no_clip": ("your temperature keeps falling after N_anneal steps (it goes below T_end, even negative): clip "
                "the progress, min(k / N_anneal, 1)."),
    "off_by_one": "off by one: the first step k = 0 must use T_0 exactly; use k / N_anneal, not (k + 1) / N_anneal.",
    "constant": "your temperature never changes: T_k must move from T_0 towards T_end as k grows.",
}


ANNEALED_MISTAKES = {
    "constant": ("your temperature never changes: read the step counter k (self.step) and use T_k from the "
                 "schedule, not config.temperature."),
    "scale_t0": ("you anneal the softmax temperature but scale by T_0^2 (config.temperature ** 2); the factor must "
                 "follow the schedule: T_k^2."),
    "no_t2": ("your soft term is T_k^2 times too small: did you forget the T^2 factor? It keeps the soft-target "
              "gradients (which scale as 1/T^2) comparable across temperatures."),
    "off_by_one": ("off by one: your first training call already uses T_1. Compute the loss with the current k, "
                   "then increment the counter."),
    "no_clip": ("after N_anneal steps your temperature keeps falling below T_end: clip the progress, "
                "min(k / N_anneal, 1)."),
    "reverse_kl": ("you computed KL(p_s || p_t), the KL the wrong way round; distillation uses "
                   "KL(softmax(z_t/T) || softmax(z_s/T))."),
    "mean_reduction": ("wrong reduction: you divided the KL by B*C ('mean') where config.kl_reduction is "
                       "'batchmean' (divide by B only). Use pea_kd.losses.kl_divergence(..., cfg.kl_reduction)."),
    "batchmean_reduction": ("wrong reduction: you divided the KL by B ('batchmean') where config.kl_reduction is "
                            "'mean' (divide by B*C). Use pea_kd.losses.kl_divergence(..., cfg.kl_reduction)."),
    "no_ce": "you left out the hard-label term (1 - alpha) * CE(z_s, y).",
    "no_alpha": "you forgot the weights: the soft term is multiplied by alpha and the CE by (1 - alpha).",
}


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
