"""The grading machinery shared by the assignment checkers: run the student's code, compare with the reference,
recognise known mistakes, gradcheck, and report.

A checker does

    grader = Grader("attention KD", my_fn)
    with grader:                                   # handles "not implemented yet" and prints the report
        values = [grader.call(my_fn, inputs, case=i) for i, inputs in enumerate(cases)]
        grader.compare(values, reference_values, mistakes)   # AssertionError naming the likely mistake
        grader.gradcheck(closure, tensors)
    return grader.result

and a student sees either a one-paragraph report ("PASSED ...") or an AssertionError whose message says what is
wrong and how to fix it. An unimplemented starter (its body still raises NotImplementedError) is not a failure:
the report says "not implemented yet" and the checker returns a result with status "not implemented", so a
notebook keeps running; pass require_implemented=True (autograding) to make it an AssertionError too.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from pea_kd.losses import LossResult

RTOL, ATOL = 1e-5, 1e-8  # float64 inputs; a student computing in float32 still passes


class AssignmentFailure(AssertionError):
    """A checker rejected the student's code. str(err) is the helpful message; err.result the CheckResult."""

    def __init__(self, message: str, result: "CheckResult" = None):
        super().__init__(message)
        self.result = result


class _NotImplementedYet(Exception):
    """Internal signal: the student's function still raises NotImplementedError."""


@dataclass
class CheckResult:
    """What a checker found. status: "passed", "failed" or "not implemented"; passed is True only for "passed"."""

    assignment: str
    status: str = "passed"
    cases: int = 0
    max_rel_err: float = 0.0
    gradcheck: Optional[bool] = None
    message: str = ""
    checks: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def report(self) -> str:
        if self.status == "not implemented":
            return f"[{self.assignment}] not implemented yet: {self.message}"
        if self.status == "failed":
            return f"[{self.assignment}] FAILED: {self.message}"
        lines = [f"[{self.assignment}] PASSED: {self.cases} random cases match the reference "
                 f"(max relative error {self.max_rel_err:.1e})"]
        lines += [f"  - {c}" for c in self.checks]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


def close(a: float, b: float, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """|a - b| <= atol + rtol |b|, with NaN never close."""
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= atol + rtol * abs(b)


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12) if math.isfinite(a) else math.inf


def loss_total(out, what: str = "your loss") -> torch.Tensor:
    """The scalar tensor of a loss's output (a LossResult, as the registry needs), or a one-line failure."""
    if torch.is_tensor(out) and not isinstance(out, LossResult):
        raise AssertionError(f"{what} returned a bare tensor; a registered loss must return "
                             f"LossResult(total, parts), e.g. LossResult(loss, {{'my_loss': loss.detach()}})")
    if not isinstance(out, LossResult):
        raise AssertionError(f"{what} returned {type(out).__name__}; it must return LossResult(total, parts)")
    total = out.total
    if not torch.is_tensor(total):
        raise AssertionError(f"{what}: LossResult.total is a {type(total).__name__}; it must be a tensor (keep the "
                             f"autograd graph: no .item(), no float(...))")
    if total.dim() != 0:
        raise AssertionError(f"{what}: LossResult.total has shape {tuple(total.shape)}; reduce it to a scalar "
                             f"(0-d tensor): the trainer calls total.backward()")
    parts = out.parts
    if not isinstance(parts, dict) or not parts:
        raise AssertionError(f"{what}: LossResult.parts must be a non-empty dict such as {{'my_loss': loss.detach()}} "
                             f"(the trainer logs it)")
    s, value = sum(float(v) for v in parts.values()), float(total.detach())
    if math.isfinite(value) and not close(s, value, 1e-4, 1e-6):  # a NaN total is diagnosed by compare()
        raise AssertionError(f"{what}: LossResult.parts add up to {s:.6g} but total is {value:.6g}; the parts "
                             f"must sum to the total (they are the logged terms of the loss)")
    return total


def diagnose(values: Sequence[float], reference: Sequence[float], mistakes: dict,
             cases: Optional[Sequence[str]] = None) -> str:
    """Explain why `values` (the student's, one per case) differ from `reference`.

    mistakes: {message: [value per case]} of known-wrong variants; the first one matching every case is reported.
    Otherwise: NaN, a sign flip or a constant factor, then the worst case. cases: a description of each case's
    inputs, shown for the failing case.
    """
    def case(i: int) -> str:
        return f"case {i} ({cases[i]})" if cases else f"case {i}"

    if not all(math.isfinite(v) for v in values):
        bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
        return (f"your loss is {values[bad]} on {case(bad)}. Padded positions have probability exactly 0 and "
                f"0 * log 0 = nan in PyTorch, and exp() of a large logit overflows: use torch.xlogy, clamp "
                f"probabilities before log, or log_softmax / logsumexp instead of log(exp(...)).")
    for message, wrong in mistakes.items():
        if all(close(v, w) for v, w in zip(values, wrong)):
            return message
    if all(close(v, -r) for v, r in zip(values, reference)):
        return "your loss has the wrong sign: a loss must be minimised (it is >= 0 here)."
    ratios = [v / r for v, r in zip(values, reference) if abs(r) > 1e-12]
    if ratios and all(close(q, ratios[0]) for q in ratios) and not close(ratios[0], 1.0):
        q = ratios[0]
        size = f"{1 / q:.3g}x too small" if abs(q) < 1 else f"{q:.3g}x too large"
        return (f"your loss is {size} on every case (a constant factor): check the scaling factors "
                f"(T^2, beta, 1/tau) and what you divide by (batch, heads, tokens, layers, hidden size).")
    worst = max(range(len(values)), key=lambda i: rel_err(values[i], reference[i]))
    return (f"your loss does not match the reference: on {case(worst)} it is {values[worst]:.6g}, expected "
            f"{reference[worst]:.6g} (relative error {rel_err(values[worst], reference[worst]):.2g}). None of the "
            f"typical mistakes explains it; compare your code with the equation term by term.")


class Grader:
    """Runs one assignment check; see the module docstring. Use as a context manager, then read .result."""

    def __init__(self, assignment: str, fn, require_implemented: bool = False, verbose: bool = True):
        self.fn_name = getattr(fn, "__name__", type(fn).__name__)
        self.result = CheckResult(assignment)
        self.require_implemented, self.verbose = require_implemented, verbose
        self.cases: Optional[list] = None

    def describe_cases(self, descriptions: list) -> None:
        """One line per case saying what its inputs are; failure messages name the failing case with it."""
        self.cases = descriptions

    def call(self, fn: Callable, *args, case: int = 0, **kwargs):
        """fn(*args) with the student's exceptions turned into a helpful failure (or the not-implemented signal)."""
        try:
            return fn(*args, **kwargs)
        except NotImplementedError:
            raise _NotImplementedYet() from None
        except AssertionError:
            raise
        except Exception as err:  # the student's bug: say where (their line of code), keep it one message
            where = traceback.extract_tb(err.__traceback__)[-1]
            on = f"case {case} ({self.cases[case]})" if self.cases and case < len(self.cases) else f"case {case}"
            raise AssertionError(f"{self.fn_name} raised {type(err).__name__} on {on}: {err}\n  at "
                                 f"{Path(where.filename).name}, line {where.lineno}: {where.line}") from err

    def compare(self, values: Sequence[float], reference: Sequence[float], mistakes: dict) -> None:
        """Fail with the diagnosis unless every value matches its reference."""
        self.result.cases = len(values)
        if all(close(v, r) for v, r in zip(values, reference)):
            self.result.max_rel_err = max(rel_err(v, r) for v, r in zip(values, reference))
            self.result.checks.append("values match the reference")
            return
        raise AssertionError(diagnose(values, reference, mistakes, self.cases))

    def check(self, ok: bool, message: str, passed_note: Optional[str] = None) -> None:
        if not ok:
            raise AssertionError(message)
        if passed_note:
            self.result.checks.append(passed_note)

    def gradcheck(self, closure: Callable, tensors: tuple) -> None:
        """torch.autograd.gradcheck in float64: analytic gradients of closure(*tensors) vs finite differences."""
        out = self.call(closure, *tensors)
        if not out.requires_grad:
            raise AssertionError("your loss is not connected to the student's tensors (no gradient would reach the "
                                 "student): do not .detach() the student, call .item()/float() or build a new "
                                 "torch.tensor from the value")
        grads = torch.autograd.grad(out, [t for t in tensors if t.requires_grad], allow_unused=True)
        bad = sum(int((~torch.isfinite(gr)).sum()) for gr in grads if gr is not None)
        if bad:
            total = sum(gr.numel() for gr in grads if gr is not None)
            raise AssertionError(
                f"your loss is finite but its gradient is NaN/inf in {bad} of {total} entries: a 0/0 or log(0) in the "
                f"backward pass. Typical: torch.xlogy(a_t, a_s) or a_t * log(a_s) where a_s = 0 at padded keys, whose "
                f"gradient a_t / a_s is 0/0 = NaN (xlogy guards the value, not the gradient w.r.t. a_s). Clamp "
                f"before the log, log(a_s.clamp_min(1e-12)), or compute log-probabilities with log_softmax.")
        try:
            ok = torch.autograd.gradcheck(closure, tensors, eps=1e-6, atol=1e-5, rtol=1e-4, raise_exception=False)
        except Exception as err:  # e.g. the closure fails only when perturbed
            raise AssertionError(f"gradcheck could not run your loss: {type(err).__name__}: {err}") from err
        self.result.gradcheck = bool(ok)
        if not ok:
            raise AssertionError("torch.autograd.gradcheck (float64) failed: your loss's gradient disagrees with "
                                 "finite differences. Avoid casting to float32 (.float()), in-place edits of "
                                 "inputs, argmax/rounding, and tensors rebuilt from Python numbers.")
        self.result.checks.append("torch.autograd.gradcheck passes in float64")

    def __enter__(self) -> "Grader":
        # The checks run thousands of tiny ops (gradcheck); with intra-op threads each can cost milliseconds of
        # thread wake-up on a busy machine, so they run single-threaded (the setting is restored on exit).
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        torch.set_num_threads(self._threads)
        r = self.result
        if exc_type is _NotImplementedYet:
            r.status = "not implemented"
            r.message = (f"{self.fn_name} still raises NotImplementedError. Replace the `raise NotImplementedError` "
                         f"under `# YOUR CODE HERE` with your implementation, then run this check again.")
            if self.require_implemented:
                raise _failure(r) from None
            self._print()
            return True
        if exc_type is not None and issubclass(exc_type, AssertionError):
            r.status, r.message = "failed", str(exc)
            raise _failure(r) from None  # shown once, by the exception, without the chained traceback
        if exc_type is None:
            self._print()
        return False

    def _print(self) -> None:
        if self.verbose:
            print(self.result.report())


def _failure(result: CheckResult) -> AssignmentFailure:
    """The exception a failed (or, with require_implemented, unimplemented) check raises."""
    return AssignmentFailure(f"[{result.assignment}] {result.message}", result)
