"""scripts/browser_check.py (`make test-browser`) and scripts/lab.py (`make notebooks`).

The first tests need no browser and run everywhere: the verdict on a page, the kernel spec, the clean-up sweep. The
last ones start JupyterLab and headless Chromium to prove that the check fails, in one line and without leaving a
process behind, when a notebook raises and when the server cannot start. They need Chromium and JupyterLab, so they
run when PEA_KD_BROWSER_TESTS=1 (`make test-browser` sets it, after installing both) and are skipped otherwise;
`make test` stays free of a browser.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import browser_check  # noqa: E402
import lab  # noqa: E402

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PYTHON3 = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}  # as the course's
browser = pytest.mark.skipif(os.environ.get("PEA_KD_BROWSER_TESTS") != "1",
                             reason="needs Chromium and JupyterLab: run by `make test-browser`")


def page_cell(index, kind="code", source="x = 1", count=1, errors=(), images=0):
    """One cell as PAGE_STATE_JS reads it from the page."""
    return {"index": index, "type": kind, "source": source, "execution_count": count, "running": False,
            "outputs": len(errors) + images, "errors": [list(e) for e in errors], "images": images}


def test_verdict_passes_a_page_where_every_cell_ran_and_drew_its_figure():
    cells = [page_cell(0, "markdown", "# title", None), page_cell(1), page_cell(2, images=1),
             page_cell(3, source="  \n", count=None)]  # JupyterLab leaves an empty code cell unrun
    assert browser_check.verdict(cells, figure_cells={2}) == []


def test_verdict_names_the_error_the_cells_not_run_and_the_missing_figures():
    cells = [page_cell(0, images=0), page_cell(1, count=2, errors=[("ValueError", "bad row 3")]),
             page_cell(2, count=None), page_cell(3, count=None), page_cell(4, images=1)]
    assert browser_check.verdict(cells, figure_cells={0, 1, 4}) == [
        "cell 1 raised ValueError: bad row 3",  # its missing figure is not reported twice
        "cells 2, 3 did not run (no execution count)",
        "cell 0 drew no figure (the saved notebook shows one there)"]
    assert browser_check.verdict([page_cell(0, "markdown")], set()) == ["the notebook has no code cell to run"]


def figure_output():
    return nbformat.v4.new_output("display_data", data={"image/png": PNG_1PX, "text/plain": "<Figure>"})


def test_saved_figure_cells_are_the_code_cells_whose_stored_outputs_hold_an_image(tmp_path):
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[v4.new_markdown_cell("![x](x.png)"), v4.new_code_cell("plot()", outputs=[figure_output()]),
                                v4.new_code_cell("print(1)", outputs=[v4.new_output("stream", text="1\n")])])
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert browser_check.saved_figure_cells(tmp_path / "n.ipynb") == {1}
    notebook_01 = ROOT / "notebooks" / "01_bert_from_scratch.ipynb"
    assert browser_check.saved_figure_cells(notebook_01), "notebook 01 draws figures: the check must look for them"


def test_the_lab_kernel_runs_this_python_even_when_another_python3_kernel_is_registered(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager
    other = tmp_path / "other" / "kernels" / "python3"  # e.g. a system-wide "python3" kernel
    other.mkdir(parents=True)
    (other / "kernel.json").write_text(json.dumps({"argv": ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f",
                                                            "{connection_file}"], "display_name": "system",
                                                   "language": "python"}))
    spec_path = lab.write_kernel_spec(tmp_path / "ours")
    env = lab.lab_environment(tmp_path / "ours", {"JUPYTER_PATH": str(tmp_path / "other")})
    monkeypatch.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])
    spec = KernelSpecManager().get_kernel_spec(lab.KERNEL_NAME)
    assert Path(spec.resource_dir) == spec_path.parent and spec.argv[0] == sys.executable
    assert spec.env["MPLBACKEND"] == lab.INLINE_BACKEND  # figures show even with MPLBACKEND=Agg in the shell
    command = lab.lab_command(tmp_path, "--ServerApp.port=1234")
    assert command[:3] == [sys.executable, "-m", "jupyterlab"] and "--ServerApp.ip=127.0.0.1" in command
    assert f"--ServerApp.root_dir={tmp_path}" in command and command[-1] == "--ServerApp.port=1234"


def test_without_chromium_and_apt_get_the_check_says_what_to_install(monkeypatch):
    monkeypatch.setattr(browser_check.shutil, "which", lambda name: None)
    with pytest.raises(browser_check.CheckFailed, match=r"apt-get is not available: .*chromium chromium-driver"):
        browser_check.ensure_chromium("chromium", "chromedriver")


def test_sweep_ends_the_processes_that_name_the_folder(tmp_path):
    marker = str(tmp_path / "scratch")
    child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)", marker],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "up\n"  # it runs: its command line is its own now
        assert browser_check.processes_naming(marker) == [child.pid]
        browser_check.sweep(marker)
        assert child.wait(10) == -9 and browser_check.processes_naming(marker) == []
    finally:
        child.kill()
        child.stdout.close()


def run_check(tmp_path: Path, notebook: Path, *options: str) -> subprocess.CompletedProcess:
    """scripts/browser_check.py in a subprocess, its temporary folders under tmp_path (so leftovers can be found)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "browser_check.py"), "--notebook", str(notebook),
                           "--out", str(tmp_path / "out"), "--timeout", "300", *options],
                          env=env, capture_output=True, text=True, timeout=900, check=False)


def assert_nothing_left(tmp_path: Path):
    time.sleep(1)
    left = browser_check.processes_naming(str(tmp_path))
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]


@browser
def test_a_raising_cell_fails_the_check_in_one_line_and_stops_everything(tmp_path):
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# A notebook that raises"),
        v4.new_code_cell("import os, sys\nimport matplotlib.pyplot as plt\n"
                         f"assert os.path.realpath(sys.executable) == {os.path.realpath(sys.executable)!r}\n"
                         "plt.plot([0, 1], [1, 0]); plt.show()", outputs=[figure_output()]),
        v4.new_code_cell("print('this cell was saved with a figure and draws none')", outputs=[figure_output()]),
        v4.new_code_cell("raise ValueError('deliberate failure')"),
        v4.new_code_cell("never = 'run'")], metadata=PYTHON3)
    notebook = tmp_path / "notebooks" / "raises.ipynb"
    notebook.parent.mkdir()
    nbformat.write(nb, notebook)
    saved = notebook.read_bytes()
    done = run_check(tmp_path, notebook)
    assert done.returncode == 1, done.stdout + done.stderr
    shot = tmp_path / "out" / "raises.png"
    assert done.stderr.strip().splitlines() == [  # cell 1 ran in this Python and drew: it is not named
        (f"browser check FAILED: raises.ipynb: cell 3 raised ValueError: deliberate failure; cell 4 did not run "
         f"(no execution count); cell 2 drew no figure (the saved notebook shows one there) (screenshot: {shot})")]
    assert shot.read_bytes().startswith(b"\x89PNG") and notebook.read_bytes() == saved
    assert_nothing_left(tmp_path)


@browser
def test_a_server_that_cannot_start_fails_the_check_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_check(tmp_path, ROOT / "notebooks" / "01_bert_from_scratch.ipynb", "--port", str(port))
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("browser check FAILED: JupyterLab did not start: it exited with code 1 (")
    assert str(port) in line and str(tmp_path / "out" / "jupyterlab.log") in line
    assert_nothing_left(tmp_path)


@browser
def test_sigterm_during_the_run_stops_the_server_the_kernel_and_the_browser(tmp_path):
    v4 = nbformat.v4
    notebook = tmp_path / "notebooks" / "slow.ipynb"
    notebook.parent.mkdir()
    nbformat.write(v4.new_notebook(cells=[v4.new_code_cell("import time\ntime.sleep(600)")], metadata=PYTHON3), notebook)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    check = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "browser_check.py"), "--notebook", str(notebook),
                              "--out", str(tmp_path / "out")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for line in check.stdout:  # wait until the cells run in the page
            if "Run > Run All Cells" in line:
                break
        else:
            pytest.fail(f"the check ended before running the notebook: {check.stderr.read()}")
        time.sleep(3)
        assert [p for p in browser_check.processes_naming(str(tmp_path)) if "ipykernel" in
                Path(f"/proc/{p}/cmdline").read_text(errors="replace")], "the kernel should be running by now"
        check.terminate()
        assert check.wait(120) == 143
    finally:
        check.kill()
    assert check.stderr.read().strip().splitlines() == [
        "browser check FAILED: stopped by SIGTERM; JupyterLab and Chromium were stopped"]
    assert_nothing_left(tmp_path)
