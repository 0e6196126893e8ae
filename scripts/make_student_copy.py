"""Write the student copy of the repository: everything a student receives, without the instructor's material.

    python scripts/make_student_copy.py DEST        # or: make student-copy DEST=../pea-kd-student

What is left out:
* instructor/ (model answers of the assignments and the exercises, the wrong variants, the fixtures writer and the
  tests that hold correct answers);
* this script and tests/test_student_copy.py;
* every block between a line containing "BEGIN INSTRUCTOR" and one containing "END INSTRUCTOR" in text files (the
  Makefile's student-copy target, the instructors' notes in the READMEs).

The files are those git tracks plus untracked files git does not ignore (so nothing under .venv, runs/ or data/glue).
DEST must not exist or be empty; the copy is built next to it and renamed into place, so a failed run leaves nothing
half-written. The checkers of the copy grade against pea_kd/assignments/expected.json, which ships with it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXCLUDED_DIRS = ("instructor/",)
EXCLUDED_FILES = ("scripts/make_student_copy.py", "tests/test_student_copy.py")
TEXT_SUFFIXES = {".md", ".py", ".txt", ""}  # "" = Makefile (notebooks carry no markers: JSON)
BEGIN, END = "BEGIN INSTRUCTOR", "END INSTRUCTOR"


def student_files(root: Path = ROOT) -> list[str]:
    """Repository-relative paths of the files that go into the student copy."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sorted(p for p in listed if p and (root / p).is_file() and not p.startswith(EXCLUDED_DIRS)
                  and p not in EXCLUDED_FILES)


def strip_instructor_blocks(text: str, name: str) -> str:
    """Drop the lines from a BEGIN INSTRUCTOR line to the next END INSTRUCTOR line, both included."""
    out, inside = [], False
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if BEGIN in line:
            if inside:
                raise ValueError(f"{name}:{number}: {BEGIN} inside another instructor block")
            inside = True
        elif END in line:
            if not inside:
                raise ValueError(f"{name}:{number}: {END} without a {BEGIN} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{name}: {BEGIN} without a matching {END}")
    return "".join(out)


def make_student_copy(dest: Path, root: Path = ROOT) -> list[str]:
    """Write the student copy into dest (which must not exist or be empty); returns the copied paths."""
    dest = Path(dest).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not empty; pass a new directory")
    if dest == root or root in dest.parents:
        raise ValueError(f"{dest} is inside the repository; pass a directory outside it")
    files = student_files(root)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel in files:
            src, dst = root / rel, tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if Path(rel).suffix in TEXT_SUFFIXES:
                text = src.read_text(encoding="utf-8")
                dst.write_text(strip_instructor_blocks(text, rel) if BEGIN in text else text, encoding="utf-8")
                shutil.copymode(src, dst)
            else:
                shutil.copy2(src, dst)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the student copy of the repository (no instructor/).")
    parser.add_argument("dest", help="a new (or empty) directory outside the repository")
    args = parser.parse_args(argv)
    try:
        files = make_student_copy(Path(args.dest))
    except (FileExistsError, ValueError) as err:
        parser.exit(1, f"make_student_copy: error: {err}\n")
    print(f"wrote {len(files)} files to {Path(args.dest).resolve()} (without instructor/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
