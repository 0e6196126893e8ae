"""Auto-checked exercises: the short exercises at the end of the notebooks, graded without shipping their answers.

Every exercise with one definite answer has a key, "<notebook>.<number>" ("02.5" is exercise 5 of notebook 02,
"a3.5" exercise 5 of assignment 3), and named fields. In the notebook a student writes

    answer = {"accuracy": 50.0, "f1": ..., "mcc": ..., "nothing_learned": ...}   # ... = not answered yet
    check_exercise("02.5", answer)

and sees one line per field: right, wrong (with what form the answer must take and, for a known slip, a hint), or
not answered yet. A wrong or missing answer never raises (only an unknown key or field does), so a notebook runs top
to bottom with the exercises still open.

The answers themselves are not in the repository a student receives. `exercises.json` holds, for every field, a
SHA-256 digest of the answer's canonical text: integers as written, numbers rounded to the decimals the question asks
for, names lower-cased (a set of names sorted). A submitted value is canonicalised the same way and its digest
compared; a number is accepted when it rounds to the answer after a shift of less than half a unit in the last
decimal, so 12.36 and 12.44 both pass for 12.4, and so does any value within 0.49 units of the unrounded answer. A
field that asks for a *function* is graded by calling it on fixed cases (`PROBES` below) and digesting what it
returns. The instructor writes the file from the model answers, which are not in the student's copy.
BEGIN INSTRUCTOR (not in the student copy)
The answers: instructor/exercise_answers.py; the file is written by `python -m instructor.make_fixtures`.
END INSTRUCTOR
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from pathlib import Path
from typing import Any, Callable

import torch

from pea_kd.losses import LossInputs, LossResult

EXERCISES_FILE = Path(__file__).with_name("exercises.json")
UNANSWERED = (None, ...)
KINDS = ("int", "float", "name", "names", "int_set", "int_list", "function")


# ---------------------------------------------------------------- canonical text and digests

def digest(key: str, field: str, text: str) -> str:
    """The stored fingerprint of one field's canonical answer text (key and field salt it: equal answers of two
    fields do not share a digest)."""
    return hashlib.sha256(f"pea-kd exercise|{key}|{field}|{text}".encode()).hexdigest()


def format_float(value: float, decimals: int) -> str:
    """`value` rounded to `decimals` (negative: to tens, hundreds, ...) as text; -0 is written 0."""
    rounded = round(float(value), decimals)
    text = f"{rounded:.{decimals}f}" if decimals > 0 else str(int(rounded))
    return text.lstrip("-") if float(text) == 0 else text


def candidates(value: Any, spec: dict) -> list[str]:
    """The canonical texts that `value` may stand for under the field's spec (several only for a float, whose last
    decimal may be off by rounding). ValueError with a readable message if `value` has the wrong type."""
    kind = spec["kind"]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # a tensor or a numpy value: plain Python
        value = value.tolist()
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or float(value) != int(value):
            raise ValueError(f"expected a whole number, got {value!r}")
        return [str(int(value))]
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        shift = 0.49 * 10.0 ** -spec["decimals"]  # just under half a unit: a value never stands for 3 roundings
        return sorted({format_float(value + d, spec["decimals"]) for d in (-shift, 0.0, shift)})
    if kind == "name":
        if not isinstance(value, str):
            raise ValueError(f"expected a name (a string), got {value!r}")
        return [value.strip().lower()]
    if kind == "names":
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a collection of names (a tuple or set of strings), got {value!r}")
        return [",".join(sorted({v.strip().lower() for v in value}))]
    if kind in ("int_list", "int_set"):
        values = list(value) if not isinstance(value, (str, bytes)) else [value]
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
            raise ValueError(f"expected a {'list' if kind == 'int_list' else 'set'} of whole numbers, got {value!r}")
        values = [int(v) for v in values]
        return [",".join(str(v) for v in (values if kind == "int_list" else sorted(set(values))))]
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


# ---------------------------------------------------------------- fixed cases for the fields that ask for a function

def _seeded(*shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Seeded N(0, 1) values, drawn in float64 and rounded to `dtype`: float32 randn has a vectorised AVX2 kernel
    whose last bits differ from other CPUs', and the fixed cases must be the same everywhere."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _probe_pre_ln(fn: Callable) -> list[tuple[str, float]]:
    """01.3: fn(layer, x) -> (n, H) for a MiniLM-sized layer with seeded weights; the norm of the output and of its
    first row (exact float32 arithmetic differs between correct implementations only in the last bits)."""
    from bert_mini import BertConfig
    from bert_mini.modeling import BertLayer
    config = BertConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536)
    layer = BertLayer(config).eval()
    with torch.no_grad():
        for seed, (name, p) in enumerate(sorted(layer.named_parameters())):
            noise = _seeded(*p.shape, seed=100 + seed, dtype=torch.float32)
            p.copy_(1.0 + 0.1 * noise if name.endswith("LayerNorm.weight") else 0.1 * noise)
        x = _seeded(7, 384, seed=1, dtype=torch.float32)
        out = torch.as_tensor(fn(layer, x), dtype=torch.float64)
    if out.shape != (7, 384):
        raise ValueError(f"fn(layer, x) must return x's shape (7, 384) for x of shape (7, 384), got {tuple(out.shape)}")
    return [("norm of the output", out.norm().item()), ("norm of its first row", out[0].norm().item())]


LAST_MAP_CASES = ((12, 3), (6, 3), (24, 6), (12, 4), (6, 2), (12, 12))


def _probe_last_map(fn: Callable) -> list[tuple[str, list[int]]]:
    """04.3: last_map(L_t, L_s) on fixed depths, each result flattened to a list of layer numbers."""
    out = []
    for teacher_layers, student_layers in LAST_MAP_CASES:
        pairs = fn(teacher_layers, student_layers)
        if pairs is None:
            raise ValueError(f"last_map({teacher_layers}, {student_layers}) returned None")
        out.append((f"last_map({teacher_layers}, {student_layers})", [int(v) for pair in pairs for v in pair]))
    return out


def cos_cls_inputs(seed: int) -> LossInputs:
    """04.4: a float64 batch with the fields a [CLS] loss may read (B=3, n=5, H=8, student 3 layers, teacher 6)."""
    states = tuple(_seeded(3, 5, 8, seed=seed * 10 + e) for e in range(4))
    return LossInputs(student_logits=_seeded(3, 2, seed=seed), student_hidden_states=states,
                      teacher_cls_hidden=_seeded(3, 7, 8, seed=seed * 10 + 9), labels=torch.tensor([0, 1, 1]),
                      teacher_logits=_seeded(3, 2, seed=seed + 50), attention_mask=torch.ones(3, 5))


def _probe_cos_cls(fn: Callable) -> list[tuple[str, float]]:
    """04.4: the loss's total on two fixed batches."""
    out = []
    for seed in (1, 2):
        result = fn(cos_cls_inputs(seed))
        total = result.total if isinstance(result, LossResult) else result
        out.append((f"the loss on fixed batch {seed}", float(torch.as_tensor(total).detach())))
    return out


PROBES: dict[str, Callable] = {"01.3/pre_ln_layer": _probe_pre_ln, "04.3/last_map": _probe_last_map,
                               "04.4/cos_cls": _probe_cos_cls}


def function_values(key: str, field: str, fn: Callable) -> list[tuple[str, Any]]:
    """Call a submitted function on the fixed cases of (key, field): [(what was computed, value), ...]."""
    return PROBES[f"{key}/{field}"](fn)


# ---------------------------------------------------------------- grading

def load_exercises() -> dict:
    """{key: {"title", "notebook", "fields": {name: spec}}} from exercises.json."""
    return json.loads(EXERCISES_FILE.read_text(encoding="utf-8"))["exercises"]


def candidate_digests(key: str, field: str, value: Any, spec: dict) -> list[str]:
    """The digests `value` may stand for (see `candidates`); ValueError if it has the wrong type."""
    return [digest(key, field, text) for text in candidates(value, spec)]


def _grade_value(key: str, field: str, spec: dict, value: Any) -> tuple[str, str]:
    """("correct" | "wrong", detail) for a plain (non-function) field."""
    try:
        digests = candidate_digests(key, field, value, spec)
    except ValueError as err:
        return "wrong", str(err)
    if spec["digest"] in digests:
        return "correct", ""
    for d in digests:
        hint = spec.get("hints", {}).get(d)
        if hint:
            return "wrong", hint
    as_percent = candidate_digests(key, field, value * 100, spec) if spec["kind"] == "float" and spec.get("percent") \
        else []
    if spec["digest"] in as_percent:
        return "wrong", "that is a fraction; the question asks for a percentage"
    return "wrong", ""


def _grade_function(key: str, field: str, spec: dict, fn: Callable) -> tuple[str, str]:
    """Call a submitted function on the fixed cases; ("correct" | "wrong" | "unanswered", detail)."""
    try:
        computed = function_values(key, field, fn)
    except NotImplementedError:
        return "unanswered", ""
    except Exception as err:  # noqa: BLE001 - a student's function failing is feedback, not a crash
        return "wrong", f"calling it raised {type(err).__name__}: {err}"
    matched = []  # per case: the digests the returned value may stand for
    for (what, value), case in zip(computed, spec["cases"]):
        try:
            matched.append(candidate_digests(key, f"{field}/{what}", value, case))
        except ValueError as err:
            return "wrong", f"{what}: {err}"
    wrong = [what for (what, _), case, digests in zip(computed, spec["cases"], matched)
             if case["digest"] not in digests]
    if not wrong:
        return "correct", ""
    for hint, case_digests in spec.get("hints", {}).items():
        if all(d in digests for d, digests in zip(case_digests, matched)):
            return "wrong", hint
    return "wrong", f"{wrong[0]} is not right" + (f" (and {len(wrong) - 1} more cases)" if wrong[1:] else "")


def _exercise(key: str) -> dict:
    """The stored spec of exercise `key`; ValueError naming the checked exercises if there is none."""
    exercises = load_exercises()
    if key not in exercises:
        raise ValueError(f"check_exercise: unknown exercise {key!r}; the checked exercises are {sorted(exercises)}")
    return exercises[key]


def grade_exercise(key: str, answer: dict, exercise: dict = None) -> dict[str, tuple[str, str]]:
    """Grade `answer` ({field: value}) for exercise `key`: {field: (status, detail)} with status "correct", "wrong"
    or "unanswered" (the value is None or ...). ValueError for an unknown key or field, or an answer that is not a
    dict. `exercise`: its stored spec, when the caller has read it already."""
    fields = (exercise or _exercise(key))["fields"]
    if not isinstance(answer, dict):
        raise ValueError(f"check_exercise({key!r}, answer): answer must be a dict with the keys {list(fields)}, "
                         f"got {type(answer).__name__}")
    unknown = sorted(set(answer) - set(fields))
    if unknown:
        raise ValueError(f"check_exercise({key!r}): unknown field(s) {unknown}; exercise {key} asks for {list(fields)}")
    report = {}
    for field, spec in fields.items():
        value = answer.get(field)
        if any(value is u for u in UNANSWERED):
            report[field] = ("unanswered", "")
            continue
        grade = _grade_function if spec["kind"] == "function" else _grade_value
        report[field] = grade(key, field, spec, value)
    return report


def check_exercise(key: str, answer: dict) -> None:
    """Print which fields of `answer` are right for exercise `key` ("02.5": notebook 02, exercise 5)."""
    spec = _exercise(key)
    report = grade_exercise(key, answer, spec)
    done = sum(status == "correct" for status, _ in report.values())
    lines = [f"Exercise {key} ({spec['title']}): {done} of {len(report)} right"]
    marks = {"correct": "right", "wrong": "WRONG", "unanswered": "not answered yet"}
    for field, (status, detail) in report.items():
        line = f"  {field}: {marks[status]}"
        if status != "correct":
            line += f" - {spec['fields'][field]['help']}" + (f"; {detail}" if detail else "")
        lines.append(line)
    print("\n".join(lines))
