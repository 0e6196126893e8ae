"""Download the GLUE tasks into <data dir>/<TASK>/ in the layout of the well-known download_glue_data.py.

    python -m pea_kd download-glue --tasks MRPC,RTE          (make data TASK=MRPC,RTE; pea-kd download-glue ...)
    python -m pea_kd download-glue --tasks all --data-dir data/glue

The data dir is the one the GLUE reader uses (pea_kd.glue): --data-dir, else $GLUE_DIR, else <project>/data/glue
(the repository in a source checkout, the current directory where pea-kd is pip-installed). `reproduce` calls
download_task itself when its task is missing (ensure_task_data). The reader never imports this module:
the download depends on the reader, not the other way round.

Sources are the official ones that download_glue_data.py uses: one zip per task from dl.fbaipublicfiles.com/glue/data/
(CoLA, SST-2, QQP, STS-B, MNLI, QNLI, RTE, WNLI); MRPC is rebuilt from the original Microsoft files
msr_paraphrase_{train,test}.txt (SentEval mirror) plus GLUE's list of dev-set id pairs, with the same conversion code,
so train/dev/test.tsv match the standard files byte for byte (header keeps the source's UTF-8 BOM).

Safety: each task is assembled in a hidden temporary directory beside its target and renamed into place only when
every expected split file is there, so data/glue/<TASK>/ is either complete or absent. A task whose split files all
exist is skipped without any request. A corrupt or wrongly-hashed archive is deleted; an interrupted download keeps
its `.part` in <data-dir>/.downloads/ and the next run resumes it.

Checksums: the SHA-256 of the upstream archives could not be verified offline, so the table below holds None and a
warning is printed. The extracted split files are compared with reference hashes of the copies used by this project
(the hashes of the standard GLUE files), again with a warning only: they identify the standard files, not the archives.

--base-url (or $PEA_KD_GLUE_URL) replaces every source with a flat mirror: each file is fetched as <base-url>/<file>.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from bert_mini.download import DownloadError, NoNetworkError, download_file, sha256_of

from .glue import TaskSpec, get_task, split_path
from .glue_files import resolve_data_dir

log = logging.getLogger(__name__)

SPLITS = ("train.tsv", "dev.tsv", "test.tsv")
# task directory name -> (source file, split files that must exist)
TASKS = {
    "CoLA": ("CoLA.zip", SPLITS),
    "SST-2": ("SST-2.zip", SPLITS),
    "MRPC": (None, SPLITS),
    "QQP": ("QQP-clean.zip", SPLITS),
    "STS-B": ("STS-B.zip", SPLITS),
    "MNLI": ("MNLI.zip", ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv", "test_matched.tsv",
                          "test_mismatched.tsv")),
    "QNLI": ("QNLIv2.zip", SPLITS),
    "RTE": ("RTE.zip", SPLITS),
    "WNLI": ("WNLI.zip", SPLITS),
}
MRPC_FILES = ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "mrpc_dev_ids.tsv")
_GLUE = "https://dl.fbaipublicfiles.com/glue/data/"
_SENTEVAL = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"
OFFICIAL_URLS = {archive: _GLUE + archive for archive, _ in TASKS.values() if archive} | {
    "msr_paraphrase_train.txt": _SENTEVAL + "msr_paraphrase_train.txt",
    "msr_paraphrase_test.txt": _SENTEVAL + "msr_paraphrase_test.txt",
    "mrpc_dev_ids.tsv": "https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations.appspot.com/o/"
    "data%2Fmrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-7480817f1adc",
}
# SHA-256 of each downloaded source. None = not verified offline (no network here to compute them; never guessed).
SOURCE_SHA256: dict[str, Optional[str]] = {name: None for name in OFFICIAL_URLS}
# SHA-256 of standard split files (from /work/shared/glue_data/SOURCES.md: copies cross-checked between independent
# repositories). A mismatch only warns: it means "not the copy this project was developed with".
REFERENCE_SHA256 = {
    "MRPC/train.tsv": "69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3",
    "MRPC/dev.tsv": "9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17",
    "MRPC/test.tsv": "aee460ceda833926b8ab2ad952d399f5cf8bc9335cff19afcac03dc449558622",
    "RTE/train.tsv": "41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c",
    "RTE/dev.tsv": "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb",
    "RTE/test.tsv": "6e33f09b5c2bfd5fd5fde217070f3dd49e484e33b9752b5864cf36fc421a213f",
    "SST-2/train.tsv": "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    "SST-2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "SST-2/test.tsv": "69a938605609b3e6663b4487918fe1565eb293734e6e520d0366d1d412fd2a13",
    "QNLI/dev.tsv": "763e95932dd3578251de71582e06829015f9c3815a518c751dc537219b159de4",
    "QNLI/test.tsv": "6d856264e292fa7a7bc7b8e182efa1454ffd9532733c12ad813017dd5b377a5a",
    "CoLA/train.tsv": "cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624",
    "CoLA/dev.tsv": "8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd",
    "CoLA/test.tsv": "3b4df85f7a9a0633574b38d181e18090ac961a24b18fb6bcd74999ddea8ad0b8",
    "STS-B/train.tsv": "41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2",
    "STS-B/dev.tsv": "fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59",
    "STS-B/test.tsv": "16b4223d7d44a644fbc10f1b449472cfe81e1715fb07cf44023b0aa88ce856eb",
    "WNLI/dev.tsv": "cba00490596dd14be8cf53b4f53bb744abe3a7b89f81ab210528d80225338ed5",
    "WNLI/test.tsv": "ff0296817e235bf6f7a230c5f6781bd6ee228a45445f6510831fdef6f2a04766",
}


class GlueDownloadError(RuntimeError):
    """A task could not be downloaded, verified or extracted; the message says which and why."""


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIASES = {_key(t): t for t in TASKS} | {"sst": "SST-2", "sts": "STS-B"}


def parse_tasks(spec: str) -> list[str]:
    """'MRPC,rte' -> ['MRPC', 'RTE']; 'all' -> every task. Case and dashes do not matter (sst2 = SST-2)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"no task given; valid tasks: {', '.join(TASKS)} or all")
    if any(n.lower() == "all" for n in names):
        return list(TASKS)
    tasks = []
    for n in names:
        if _key(n) not in _ALIASES:
            raise ValueError(f"unknown task {n!r}; valid tasks: {', '.join(TASKS)} or all")
        if _ALIASES[_key(n)] not in tasks:
            tasks.append(_ALIASES[_key(n)])
    return tasks


def source_url(filename: str, base_url: Optional[str]) -> str:
    return f"{base_url.rstrip('/')}/{filename}" if base_url else OFFICIAL_URLS[filename]


def is_present(task_dir: Path, task: str) -> bool:
    return all((task_dir / split).is_file() for split in TASKS[task][1])


def _fetch(filename: str, downloads: Path, base_url: Optional[str], progress: bool) -> Path:
    """Download one source file into the downloads dir (reusing a complete earlier copy), verifying a known hash."""
    url, dest, expected = source_url(filename, base_url), downloads / filename, SOURCE_SHA256.get(filename)
    if expected is None:
        log.warning("no known sha256 for %s (not verified offline); its checksum was not verified", filename)
    if dest.is_file() and (expected is None or sha256_of(dest) == expected):
        return dest
    return download_file(url, dest, sha256=expected, progress=progress)


def _mrpc_source(name: str, mrpc_dir: Optional[Path]) -> Optional[Path]:
    """A user-supplied copy of an MRPC source file in --mrpc-dir (dev ids may also be called dev_ids.tsv)."""
    if mrpc_dir is None:
        return None
    names = (name, "dev_ids.tsv") if name == "mrpc_dev_ids.tsv" else (name,)
    return next((Path(mrpc_dir) / n for n in names if (Path(mrpc_dir) / n).is_file()), None)


def format_mrpc(train_txt: Path, test_txt: Path, dev_ids_tsv: Path, out_dir: Path) -> None:
    """MRPC conversion of download_glue_data.py: split msr_paraphrase_train.txt by dev ids; renumber the test set.

    train/dev.tsv keep the source header line as is (with its BOM) and the source row order; test.tsv gets the header
    `index  #1 ID  #2 ID  #1 String  #2 String` and drops the Quality column. Lines end in "\\n" on every platform.
    """
    with open(dev_ids_tsv, encoding="utf8") as fh:
        dev_ids = {tuple(row.strip().split("\t")) for row in fh if row.strip()}

    def rows(path: Path):
        with open(path, encoding="utf8") as fh:
            header = fh.readline()
            yield header
            for lineno, row in enumerate(fh, start=2):
                if not row.strip():
                    continue
                fields = row.strip().split("\t")
                if len(fields) != 5:
                    raise GlueDownloadError(
                        f"{path}, line {lineno}: expected 5 tab-separated fields, got {len(fields)}")
                yield fields

    train_rows = rows(train_txt)
    header = next(train_rows)
    with open(out_dir / "train.tsv", "w", encoding="utf8", newline="") as train_fh, \
            open(out_dir / "dev.tsv", "w", encoding="utf8", newline="") as dev_fh:
        train_fh.write(header)
        dev_fh.write(header)
        for label, id1, id2, s1, s2 in train_rows:
            out = dev_fh if (id1, id2) in dev_ids else train_fh
            out.write("%s\t%s\t%s\t%s\t%s\n" % (label, id1, id2, s1, s2))
    test_rows = rows(test_txt)
    next(test_rows)
    with open(out_dir / "test.tsv", "w", encoding="utf8", newline="") as test_fh:
        test_fh.write("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
        for idx, (_label, id1, id2, s1, s2) in enumerate(test_rows):
            test_fh.write("%d\t%s\t%s\t%s\t%s\n" % (idx, id1, id2, s1, s2))


def _extract(archive: Path, url: str, into: Path) -> None:
    """Extract a zip after checking it is readable, CRC-clean and has no member escaping `into`."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"CRC error in member {bad}")
            for member in zf.namelist():
                if member.startswith(("/", "\\")) or ".." in Path(member).parts:
                    raise zipfile.BadZipFile(f"unsafe member path {member!r}")
            zf.extractall(into)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise GlueDownloadError(f"{url}: downloaded archive is corrupt ({err}); it was deleted, run again") from None


def _task_root(extracted: Path, task: str) -> Path:
    """Where the split files are: <tmp>/<TASK>/ (the usual layout), a single top-level folder, or <tmp> itself."""
    if (extracted / task).is_dir():
        return extracted / task
    entries = [p for p in extracted.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return extracted


def _verify_reference(task: str, task_dir: Path) -> None:
    for split in TASKS[task][1]:
        expected = REFERENCE_SHA256.get(f"{task}/{split}")
        if expected is not None and sha256_of(task_dir / split) != expected:
            log.warning("%s/%s differs from the reference copy (sha256 %s...)", task, split, expected[:12])


def download_task(task: str, data_dir: Path, base_url: Optional[str] = None, progress: bool = True,
                  mrpc_dir: Optional[Path] = None) -> bool:
    """Fetch one task into data_dir/<task>/ atomically. Returns False when it was already present (no request)."""
    data_dir = Path(data_dir)
    target = data_dir / task
    if is_present(target, task):
        return False
    if target.exists():
        raise GlueDownloadError(
            f"{target} exists but lacks some of {', '.join(TASKS[task][1])}; delete it and run again")
    data_dir.mkdir(parents=True, exist_ok=True)
    downloads = data_dir / ".downloads"
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", suffix=".tmp", dir=data_dir))
    fetched: list[Path] = []  # files we downloaded (never the user's --mrpc-dir copies)

    def get(name: str) -> Path:
        local = _mrpc_source(name, mrpc_dir)
        if local is not None:
            return local
        fetched.append(_fetch(name, downloads, base_url, progress))
        return fetched[-1]

    delete_fetched = False  # kept after a network failure (the next run reuses/resumes them), else deleted
    try:
        archive = TASKS[task][0]
        if archive is None:  # MRPC: original files + dev id list, converted here
            sources = [get(name) for name in MRPC_FILES]
            root = tmp
            format_mrpc(*sources, root)
            for src, name in zip(sources, ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "dev_ids.tsv")):
                shutil.copyfile(src, root / name)  # keep the raw files beside the TSVs, as download_glue_data.py does
        else:
            _extract(get(archive), source_url(archive, base_url), tmp)
            root = _task_root(tmp, task)
        missing = [s for s in TASKS[task][1] if not (root / s).is_file()]
        if missing:
            raise GlueDownloadError(f"{task}: the downloaded data lacks {', '.join(missing)}")
        _verify_reference(task, root)
        os.rename(root, target)
        delete_fetched = True
    except GlueDownloadError:
        delete_fetched = True  # the downloaded bytes are bad: a rerun must fetch them again
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if delete_fetched:
            for path in fetched:
                path.unlink(missing_ok=True)
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    return True


def ensure_task_data(task: str | TaskSpec, data_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Make sure the task's train and dev files exist, downloading the task when they do not; returns the GLUE root.

    The download goes through download_task (official sources, or the mirror in $PEA_KD_GLUE_URL) into the
    data dir the reader uses (the argument, else $GLUE_DIR, else <project>/data/glue: the current directory's data/glue
    where pea-kd is pip-installed). Without a network it raises FileNotFoundError in one line naming GLUE_DIR and
    `make data`.
    """
    spec = get_task(task)
    root, source = resolve_data_dir(data_dir)
    if all(split_path(spec, split, data_dir).is_file() for split in ("train", spec.dev_split)):
        return root
    log.info("GLUE %s is not in %s (data dir from %s): downloading it", spec.name, root, source)
    try:
        download_task(spec.directory, root, base_url=os.environ.get("PEA_KD_GLUE_URL"), progress=progress)
    except (RuntimeError, OSError) as err:  # DownloadError, GlueDownloadError, a read-only or full disk
        reason = ("no network connection" if isinstance(err, NoNetworkError)
                  else f"the download failed: {(str(err).strip().splitlines() or [type(err).__name__])[0]}")
        raise FileNotFoundError(f"GLUE {spec.name} is not in {root} (data dir from {source}) and cannot be "
                                f"downloaded ({reason}); set GLUE_DIR to a directory holding {spec.directory}/, or "
                                f"run `make data TASK={spec.directory.lower()}` (python -m pea_kd download-glue "
                                f"--tasks {spec.directory}) on a machine with a network") from None
    return root


def configure(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pea_kd download-glue`."""
    parser.add_argument("--tasks", default="all",
                        help=f"comma-separated tasks or 'all' (default: all). Valid: {', '.join(TASKS)}")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="output directory, one folder per task (default: $GLUE_DIR, else <project>/data/glue, "
                             "where the GLUE reader looks)")
    parser.add_argument("--base-url", default=os.environ.get("PEA_KD_GLUE_URL"),
                        help="flat mirror to fetch every file from as <base-url>/<file> instead of the official "
                             "sources (default: $PEA_KD_GLUE_URL if set)")
    parser.add_argument("--mrpc-dir", type=Path, default=None,
                        help="local directory holding msr_paraphrase_train.txt and msr_paraphrase_test.txt "
                             "(and optionally dev_ids.tsv / mrpc_dev_ids.tsv) to use instead of downloading them")
    parser.add_argument("--no-progress", action="store_true", help="do not show download progress bars")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Download each task of --tasks that is missing; {"data_dir", "tasks": {task: "downloaded" | "present"}}.

    A bad --tasks is a usage error; a failed download a one-line ValueError naming the task (and, without a network,
    what to do instead), after the tasks before it have landed.
    """
    try:
        tasks = parse_tasks(args.tasks)
    except ValueError as err:
        parser.error(str(err))
    data_dir, _ = resolve_data_dir(args.data_dir)  # the reader's rule: --data-dir, else $GLUE_DIR, else data/glue
    done = {}
    for task in tasks:
        try:
            fetched = download_task(task, data_dir, args.base_url, not args.no_progress, args.mrpc_dir)
        except (DownloadError, GlueDownloadError, OSError) as err:
            hint = (f" (e.g. copy the task's TSV files into {data_dir / task}/, or point $GLUE_DIR at a GLUE copy)"
                    if isinstance(err, NoNetworkError) else "")
            raise ValueError(f"{task}: {err}{hint}") from None
        done[task] = "downloaded" if fetched else "present"
        log.info("%s: %s -> %s", task, "downloaded" if fetched else "already present, skipped", data_dir / task)
    return {"data_dir": str(data_dir), "tasks": done}
