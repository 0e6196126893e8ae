"""GLUE's files on disk: where they are, and how one TSV file is read and its errors reported.

pea_kd.glue describes each task (its TaskSpec) and checks every row; this module holds what that needs from the file
system: the data directory ($GLUE_DIR, else <project root>/data/glue), strict UTF-8 lines split on '\\n' only (no CSV
quoting), a label or score parsed against the spec, and `GlueFormatError`, one line `file:line: expected ..., got ...`.
Machinery: skip on a first reading.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

# Where runs/, data/glue/ and data/cache/ go: the repository in a source checkout; the current directory when pea_kd
# is installed as a package (never site-packages).
_SOURCE_ROOT = Path(__file__).resolve().parent.parent
PROJECT_ROOT = _SOURCE_ROOT if (_SOURCE_ROOT / "pyproject.toml").is_file() else Path.cwd()
DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "glue"


class GlueFormatError(ValueError):
    """A GLUE file does not match its TaskSpec. The message is one line: `<file>:<line>: expected ..., got ...`."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> tuple[Path, str]:
    """The GLUE root directory and where it came from: the argument, else $GLUE_DIR, else <project root>/data/glue."""
    if data_dir is not None:
        return Path(data_dir), "the data_dir argument"
    if os.environ.get("GLUE_DIR"):
        return Path(os.environ["GLUE_DIR"]), "$GLUE_DIR"
    return DEFAULT_DATA_DIR, "the default <project root>/data/glue"


def missing_split_error(task_name: str, directory: str, split: str, path: Path, data_dir) -> FileNotFoundError:
    """The error for a split whose file is absent: where it looked, why there, and how to download it."""
    root, source = resolve_data_dir(data_dir)
    return FileNotFoundError(
        f"GLUE {task_name} split {split!r} not found: no file {path} (data dir {root} from {source}); "
        f"download it with `make data TASK={directory.lower()}` or "
        f"`python -m pea_kd download-glue --tasks {directory}`")


def read_lines(path: Path) -> list[str]:
    """Decode a file as strict UTF-8 and split it into lines on '\\n' only (no CSV quoting).

    A leading byte-order mark (MRPC) is dropped, a missing final newline (CoLA dev) is fine, and Windows line endings
    are tolerated.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data.count(b"\n", 0, err.start) + 1
        raise format_error(path, line_no, "UTF-8 text", f"byte 0x{data[err.start]:02x}") from None
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":  # the final newline, or an empty file
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def parse_label(labels, score_range, raw: str, path: Path, line_no: int) -> int | float:
    """A class id (position of `raw` in `labels`), or, when labels is None (regression), a finite float score within
    `score_range` (low, high) when one is given."""
    if labels is None:
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise format_error(path, line_no, "a numeric score", show(raw))
        if score_range and not score_range[0] <= score <= score_range[1]:
            low, high = score_range
            raise format_error(path, line_no, f"a score in [{low:g}, {high:g}]", show(raw))
        return score
    if raw not in labels:
        raise format_error(path, line_no, f"a label in {{{', '.join(labels)}}}", show(raw))
    return labels.index(raw)


def show(text: str, limit: int = 80) -> str:
    """repr() of a value for an error message: one line (tabs/newlines escaped), shortened."""
    text = repr(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_error(path: Path, line_no: int, expected: str, got: str) -> GlueFormatError:
    """GlueFormatError `path:line_no: expected <expected>, got <got>`."""
    return GlueFormatError(f"{path}:{line_no}: expected {expected}, got {got}")
