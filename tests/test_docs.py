"""A student reads alone: every pointer in the repository resolves inside it.

* No file points at the method notes that live outside the repository; the method reference is docs/method.md.
* Every relative link in the markdown files and in the notebooks' markdown cells opens an existing file of the
  repository; an `#anchor` into a markdown file or a notebook names one of its headings, an `#L<n>` anchor into a
  source file a line it has.
* Every line-anchored link to a symbol (`[`make_plan`](pea_kd/sps.py#L42)`) points at the line that defines it:
  `python scripts/update_anchors.py` rewrites them after code moves.
* Every section named in code or text (`docs/method.md#ptp`, `README, "Results"`) exists.
* The README is a door: "Start here" with every notebook and assignment in reading order, then the two commands, then
  the modules to read; one line per document in docs/, where the rest lives.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from update_anchors import definition_line, markdown_files, repository_files, rewrite, stale_anchors  # noqa: E402

TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".json", ".toml", ".txt", ".cfg", ".yml", ".yaml", ".sh", ""}
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
CODE_SPAN = re.compile(r"`[^`\n]*`")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.I)
SECTION_LINK = re.compile(r"\b((?:docs/)?[\w-]+\.md)#([\w-]+)")  # docs/method.md#ptp, in prose, comments, docstrings
QUOTED_SECTION = re.compile(r"\b(README(?:\.md)?|docs/[\w-]+\.md),?\s+\"([^\"]+)\"")  # README, "Results"


def text_files() -> list[Path]:
    return [p for p in repository_files() if p.suffix in TEXT_SUFFIXES and p.stat().st_size < 2_000_000]


def markdown_sources() -> list[tuple[str, Path, str]]:
    """(name for messages, the file links are relative to, markdown text) for every .md file and notebook cell."""
    sources = [(str(p.relative_to(ROOT)), p, p.read_text(encoding="utf-8")) for p in markdown_files()]
    for nb_path in (p for p in repository_files() if p.suffix == ".ipynb"):
        cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
        sources += [(f"{nb_path.relative_to(ROOT)} cell {i}", nb_path, "".join(c["source"]))
                    for i, c in enumerate(cells) if c["cell_type"] == "markdown"]
    return sources


def prose_lines(markdown: str) -> list[str]:
    """The markdown's lines outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(CODE_SPAN.sub("", line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading: links reduced to their text, lower case, punctuation dropped, '-' for spaces."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """The heading texts of a markdown text (fenced code blocks skipped)."""
    found, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.append(m.group(2))
    return found


def anchors_of(path: Path) -> set[str]:
    """Every anchor a link may use into `path`: GitHub slugs (with -1, -2 for repeats), JupyterLab ids for notebook
    headings (the text with '-' for spaces), explicit <a id=...> tags."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = path.read_text(encoding="utf-8")
    found, seen = set(HTML_ID.findall(text)), {}
    for heading in headings(text):
        slug = github_slug(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
        if path.suffix == ".ipynb":
            found.add(heading.replace(" ", "-"))
    return found


def heading_texts(path: Path) -> set[str]:
    return set(headings(path.read_text(encoding="utf-8")))


# ------------------------------------------------------------------------------------------------ the tests

def test_nothing_points_at_notes_outside_the_repository():
    """No file names the notes on the method kept beside the repository, or anything else in the shared directory
    beside it except the GLUE data (a documented fallback location for data, not a document to read)."""
    outside = ("shared/" + "reference", "pea_kd_" + "method")  # split, so that this file does not match itself
    beside = re.compile(r"\.\./shared/(?!glue_data\b)")
    notes = "method " + "notes"
    offending = []
    for path in text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if any(s in line for s in outside) or beside.search(line) or \
                    (notes in line.lower() and "docs/method.md" not in line):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offending, "references to files outside the repository (the method: docs/method.md#<section>):\n" + \
        "\n".join(offending)


def test_every_relative_link_opens_a_file_of_the_repository():
    broken, checked = [], 0
    for name, base, markdown in markdown_sources():
        for line in prose_lines(markdown):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                    continue
                checked += 1
                path_part, _, anchor = target.partition("#")
                path = (base.parent / path_part).resolve() if path_part else base
                if not path.is_relative_to(ROOT) or not path.exists():
                    broken.append(f"{name}: {target} (no such file in the repository)")
                elif anchor and path.is_file():
                    if path.suffix in (".md", ".ipynb"):
                        if anchor not in anchors_of(path):
                            broken.append(f"{name}: {target} (no heading with anchor #{anchor})")
                    elif re.fullmatch(r"L\d+", anchor):
                        if int(anchor[1:]) > len(path.read_text(encoding="utf-8").splitlines()):
                            broken.append(f"{name}: {target} (the file is shorter)")
                    else:
                        broken.append(f"{name}: {target} (anchor #{anchor} into a {path.suffix or 'plain'} file)")
    assert checked > 100, f"only {checked} relative links found: is the link pattern broken?"
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_line_anchors_point_at_the_symbols_they_name():
    stale = [f"{md.relative_to(ROOT)}: `{a.name}` -> {a.path}#L{a.line}, defined at line {line}"
             for md in markdown_files() for a, line in stale_anchors(md)]
    assert not stale, "line anchors no longer on their symbols; run `python scripts/update_anchors.py`:\n" + \
        "\n".join(stale)


def test_sections_named_in_code_and_text_exist():
    missing, checked = [], 0
    for path in text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for doc, anchor in SECTION_LINK.findall(text):
            target = (ROOT / doc) if "/" in doc or (ROOT / doc).is_file() else path.parent / doc
            if not target.is_file():
                continue  # a file name in prose that is not ours (and relative links are checked above)
            checked += 1
            if anchor not in anchors_of(target):
                missing.append(f"{path.relative_to(ROOT)}: {doc}#{anchor}")
        for doc, section in QUOTED_SECTION.findall(text):
            target = ROOT / (doc if doc.endswith(".md") else doc + ".md")
            checked += 1
            if not target.is_file() or section not in heading_texts(target):
                missing.append(f'{path.relative_to(ROOT)}: {doc}, "{section}"')
    assert checked >= 10, f"only {checked} section references found"
    assert not missing, "sections that do not exist:\n" + "\n".join(missing)


def test_readme_is_a_door_reading_first_then_the_two_commands_then_the_reading_path():
    """The README stays short: the notebooks to read first, the two commands and their time by machine, the modules to
    read (each once) apart from the machinery, the headline table, one line per document in docs/."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 220, "the README is a door: move the details into docs/"
    sections = re.split(r"^## ", readme, flags=re.M)
    assert sections[1].startswith("Start here\n"), "the README's first section must be 'Start here'"
    start = sections[1]
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "notebooks/assignments").glob("*.ipynb"))
    order = [start.find(nb.name) for nb in notebooks]
    missing = [nb.name for nb, i in zip(notebooks, order) if i < 0]
    assert not missing, f"notebooks missing from the reading order in 'Start here': {missing}"
    assert order == sorted(order), "'Start here' lists the notebooks in their numbered order"
    assert max(order) < start.index("make test") < start.index("make reproduce TASK=mrpc") < \
        start.index("### The reading path"), "first what to read, then the two commands, then the modules"
    assert all(t in start for t in ("45.4 min", "62.6 min", "102.6 min")), "the time of make reproduce by machine"
    assert "docs/method.md" in start
    path = start[start.index("### The reading path"):]
    table = [line for line in path.splitlines() if line.startswith("|")]
    modules = [m for line in table for m in re.findall(r"\]\(([\w/]+\.py)\)", line)]
    assert len(modules) >= 12 and len(modules) == len(set(modules)), "the reading table names each module once"
    machinery = path[path.index("Machinery: skip on a first reading"):]
    assert not {Path(m).name for m in modules} & set(re.findall(r"`(?:[\w/]+/)?(\w+\.py)`", machinery)), \
        "a module is either read or machinery, not both"
    documents = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert [d for d in documents if f"(docs/{d})" not in sections[-1]] == [], "one line per document in docs/"
    by_notebook = (ROOT / "docs" / "code_by_notebook.md").read_text(encoding="utf-8")
    assert len(re.findall(r"\]\([\w./]+\.py#L\d+\)", by_notebook)) >= 50  # each notebook names the code it teaches


def test_update_anchors_moves_an_anchor_to_its_symbol(tmp_path):
    source = "import os\n\nLIMIT: int = 3\n\n\nclass Box:\n    size = 1\n\n    def open(self):\n        pass\n\n\n"
    (tmp_path / "mod.py").write_text(source + "def open_box():\n    return Box()\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text("[`open_box`](mod.py#L1), [`Box.open`](mod.py#L1), [`LIMIT`](mod.py#L3), "
                   "[`Box.size`](mod.py#L2)\n", encoding="utf-8")
    assert [(a.name, line) for a, line in stale_anchors(doc)] == [("open_box", 13), ("Box.open", 9), ("Box.size", 7)]
    assert len(rewrite(doc)) == 3 and stale_anchors(doc) == []
    assert doc.read_text(encoding="utf-8") == ("[`open_box`](mod.py#L13), [`Box.open`](mod.py#L9), "
                                               "[`LIMIT`](mod.py#L3), [`Box.size`](mod.py#L7)\n")
    (tmp_path / "docs").mkdir()  # a document in docs/ links up to the code: the path is relative to the document
    nested = tmp_path / "docs" / "guide.md"
    nested.write_text("[`open_box`](../mod.py#L2)\n", encoding="utf-8")
    assert [(a.name, line) for a, line in stale_anchors(nested)] == [("open_box", 13)] and len(rewrite(nested)) == 1
    assert nested.read_text(encoding="utf-8") == "[`open_box`](../mod.py#L13)\n"
    with pytest.raises(ValueError, match="no module-level definition of 'close_box'"):
        definition_line(tmp_path / "mod.py", "close_box")
    with pytest.raises(ValueError, match="class 'Box' defines no 'close'"):
        definition_line(tmp_path / "mod.py", "Box.close")
