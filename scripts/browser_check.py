"""Run a notebook in JupyterLab in headless Chromium, as a student does, and check what the page shows.

    python scripts/browser_check.py [--notebook notebooks/01_bert_from_scratch.ipynb] [--out runs/browser]
    make test-browser                      # the same, after installing what it needs

What happens:
1. Chromium and its WebDriver (Debian packages chromium, chromium-driver) are installed with apt-get when missing.
2. JupyterLab starts on 127.0.0.1, on a free port, with a random token, started by scripts/lab.py's functions (as
   `make notebooks` starts it, so the kernel is this Python), with settings of its own in a temporary folder:
   autosave off (the notebook file is never written: a hash check proves it), every cell attached to the page
   (windowing off), no news requests.
3. Chromium opens the notebook; through the page's menus, Edit > Clear Outputs of All Cells, then Run > Run All Cells.
4. When no cell is queued or running and the kernel is idle, the page is read: every code cell must show an execution
   count and no error output, and every cell whose saved output holds a figure must show a drawn image.
5. A screenshot is saved in --out (the first problem in view, else the first figure), with JupyterLab's and
   chromedriver's logs.

The exit status is 0 with one "browser check OK" line, or 1 with one "browser check FAILED: <why>" line. JupyterLab,
its kernel, Chromium and chromedriver are stopped in every case (also on Ctrl-C and SIGTERM), and a last sweep ends
any process left that names the check's temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import lab  # scripts/lab.py: how `make notebooks` starts JupyterLab

ROOT = lab.ROOT
DEFAULT_NOTEBOOK = ROOT / "notebooks" / "01_bert_from_scratch.ipynb"
DEFAULT_OUT = ROOT / "runs" / "browser"
APT_PACKAGES = ("chromium", "chromium-driver")
# Headless, as root (no sandbox), and quiet on a closed network: no first-run page, no background requests.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")
LAB_SETTINGS = {  # JupyterLab user settings of the check, "<extension>/<plugin>": values
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
SERVER_START_S, PAGE_OPEN_S, POLL_S, QUIET_POLLS = 120, 180, 0.5, 3
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")

# What the page shows, read through the app JupyterLab exposes (--expose-app-in-browser) and the cells' DOM nodes.
PAGE_STATE_JS = """
const app = window.jupyterapp;
const panel = app && app.shell.currentWidget;
if (!panel || !panel.sessionContext || !panel.content || !panel.context.isReady) return null;
const session = panel.sessionContext.session;
const dialog = document.querySelector('.jp-Dialog');
return {
  kernel: session && session.kernel ? session.kernel.status : null,
  dialog: dialog ? dialog.innerText.replace(/\\s+/g, ' ').trim() : null,
  cells: panel.content.widgets.map((cell, index) => {
    const code = cell.model.type === 'code';
    return {
      index: index, type: cell.model.type, source: cell.model.sharedModel.getSource(),
      execution_count: code ? cell.model.executionCount : null,
      running: code && cell.model.executionState === 'running',
      outputs: code ? cell.model.outputs.toJSON().length : 0,
      errors: code ? cell.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                              .map(o => [o.ename, o.evalue]) : [],
      images: [...cell.node.querySelectorAll('.jp-OutputArea-output img, .jp-OutputArea-output svg')]
                .filter(im => im.tagName.toLowerCase() === 'svg' || (im.complete && im.naturalWidth > 0)).length,
    };
  }),
};
"""
SCROLL_TO_CELL_JS = "window.jupyterapp.shell.currentWidget.content.widgets[arguments[0]].node.scrollIntoView();"


class CheckFailed(Exception):
    """The check fails; the message is the one line that says why."""


class Stopped(BaseException):
    """SIGTERM arrived (args: the reason, the exit status); like KeyboardInterrupt, no `except Exception` stops it."""


def ensure_chromium(chromium: str, chromedriver: str) -> tuple[str, str]:
    """Paths of Chromium and chromedriver, installed with apt-get (Debian packages) when one is missing."""
    if not (shutil.which(chromium) and shutil.which(chromedriver)):
        if not shutil.which("apt-get"):
            raise CheckFailed(f"{chromium} or {chromedriver} not found and apt-get is not available: install Chromium "
                              f"and its WebDriver (Debian packages: {' '.join(APT_PACKAGES)}), then rerun")
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        if sudo and not shutil.which("sudo"):
            raise CheckFailed(f"{chromium} or {chromedriver} not found, and installing them needs root: run "
                              f"`apt-get install {' '.join(APT_PACKAGES)}` as root, then rerun")
        print(f"browser check: installing {' '.join(APT_PACKAGES)} with apt-get", flush=True)
        started = time.monotonic()
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]):
            done = subprocess.run(sudo + command, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
                raise CheckFailed(f"`{' '.join(sudo + command)}` exited with {done.returncode}: {last}")
        print(f"browser check: installed in {time.monotonic() - started:.0f} s", flush=True)
    found = shutil.which(chromium), shutil.which(chromedriver)
    if not all(found):
        raise CheckFailed(f"{chromium} or {chromedriver} still not found after installing {' '.join(APT_PACKAGES)}")
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (JupyterLab binds it a moment later; --ServerApp.port_retries=0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def saved_figure_cells(notebook: Path) -> set[int]:
    """Indices of the cells whose saved outputs hold an image: the page must draw a figure there too."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return {i for i, cell in enumerate(cells) if cell["cell_type"] == "code"
            and any(t in out.get("data", {}) for out in cell.get("outputs", []) for t in IMAGE_TYPES)}


def _cells(indices: list[int]) -> str:
    return ("cell " if len(indices) == 1 else "cells ") + ", ".join(map(str, indices))


def verdict(cells: list[dict], figure_cells: set[int]) -> list[str]:
    """What is wrong with the page after Run All (an empty list: nothing). `cells` as PAGE_STATE_JS returns them."""
    code = [c for c in cells if c["type"] == "code" and c["source"].strip()]  # JupyterLab does not run empty cells
    if not code:
        return ["the notebook has no code cell to run"]
    problems = [f"cell {c['index']} raised {ename}: {evalue}" for c in code for ename, evalue in c["errors"]]
    not_run = [c["index"] for c in code if c["execution_count"] is None]
    if not_run:
        problems.append(f"{_cells(not_run)} did not run (no execution count)")
    no_figure = [c["index"] for c in code if c["index"] in figure_cells and not c["images"] and not c["errors"]
                 and c["execution_count"] is not None]
    if no_figure:
        problems.append(f"{_cells(no_figure)} drew no figure (the saved notebook shows one there)")
    return problems


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def last_log_line(log: Path) -> str:
    """The last error line of a log (else its last line): what to quote when a process failed."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("[C ", "[E ")) or "Error" in line]
    return (errors or lines or ["(empty log)"])[-1]


def _api(port: int, token: str, path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else {}


def _stop(process: subprocess.Popen, group: bool, grace_s: float = 10) -> None:
    """SIGTERM (to the process group when `group`), then SIGKILL after `grace_s` seconds."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait_s)


def processes_naming(text: str) -> list[int]:
    """Ids of the running processes whose command line contains `text` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
    return found


def sweep(text: str) -> None:
    """SIGKILL whatever still runs with `text` (the check's unique temporary folder) in its command line."""
    for pid in processes_naming(text):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def start_lab(stack: contextlib.ExitStack, root_dir: Path, scratch: Path, log: Path, port: int) -> str:
    """Start JupyterLab serving `root_dir` on `port` (stopped when `stack` closes); returns its token once it answers."""
    jupyter_dir = scratch / "jupyter"
    lab.write_kernel_spec(jupyter_dir)
    for name, values in LAB_SETTINGS.items():
        path = scratch / "lab-settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")
    env = lab.lab_environment(jupyter_dir)
    # Nothing of the user's Jupyter or IPython configuration (a password, a startup file) takes part.
    for variable, folder in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                             ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        env[variable] = str(scratch / folder)
    token = secrets.token_hex(24)
    command = lab.lab_command(root_dir, f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                              f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
                              "--LabApp.expose_app_in_browser=True",
                              f"--LabApp.user_settings_dir={scratch / 'lab-settings'}",
                              f"--LabApp.workspaces_dir={scratch / 'lab-workspaces'}",
                              "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                              # the notebook's checkpoint goes to the scratch folder, not notebooks/.ipynb_checkpoints/
                              f"--FileCheckpoints.checkpoint_dir={scratch / 'checkpoints'}")
    print(f"browser check: starting JupyterLab on 127.0.0.1:{port} (log: {log})", flush=True)
    with log.open("w", encoding="utf-8") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)

    def shut_down():  # the server ends its kernels on /api/shutdown; signals are the fallback
        if server.poll() is None:
            with contextlib.suppress(OSError, urllib.error.URLError):
                _api(port, token, "/api/shutdown", method="POST")
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(15)
        _stop(server, group=True)
    stack.callback(shut_down)

    deadline = time.monotonic() + SERVER_START_S
    while True:
        if server.poll() is not None:
            raise CheckFailed(f"JupyterLab did not start: it exited with code {server.returncode} "
                              f"({last_log_line(log)}; log: {log})")
        try:
            specs = _api(port, token, "/api/kernelspecs")
            break
        except (OSError, urllib.error.URLError, ValueError):
            if time.monotonic() > deadline:
                raise CheckFailed(f"JupyterLab did not start: no answer on 127.0.0.1:{port} within "
                                  f"{SERVER_START_S} s (log: {log})") from None
            time.sleep(POLL_S)
    argv = specs["kernelspecs"].get(lab.KERNEL_NAME, {}).get("spec", {}).get("argv", ["(none)"])
    if argv[0] != sys.executable:
        raise CheckFailed(f"JupyterLab's {lab.KERNEL_NAME} kernel runs {argv[0]}, not this Python ({sys.executable})")
    return token


def start_browser(stack: contextlib.ExitStack, chromium: str, chromedriver: str, scratch: Path, log: Path):
    """Headless Chromium driven by chromedriver (both ended when `stack` closes)."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise CheckFailed("selenium is not installed in this Python: run `make test-browser` "
                          "(it installs requirements-lab.txt into .venv)") from None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={scratch / 'chromium-profile'}"):
        options.add_argument(flag)
    # Chromium's config and cache (its crash handler's database too) go to the scratch folder, not the user's home.
    env = {**os.environ, "XDG_CONFIG_HOME": str(scratch / "xdg-config"), "XDG_CACHE_HOME": str(scratch / "xdg-cache")}
    service = Service(executable_path=chromedriver, log_output=str(log), env=env)
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except WebDriverException as err:
        if service.process is not None:
            _stop(service.process, group=False, grace_s=5)
        raise CheckFailed(f"Chromium did not start: {err.msg or err} (log: {log})") from None

    def quit_browser():
        with contextlib.suppress(Exception):
            driver.quit()
        if service.process is not None:
            _stop(service.process, group=False, grace_s=5)
    stack.callback(quit_browser)
    return driver


def page_state(driver) -> dict | None:
    return driver.execute_script(f"return (() => {{ {PAGE_STATE_JS} }})();")


def click_menu(driver, menu: str, item: str) -> None:
    """Open `menu` in JupyterLab's menu bar and click its entry labelled `item`, as a reader does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(driver, 30)
    wait.until(ready.element_to_be_clickable(
        (By.XPATH, f"//div[contains(@class, 'lm-MenuBar-itemLabel')][normalize-space()='{menu}']"))).click()
    entry = (f"//li[contains(@class, 'lm-Menu-item')]"
             f"[.//div[contains(@class, 'lm-Menu-itemLabel')][normalize-space()='{item}']]")
    wait.until(ready.element_to_be_clickable((By.XPATH, entry))).click()


def wait_for_notebook(driver, timeout_s: float) -> dict:
    """Wait until the notebook is open with an idle kernel; a dialog (e.g. a missing kernel) fails at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = page_state(driver)
        if state and state["dialog"]:
            raise CheckFailed(f"JupyterLab showed a dialog while opening the notebook: {state['dialog'][:200]}")
        if state and state["kernel"] == "idle":
            return state
        if time.monotonic() > deadline:
            kernel = state["kernel"] if state else "no notebook panel"
            raise CheckFailed(f"the notebook did not open with an idle kernel within {timeout_s:.0f} s "
                              f"(kernel: {kernel})")
        time.sleep(POLL_S)


def wait_until_done(driver, timeout_s: float) -> dict:
    """Wait until no cell is queued or running and the kernel is idle, for QUIET_POLLS polls in a row."""
    deadline, quiet = time.monotonic() + timeout_s, 0
    while True:
        state = page_state(driver)
        if state is None:
            raise CheckFailed("the notebook panel disappeared from the page while its cells ran")
        if state["dialog"]:  # e.g. "Kernel Restarting: the kernel appears to have died"
            raise CheckFailed(f"JupyterLab showed a dialog while running the notebook: {state['dialog'][:200]}")
        running = [c["index"] for c in state["cells"] if c["running"]]
        quiet = quiet + 1 if not running and state["kernel"] == "idle" else 0
        if quiet >= QUIET_POLLS:
            return state
        if time.monotonic() > deadline:
            raise CheckFailed(f"{_cells(running)} still queued or running after {timeout_s:.0f} s "
                              f"(kernel: {state['kernel']}); raise --timeout if the notebook is slow")
        time.sleep(POLL_S)


def screenshot(driver, cell_index: int | None, path: Path) -> str:
    """Save the page (scrolled to `cell_index`) as PNG; returns " (screenshot: path)", or "" if the page is gone."""
    try:
        if cell_index is not None:
            driver.execute_script(SCROLL_TO_CELL_JS, cell_index)
            time.sleep(0.5)  # let the page repaint
        return f" (screenshot: {path})" if driver.save_screenshot(str(path)) else ""
    except Exception:  # noqa: BLE001 - a page that cannot be photographed must not hide the reason of the failure
        return ""


def run_all_in_page(driver, url: str, timeout_s: float) -> tuple[dict, float]:
    """Open `url`, clear the outputs and run all cells through the menus; returns the page state and the run's seconds."""
    driver.get(url)
    wait_for_notebook(driver, PAGE_OPEN_S)
    click_menu(driver, "Edit", "Clear Outputs of All Cells")  # the saved outputs must not pass for fresh ones
    if any(c["outputs"] or c["execution_count"] is not None or c["images"] for c in page_state(driver)["cells"]):
        raise CheckFailed("Edit > Clear Outputs of All Cells left outputs in the page")
    print(f"browser check: Run > Run All Cells in {url.split('?')[0].rsplit('/', 1)[-1]}", flush=True)
    started = time.monotonic()
    click_menu(driver, "Run", "Run All Cells")
    return wait_until_done(driver, timeout_s), time.monotonic() - started


def check(notebook: Path, out: Path, port: int, timeout_s: float, chromium: str, chromedriver: str) -> str:
    """Run the whole check; returns the success line, raises CheckFailed with the reason."""
    started = time.monotonic()
    if not notebook.is_file():
        raise CheckFailed(f"--notebook {notebook}: no such file")
    try:
        figure_cells = saved_figure_cells(notebook)
    except (ValueError, KeyError) as err:
        raise CheckFailed(f"--notebook {notebook}: not a notebook ({err})") from None
    digest = file_digest(notebook)
    chromium, chromedriver = ensure_chromium(chromium, chromedriver)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / f"{notebook.stem}.png"
    shot.unlink(missing_ok=True)  # a screenshot left from an earlier run would say nothing about this one
    scratch = Path(tempfile.mkdtemp(prefix="pea-kd-browser-check-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        stack.callback(sweep, str(scratch))  # runs before the folder is removed, after the orderly stops below
        port = port or free_port()
        token = start_lab(stack, notebook.parent, scratch, out / "jupyterlab.log", port)
        driver = start_browser(stack, chromium, chromedriver, scratch, out / "chromedriver.log")
        from selenium.common.exceptions import WebDriverException  # installed: start_browser imported selenium
        url = f"http://127.0.0.1:{port}/lab/tree/{urllib.request.pathname2url(notebook.name)}?token={token}"
        try:
            state, run_s = run_all_in_page(driver, url, timeout_s)
        except (CheckFailed, WebDriverException) as err:
            reason = err if isinstance(err, CheckFailed) else f"the page did not respond as expected: {err.msg}"
            raise CheckFailed(f"{reason}{screenshot(driver, None, shot)}") from None
        problems = verdict(state["cells"], figure_cells)
        bad = [c["index"] for c in state["cells"] if c["errors"] or (c["index"] in figure_cells and not c["images"])]
        drawn = [c["index"] for c in state["cells"] if c["images"]]
        saved = screenshot(driver, (bad or drawn or [None])[0], shot)  # the first problem, else the first figure
        versions = f"JupyterLab {metadata.version('jupyterlab')}, Chromium {driver.capabilities.get('browserVersion')}"
    if problems:
        raise CheckFailed(f"{notebook.name}: {'; '.join(problems)}{saved}")
    if file_digest(notebook) != digest:
        raise CheckFailed(f"{notebook} was modified during the check; it must only be read")
    ran = sum(c["execution_count"] is not None for c in state["cells"])
    figures = sum(c["images"] for c in state["cells"])
    return (f"browser check OK: {notebook.name}: {ran} code cells ran in JupyterLab ({versions}), no errors, "
            f"{figures} figures drawn; run {run_s:.0f} s, total {time.monotonic() - started:.0f} s{saved}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK, help="the notebook to run (default: 01)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="screenshot and logs (default: runs/browser)")
    parser.add_argument("--port", type=int, default=0, help="JupyterLab's port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds Run All may take (default 900)")
    parser.add_argument("--chromium", default="chromium", help="Chromium executable (default: chromium)")
    parser.add_argument("--chromedriver", default="chromedriver", help="its WebDriver (default: chromedriver)")
    args = parser.parse_args(argv)

    def stop(signum, frame):  # unwinds through the clean-up, as Ctrl-C does
        raise Stopped("stopped by SIGTERM", 143)
    signal.signal(signal.SIGTERM, stop)
    try:
        print(check(args.notebook.resolve(), args.out.resolve(), args.port, args.timeout, args.chromium,
                    args.chromedriver))
        return 0
    except CheckFailed as err:
        print(f"browser check FAILED: {err}", file=sys.stderr)
        return 1
    except (Stopped, KeyboardInterrupt) as err:
        why, status = err.args if isinstance(err, Stopped) else ("stopped by Ctrl-C", 130)
        print(f"browser check FAILED: {why}; JupyterLab and Chromium were stopped", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
