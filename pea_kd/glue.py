"""Read the GLUE benchmark's TSV files into `Example`s.

GLUE (Wang et al., 2018) bundles eight sentence(-pair) classification tasks and one regression task (STS-B). The files
written by the official `download_glue_data.py` are all tab-separated, but each task (sometimes each split) has its own
columns, and there are quirks a generic reader gets wrong:

* MRPC's header starts with a UTF-8 byte-order mark;
* CoLA train/dev have no header line (CoLA test has one) and CoLA dev has no final newline;
* the text contains unbalanced quote characters (MRPC: `" The foodservice pie ...`), so a CSV parser with quoting
  enabled silently glues rows together. We split lines on '\\n' and fields on '\\t' ourselves;
* STS-B labels are float similarity scores in [0, 5]; test splits have no label column at all;
* QQP's original train file has a few malformed rows (missing fields). This is the one known, documented exception:
  those rows are counted, skipped and reported in one log line.

Every task is described by one small explicit `TaskSpec`: which file holds each split, the column names of that file
(checked against its header), which columns are text_a / text_b / label, the label vocabulary and the metrics. Adding a
task is adding one entry to `TASKS`. Any row that does not match its spec raises `GlueFormatError` (glue_files), one
line `file:line: expected ..., got ...`; nothing is skipped silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .glue_files import format_error, missing_split_error, parse_label, read_lines, resolve_data_dir, show

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Example:
    """One GLUE example.

    guid:   "<split>-<n>", n = 0-based data row of the file (for test splits this equals the file's index column).
    text_a: first (or only) sentence, exactly as in the file.
    text_b: second sentence of a pair task; None for single-sentence tasks (CoLA, SST-2).
    label:  index into `spec.labels` for classification, float score for STS-B, None on test splits.
    """

    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None


@dataclass(frozen=True)
class Layout:
    """The columns of one TSV file, named as in its header (or descriptively, when the file has no header)."""

    columns: tuple[str, ...]
    text_a: str
    text_b: str | None = None
    label: str | None = None  # None: unlabeled (test) file
    header: bool = True


@dataclass(frozen=True, eq=False)  # eq=False: specs are singletons, compared and hashed by identity
class TaskSpec:
    """Everything task-specific about one GLUE task.

    files:   split name -> (file name inside `directory`, its Layout).
    labels:  label strings as written in the files; a label's position is its class id. None means regression (STS-B).
    metrics: the keys `pea_kd.metrics.compute_metrics` returns; `primary_metric` is the one used to pick checkpoints.
    split_aliases: extra split names, e.g. MNLI "dev" -> "dev_matched".
    skip_malformed_rows: splits in which rows with a wrong column count are a known quirk of the original data:
        they are counted, skipped and reported in one log line instead of raising.
    score_range: (low, high) of a regression task's scores; a score outside it is a format error.
    """

    name: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    primary_metric: str
    files: dict[str, tuple[str, Layout]]
    directory: str = ""  # defaults to `name`
    dev_split: str = "dev"
    split_aliases: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    skip_malformed_rows: tuple[str, ...] = ()
    score_range: tuple[float, float] | None = None

    def __post_init__(self):
        if not self.directory:
            object.__setattr__(self, "directory", self.name)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Size of the classifier output: number of classes, or 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return next(iter(self.files.values()))[1].text_b is not None

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.files)

    def resolve_split(self, split: str) -> str:
        """Canonical split name ("dev" -> "dev_matched" for MNLI); ValueError for an unknown split."""
        split = self.split_aliases.get(split, split)
        if split not in self.files:
            names = ", ".join([*self.files, *self.split_aliases])
            raise ValueError(f"unknown split {split!r} for GLUE task {self.name}; expected one of: {names}")
        return split


def _standard_files(labeled: Layout, test: Layout) -> dict[str, tuple[str, Layout]]:
    """train.tsv and dev.tsv share one labeled layout; test.tsv has its own, without labels."""
    return {"train": ("train.tsv", labeled), "dev": ("dev.tsv", labeled), "test": ("test.tsv", test)}


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_SENTENCE_PAIR = ("index", "sentence1", "sentence2")
_MRPC = ("#1 ID", "#2 ID", "#1 String", "#2 String")
_STSB = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2")
_MNLI = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
         "sentence1_parse", "sentence2_parse", "sentence1", "sentence2")
_MNLI_FILES = {
    "train": ("train.tsv", Layout(_MNLI + ("label1", "gold_label"), "sentence1", "sentence2", "gold_label")),
    **{f"dev_{m}": (f"dev_{m}.tsv", Layout(_MNLI + ("label1", "label2", "label3", "label4", "label5", "gold_label"),
                                           "sentence1", "sentence2", "gold_label")) for m in ("matched", "mismatched")},
    **{f"test_{m}": (f"test_{m}.tsv", Layout(_MNLI, "sentence1", "sentence2")) for m in ("matched", "mismatched")},
}
_MNLI_LABELS = ("contradiction", "entailment", "neutral")

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in [
    # CoLA train/dev: no header; columns: source, label, original label ("*" or empty), sentence.
    TaskSpec("CoLA", _BINARY, ("mcc",), "mcc", _standard_files(
        Layout(("source", "label", "original_label", "sentence"), "sentence", label="label", header=False),
        Layout(("index", "sentence"), "sentence"))),
    TaskSpec("SST-2", _BINARY, ("acc",), "acc", _standard_files(
        Layout(("sentence", "label"), "sentence", label="label"),
        Layout(("index", "sentence"), "sentence"))),
    # MRPC: the header starts with a BOM (removed while reading); "Quality" is the paraphrase label.
    TaskSpec("MRPC", _BINARY, ("acc", "f1", "acc_and_f1"), "f1", _standard_files(
        Layout(("Quality",) + _MRPC, "#1 String", "#2 String", "Quality"),
        Layout(("index",) + _MRPC, "#1 String", "#2 String"))),
    # QQP: the original train file has a few rows with missing fields (known quirk, skipped and counted).
    TaskSpec("QQP", _BINARY, ("acc", "f1", "acc_and_f1"), "f1", _standard_files(
        Layout(("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), "question1", "question2",
               "is_duplicate"),
        Layout(("id", "question1", "question2"), "question1", "question2")), skip_malformed_rows=("train",)),
    TaskSpec("STS-B", None, ("pearson", "spearman", "corr"), "pearson", _standard_files(
        Layout(_STSB + ("score",), "sentence1", "sentence2", "score"),
        Layout(_STSB, "sentence1", "sentence2")), score_range=(0.0, 5.0)),
    # MNLI: evaluated separately on the matched and mismatched dev sets; "MNLI-MM" is the same data with
    # dev/test defaulting to the mismatched files.
    TaskSpec("MNLI", _MNLI_LABELS, ("acc",), "acc", _MNLI_FILES, dev_split="dev_matched",
             split_aliases={"dev": "dev_matched", "test": "test_matched"}, aliases=("mnli-m",)),
    TaskSpec("MNLI-MM", _MNLI_LABELS, ("acc",), "acc", _MNLI_FILES, directory="MNLI", dev_split="dev_mismatched",
             split_aliases={"dev": "dev_mismatched", "test": "test_mismatched"}),
    TaskSpec("QNLI", _NLI2, ("acc",), "acc", _standard_files(
        Layout(("index", "question", "sentence", "label"), "question", "sentence", "label"),
        Layout(("index", "question", "sentence"), "question", "sentence"))),
    TaskSpec("RTE", _NLI2, ("acc",), "acc", _standard_files(
        Layout(_SENTENCE_PAIR + ("label",), "sentence1", "sentence2", "label"),
        Layout(_SENTENCE_PAIR, "sentence1", "sentence2"))),
    # WNLI: label 1 = the second sentence is entailed.
    TaskSpec("WNLI", _BINARY, ("acc",), "acc", _standard_files(
        Layout(_SENTENCE_PAIR + ("label",), "sentence1", "sentence2", "label"),
        Layout(_SENTENCE_PAIR, "sentence1", "sentence2"))),
]}


def _key(name: str) -> str:
    """Task names match case-insensitively, ignoring '-' and '_': "SST-2" == "sst2" == "Sst_2"."""
    return name.lower().replace("-", "").replace("_", "")


_BY_KEY = {_key(alias): spec for spec in TASKS.values() for alias in (spec.name, *spec.aliases)}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """The TaskSpec for a task name (case-insensitive, '-'/'_' ignored, e.g. "mrpc", "sst2", "sts-b", "mnli-mm")."""
    if isinstance(task, TaskSpec):
        return task
    spec = _BY_KEY.get(_key(str(task)))
    if spec is None:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of: {', '.join(TASKS)}")
    return spec


def split_path(task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of the TSV file holding `split` of `task` (the file need not exist)."""
    spec = get_task(task)
    file_name = spec.files[spec.resolve_split(split)][0]
    return resolve_data_dir(data_dir)[0] / spec.directory / file_name


def load_examples(task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """Read one split of a GLUE task, checking every row against the task's spec.

    data_dir: the GLUE root holding one folder per task (CoLA, SST-2, MRPC, ...); default $GLUE_DIR, else
    <project root>/data/glue. Raises FileNotFoundError (saying where it looked and how to download) for a missing
    split and GlueFormatError for any row that does not match the spec.
    """
    spec = get_task(task)
    split = spec.resolve_split(split)
    path = split_path(spec, split, data_dir)
    if not path.is_file():  # where it looked, and how to download it
        raise missing_split_error(spec.name, spec.directory, split, path, data_dir)
    layout = spec.files[split][1]
    lines = read_lines(path)  # strict UTF-8, split on '\n' only: no CSV quoting
    first = 2 if layout.header else 1  # 1-based line number of the first data row
    if not lines:
        raise format_error(path, 1, "a header line" if layout.header else "a data row", "an empty file")
    if layout.header and tuple(lines[0].split("\t")) != layout.columns:
        raise format_error(path, 1, "header " + repr("\t".join(layout.columns)), show(lines[0]))
    if len(lines) < first:
        raise format_error(path, first, "at least one data row", "end of file")

    width = len(layout.columns)
    col_a = layout.columns.index(layout.text_a)
    col_b = None if layout.text_b is None else layout.columns.index(layout.text_b)
    col_label = None if layout.label is None else layout.columns.index(layout.label)
    examples, skipped = [], 0
    for line_no, line in enumerate(lines[first - 1:], start=first):
        fields = line.split("\t")
        if len(fields) != width:
            if split in spec.skip_malformed_rows:
                skipped += 1
                continue
            raise format_error(path, line_no, f"{width} tab-separated columns ({', '.join(layout.columns)})",
                               f"{len(fields)}")
        raw_label = None if col_label is None else fields[col_label]  # test splits have no label column
        label = None if raw_label is None else parse_label(spec.labels, spec.score_range, raw_label, path, line_no)
        examples.append(Example(guid=f"{split}-{line_no - first}", text_a=fields[col_a],
                                text_b=None if col_b is None else fields[col_b], label=label))
    if skipped:
        log.warning("%s %s: skipped %d malformed rows (wrong column count; known quirk of the original file) in %s",
                    spec.name, split, skipped, path)
    return examples
