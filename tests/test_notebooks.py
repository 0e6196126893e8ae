"""The notebooks run top to bottom, as a reader runs them, and keep the course's shape.

Every notebooks/*.ipynb and notebooks/assignments/*.ipynb is picked up automatically (one test per file) and
executed with nbclient:

* in a fresh kernel that runs *this* Python (a kernel spec written to a temporary JUPYTER_PATH, so a globally
  registered "python3" kernel cannot substitute another environment);
* on an in-memory copy: the committed file and its outputs are never rewritten by the tests;
* with cwd = the notebook's folder, PEA_KD_FAST=1 (the notebooks' short setting), $GLUE_DIR defaulting to the shared
  GLUE copy next to the repository, and the features cache in a temporary directory;
* with a 600 s limit per cell. A failure names the notebook, the cell number, the cell's source and the error.

After the run, the stored outputs are compared with the fresh ones (a stale output is one the current code no longer
prints): the text of every code cell's stdout, results and displays (not stderr, not images), with timings, temporary
paths, memory addresses, the GLUE directory (it depends on the checkout's location), the fast-mode flag and the
precision line (runtime.precision_note: this machine's CPU and what `--amp auto` picks) normalised. Cells tagged
`fast-mode-differs` (their output depends on PEA_KD_FAST: fewer examples) or `varies-between-runs` (they print measured
speeds or memory addresses) are not compared.

The words must match exactly; the numbers in them are compared for what they are, because the same code prints other
last digits on another CPU (AVX2, AVX-512, ATEN_CPU_CAPABILITY=default) or in another precision (`--amp auto` trains in
bf16 where the CPU has native bf16):
* a whole number (a count, a shape, a parameter count) must be equal;
* a decimal printed with two or more significant digits may differ by one unit in its last digit: float noise that
  crosses a rounding boundary (0.6939 / 0.6940). One printed with a single significant digit (0.0, 1e-05) is a claim
  and must be equal; a notebook prints a float error as the bound it meets ("< 1e-5"), not as raw noise;
* a cell whose numbers come from a small training run states its band in its metadata, `"pea_kd": {"rtol": 0.025}`:
  its decimals may differ by that fraction of their size (the notebook says so in its text too).

Notebooks that read GLUE (metadata `pea_kd.needs_glue`, or a call to load_examples / load_features) are skipped when
no GLUE data is found. The structure tests check that each notebook ends with an "Exercises" markdown cell (followed only by the cells of
its auto-checked exercises), asserts
at least one fact in code (so a silently wrong notebook fails), imports the project's packages, and is committed with
its outputs (which the documentation site renders), free of stored errors and reasonably small.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb")) + sorted((NOTEBOOK_DIR / "assignments").glob("*.ipynb"))
IDS = [p.relative_to(NOTEBOOK_DIR).as_posix() for p in NOTEBOOKS]
CELL_TIMEOUT_S = 600
MAX_SIZE_KB = 500
KERNEL_NAME = "pea-kd-test-python"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
GLUE_CALL = re.compile(r"\b(load_examples|load_features)\s*\(")
UNCOMPARED_TAGS = {"fast-mode-differs", "varies-between-runs"}
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d+|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")  # not in names or versions
NORMALISE = [  # (pattern, replacement): what may differ between two runs of the same code
    (re.compile(r"\b\d+(\.\d+)?(e[+-]?\d+)?\s*(s|ms|µs|us|sec|seconds|min)\b"), "<time>"),
    (re.compile(r"/tmp/[\w./-]+"), "<tmp>"),
    (re.compile(r"0x[0-9a-fA-F]+"), "<addr>"),
    (re.compile(r"fast mode: (True|False)"), "fast mode: <fast>"),
    (re.compile(r"\b\d+(\.\d+)? ?(KB|MB|kB)\b"), "<size>"),
    (re.compile(r"GLUE data: \S+"), "GLUE data: <GLUE_DIR>"),  # the notebooks print where they read GLUE from
    (re.compile(r"^precision: .*$", re.M), "precision: <this machine>"),  # pea_kd.runtime.precision_note()
]


def glue_dir() -> Path:
    """Where the notebooks will look for GLUE: $GLUE_DIR, else the shared copy, else <root>/data/glue."""
    if os.environ.get("GLUE_DIR"):
        return Path(os.environ["GLUE_DIR"])
    shared = ROOT.parent / "shared" / "glue_data"
    return shared if shared.is_dir() else ROOT / "data" / "glue"


def needs_glue(nb) -> bool:
    flag = nb.metadata.get("pea_kd", {}).get("needs_glue")
    if flag is not None:
        return bool(flag)
    return any(c.cell_type == "code" and GLUE_CALL.search(c.source) for c in nb.cells)


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Environment for the kernels: a kernel spec for sys.executable, fast mode, GLUE dir, temporary caches."""
    jupyter_path = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "pea-kd tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    cache = tmp_path_factory.mktemp("features-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join([str(jupyter_path), os.environ.get("JUPYTER_PATH", "")]))
        mp.setenv("PEA_KD_FAST", "1")
        mp.setenv("PEA_KD_CACHE_DIR", str(cache))
        mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        if not os.environ.get("GLUE_DIR") and glue_dir().is_dir():
            mp.setenv("GLUE_DIR", str(glue_dir()))
        yield


def run_notebook(nb, cwd: Path) -> float:
    """Execute `nb` in place (in memory); returns the wall time in seconds."""
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                                     resources={"metadata": {"path": str(cwd)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def failure_report(name: str, nb, err: Exception) -> str:
    """One readable message: which cell failed, its source, and the error (ANSI colours removed)."""
    for index, cell in enumerate(nb.cells):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if cell.cell_type == "code" and errors:
            tb = ANSI.sub("", "\n".join(errors[0].get("traceback", [])))
            tb = "\n".join(tb.splitlines()[-40:])
            return (f"{name}: cell {index} raised {errors[0]['ename']}: {errors[0]['evalue']}\n"
                    f"--- cell source ---\n{cell.source}\n--- traceback (last lines) ---\n{tb}")
    return f"{name}: {type(err).__name__}: {ANSI.sub('', str(err))[-4000:]}"


def output_text(cell) -> str:
    """The deterministic text of a code cell's outputs: stdout, results, displays (text/plain or markdown), normalised."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            if out.get("name") == "stdout":
                parts.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            data = out.get("data", {})
            if "image/png" not in data:  # a figure's text/plain is only "<Figure size ...>"
                parts.append(data.get("text/markdown") or data.get("text/plain", ""))
    text = ANSI.sub("", "".join(parts))
    for pattern, replacement in NORMALISE:
        text = pattern.sub(replacement, text)
    return text


def numbers_agree(before: str, now: str, rtol: float = 0.0) -> bool:
    """Whether two printed numbers say the same (see the module docstring): whole numbers equal; decimals within one
    unit of the last printed digit (two or more significant digits) or within `rtol` of their size (a cell's band)."""
    if before == now:
        return True
    form = [(decimals(text), "e" in text.lower()) for text in (before, now)]
    if form[0] != form[1] or form[0] == (0, False):
        return False  # whole numbers, or printed in another form (other decimals, e-notation)
    a, b = float(before), float(now)
    tolerance = rtol * max(abs(a), abs(b))
    if min(significant_digits(before), significant_digits(now)) >= 2:
        tolerance = max(tolerance, last_digit_unit(before), last_digit_unit(now))  # 9.99e-07 / 1.00e-06
    return abs(a - b) <= tolerance * (1 + 1e-9)


def significant_digits(number: str) -> int:
    """Digits of the mantissa after leading zeros: "0.0690" -> 3, "1.25e-06" -> 3, "0.0" -> 0."""
    return len(number.lower().partition("e")[0].lstrip("+-").replace(".", "").lstrip("0"))


def decimals(number: str) -> int:
    """Digits after the point of the mantissa: "0.6939" -> 4, "1.25e-06" -> 2, "12" -> 0."""
    return len(number.lower().partition("e")[0].partition(".")[2])


def last_digit_unit(number: str) -> float:
    """The value of one unit in the last printed digit: "0.6939" -> 1e-4, "1.25e-06" -> 1e-8, "12" -> 1."""
    return 10.0 ** (int(number.lower().partition("e")[2] or 0) - decimals(number))


def same_output(before: str, now: str, rtol: float = 0.0) -> bool:
    """The same words, and numbers that agree (numbers_agree) one by one."""
    if NUMBER.split(before) != NUMBER.split(now):  # the text between the numbers
        return False
    old, new = NUMBER.findall(before), NUMBER.findall(now)
    return len(old) == len(new) and all(numbers_agree(a, b, rtol) for a, b in zip(old, new))


def stale_outputs(name: str, committed, executed) -> list[str]:
    """One message per compared code cell whose committed text output differs from what the code prints now."""
    problems, compared = [], 0
    for index, (old, new) in enumerate(zip(committed.cells, executed.cells)):
        if old.cell_type != "code" or UNCOMPARED_TAGS & set(old.get("metadata", {}).get("tags", [])):
            continue
        compared += 1
        before, now = output_text(old), output_text(new)
        rtol = old.get("metadata", {}).get("pea_kd", {}).get("rtol", 0.0)
        if not same_output(before, now, rtol):
            diff = "\n".join(difflib.unified_diff(before.splitlines(), now.splitlines(), "committed", "now",
                                                 lineterm="", n=1))
            band = f" (numbers beyond one unit in their last digit{f' and the band rtol {rtol}' if rtol else ''})"
            problems.append(f"{name}: cell {index} has stale outputs{band} (re-execute and save the notebook):\n"
                            f"{diff[:2000]}")
    if not compared:
        problems.append(f"{name}: no code cell was compared; tag only the cells whose output depends on "
                        f"PEA_KD_FAST or varies between runs")
    return problems


def test_kernel_runs_this_python(kernel_env):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, sys\nprint(sys.executable)\nprint(os.environ['PEA_KD_FAST'])")])
    run_notebook(nb, NOTEBOOK_DIR if NOTEBOOK_DIR.is_dir() else ROOT)
    lines = nb.cells[0].outputs[0]["text"].split()
    assert Path(lines[0]).resolve() == Path(sys.executable).resolve() and lines[1] == "1"


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, f"expected the course notebooks in {NOTEBOOK_DIR}, found {IDS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_executes(path, kernel_env):
    nb = nbformat.read(path, as_version=4)  # an in-memory copy; the committed file is not written
    name = path.relative_to(NOTEBOOK_DIR).as_posix()
    if needs_glue(nb) and not (glue_dir() / "MRPC").is_dir():
        pytest.skip(f"{name} reads GLUE data and none was found at {glue_dir()} (set GLUE_DIR)")
    try:
        seconds = run_notebook(nb, path.parent)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        pytest.fail(failure_report(name, nb, err), pytrace=False)
    print(f"{name}: executed in {seconds:.1f} s (PEA_KD_FAST=1)")
    problems = stale_outputs(name, nbformat.read(path, as_version=4), nb)
    assert not problems, "\n\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    name = path.relative_to(NOTEBOOK_DIR).as_posix()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    headings = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                and re.search(r"^#+\s*Exercises\b", c.source, re.M)]
    assert headings, f"{name}: the notebook must end with a markdown cell with an '## Exercises' heading"
    after = [i for i, c in enumerate(nb.cells[headings[-1] + 1:], headings[-1] + 1)
             if c.cell_type == "code" and "check_exercise(" not in c.source]
    assert not after, f"{name}: after '## Exercises' only checked-exercise cells (check_exercise) may follow; " \
                      f"cells {after} are not"
    assert any(re.search(r"^\s*assert\b", c.source, re.M) for c in code), \
        f"{name}: no code cell asserts anything; assert at least one fact the notebook shows"
    assert any(re.search(r"^\s*(from|import)\s+(pea_kd|bert_mini)\b", c.source, re.M) for c in code), \
        f"{name}: the notebook must import the project's packages (pea_kd / bert_mini), not copy their code"
    assert any(c.get("outputs") for c in code), f"{name}: committed without outputs; execute it and save the outputs"
    stored_errors = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                     and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert not stored_errors, f"{name}: cells {stored_errors} were saved with an error output"
    size_kb = path.stat().st_size / 1024
    assert size_kb < MAX_SIZE_KB, f"{name}: {size_kb:.0f} KB > {MAX_SIZE_KB} KB; lower the figure dpi or trim outputs"


def output_cell(text, tags=(), rtol=None):
    metadata = {"tags": list(tags), **({"pea_kd": {"rtol": rtol}} if rtol is not None else {})}
    return nbformat.v4.new_code_cell("print()", outputs=[nbformat.v4.new_output("stream", name="stdout", text=text)],
                                     metadata=metadata)


def test_stale_output_check_normalises_timings_and_catches_changed_text():
    def notebook(*cells):
        return nbformat.v4.new_notebook(cells=list(cells))
    old = notebook(output_cell("took 54.5 s in /tmp/pea-kd-x1/run, fast mode: False\n"
                               "GLUE data: /work/shared/glue_data\nprecision: fp32 (AVX2, no native bf16)\n"),
                   output_cell("acc 0.70\n"), output_cell("acc 0.10\n", tags=["fast-mode-differs"]))
    new = notebook(output_cell("took 2.7 s in /tmp/pea-kd-y2/run, fast mode: True\nGLUE data: /ci/shared/glue_data\n"
                               "precision: bf16 (AVX512, native bf16)\n"),
                   output_cell("acc 0.70\n"), output_cell("acc 0.20\n"))
    assert stale_outputs("nb", old, new) == []
    new.cells[1] = output_cell("acc_and_f1 0.75\n")
    [problem] = stale_outputs("nb", old, new)
    assert "cell 1 has stale outputs" in problem and "-acc 0.70" in problem and "+acc_and_f1 0.75" in problem


STORED = """dev loss before training: 0.6939   (ln 2 = 0.6931), mean |z_t| = 0.014
22,713,986 parameters, 6 layers; after 6 layers: max |module - by hand| < 1e-05; padded keys: 0.0
| method | acc (final) |
|---|---|
| SPS + PKD | 72.4 |
"""


@pytest.mark.parametrize("now", [
    STORED,
    STORED.replace("0.6939", "0.6940"),  # float noise across a rounding boundary: one unit in the last digit
    STORED.replace("0.014", "0.013").replace("72.4", "72.5"),
    "max |P (module) - P (by hand)| = 1.00e-06\n",  # (vs 9.99e-07: one unit across a power of ten)
])
def test_float_noise_in_the_last_digit_is_not_stale(now):
    stored = "max |P (module) - P (by hand)| = 9.99e-07\n" if now.startswith("max") else STORED
    assert same_output(stored, now)


@pytest.mark.parametrize("now", [
    STORED.replace("0.6939", "0.6941"),  # a number that moved (two units)
    STORED.replace("22,713,986", "22,713,987"),  # a count
    STORED.replace("6 layers;", "5 layers;"),
    STORED.replace("< 1e-05", "< 1e-04"),  # a changed claim (one significant digit: exact)
    STORED.replace("padded keys: 0.0", "padded keys: 0.1"),
    STORED.replace("| 72.4 |", "| 72.4 | 81.0 |"),  # a changed table: a new column
    STORED.replace("SPS + PKD", "Pea-KD"),
    STORED.replace("0.6939", "0.69"),  # another format
    STORED.replace("72.4", "72"),
])
def test_changed_text_claims_tables_and_numbers_are_stale(now):
    assert not same_output(STORED, now)


def test_a_training_cell_may_move_within_its_stated_band_only():
    stored = "SPS + PKD   72.4%  has learned something\nfinal acc 0.724, 2 epochs\n"
    assert same_output(stored, "SPS + PKD   71.6%  has learned something\nfinal acc 0.716, 2 epochs\n", rtol=0.03)
    assert not same_output(stored, "SPS + PKD   71.6%  has learned something\nfinal acc 0.716, 2 epochs\n")
    for now in ("SPS + PKD   68.9%  has learned something\nfinal acc 0.689, 2 epochs\n",  # beyond the band
                "SPS + PKD   72.4%  one class for every sentence\nfinal acc 0.724, 2 epochs\n",  # another claim
                "SPS + PKD   72.4%  has learned something\nfinal acc 0.724, 3 epochs\n"):  # whole numbers: exact
        assert not same_output(stored, now, rtol=0.03), now
    old = nbformat.v4.new_notebook(cells=[output_cell(stored, rtol=0.03)])
    new = nbformat.v4.new_notebook(cells=[output_cell(stored.replace("0.724", "0.689"))])
    [problem] = stale_outputs("nb", old, new)
    assert "band rtol 0.03" in problem and "+final acc 0.689" in problem
