"""The auto-checked exercises (pea_kd.assignments.exercises): the notebooks' check cells match exercises.json, the
file holds digests and never an answer, and the grading rules (rounding tolerance, types, hints, functions that fail
or are not written yet) behave as the module says. Grading the model answers is in instructor/tests (they are not
part of the student copy)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pea_kd.assignments import check_exercise
from pea_kd.assignments.exercises import (EXERCISES_FILE, _grade_value, candidates, digest, format_float,
                                          grade_exercise, load_exercises)

ROOT = Path(__file__).resolve().parent.parent
CHECK_CALL = re.compile(r'check_exercise\("([^"]+)",\s*\{(.*?)\}\)', re.S)


def check_calls() -> list[tuple[str, str, list[str]]]:
    """(notebook, key, field names) of every check_exercise call in the notebooks."""
    calls = []
    for path in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        if any(part.startswith(".") for part in path.relative_to(ROOT / "notebooks").parts):
            continue  # .ipynb_checkpoints/ (JupyterLab's copies, e.g. after make notebooks) are not the notebooks
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            for key, body in CHECK_CALL.findall("".join(cell["source"])):
                calls.append((path.relative_to(ROOT / "notebooks").as_posix(), key, re.findall(r'"(\w+)":', body)))
    return calls


def test_every_checked_exercise_has_one_cell_in_its_notebook_with_its_fields():
    exercises = load_exercises()
    calls = check_calls()
    assert sorted(key for _, key, _ in calls) == sorted(exercises), "check cells and exercises.json disagree"
    for notebook, key, fields in calls:
        assert notebook == exercises[key]["notebook"], f"{key} is checked in {notebook}, not its notebook"
        assert fields == list(exercises[key]["fields"]), f"{notebook}: {key} asks for {list(exercises[key]['fields'])}"


def test_the_file_holds_digests_not_answers():
    about = json.loads(EXERCISES_FILE.read_text(encoding="utf-8"))["_about"]
    assert "make_fixtures" in about["written_by"]
    hexdigest = re.compile(r"^[0-9a-f]{64}$")
    for key, exercise in load_exercises().items():
        for field, spec in exercise["fields"].items():
            assert set(spec) <= {"kind", "help", "decimals", "percent", "digest", "cases", "hints"}, (key, field)
            digests = [spec["digest"]] if "digest" in spec else [c["digest"] for c in spec["cases"]]
            assert digests and all(hexdigest.match(d) for d in digests), (key, field)


def spec_for(key, field, text, kind="float", **extra):
    return {"kind": kind, "help": "h", "digest": digest(key, field, text), **extra}


def test_a_number_passes_within_half_a_unit_of_the_last_decimal_and_not_beyond():
    spec = spec_for("k", "f", "12.4", decimals=1, percent=True)
    for value in (12.4, 12.36, 12.44, 12.35, 12.449):
        assert _grade_value("k", "f", spec, value)[0] == "correct", value
    for value in (12.3, 12.5, 12.2, -12.4):
        assert _grade_value("k", "f", spec, value)[0] == "wrong", value
    assert _grade_value("k", "f", spec, 0.124) == ("wrong", "that is a fraction; the question asks for a percentage")
    assert _grade_value("k", "other_field", spec, 12.4)[0] == "wrong"  # the field salts the digest


def test_canonical_forms():
    assert format_float(-0.0001, 2) == "0.00" and format_float(0.43749, 4) == "0.4375"
    assert format_float(12345.6, -2) == "12300"
    assert candidates(3.0, {"kind": "int"}) == ["3"] and candidates({4, 1}, {"kind": "int_set"}) == ["1,4"]
    assert candidates(["Token_Type ", "position"], {"kind": "names"}) == ["position,token_type"]
    assert candidates([4, 1], {"kind": "int_list"}) == ["4,1"]
    assert candidates(torch.tensor([4, 1]), {"kind": "int_list"}) == candidates(np.array([4, 1]), {"kind": "int_list"})
    assert candidates(np.int64(7), {"kind": "int"}) == ["7"] and candidates(torch.tensor(0.25), {"kind": "float",
                                                                                             "decimals": 2}) == ["0.25"]
    for value, kind, phrase in [(True, "int", "whole number"), (2.5, "int", "whole number"), ("x", "float", "finite"),
                                (float("nan"), "float", "finite"), ("ab", "names", "collection"),
                                ([1.5], "int_list", "whole numbers"), (3, "name", "a name")]:
        with pytest.raises(ValueError, match=phrase):
            candidates(value, {"kind": kind, "decimals": 1})


def test_hints_name_a_known_slip():
    spec = spec_for("k", "n", "4", kind="int", hints={digest("k", "n", "3"): "count the last batch"})
    assert _grade_value("k", "n", spec, 3) == ("wrong", "count the last batch")
    assert _grade_value("k", "n", spec, 5) == ("wrong", "")


def test_bad_calls_are_one_line_errors():
    with pytest.raises(ValueError, match=r"unknown exercise '9.9'; the checked exercises are \['01.3'"):
        grade_exercise("9.9", {})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['acc'\]; exercise 02.5 asks for \['accuracy'"):
        grade_exercise("02.5", {"acc": 1})
    with pytest.raises(ValueError, match="answer must be a dict"):
        grade_exercise("02.5", 12.4)


def test_unanswered_wrong_and_failing_functions_are_reported_not_raised(capsys):
    def not_written(L_t, L_s):
        raise NotImplementedError

    def broken(L_t, L_s):
        return 1 / 0

    assert grade_exercise("04.3", {"last_map": not_written}) == {"last_map": ("unanswered", "")}
    status, detail = grade_exercise("04.3", {"last_map": broken})["last_map"]
    assert status == "wrong" and detail == "calling it raised ZeroDivisionError: division by zero"
    status, detail = grade_exercise("04.3", {"last_map": lambda L_t, L_s: [(0, 0)]})["last_map"]
    assert status == "wrong" and detail == "last_map(12, 3) is not right (and 5 more cases)"
    report = grade_exercise("02.5", {"accuracy": ..., "f1": None, "mcc": "high"})
    assert report["accuracy"][0] == report["f1"][0] == report["nothing_learned"][0] == "unanswered"
    assert report["mcc"] == ("wrong", "expected a finite number, got 'high'")
    check_exercise("02.5", {"accuracy": ..., "mcc": "high"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "Exercise 02.5 (Baselines): 0 of 4 right"
    assert printed[1] == "  accuracy: not answered yet - accuracy in %, 1 decimal"
    assert printed[3] == "  mcc: WRONG - Matthews correlation, 2 decimals; expected a finite number, got 'high'"
