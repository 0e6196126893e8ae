"""Write pea_kd/assignments/expected.json and exercises.json: what the checkers compare a student's answer with.

    python -m instructor.make_fixtures            # rewrite the file
    python -m instructor.make_fixtures --check    # exit 1 if the committed files differ from what it would write

For every checker's fixed cases (pea_kd.assignments.cases) it stores a fingerprint of the inputs, the model answer's
value (instructor/solutions.py) and the value of every known mistake (instructor/variants.py), plus the few extra
numbers a checker needs (the gradient w.r.t. W of assignment 2, the eval-mode value of assignment 3b, the float32
value for a small tau of assignment 4). Run it once after changing a solution, a variant or a case; the checkers
themselves never import this directory.

exercises.json holds the digests of the auto-checked exercises' answers (instructor/exercise_answers.py), never the
answers themselves.

"Differ" means for expected.json: other keys, texts or whole numbers, or a float that moved by more than RTOL; the last
bits of a float depend on the CPU's kernels (AVX2, AVX-512, ATEN_CPU_CAPABILITY=default), so a file written on one CPU
stays up to date on another. exercises.json must be identical: its digests are of rounded answers, and
exercise_answers.build refuses an answer within noise of a rounding boundary.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from pea_kd.assignments import cases as C
from pea_kd.assignments.checker import EXPECTED_FILE
from pea_kd.assignments.exercises import EXERCISES_FILE

from . import exercise_answers
from . import solutions as S
from .variants import CATALOGUES


def _case(inputs, args: tuple, reference: float, name: str) -> dict:
    messages, variant = CATALOGUES[name]
    return {"fingerprint": C.fingerprint(inputs), "reference": reference,
            "mistakes": {knob: variant(*args, **{knob: True}) for knob in messages}}


def build() -> dict:
    """Every stored value, computed from the model answers and the wrong variants."""
    _, att = C.attention_cases()
    out = {"attention": {"cases": [_case(x, (x,), float(S.attention_kd_solution(x).total), "attention")
                                   for x in att]}}

    ref = S.HiddenProjectionSolution(C.H_S, C.H_T).double()
    Wm, b = C.projection_weights()
    with torch.no_grad():
        ref.proj.weight.copy_(Wm)
        ref.proj.bias.copy_(b)
    hid = C.projection_cases()
    out["projection"] = {"cases": [_case(x, (x, Wm, b), float(ref(x).total.detach()), "projection") for x in hid]}
    ref.zero_grad()
    ref(hid[1]).total.backward()
    out["projection"]["grad_W_case1"] = ref.proj.weight.grad.tolist()

    out["schedule"] = {"cases": [_case(args, args, S.annealed_temperature_solution(*args), "schedule")
                                 for args in C.SCHEDULE_CASES]}

    module = S.AnnealedKDSolution(8, 8, t_end=C.ANNEAL_T_END, anneal_steps=C.ANNEAL_N).train()
    ann = C.annealed_cases()
    out["annealed"] = {"cases": [_case(x, (x, n, C.ANNEAL_T_END, C.ANNEAL_N), float(module(x).total), "annealed")
                                 for n, x in enumerate(ann)]}
    out["annealed"]["eval_after_all_calls"] = float(module.eval()(ann[0]).total)

    pairs = C.info_nce_cases()
    out["info_nce"] = {"cases": [_case(p, p, float(S.info_nce_solution(*p)), "info_nce") for p in pairs]}
    out["info_nce"]["hot_float32_tau_0.01"] = float(S.info_nce_solution(*C.info_nce_hot_case(), 0.01))
    return out


# Stored floats must agree to this relative tolerance (not to the last bit). Measured between AVX2 and
# ATEN_CPU_CAPABILITY=default kernels: up to 2.5e-14 for the float64 values; the one float32 value
# (hot_float32_tau_0.01) may move by a few float32 ulps (~1e-7). The checkers compare a student's values at 1e-5
# (1e-3 for the float32 one), so a value that moved by less than RTOL grades every answer the same.
RTOL, ATOL = 1e-6, 1e-12


def differences(stored, fresh, where: str = "") -> list[str]:
    """Where two parsed fixture documents differ: keys, lengths, texts, whole numbers (exactly) or floats (beyond
    RTOL/ATOL). Empty when `stored` is up to date with `fresh`."""
    if isinstance(stored, dict) and isinstance(fresh, dict):
        if stored.keys() != fresh.keys():
            return [f"{where or '/'}: keys {sorted(stored)} != {sorted(fresh)}"]
        return [d for k in stored for d in differences(stored[k], fresh[k], f"{where}/{k}")]
    if isinstance(stored, list) and isinstance(fresh, list):
        if len(stored) != len(fresh):
            return [f"{where}: {len(stored)} items != {len(fresh)}"]
        return [d for i, (a, b) in enumerate(zip(stored, fresh)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(stored, float) and isinstance(fresh, float):
        close = math.isclose(stored, fresh, rel_tol=RTOL, abs_tol=ATOL)
        return [] if close else [f"{where}: {stored!r} != {fresh!r}"]
    same = type(stored) is type(fresh) and stored == fresh  # texts, whole numbers, booleans: exactly
    return [] if same else [f"{where}: {stored!r} != {fresh!r}"]


def render(values: dict) -> str:
    header = {"written_by": "the instructor's make_fixtures, from the model answers and their wrong variants",
              "dtype": "float64 inputs; values compared with rtol 1e-5"}
    return json.dumps({"_about": header, **values}, indent=1) + "\n"


def render_exercises(exercises: dict) -> str:
    header = {"written_by": "the instructor's make_fixtures, from the model answers",
              "digests": "sha256 of 'pea-kd exercise|<key>|<field>|<canonical answer>'; see "
                         "pea_kd/assignments/exercises.py"}
    return json.dumps({"_about": header, "exercises": exercises}, indent=1) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args(argv)
    outdated = 0
    for path, text in ((EXPECTED_FILE, render(build())), (EXERCISES_FILE, render_exercises(exercise_answers.build()))):
        if args.check:
            stored = path.read_text(encoding="utf-8") if path.is_file() else None
            same = stored == text or (stored is not None and path == EXPECTED_FILE
                                      and not differences(json.loads(stored), json.loads(text)))
            print(f"{path}: {'up to date' if same else 'OUT OF DATE: run python -m instructor.make_fixtures'}")
            outdated += not same
            continue
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # atomic: a checker never reads half a file
        print(f"wrote {path}")
    return 1 if outdated else 0


if __name__ == "__main__":
    sys.exit(main())
