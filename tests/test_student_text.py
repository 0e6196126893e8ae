"""What a student receives names only what a student has.

A student's copy has no issue tracker, no `.git` and no `instructor/`. So the text it ships (every markdown file but
the instructor's and the tests', and the code of the packages and scripts), read as the student copy has it (its instructor
blocks removed), names
* no issue number ("issue 23", "#23") and no round of work ("a later session"),
* no commit hash of this repository (a hash beside the name of another repository, "owner/repo, e235a64", is that
  repository's version, and allowed),
* no path into instructor/ (the model answers and the fixtures writer, which the copy leaves out).
The notebooks are checked by tests/test_notebook_text.py.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from update_anchors import repository_files  # noqa: E402

try:  # the instructor's repository: read the files as the student copy will have them
    from make_student_copy import strip_instructor_blocks
except ImportError:  # the student copy itself: its files are already stripped, and the script is not in it
    def strip_instructor_blocks(text: str, name: str) -> str:
        return text

CODE_DIRS = ("pea_kd/", "bert_mini/", "pea_kd_bench/", "scripts/")
NOT_SHIPPED_OR_NOT_TEXT = ("instructor/", "tests/")
HISTORY = {
    "an issue number": re.compile(r"(?<!pytorch )(?:\bissues? #?\d+|(?<![\w&/#])#\d{2,}\b)", re.I),
    "a round of work": re.compile(r"\b(?:rounds? of work|(?:this|that|a later|an earlier|the previous|the next|"
                                  r"later|earlier|every) sessions?)\b", re.I),
    "a commit hash": re.compile(r"(?<![\w/.=-])(?!e\d+\b)(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b"),
}
EXTERNAL_COMMIT = re.compile(r"[\w.-]+/[\w.-]+, [0-9a-f]{7,40}\b")  # another repository's version: "owner/r, abc1234"
INSTRUCTOR_PATH = re.compile(r"\binstructor[/.]\w")


def shipped_text() -> list[tuple[str, str]]:
    """(path, text as the student copy has it) of every student-facing markdown and source file."""
    found = []
    for path in repository_files():
        name = str(path.relative_to(ROOT))
        if name.startswith(NOT_SHIPPED_OR_NOT_TEXT) or name == "scripts/make_student_copy.py":
            continue
        if path.suffix == ".md" or (path.suffix == ".py" and name.startswith(CODE_DIRS)):
            found.append((name, strip_instructor_blocks(path.read_text(encoding="utf-8"), name)))
    return found


def history_mentions(name: str, text: str) -> list[str]:
    """"file:line: what it names: the line" for every issue number, round of work, commit hash or instructor path."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        checked = EXTERNAL_COMMIT.sub("", line)
        kinds = [kind for kind, pattern in HISTORY.items() if pattern.search(checked)]
        kinds += ["a path into instructor/"] if INSTRUCTOR_PATH.search(line) else []
        found += [f"{name}:{number}: {kind}: {line.strip()[:100]}" for kind in kinds]
    return found


def test_student_facing_text_names_no_issue_round_of_work_commit_or_instructor_path():
    files = shipped_text()
    assert any(n == "README.md" for n, _ in files) and sum(n.endswith(".py") for n, _ in files) > 40
    found = [m for name, text in files for m in history_mentions(name, text)]
    assert not found, "text written for the repository's history, or pointing at files a student does not have:\n" + \
        "\n".join(found)


def test_the_check_finds_each_kind_and_spares_what_is_not_history():
    text = ("measured in issue 23\nsee #24 for it\ncode of commit 93e4042\na later session found it\n"
            "run `python -m instructor.make_fixtures`\nthe answers in instructor/solutions.py\n"
            "C2 | Anonym96/Pea-KD, e387ccf | 2021\npytorch issue 189690 (pytorch #189690)\nPLOS ONE 17(2): e0263592\n"
            "2,414 MB and 12345678 rows\n"
            "color #1f77b4, heading ## 2\nsessionContext.session\n")
    found = history_mentions("x.md", text)
    assert [m.split(": ")[1] for m in found] == [
        "an issue number", "an issue number", "a commit hash", "a round of work", "a path into instructor/",
        "a path into instructor/"], found
    block = "a\n" + "BEGIN " + "INSTRUCTOR\ninstructor/x.py\n" + "END " + "INSTRUCTOR\nb\n"  # split: the copy strips them
    assert strip_instructor_blocks(block, "x") == "a\nb\n" or not (ROOT / "scripts" / "make_student_copy.py").is_file()
