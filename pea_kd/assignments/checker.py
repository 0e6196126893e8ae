"""Checkers for the course assignments: `check_<name>(your_code)` grades it on fixed cases against stored values.

    check_attention_kd(fn)          fn(inputs: LossInputs) -> LossResult                      assignment 1
    check_hidden_projection(cls)    cls(student_hidden, teacher_hidden) -> nn.Module           assignment 2
    check_annealed_temperature(fn)  fn(step, t_start, t_end, anneal_steps) -> float            assignment 3a
    check_annealed_kd(cls)          cls(student_hidden, teacher_hidden, t_end, anneal_steps)   assignment 3b
    check_info_nce(fn)              fn(h_s (B, H), h_t (B, H), tau) -> scalar tensor           assignment 4

Each prints a short report and returns a CheckResult. On a wrong answer it raises AssertionError (AssignmentFailure)
whose message names the likely mistake (a missing T^2, the KL reversed, padded tokens counted, ...), found by
comparing your values with those of known-wrong variants (pea_kd.assignments.mistakes). A starter that still raises
NotImplementedError is reported as "not implemented yet" without raising, unless require_implemented=True.

The checkers never run a model answer. They compare your values on fixed cases (pea_kd.assignments.cases) with the
expected values stored in expected.json (the reference's and each known mistake's, written once by the instructor),
and check properties that need no answer: the teacher is detached, gradients are finite and pass gradcheck, a
stateful loss survives state_dict(), float32 does not overflow.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import torch
from torch import nn

from pea_kd.losses import LossInputs

from . import cases as C
from . import mistakes
from .grading import Grader, close, loss_total

EXPECTED_FILE = Path(__file__).with_name("expected.json")


@functools.lru_cache(maxsize=None)
def _expected_all() -> dict:
    return json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))


def expected(assignment: str, case_inputs: list) -> dict:
    """The stored values of one assignment, after checking that its fixed cases are the ones they were computed on."""
    stored = _expected_all()[assignment]
    prints = [C.fingerprint(x) for x in case_inputs]
    if len(prints) != len(stored["cases"]) or not all(
            close(a, c["fingerprint"], 1e-9, 1e-12) for a, c in zip(prints, stored["cases"])):
        raise RuntimeError(f"{EXPECTED_FILE.name} does not match the checker's cases for '{assignment}' (the cases or "
                           f"torch's random generator changed): this is not your mistake; ask the instructor to "
                           f"regenerate it")
    return stored


def _mistake_values(stored: dict, messages: dict) -> dict:
    """{message: [value per case]} of every known mistake, from the stored values."""
    return {msg: [case["mistakes"][knob] for case in stored["cases"]] for knob, msg in messages.items()}


def _num(t: torch.Tensor) -> float:
    return float(t.detach())


def _teacher_detached(grader: Grader, run, teacher_tensors) -> None:
    """Backpropagate the loss with teacher tensors requiring grad: no gradient may reach them."""
    out = run()
    if out.requires_grad:  # else nothing is connected to the teacher either
        out.backward()
    leaked = any(t.grad is not None and bool((t.grad != 0).any()) for t in teacher_tensors)  # NaN counts too
    grader.check(not leaked, "gradients flow into the teacher: the teacher's outputs are fixed targets, use "
                             "teacher_tensor.detach() (with a live teacher its weights would otherwise change)",
                 "the teacher is detached (no gradient reaches it)")


# ---------------------------------------------------------------- 1. attention KD

def check_attention_kd(fn, *, require_implemented: bool = False, verbose: bool = True):
    """Grade fn(inputs) -> LossResult, the attention-distribution KD of assignment 1."""
    g = Grader("attention KD", fn, require_implemented, verbose)
    with g:
        raw, inputs = C.attention_cases()
        stored = expected("attention", inputs)
        g.describe_cases([C.describe(x) for x in inputs])
        values = [_num(loss_total(g.call(fn, x, case=i), "your loss")) for i, x in enumerate(inputs)]
        g.compare(values, [c["reference"] for c in stored["cases"]],
                  _mistake_values(stored, mistakes.ATTENTION_MISTAKES))
        s_scores, t_scores, mask = raw[0]
        x = C.attention_inputs([s.clone().requires_grad_() for s in s_scores], t_scores, mask, teacher_grad=True)
        _teacher_detached(g, lambda: loss_total(g.call(fn, x)), x.teacher_attentions)
        small = C.attention_scores(2, 4, 2, 2, 4, seed=99)

        def closure(*scores):  # gradients flow back through the softmax to the student's attention scores
            return loss_total(fn(C.attention_inputs(list(scores), small[1], small[2])))
        g.gradcheck(closure, tuple(s.requires_grad_() for s in small[0]))
    return g.result


# ---------------------------------------------------------------- 2. hidden-state MSE with a learned projection

def _projection_params(module: nn.Module, H_s: int, H_t: int):
    """(weight, bias or None, transposed) of the student's projection: self.proj, else found by parameter shapes.

    transposed: the weight is stored (H_s, H_t) for h_s @ W instead of nn.Linear's (H_t, H_s).
    """
    proj = getattr(module, "proj", None)
    if isinstance(proj, nn.Linear):
        return proj.weight, proj.bias, False
    params = list(module.parameters())
    weights = [p for p in params if tuple(p.shape) in ((H_t, H_s), (H_s, H_t))]
    biases = [p for p in params if tuple(p.shape) == (H_t,)]
    if len(weights) != 1 or len(biases) > 1 or len(params) != len(weights) + len(biases):
        raise AssertionError(f"cannot find your projection: name it self.proj = nn.Linear(student_hidden, "
                             f"teacher_hidden) (found parameters of shapes {[tuple(p.shape) for p in params]})")
    w = weights[0]
    return w, (biases[0] if biases else None), tuple(w.shape) == (H_s, H_t) and H_s != H_t


def check_hidden_projection(cls, *, require_implemented: bool = False, verbose: bool = True):
    """Grade cls(student_hidden, teacher_hidden): an nn.Module whose forward(inputs) -> LossResult (assignment 2)."""
    g = Grader("hidden-state MSE with projection", cls, require_implemented, verbose)
    with g:
        module = g.call(cls, C.H_S, C.H_T)
        g.check(isinstance(module, nn.Module), f"{g.fn_name}(student_hidden, teacher_hidden) returned a "
                f"{type(module).__name__}; it must build an nn.Module (subclass nn.Module, call super().__init__())")
        g.check(any(True for _ in module.parameters()), "your module has no trainable parameters, so the optimiser "
                "would never update W: create it in __init__ as self.proj = nn.Linear(student_hidden, teacher_hidden) "
                "(a plain tensor attribute, or a matrix made in forward, is not a parameter)")
        weight, bias, transposed = _projection_params(module, C.H_S, C.H_T)
        g.check(bias is not None, "your projection has no bias b: the statement is u = W h_s[CLS] + b; use "
                                  "nn.Linear(student_hidden, teacher_hidden) (bias=True by default)")
        module.double()
        Wm, b = C.projection_weights()  # (H_t, H_s), (H_t,)
        with torch.no_grad():
            weight.copy_(Wm.T if transposed else Wm)
            bias.copy_(b)
        inputs = C.projection_cases()
        stored = expected("projection", inputs)
        g.describe_cases([C.describe(x) for x in inputs])
        values = [_num(loss_total(g.call(module, x, case=i), "your loss")) for i, x in enumerate(inputs)]
        again = _num(loss_total(g.call(module, inputs[0])))
        g.check(close(again, values[0], 1e-12, 0.0), "your loss changes between two calls with the same inputs: create "
                "the projection once in __init__ (self.proj = nn.Linear(...)), not in forward")
        g.compare(values, [c["reference"] for c in stored["cases"]],
                  _mistake_values(stored, mistakes.PROJECTION_MISTAKES))
        module.zero_grad()
        loss_total(module(inputs[1])).backward()
        grad = weight.grad.T if (transposed and weight.grad is not None) else weight.grad
        g.check(grad is not None, "no gradient reaches the projection W, so it would never be trained: do not "
                                  "detach u = W h_s + b or use W.data")
        g.check(torch.allclose(grad, torch.tensor(stored["grad_W_case1"], dtype=grad.dtype), rtol=1e-5, atol=1e-8),
                "the gradient of your loss w.r.t. W differs from the reference's (on case 1)",
                "the gradient reaches W and is right")
        x = C.hidden_inputs(3, 4, C.H_S, C.H_T, 3, 6, 100.0, seed=11, teacher_grad=True)
        _teacher_detached(g, lambda: loss_total(module(x)), [x.teacher_cls_hidden])
        small = C.hidden_inputs(2, 3, C.H_S, C.H_T, 2, 4, 100.0, seed=12)

        def closure(*states):
            return loss_total(module(LossInputs(small.student_logits, student_hidden_states=states,
                                                teacher_cls_hidden=small.teacher_cls_hidden, config=small.config)))
        g.gradcheck(closure, tuple(s.clone().requires_grad_() for s in small.student_hidden_states))
    return g.result


# ---------------------------------------------------------------- 3. temperature annealing

def check_annealed_temperature(fn, *, require_implemented: bool = False, verbose: bool = True):
    """Grade fn(step, t_start, t_end, anneal_steps) -> T_k, the linear schedule of assignment 3a."""
    g = Grader("temperature schedule", fn, require_implemented, verbose)
    with g:
        stored = expected("schedule", C.SCHEDULE_CASES)
        g.describe_cases([f"step k={k}, T_0={t0:g}, T_end={t1:g}, N_anneal={N}" for k, t0, t1, N in C.SCHEDULE_CASES])
        values = [float(g.call(fn, *args, case=i)) for i, args in enumerate(C.SCHEDULE_CASES)]
        g.compare(values, [c["reference"] for c in stored["cases"]],
                  _mistake_values(stored, mistakes.SCHEDULE_MISTAKES))
    return g.result


def check_annealed_kd(cls, *, require_implemented: bool = False, verbose: bool = True):
    """Grade cls(student_hidden, teacher_hidden, t_end=..., anneal_steps=...): KD with an annealed T (assignment 3b)."""
    g = Grader("temperature-annealed KD", cls, require_implemented, verbose)
    with g:
        T_end, N = C.ANNEAL_T_END, C.ANNEAL_N

        def make():
            try:
                return g.call(cls, 8, 8, t_end=T_end, anneal_steps=N)
            except AssertionError as err:
                if isinstance(err.__cause__, TypeError):
                    raise AssertionError(f"{g.fn_name} must accept (student_hidden, teacher_hidden, t_end=1.0, "
                                         f"anneal_steps=1000); calling it with t_end={T_end}, anneal_steps={N} "
                                         f"failed: {err.__cause__}") from err.__cause__
                raise
        module = make()
        g.check(isinstance(module, nn.Module), f"{g.fn_name}(...) must build an nn.Module (subclass nn.Module)")
        g.check("step" in module.state_dict(), "keep the step counter k in a buffer, self.register_buffer('step', "
                "torch.zeros((), dtype=torch.long)): the trainer saves LossModule.state_dict() in checkpoint.pt, so "
                "a Python int attribute would restart the schedule at T_0 after --resume",
                "the step counter is a buffer in state_dict() (survives --resume)")
        module.train()
        inputs = C.annealed_cases()
        stored = expected("annealed", inputs)
        reference = [c["reference"] for c in stored["cases"]]
        g.describe_cases([f"training call k={k}: {C.describe(x)}, T_end={T_end:g}, N_anneal={N}"
                          for k, x in enumerate(inputs)])
        values, snapshot = [], None
        for n, x in enumerate(inputs):
            if n == 3:
                snapshot = copy.deepcopy(module.state_dict())
            values.append(_num(loss_total(g.call(module, x, case=n), "your loss")))
        g.compare(values, reference, _mistake_values(stored, mistakes.ANNEALED_MISTAKES))
        n_seen = int(module.state_dict()["step"])
        g.check(n_seen == len(inputs), f"after {len(inputs)} calls in training mode your step counter is {n_seen}; "
                                       f"advance it by exactly 1 per training call")
        resumed = make()
        resumed.load_state_dict(snapshot)
        g.check(close(_num(loss_total(g.call(resumed, inputs[3]))), reference[3]),
                "a fresh module restored with load_state_dict() does not continue the schedule at step n = 3: "
                "read n from the registered buffer (self.step), not from a Python attribute",
                "a module restored from state_dict() continues the schedule (as after --resume)")
        module.eval()
        at_end = _num(loss_total(g.call(module, inputs[0])))
        g.check(int(module.state_dict()["step"]) == len(inputs), "your counter advanced in eval mode: count a call "
                "only when self.training is True (evaluation must not move the schedule)",
                "eval mode does not advance the counter")
        g.check(close(at_end, stored["eval_after_all_calls"]),
                "in eval mode your loss does not use the current T_k (it should use T_end once k >= N_anneal)")
        x = C.logit_inputs(4, 3, C.ANNEAL_T0, 0.7, "batchmean", seed=20, teacher_grad=True)
        _teacher_detached(g, lambda: loss_total(module(x)), [x.teacher_logits])
        small = C.logit_inputs(3, 3, C.ANNEAL_T0, 0.7, "batchmean", seed=21)

        def closure(z_s):
            return loss_total(module(LossInputs(z_s, labels=small.labels, teacher_logits=small.teacher_logits,
                                                config=small.config)))
        g.gradcheck(closure, (small.student_logits.clone().requires_grad_(),))
    return g.result


# ---------------------------------------------------------------- 4. InfoNCE

def _scalar(out) -> torch.Tensor:
    if not torch.is_tensor(out):
        raise AssertionError(f"your function returned {type(out).__name__}; return a scalar tensor (keep the graph)")
    if out.dim() != 0:
        raise AssertionError(f"your function returned shape {tuple(out.shape)}; average the per-anchor losses to a "
                             f"scalar")
    return out


def check_info_nce(fn, *, require_implemented: bool = False, verbose: bool = True):
    """Grade fn(h_s, h_t, tau) -> scalar tensor, the InfoNCE of assignment 4."""
    g = Grader("InfoNCE", fn, require_implemented, verbose)
    with g:
        pairs = C.info_nce_cases()
        stored = expected("info_nce", pairs)
        g.describe_cases([C.describe(p) for p in pairs])
        values = [_num(_scalar(g.call(fn, *p, case=i))) for i, p in enumerate(pairs)]
        g.compare(values, [c["reference"] for c in stored["cases"]],
                  _mistake_values(stored, mistakes.INFO_NCE_MISTAKES))
        h_s, h_t = C.info_nce_hot_case()  # cos ~ 1, so cos / tau ~ 100
        hot = _num(_scalar(g.call(fn, h_s, h_t, 0.01)))
        g.check(math.isfinite(hot), f"your loss is {hot} for tau = 0.01 in float32: exp(cos / tau) = exp(100) "
                "overflows float32 (max ~ e^88). Use torch.logsumexp or F.cross_entropy on S (log-softmax) "
                "instead of log(sum(exp(S))).")
        g.check(close(hot, stored["hot_float32_tau_0.01"], 1e-3, 1e-5),
                "your loss is inaccurate for tau = 0.01 in float32", "stable for small tau in float32 (no overflow)")
        h_s, h_t = C.cls_pairs(4, 8, 1.0, seed=31)
        h_t.requires_grad_()
        _teacher_detached(g, lambda: _scalar(fn(h_s, h_t, 0.2)), [h_t])
        small_s, small_t = C.cls_pairs(3, 5, 1.0, seed=32)
        g.gradcheck(lambda u: _scalar(fn(u, small_t, 0.3)), (small_s.requires_grad_(),))
    return g.result
