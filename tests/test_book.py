"""The book stays a book: the modules of the README's reading table are few, short and open with their idea.

The reading table (the README's reading path) names the modules a student reads; the machinery they call lives
elsewhere (the README's machinery paragraph, to skip on a first reading). These checks keep the reading small as the code grows: about 3,000
lines in all and no module much over 300 (limits with a little headroom, so that a one-line change does not fail
them), and every module opens with a docstring that states its idea.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 320  # "no file over about 300"
MAX_BOOK_LINES = 3200  # "about 3,000 lines in all"


def book_modules() -> list[Path]:
    """The modules the README's reading table links to, in its order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    path = readme[readme.index("### The reading path"):readme.index("Machinery: skip on a first reading")]
    modules = []
    for line in path.splitlines():
        if line.startswith("|"):
            modules += [ROOT / m for m in re.findall(r"\]\(([\w/]+\.py)\)", line)]
    return modules


def test_the_book_is_short_and_no_module_is_long():
    modules = book_modules()
    assert len(modules) >= 12 and all(m.is_file() for m in modules), modules
    lines = {m.relative_to(ROOT).as_posix(): len(m.read_text(encoding="utf-8").splitlines()) for m in modules}
    long = {m: n for m, n in lines.items() if n > MAX_FILE_LINES}
    assert not long, f"modules of the reading path over {MAX_FILE_LINES} lines: {long}; move machinery out"
    assert sum(lines.values()) <= MAX_BOOK_LINES, \
        f"the reading path is {sum(lines.values())} lines (> {MAX_BOOK_LINES}); move machinery out: {lines}"


def test_every_module_of_the_book_opens_with_its_idea():
    for module in book_modules():
        doc = ast.get_docstring(ast.parse(module.read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 20, f"{module.relative_to(ROOT)}: open with the idea in a few sentences"
