"""INSTRUCTOR ONLY. The assignment notebooks run top to bottom with the model answers filled in.

The student notebooks are committed with their starters (the later cells say they run once the checks pass). Here
each starter cell is followed by a cell that puts the instructor's answer in its place, the notebook is executed as
tests/test_notebooks.py executes notebooks (fresh kernel, PEA_KD_FAST=1), and every check must pass.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from test_notebooks import NOTEBOOK_DIR, failure_report, kernel_env, nbclient, nbformat, run_notebook  # noqa: E402,F401

# starter cell (recognised by a line of its source) -> the cell that replaces the student's answer by the model answer
ANSWERS = {
    "a1_attention_kd": {"def my_attention_kd(": '''from instructor import solutions
my_attention_kd = register_loss("my_attention_kd", replace=True, requires=(
    "student_attentions", "teacher_attentions", "attention_mask"))(solutions.attention_kd_solution)'''},
    "a2_hidden_projection": {"class MyHiddenProjection(": '''from instructor import solutions
MyHiddenProjection = register_loss("my_hidden_projection", replace=True, needs_params=True, requires=(
    "student_hidden_states", "teacher_cls_hidden"))(solutions.HiddenProjectionSolution)'''},
    "a3_temperature_annealing": {
        "def annealed_temperature(": '''from instructor import solutions
annealed_temperature = solutions.annealed_temperature_solution''',
        "class MyAnnealedKD(": '''MyAnnealedKD = register_loss("my_annealed_kd", replace=True, needs_params=True, requires=(
    "labels", "teacher_logits"))(solutions.AnnealedKDSolution)'''},
    "a4_info_nce": {"def info_nce(": '''from instructor import solutions
info_nce = solutions.info_nce_solution'''},
}


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_assignment_notebook_runs_with_the_model_answers(name, kernel_env):
    path = NOTEBOOK_DIR / "assignments" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        for marker, answer in ANSWERS[name].items():
            if cell.cell_type == "code" and marker in cell.source:
                cells.append(nbformat.v4.new_code_cell(answer))
    assert len(cells) == len(nb.cells) + len(ANSWERS[name]), f"{name}: a starter cell was not found"
    nb.cells = cells
    try:
        run_notebook(nb, path.parent)
    except Exception as err:  # noqa: BLE001 - report the failing cell
        pytest.fail(failure_report(name, nb, err), pytrace=False)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "PASSED" in text and "FAILED" not in text and "not implemented" not in text
    assert "runs once" not in text and "appear once" not in text  # the demo cells ran
