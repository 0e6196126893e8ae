"""Course assignments that extend pea_kd.losses through its one extension point, @register_loss.

Each assignment is a notebook in notebooks/assignments/ with a statement, a starter to fill in and a checker:

    1. attention-distribution KD        check_attention_kd(fn)           fn(inputs: LossInputs) -> LossResult
    2. hidden-state MSE + projection    check_hidden_projection(cls)     nn.Module loss (needs_params=True)
    3. temperature-annealed KD          check_annealed_temperature(fn),  check_annealed_kd(cls)  (stateful module)
    4. InfoNCE on [CLS] vectors         check_info_nce(fn)               fn(h_s, h_t, tau) -> scalar tensor

The short exercises at the end of the notebooks with one definite answer are checked by
`check_exercise(key, answer)` (pea_kd.assignments.exercises): it says which parts of an answer are right without
the answer being stored anywhere in plain text.

A checker grades your code on fixed float64 cases against the stored values in expected.json (written once from the
instructor's model answers, which are not part of the student copy), checks properties, runs
torch.autograd.gradcheck, prints a short report and returns a CheckResult. A wrong answer raises AssertionError with
the likely mistake named (missing T^2, reversed KL, padded tokens not masked, no normalisation, wrong reduction, ...).
"""

from .checker import (check_annealed_kd, check_annealed_temperature, check_attention_kd, check_hidden_projection,
                      check_info_nce)
from .exercises import check_exercise
from .grading import AssignmentFailure, CheckResult

__all__ = ["check_attention_kd", "check_hidden_projection", "check_annealed_temperature", "check_annealed_kd",
           "check_info_nce", "check_exercise", "AssignmentFailure", "CheckResult"]
