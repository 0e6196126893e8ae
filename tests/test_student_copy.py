"""The student copy (scripts/make_student_copy.py, `make student-copy`) holds no answers, and its checkers work.

The copy is built into a temporary directory. In it, a fresh Python process (whose imports resolve to the copy only)
grades the instructor's model answers, loaded from this repository's instructor/solutions.py by path, with the
copy's checkers: all pass; a wrong answer fails with a named mistake; a starter is "not implemented yet". The
instructor's answers to the auto-checked exercises (instructor/exercise_answers.py) pass the copy's check_exercise.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_student_copy import make_student_copy, strip_instructor_blocks  # noqa: E402

# an import of the instructor's package, or a use of a model answer's name
LEAKS = re.compile(r"^\s*(import|from)\s+instructor\b|\b\w+_solution\(|\b\w+Solution\b", re.M)
GRADE_IN_COPY = r'''
import importlib.util, sys
from pathlib import Path
import pea_kd
assert Path(pea_kd.__file__).resolve().is_relative_to(Path.cwd().resolve()), pea_kd.__file__
try:
    import instructor
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("the student copy can import instructor")
from pea_kd.assignments import (AssignmentFailure, check_annealed_kd, check_annealed_temperature, check_attention_kd,
                                check_hidden_projection, check_info_nce)
spec = importlib.util.spec_from_file_location("reference_solutions", sys.argv[1])
S = importlib.util.module_from_spec(spec)
spec.loader.exec_module(S)
for check, answer in [(check_attention_kd, S.attention_kd_solution), (check_hidden_projection, S.HiddenProjectionSolution),
                      (check_annealed_temperature, S.annealed_temperature_solution),
                      (check_annealed_kd, S.AnnealedKDSolution), (check_info_nce, S.info_nce_solution)]:
    result = check(answer, require_implemented=True, verbose=False)
    assert result.passed and result.cases >= 4, result
    print("passed:", result.assignment)
try:
    check_info_nce(lambda h_s, h_t, tau: 2 * S.info_nce_solution(h_s, h_t, tau), verbose=False)
except AssignmentFailure as err:
    print("rejected:", err)
else:
    raise AssertionError("a wrong answer passed")
def starter(inputs):
    raise NotImplementedError
print("starter:", check_attention_kd(starter, verbose=False).status)
from pea_kd.assignments.exercises import grade_exercise
spec = importlib.util.spec_from_file_location("reference_exercises", sys.argv[2])
E = importlib.util.module_from_spec(spec)
spec.loader.exec_module(E)
for key, answer in E.answers().items():
    assert {status for status, _ in grade_exercise(key, answer).values()} == {"correct"}, key
    print("exercise correct:", key)
'''


def test_student_copy_has_no_answers_and_its_checkers_grade_the_references(tmp_path):
    dest = tmp_path / "student"
    files = make_student_copy(dest)
    assert not (dest / "instructor").exists() and not any(f.startswith("instructor/") for f in files)
    assert not (dest / "scripts" / "make_student_copy.py").exists() and not (dest / "tests" / __name__).exists()
    assert (dest / "pea_kd" / "assignments" / "expected.json").is_file()
    makefile = (dest / "Makefile").read_text()
    assert "student-copy" not in makefile and "INSTRUCTOR" not in makefile and "\ntest:" in makefile
    for path in dest.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".ipynb", ".md"):
            text = path.read_text(encoding="utf-8")
            leak = LEAKS.search(text)
            assert not leak, f"{path.relative_to(dest)} contains {leak.group(0)!r}"
    env = {**os.environ, "PYTHONPATH": str(dest), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", GRADE_IN_COPY, str(ROOT / "instructor" / "solutions.py"),
                          str(ROOT / "instructor" / "exercise_answers.py")], cwd=dest,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("passed:") == 5
    assert "rejected: [InfoNCE] your loss is 2x too large on every case" in out.stdout
    assert "starter: not implemented" in out.stdout
    assert out.stdout.count("exercise correct:") == 18


def test_instructor_blocks_are_stripped_and_bad_markers_are_errors(tmp_path):
    text = "a\n# BEGIN INSTRUCTOR\nsecret\n# END INSTRUCTOR\nb\n"
    assert strip_instructor_blocks(text, "f") == "a\nb\n"
    with pytest.raises(ValueError, match="f: BEGIN INSTRUCTOR without a matching END INSTRUCTOR"):
        strip_instructor_blocks("a\n# BEGIN INSTRUCTOR\n", "f")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        make_student_copy(tmp_path / "full")
