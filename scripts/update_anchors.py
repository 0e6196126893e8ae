"""Keep the line anchors of the documentation on the code they name.

The documentation (README.md, docs/code_by_notebook.md) links to the functions each notebook teaches with GitHub
line anchors:

    [`make_plan`](pea_kd/sps.py#L42)            a module-level def, class or NAME = ... / NAME: ... assignment
    [`Trainer.step`](pea_kd/trainer.py#L345)    a method (or a class attribute) inside a class

When code moves, the anchors go stale. This script finds the line that now defines each named symbol and rewrites
the anchor; `tests/test_docs.py` fails, naming this script, when an anchor no longer points at its symbol.

    python scripts/update_anchors.py            rewrite stale anchors in the repository's markdown files
    python scripts/update_anchors.py --check    only report them (exit status 1 if any)
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# [`name`](path/to/file.py#L12) with an optional `()` after the name; the path is relative to the markdown file
ANCHOR = re.compile(r"\[`(?P<name>[A-Za-z_][\w.]*)(?:\(\))?`\]\((?P<path>[^)\s#]+\.py)#L(?P<line>\d+)\)")
SKIP_DIRS = {".git", ".venv", "runs", "node_modules", "__pycache__", "build", "dist"}


@dataclass
class Anchor:
    """One line-anchored link: where it is (markdown file, offset of the match) and what it names."""

    markdown: Path
    start: int
    end: int
    name: str
    path: str  # as written in the link
    line: int

    @property
    def target(self) -> Path:
        return (self.markdown.parent / self.path).resolve()


def shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it (for messages)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def repository_files(root: Path = ROOT) -> list[Path]:
    """The repository's files: what git tracks or would track (not ignored); outside a git checkout, every file
    except those under .git, .venv, runs/ and other hidden or build directories."""
    try:
        listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                                 capture_output=True, check=True, timeout=60).stdout.decode("utf-8")
        return sorted(root / name for name in listing.split("\0") if name and (root / name).is_file())
    except (OSError, subprocess.SubprocessError):
        return sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part in SKIP_DIRS or part.startswith(".") for part in p.relative_to(root).parts[:-1]))


def markdown_files(root: Path = ROOT) -> list[Path]:
    """Every *.md file of the repository."""
    return [p for p in repository_files(root) if p.suffix == ".md"]


def find_anchors(markdown: Path) -> list[Anchor]:
    """The line-anchored links to .py files in one markdown file."""
    text = markdown.read_text(encoding="utf-8")
    return [Anchor(markdown, m.start(), m.end(), m.group("name"), m.group("path"), int(m.group("line")))
            for m in ANCHOR.finditer(text)]


def _defines(line: str, name: str, indented: bool) -> bool:
    """Does this source line define `name` (def, class, or an assignment / annotation at the start of the line)?"""
    indent = r"\s+" if indented else ""
    return re.match(rf"^{indent}(?:async\s+def|def|class)\s+{re.escape(name)}\b", line) is not None or \
        re.match(rf"^{indent}{re.escape(name)}\s*(?::[^=]*)?=|^{indent}{re.escape(name)}\s*:", line) is not None


def definition_line(source: Path, name: str) -> int:
    """The 1-based line of `source` that defines `name` ("func", "Class", "CONSTANT" or "Class.member").

    Raises ValueError naming the file and the symbol when there is no such definition.
    """
    lines = source.read_text(encoding="utf-8").splitlines()
    owner, _, member = name.rpartition(".")
    if not owner:
        for number, line in enumerate(lines, start=1):
            if _defines(line, name, indented=False):
                return number
        raise ValueError(f"{shown(source)}: no module-level definition of {name!r}")
    start = definition_line(source, owner)
    for number in range(start + 1, len(lines) + 1):
        line = lines[number - 1]
        if line and not line[0].isspace() and not line.startswith((")", "#")):  # the class body has ended
            break
        if _defines(line, member, indented=True):
            return number
    raise ValueError(f"{shown(source)}: class {owner!r} defines no {member!r}")


def stale_anchors(markdown: Path) -> list[tuple[Anchor, int]]:
    """(anchor, the line that defines its symbol now) for every anchor of `markdown` that points elsewhere."""
    stale = []
    for anchor in find_anchors(markdown):
        if not anchor.target.is_file():
            raise ValueError(f"{shown(markdown)}: link to {anchor.path}, which does not exist")
        line = definition_line(anchor.target, anchor.name)
        if line != anchor.line:
            stale.append((anchor, line))
    return stale


def rewrite(markdown: Path) -> list[str]:
    """Point every stale anchor of `markdown` at its symbol's line; returns one message per rewritten anchor."""
    stale = stale_anchors(markdown)
    if not stale:
        return []
    text = markdown.read_text(encoding="utf-8")
    for anchor, line in sorted(stale, key=lambda pair: -pair[0].start):  # back to front: offsets stay valid
        link = text[anchor.start:anchor.end]
        text = text[:anchor.start] + link.replace(f"#L{anchor.line})", f"#L{line})") + text[anchor.end:]
    markdown.write_text(text, encoding="utf-8")
    return [f"{shown(markdown)}: {a.name} {a.path}#L{a.line} -> #L{line}" for a, line in stale]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale anchors, change nothing")
    args = parser.parse_args(argv)
    messages = []
    try:
        for markdown in markdown_files():
            if args.check:
                messages += [f"{shown(markdown)}: {a.name} {a.path}#L{a.line} is stale: it is defined at "
                             f"line {line}" for a, line in stale_anchors(markdown)]
            else:
                messages += rewrite(markdown)
    except ValueError as err:
        print(f"update_anchors: {err}", file=sys.stderr)
        return 1
    print("\n".join(messages) or "every line anchor points at its symbol")
    return 1 if args.check and messages else 0


if __name__ == "__main__":
    sys.exit(main())
