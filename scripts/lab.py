"""Start JupyterLab on the course notebooks: bound to 127.0.0.1, with a kernel that runs this Python.

    python scripts/lab.py [jupyter lab options]       # or: make notebooks

Two choices make the page students read the course in behave the same on every machine:

* **127.0.0.1 only.** The server (and the code it runs for whoever holds the token) is reachable from this computer
  alone, never from the network, whatever a global Jupyter configuration says.
* **The kernel is this Python.** A notebook names its kernel ("python3"). Jupyter looks that name up in the folders
  of $JUPYTER_PATH first, then in the user's and the system's folders, where a "python3" kernel registered by another
  Python (a system Python, another virtual environment) would run the notebooks without this project's torch and
  packages. We write a "python3" kernel spec that runs `sys.executable` into a folder of our own and put that folder
  first on $JUPYTER_PATH. Its environment also pins matplotlib's inline backend, so that a MPLBACKEND set in the shell
  (Agg, say) cannot hide the figures.

scripts/browser_check.py (`make test-browser`) starts the server with these same functions, so the browser test
checks what `make notebooks` gives a student.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNEL_NAME = "python3"  # the name the notebooks' metadata asks for
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def write_kernel_spec(jupyter_dir: Path, python: str = sys.executable) -> Path:
    """Write `jupyter_dir`/kernels/python3/kernel.json, a kernel that runs `python`; returns the spec's path."""
    spec_dir = jupyter_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python 3 (pea-kd: {python})", "language": "python",
            "env": {"MPLBACKEND": INLINE_BACKEND}, "metadata": {"debugger": True}}
    path = spec_dir / "kernel.json"
    path.write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return path


def lab_environment(jupyter_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: os.environ) with `jupyter_dir` first on JUPYTER_PATH, so that its kernel spec wins."""
    env = dict(os.environ if base is None else base)
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(jupyter_dir), env.get("JUPYTER_PATH", "")) if p)
    return env


def lab_command(root_dir: Path, *options: str) -> list[str]:
    """The command that serves `root_dir` with JupyterLab on 127.0.0.1 (`options` are more jupyter lab options)."""
    as_root = ["--ServerApp.allow_root=True"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # containers, CI
    return [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root_dir}",
            f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}", *as_root, *options]


def main(argv: list[str] | None = None) -> None:
    """`make notebooks`: replace this process by JupyterLab on notebooks/ (the kernel spec lives in the venv)."""
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        sys.exit("scripts/lab.py: JupyterLab is not installed in this Python; run `make notebooks` "
                 "(it installs requirements-lab.txt into .venv first)")
    jupyter_dir = Path(sys.prefix) / "share" / "pea-kd" / "jupyter"
    write_kernel_spec(jupyter_dir)
    command = lab_command(ROOT / "notebooks", *(sys.argv[1:] if argv is None else argv))
    os.execve(command[0], command, lab_environment(jupyter_dir))


if __name__ == "__main__":
    main()
