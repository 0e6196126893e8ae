"""INSTRUCTOR ONLY (it writes correct answers). Tests for pea_kd.assignments: the model answers are right (checked
against explicit loops and the built-in "kd"), the stored expected values are the ones they give, every checker
accepts them, and each rejects typical wrong answers, written here the way a student would write them, with the
message that names the mistake."""

import json
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pea_kd.assignments import (AssignmentFailure, check_annealed_kd, check_annealed_temperature, check_attention_kd,
                                check_hidden_projection, check_info_nce)
from pea_kd.assignments import cases as C
from pea_kd.assignments.checker import EXPECTED_FILE
from pea_kd.assignments.grading import close, diagnose
from pea_kd.losses import LossConfig, LossInputs, LossResult, build_loss, kd_loss, register_loss
from pea_kd.losses import registry as losses_registry

from instructor import make_fixtures
from instructor import solutions as S
from instructor import variants as mistakes


def rejects(check, student, *phrases):
    """Run check(student) expecting a failure whose message contains every phrase (case-insensitive)."""
    with pytest.raises(AssertionError) as info:
        check(student, verbose=False)
    message = str(info.value).lower()
    for phrase in phrases:
        assert phrase.lower() in message, f"expected {phrase!r} in: {info.value}"
    assert isinstance(info.value, AssignmentFailure) and info.value.result.status == "failed"
    return message


# ---------------------------------------------------------------- the model answers are right

def attention_cases():
    return [C.attention_inputs(*C.attention_scores(B, T, A, Ls, Lt, s)) for s, (B, T, A, Ls, Lt)
            in enumerate(C.ATTENTION_SHAPES)]


def test_attention_solution_matches_builtin_and_explicit_loops():
    for x in attention_cases():  # an independent formula: F.kl_div per row, masked mean, mean over layers
        per_layer = []
        for s, t in x.config.layer_map:
            a_s, a_t = x.student_attentions[s - 1], x.teacher_attentions[t - 1]
            rows = F.kl_div(a_s.clamp_min(1e-300).log(), a_t, reduction="none").sum(-1)  # (B, A, T)
            m = x.attention_mask[:, None, :].double()
            per_layer.append((rows * m).sum() / (m.sum() * rows.shape[1]))
        assert float(S.attention_kd_solution(x).total) == pytest.approx(float(sum(per_layer) / len(per_layer)),
                                                                         rel=1e-10)
    x = attention_cases()[0]  # explicit sums over layers, batch, heads, real queries and keys
    total = 0.0
    for s, t in x.config.layer_map:
        a_s, a_t = x.student_attentions[s - 1].tolist(), x.teacher_attentions[t - 1].tolist()
        rows = []
        for b, m in enumerate(x.attention_mask.tolist()):
            for h in range(len(a_s[b])):
                for q in range(len(m)):
                    if m[q]:
                        rows.append(sum(pt * math.log(pt / ps) for pt, ps in zip(a_t[b][h][q], a_s[b][h][q]) if pt > 0))
        total += sum(rows) / len(rows)
    assert float(S.attention_kd_solution(x).total) == pytest.approx(total / len(x.config.layer_map), rel=1e-10)


def test_projection_solution_matches_explicit_loops():
    ours = S.HiddenProjectionSolution(C.H_S, C.H_T).double()
    W, bias = ours.proj.weight.tolist(), ours.proj.bias.tolist()
    for seed, (B, T, Ls, Lt, beta) in enumerate(C.HIDDEN_SHAPES[:2]):
        x = C.hidden_inputs(B, T, C.H_S, C.H_T, Ls, Lt, beta, seed)
        total = 0.0
        for s, t in x.config.layer_map:
            for b in range(B):
                h = x.student_hidden_states[s][b, 0].tolist()
                u = [sum(W[i][j] * h[j] for j in range(C.H_S)) + bias[i] for i in range(C.H_T)]
                v = x.teacher_cls_hidden[b, t].tolist()
                nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(a * a for a in v))
                total += sum((a / nu - c / nv) ** 2 for a, c in zip(u, v))
        expected = beta * total / (B * len(x.config.layer_map) * C.H_T)
        assert float(ours(x).total.detach()) == pytest.approx(expected, rel=1e-10)


def test_stored_expected_values_are_the_model_answers():
    """pea_kd/assignments/expected.json is what instructor/make_fixtures.py writes from the answers today, up to the
    last bits of its floats, which depend on the CPU's kernels (make_fixtures.RTOL)."""
    stored = json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))
    problems = make_fixtures.differences(stored, json.loads(make_fixtures.render(make_fixtures.build())))
    assert not problems, "expected.json is out of date: run python -m instructor.make_fixtures\n" + \
        "\n".join(problems[:10])


def test_fixture_comparison_forgives_float_noise_only():
    def fixture(reference=1.0063770762709243, n=3, note="rtol 1e-5"):
        return {"a": {"cases": [{"reference": reference, "n": n}]}, "note": note}

    stored = fixture()
    assert make_fixtures.differences(stored, fixture(1.0063770762709245)) == []  # another CPU's last bits
    assert make_fixtures.differences(stored, fixture(1.00638)) == \
        ["/a/cases[0]/reference: 1.0063770762709243 != 1.00638"]  # a value that moved
    assert make_fixtures.differences(stored, fixture(n=4)) == ["/a/cases[0]/n: 3 != 4"]
    assert make_fixtures.differences(stored, fixture(n=3.0)) == ["/a/cases[0]/n: 3 != 3.0"]
    assert make_fixtures.differences(stored, fixture(note="x")) == ["/note: 'rtol 1e-5' != 'x'"]
    assert make_fixtures.differences(stored, {"a": stored["a"]}) == ["/: keys ['a', 'note'] != ['a']"]


def test_schedule_and_annealed_kd_solution_match_hand_values_and_builtin_kd():
    T = S.annealed_temperature_solution
    assert [T(n, 10.0, 1.0, 100) for n in (0, 50, 100, 150)] == [10.0, 5.5, 1.0, 1.0]
    module = S.AnnealedKDSolution(8, 8, t_end=2.0, anneal_steps=4)
    for n, (B, Cn, alpha, red) in enumerate(C.ANNEAL_STEPS):
        x = C.logit_inputs(B, Cn, 8.0, alpha, red, n)
        fixed_T = LossInputs(x.student_logits, labels=x.labels, teacher_logits=x.teacher_logits,
                             config=LossConfig(alpha=alpha, temperature=T(n, 8.0, 2.0, 4), kl_reduction=red))
        assert float(module(x).total) == pytest.approx(float(kd_loss(fixed_T).total), rel=1e-10)
    assert int(module.step) == len(C.ANNEAL_STEPS)


def test_info_nce_solution_matches_explicit_loops():
    for seed, (B, H, noise, tau) in enumerate(C.NCE_CASES):
        h_s, h_t = C.cls_pairs(B, H, noise, seed)
        u, v = h_s.tolist(), h_t.tolist()
        cos = lambda a, b: sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
        loss = 0.0
        for b in range(B):
            logits = [cos(u[b], v[c]) / tau for c in range(B)]
            loss -= logits[b] - math.log(sum(math.exp(z) for z in logits))
        assert float(S.info_nce_solution(h_s, h_t, tau)) == pytest.approx(loss / B, rel=1e-10)


CATALOGUES = {  # mistakes, variant fn, per-case args, reference value per case
    "attention": lambda: (mistakes.ATTENTION_MISTAKES, mistakes.attention_kd_variant,
                          [(x,) for x in attention_cases()], lambda x: float(S.attention_kd_solution(x).total)),
    "projection": lambda: _projection_catalogue(),
    "schedule": lambda: (mistakes.SCHEDULE_MISTAKES, mistakes.temperature_variant, C.SCHEDULE_CASES,
                         S.annealed_temperature_solution),
    "annealed": lambda: _annealed_catalogue(),
    "info_nce": lambda: (mistakes.INFO_NCE_MISTAKES, mistakes.info_nce_variant,
                         [(*C.cls_pairs(B, H, n, s), tau) for s, (B, H, n, tau) in enumerate(C.NCE_CASES)],
                         lambda h_s, h_t, tau: float(S.info_nce_solution(h_s, h_t, tau))),
}


def _projection_catalogue():
    ref = S.HiddenProjectionSolution(C.H_S, C.H_T).double()
    Wm, b = ref.proj.weight.detach(), ref.proj.bias.detach()
    args = [(C.hidden_inputs(B, T, C.H_S, C.H_T, Ls, Lt, beta, s), Wm, b) for s, (B, T, Ls, Lt, beta)
            in enumerate(C.HIDDEN_SHAPES)]
    value = lambda x, *_: float(ref(x).total.detach())  # noqa: E731
    return mistakes.PROJECTION_MISTAKES, mistakes.hidden_projection_variant, args, value


def _annealed_catalogue():
    module = S.AnnealedKDSolution(8, 8, t_end=C.ANNEAL_T_END, anneal_steps=C.ANNEAL_N)
    xs = [C.logit_inputs(B, Cn, C.ANNEAL_T0, a, red, s) for s, (B, Cn, a, red) in enumerate(C.ANNEAL_STEPS)]
    refs = [float(module(x).total) for x in xs]
    args = [(x, n, C.ANNEAL_T_END, C.ANNEAL_N) for n, x in enumerate(xs)]
    return mistakes.ANNEALED_MISTAKES, mistakes.annealed_kd_variant, args, lambda x, n, *_: refs[n]


@pytest.mark.parametrize("name", list(CATALOGUES))
def test_each_known_mistake_is_told_apart_and_gets_its_own_message(name):
    catalogue, variant, args, reference = CATALOGUES[name]()
    refs = [reference(*a) for a in args]
    assert all(close(variant(*a), r, 1e-9, 1e-12) for a, r in zip(args, refs))  # all knobs off = the model answer
    wrong = {msg: [variant(*a, **{knob: True}) for a in args] for knob, msg in catalogue.items()}
    for knob, msg in catalogue.items():
        assert not all(close(v, r) for v, r in zip(wrong[msg], refs)), f"{knob} is indistinguishable from the answer"
        assert diagnose(wrong[msg], refs, wrong) == msg, f"{knob} is reported as another mistake"


def test_diagnose_falls_back_to_nan_sign_scale_and_worst_case():
    ref = [0.5, 2.0, 1.25]
    assert "nan on case 1" in diagnose([0.5, math.nan, 1.0], ref, {})
    assert "wrong sign" in diagnose([-v for v in ref], ref, {})
    assert "100x too small" in diagnose([v / 100 for v in ref], ref, {})
    assert "2x too large" in diagnose([v * 2 for v in ref], ref, {})
    assert "on case 2 it is 3" in diagnose([0.5, 2.0, 3.0], ref, {"a mistake": [0.5, 2.0, 2.0]})


# ---------------------------------------------------------------- every checker accepts the model answer

@pytest.mark.parametrize("check, answer", [
    (check_attention_kd, S.attention_kd_solution), (check_hidden_projection, S.HiddenProjectionSolution),
    (check_annealed_temperature, S.annealed_temperature_solution), (check_annealed_kd, S.AnnealedKDSolution),
    (check_info_nce, S.info_nce_solution)])
def test_checker_accepts_the_model_answer(check, answer, capsys):
    result = check(answer)
    assert result.passed and result.status == "passed" and result.cases >= 4
    assert result.gradcheck in (True, None)  # None: the temperature schedule is a plain number, nothing to gradcheck
    assert "PASSED" in capsys.readouterr().out


# ---------------------------------------------------------------- ... and rejects typical wrong answers

def _attention(inputs, row_kl, reduce, detach=True):
    """A student's attention KD skeleton: row_kl(a_s, a_t) -> (B, A, T); reduce(rows, mask) -> scalar."""
    losses = []
    for s, t in inputs.config.layer_map:
        a_t = inputs.teacher_attentions[t - 1]
        losses.append(reduce(row_kl(inputs.student_attentions[s - 1], a_t.detach() if detach else a_t),
                             inputs.attention_mask[:, None, :].to(a_t.dtype)))
    loss = sum(losses) / len(losses)
    return LossResult(loss, {"attn": loss.detach()})


good_rows = lambda a_s, a_t: (torch.xlogy(a_t, a_t) - a_t * a_s.clamp_min(1e-12).log()).sum(-1)  # noqa: E731
masked_mean = lambda rows, m: (rows * m).sum() / (m.sum() * rows.shape[1])  # noqa: E731


def test_attention_checker_rejects_typical_mistakes():
    rejects(check_attention_kd, lambda x: _attention(x, lambda a_s, a_t: (a_t * (a_t.log() - a_s.log())).sum(-1),
                                                     masked_mean), "nan", "0 * log 0", "xlogy")
    rejects(check_attention_kd, lambda x: _attention(x, good_rows, lambda rows, m: rows.mean()),
            "padded positions are not masked")
    rejects(check_attention_kd, lambda x: _attention(x, lambda a_s, a_t: F.kl_div(a_t.clamp_min(1e-12).log(), a_s,
                                                                                    reduction="none").sum(-1),
                                                     masked_mean), "kl(a_s || a_t)", "wrong way round")
    rejects(check_attention_kd, lambda x: _attention(x, good_rows, lambda rows, m: (rows * m).sum()),
            "forgot to normalise")
    rejects(check_attention_kd, lambda x: _attention(x, good_rows, lambda rows, m: (rows * m).mean()),
            "still divided by every position")
    rejects(check_attention_kd, lambda x: _attention(x, lambda a_s, a_t: -(a_t * a_s.clamp_min(1e-12).log()).sum(-1),
                                                     masked_mean), "cross-entropy")
    rejects(check_attention_kd, lambda x: _attention(x, good_rows, masked_mean, detach=False),
            "gradients flow into the teacher", "detach")
    rejects(check_attention_kd, lambda x: _attention(x, good_rows, masked_mean).total, "bare tensor", "LossResult")
    rejects(check_attention_kd, lambda x: LossResult(torch.tensor(_attention(x, good_rows, masked_mean).total.item()),
                                                     {"a": 0.0}), "parts add up")
    def no_graph(x):  # the value is right, but .detach() cuts the student off
        v = _attention(x, good_rows, masked_mean).total.detach()
        return LossResult(v, {"a": v})
    rejects(check_attention_kd, no_graph, "not connected")


def test_attention_checker_names_textbook_kl_div_missing_heads_and_nan_gradients():
    def textbook(x):  # F.kl_div(log A_s, A_t, "batchmean") per layer: every row and head summed, / B
        losses = [F.kl_div(x.student_attentions[s - 1].clamp_min(1e-12).log(), x.teacher_attentions[t - 1].detach(),
                           reduction="batchmean") for s, t in x.config.layer_map]
        loss = sum(losses) / len(losses)
        return LossResult(loss, {"a": loss.detach()})
    rejects(check_attention_kd, textbook, "f.kl_div", "batchmean", "mask.sum() * h")
    rejects(check_attention_kd, lambda x: _attention(x, good_rows, lambda rows, m: (rows * m).sum() / m.sum()),
            "number of heads", "times too large")
    # xlogy guards the value (0 * log 0 = 0) but its gradient a_t / a_s is 0/0 at padded keys
    xlogy_rows = lambda a_s, a_t: (torch.xlogy(a_t, a_t) - torch.xlogy(a_t, a_s)).sum(-1)  # noqa: E731
    message = rejects(check_attention_kd, lambda x: _attention(x, xlogy_rows, masked_mean), "gradient is nan", "0/0",
                      "clamp")
    assert "float32" not in message and "in-place" not in message


def test_a_failure_is_raised_once_without_a_chained_traceback_and_names_the_case(capsys):
    def crashes(x):
        if x.attention_mask.shape[0] == 3:
            raise IndexError("index 9 is out of bounds")
        return S.attention_kd_solution(x)
    with pytest.raises(AssignmentFailure) as info:
        check_attention_kd(crashes)
    assert capsys.readouterr().out == ""  # not printed, then raised: shown once
    assert info.value.__cause__ is None and info.value.__suppress_context__
    message = str(info.value)
    assert "IndexError on case 1 (B=3, n=6, heads h=2, L_s=4, L_t=8, layer_map=[(1, 2), (2, 4), (3, 6)]" in message
    assert "test_assignments.py, line" in message and "raise IndexError" in message
    message = rejects(check_annealed_kd, lambda *a, **k: _Anneal(*a, **k, t2=False))
    assert "t^2" in message


class _Proj(nn.Module):
    """A student's projection loss: parametrised by how it normalises, reduces and indexes."""

    def __init__(self, hs, ht, norm=True, reduction="mean", offset=0):
        super().__init__()
        self.proj, self.norm, self.reduction, self.offset = nn.Linear(hs, ht), norm, reduction, offset

    def forward(self, x):
        u = torch.stack([self.proj(x.student_hidden_states[s - self.offset][:, 0]) for s, _ in x.config.layer_map], 1)
        v = torch.stack([x.teacher_cls_hidden[:, t].detach() for _, t in x.config.layer_map], 1)
        if self.norm:
            u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
        loss = x.config.beta * F.mse_loss(u, v, reduction=self.reduction)
        return LossResult(loss, {"proj": loss.detach()})


class _PlainTensorProj(_Proj):
    def __init__(self, hs, ht):
        super().__init__(hs, ht)
        del self.proj
        self.W = torch.randn(ht, hs)  # not an nn.Parameter: invisible to the optimiser

    def forward(self, x):
        raise AssertionError("not reached")


def test_projection_checker_rejects_typical_mistakes():
    rejects(check_hidden_projection, lambda hs, ht: _Proj(hs, ht, norm=False), "forgot to normalise")
    rejects(check_hidden_projection, lambda hs, ht: _Proj(hs, ht, reduction="sum"), "wrong reduction", "summed")
    rejects(check_hidden_projection, lambda hs, ht: _Proj(hs, ht, offset=1), "wrong student layer", "embeddings")
    rejects(check_hidden_projection, _PlainTensorProj, "no trainable parameters")

    class FreshW(_Proj):  # a new projection on every call
        def forward(self, x):
            nn.init.normal_(self.proj.weight)
            return super().forward(x)
    rejects(check_hidden_projection, FreshW, "changes between two calls")


class _Anneal(nn.Module):
    """A student's annealed KD: knobs for the usual mistakes."""

    def __init__(self, hs, ht, t_end=1.0, anneal_steps=1000, t2=True, kl="config", buffer=True, eval_counts=False):
        super().__init__()
        self.t_end, self.N, self.t2, self.kl, self.eval_counts = t_end, anneal_steps, t2, kl, eval_counts
        if buffer:
            self.register_buffer("step", torch.tensor(0))
        else:
            self.step = 0

    def forward(self, x):
        cfg = x.config
        T = self.t_end + (cfg.temperature - self.t_end) * max(0.0, 1 - int(self.step) / self.N)
        log_p_s, p_t = F.log_softmax(x.student_logits / T, -1), F.softmax(x.teacher_logits.detach() / T, -1)
        reduction = cfg.kl_reduction if self.kl == "config" else self.kl
        kl = F.kl_div(log_p_s, p_t, reduction="sum") / (p_t.numel() if reduction == "mean" else p_t.shape[0])
        soft = cfg.alpha * (T ** 2 if self.t2 else 1.0) * kl
        hard = (1 - cfg.alpha) * F.cross_entropy(x.student_logits, x.labels)
        if self.training or self.eval_counts:
            self.step += 1
        return LossResult(soft + hard, {"soft": soft.detach(), "ce": hard.detach()})


def test_annealing_checkers_reject_typical_mistakes():
    rejects(check_annealed_temperature, lambda n, t0, t1, N: t1 + (t0 - t1) * (1 - n / N),
            "keeps falling", "min(k / N_anneal, 1)")
    rejects(check_annealed_temperature, lambda n, t0, t1, N: t0 + (t1 - t0) * max(0, 1 - n / N), "runs backwards")
    rejects(check_annealed_kd, lambda *a, **k: _Anneal(*a, **k, t2=False), "forget the t^2 factor")
    rejects(check_annealed_kd, lambda *a, **k: _Anneal(*a, **k, kl="batchmean"), "wrong reduction", "'mean'")
    rejects(check_annealed_kd, lambda *a, **k: _Anneal(*a, **k, buffer=False), "register_buffer", "--resume")
    rejects(check_annealed_kd, lambda *a, **k: _Anneal(*a, **k, eval_counts=True), "eval mode", "self.training")
    rejects(check_annealed_kd, lambda hs, ht: _Anneal(hs, ht), "must accept", "anneal_steps")


def test_info_nce_checker_rejects_typical_mistakes():
    def sims(h_s, h_t, tau, norm=True):
        if norm:
            h_s, h_t = F.normalize(h_s, dim=-1), F.normalize(h_t.detach(), dim=-1)
        return h_s @ h_t.detach().T / tau
    target = lambda S: torch.arange(S.shape[0])  # noqa: E731
    rejects(check_info_nce, lambda a, b, tau: -F.cross_entropy(sims(a, b, tau), target(sims(a, b, tau))),
            "wrong sign")
    rejects(check_info_nce, lambda a, b, tau: F.cross_entropy(sims(a, b, tau, norm=False), target(a)),
            "forgot to normalise", "cosine")
    rejects(check_info_nce, lambda a, b, tau: (F.cross_entropy(sims(a, b, tau), target(a))
                                               + F.cross_entropy(sims(a, b, tau).T, target(a))) / 2, "symmetric")
    rejects(check_info_nce, lambda a, b, tau: F.cross_entropy(sims(a, b, tau), target(a), reduction="sum"),
            "wrong reduction")
    naive = lambda a, b, tau: -torch.log(sims(a, b, tau).exp().diagonal() / sims(a, b, tau).exp().sum(1)).mean()  # noqa
    rejects(check_info_nce, naive, "overflows float32", "logsumexp")
    rejects(check_info_nce, lambda a, b, tau: F.cross_entropy(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau,
                                                              target(a)), "gradients flow into the teacher")
    rejects(check_info_nce, lambda a, b, tau: float(S.info_nce_solution(a, b, tau)), "returned float")


# ---------------------------------------------------------------- unimplemented starters, and the extension point

def _starter(inputs):
    # YOUR CODE HERE
    raise NotImplementedError


class _StarterModule(nn.Module):
    def __init__(self, student_hidden, teacher_hidden, t_end=1.0, anneal_steps=1000):
        super().__init__()
        raise NotImplementedError


@pytest.mark.parametrize("check, starter", [
    (check_attention_kd, _starter), (check_hidden_projection, _StarterModule),
    (check_annealed_temperature, lambda *a: _starter(a)), (check_annealed_kd, _StarterModule),
    (check_info_nce, lambda *a: _starter(a))])
def test_unimplemented_starter_gives_a_clear_message(check, starter, capsys):
    result = check(starter)  # no exception: a notebook keeps running
    assert result.status == "not implemented" and not result.passed
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "NotImplementedError" in out and "# YOUR CODE HERE" in out
    with pytest.raises(AssertionError, match="NotImplementedError"):
        check(starter, require_implemented=True, verbose=False)


@pytest.fixture
def registered():
    names = []
    yield names
    for name in names:
        losses_registry._REGISTRY.pop(name, None)


def test_answers_plug_into_the_registry_by_name(registered):
    register_loss("test_asg_attention", requires=("student_attentions", "teacher_attentions",
                                                  "attention_mask"))(S.attention_kd_solution)
    register_loss("test_asg_anneal", needs_params=True, requires=("labels", "teacher_logits"))(S.AnnealedKDSolution)
    registered += ["test_asg_attention", "test_asg_anneal"]
    x = attention_cases()[0]
    loss = build_loss("test_asg_attention")
    assert loss.requires == {"student_attentions", "teacher_attentions", "attention_mask"}
    assert float(loss(x).total) == pytest.approx(float(S.attention_kd_solution(x).total), rel=1e-9)
    # the annealing counter lives in LossModule.state_dict(): what the trainer saves in checkpoint.pt
    anneal = build_loss("test_asg_anneal", student_hidden=8, teacher_hidden=8)
    y = C.logit_inputs(4, 3, 10.0, 0.7, "batchmean", seed=0)
    for _ in range(3):
        anneal(y)
    state = anneal.state_dict()
    assert int(state["param_losses.test_asg_anneal.step"]) == 3
    resumed = build_loss("test_asg_anneal", student_hidden=8, teacher_hidden=8)
    resumed.load_state_dict(state)
    assert resumed(y).total.item() == pytest.approx(anneal(y).total.item(), rel=1e-12)
