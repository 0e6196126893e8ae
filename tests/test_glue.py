"""pea_kd.glue on the real GLUE files ($GLUE_DIR, else /work/shared/glue_data) and on synthetic malformed files."""
import functools
import logging
import os
from pathlib import Path

import pytest

from pea_kd import glue, glue_files
from pea_kd.glue import Example, TASKS, get_task, load_examples, split_path
from pea_kd.glue_files import GlueFormatError


@pytest.fixture(scope="module")
def glue_dir() -> Path:
    path = Path(os.environ.get("GLUE_DIR") or "/work/shared/glue_data")
    if not path.is_dir():
        pytest.skip(f"GLUE data directory {path} does not exist")
    return path


@functools.lru_cache(maxsize=None)
def _load(task, split, data_dir):
    return load_examples(task, split, data_dir)


def write(root: Path, relative: str, content: str | bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


# ---------------------------------------------------------------- real files: sizes, labels, exact examples

@pytest.mark.parametrize("task,split,rows", [
    ("MRPC", "train", 3668), ("MRPC", "dev", 408), ("MRPC", "test", 1725),
    ("RTE", "train", 2490), ("RTE", "dev", 277), ("RTE", "test", 3000),
    ("SST-2", "train", 67349), ("SST-2", "dev", 872), ("SST-2", "test", 1821),
    ("CoLA", "train", 8551), ("CoLA", "dev", 1043), ("CoLA", "test", 1063),
    ("STS-B", "train", 5749), ("STS-B", "dev", 1500), ("STS-B", "test", 1379),
    ("WNLI", "train", 635), ("WNLI", "dev", 71), ("WNLI", "test", 146),
    ("QNLI", "dev", 5463), ("QNLI", "test", 5463),
])
def test_row_counts_and_label_presence(glue_dir, task, split, rows):
    examples = _load(task, split, glue_dir)
    spec = get_task(task)
    assert len(examples) == rows
    assert [e.guid for e in examples[:2]] == [f"{split}-0", f"{split}-1"]
    assert all((e.text_b is not None) == spec.is_pair for e in examples)
    if split == "test":
        assert all(e.label is None for e in examples)
    elif spec.is_regression:
        assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in examples)
    else:
        assert all(isinstance(e.label, int) and 0 <= e.label < spec.num_labels for e in examples)


@pytest.mark.parametrize("task,split,counts", [
    ("MRPC", "dev", {"0": 129, "1": 279}),
    ("MRPC", "train", {"0": 1194, "1": 2474}),
    ("RTE", "train", {"entailment": 1249, "not_entailment": 1241}),
    ("RTE", "dev", {"entailment": 146, "not_entailment": 131}),
    ("SST-2", "dev", {"0": 428, "1": 444}),
    ("SST-2", "train", {"0": 29780, "1": 37569}),
    ("CoLA", "dev", {"0": 322, "1": 721}),
    ("CoLA", "train", {"0": 2528, "1": 6023}),
    ("WNLI", "dev", {"0": 40, "1": 31}),
    ("WNLI", "train", {"0": 323, "1": 312}),
    ("QNLI", "dev", {"entailment": 2702, "not_entailment": 2761}),
])
def test_label_distributions(glue_dir, task, split, counts):
    labels = get_task(task).labels
    examples = _load(task, split, glue_dir)
    assert {name: sum(e.label == i for e in examples) for i, name in enumerate(labels)} == counts


def test_stsb_mean_scores(glue_dir):
    dev = [e.label for e in _load("STS-B", "dev", glue_dir)]
    train = [e.label for e in _load("STS-B", "train", glue_dir)]
    assert round(sum(dev) / len(dev), 3) == 2.364
    assert round(sum(train) / len(train), 3) == 2.701


@pytest.mark.parametrize("task,split,position,expected", [
    # MRPC: the header's BOM is dropped; the leading '"' of text_b is text, not CSV quoting.
    ("MRPC", "dev", 0, Example(
        "dev-0", "He said the foodservice pie business doesn 't fit the company 's long-term growth strategy .",
        '" The foodservice pie business does not fit our long-term growth strategy .', 1)),
    ("MRPC", "dev", -1, Example(
        "dev-407", "Ex-KGB agent Putin added that the Beatles were considered ' propaganda of an alien ideology ' .",
        "In Soviet times the Beatles ' music \" was considered propaganda of an alien ideology .", 1)),
    ("MRPC", "test", -1, Example(
        "test-1724", 'Sobig.F spreads when unsuspecting computer users open file attachments in emails that contain '
        'such familiar headings as " Thank You ! , " " Re : Details " or " Re : That Movie . "',
        'The virus spreads when unsuspecting computer users open file attachments in emails that contain familiar '
        'headings like " Thank You ! " and " Re : Details " .', None)),
    ("RTE", "train", 0, Example("train-0", "No Weapons of Mass Destruction Found in Iraq Yet.",
                                "Weapons of Mass Destruction Found in Iraq.", 1)),
    ("RTE", "train", -1, Example(
        "train-2489", "Turkey is unlikely to become involved in, or allow U.S. forces to use Turkish territory in a "
        "Middle East war that does not threaten her territory directly.", "U.S. to use Turkish military bases.", 1)),
    # SST-2 text keeps its trailing space.
    ("SST-2", "train", 0, Example("train-0", "hide new secretions from the parental units ", None, 0)),
    ("SST-2", "train", -1, Example(
        "train-67348", "this new jangle of noise , mayhem and stupidity must be a serious contender for the title . ",
        None, 0)),
    # CoLA dev: no header (first row is data) and no final newline (last row still read).
    ("CoLA", "dev", 0, Example("dev-0", "The sailors rode the breeze clear of the rocks.", None, 1)),
    ("CoLA", "dev", -1, Example("dev-1042", "John talked to Bill about himself.", None, 1)),
    ("CoLA", "test", -1, Example("test-1062", "A picture of himself frightened John.", None, None)),
    ("STS-B", "dev", 0, Example("dev-0", "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.",
                                5.0)),
    # STS-B's 2016 rows write integer scores ("0" rather than "0.000").
    ("STS-B", "dev", -1, Example("dev-1499", "New video shows US police officers beating mentally-ill man",
                                 "New York police officer critically wounded in hatchet attack", 0.0)),
    ("WNLI", "dev", 0, Example("dev-0", "The drain is clogged with hair. It has to be cleaned.",
                               "The hair has to be cleaned.", 0)),
    # QNLI test: non-ASCII text (en dashes) decoded as UTF-8.
    ("QNLI", "test", -1, Example(
        "test-5462", "Who fought in the great Northern war?",
        "In 1709\u201313, a plague epidemic that followed the Great Northern War (1700\u201321, Sweden v. Russia and "
        "allies) killed about 100,000 in Sweden, and 300,000 in Prussia.", None)),
])
def test_exact_examples(glue_dir, task, split, position, expected):
    assert _load(task, split, glue_dir)[position] == expected


def test_data_dir_from_environment_and_default(glue_dir, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert len(load_examples("wnli", "dev")) == 71
    monkeypatch.delenv("GLUE_DIR")
    assert split_path("mrpc", "dev") == glue_files.PROJECT_ROOT / "data" / "glue" / "MRPC" / "dev.tsv"
    assert split_path("mrpc", "dev", "/x") == Path("/x/MRPC/dev.tsv")


# ---------------------------------------------------------------- task names, splits, specs

def test_task_names_and_aliases():
    assert get_task("mrpc") is get_task("MRPC") is TASKS["MRPC"]
    assert get_task("sst2") is get_task("SST-2") is get_task("sst-2")
    assert get_task("stsb") is get_task("STS-B")
    assert get_task("mnli-m") is get_task("MNLI")
    assert get_task("mnli-mm").name == "MNLI-MM" and get_task("mnli-mm").directory == "MNLI"
    with pytest.raises(ValueError, match=r"unknown GLUE task 'mrpcc'; expected one of: CoLA, SST-2, MRPC"):
        get_task("mrpcc")
    with pytest.raises(ValueError, match=r"unknown split 'validation' for GLUE task RTE"):
        load_examples("rte", "validation", "/nonexistent")


def test_spec_properties():
    assert (get_task("stsb").num_labels, get_task("stsb").is_regression) == (1, True)
    assert (get_task("mnli").num_labels, get_task("mnli").dev_split) == (3, "dev_matched")
    assert not get_task("cola").is_pair and not get_task("sst2").is_pair and get_task("qqp").is_pair
    assert get_task("mnli").splits == ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")
    assert get_task("rte").splits == ("train", "dev", "test")
    assert get_task("mnli").resolve_split("dev") == "dev_matched"
    assert get_task("mnli-mm").resolve_split("dev") == "dev_mismatched"
    for spec in TASKS.values():
        assert spec.primary_metric in spec.metrics
        assert spec.dev_split in spec.files


# ---------------------------------------------------------------- QQP and MNLI (not available offline): synthetic

QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"


def test_qqp_layout_and_known_malformed_train_rows(tmp_path, caplog):
    good = '7\t13\t14\tHow do I "learn" Python?\tWhat is the best way to learn Python?\t1\n'
    write(tmp_path, "QQP/train.tsv", QQP_HEADER + good + "8\t15\t16\tA question split by a newline\n"
          + "9\t17\t18\tOnly one question\t0\n" + good.replace("\t1\n", "\t0\n"))
    write(tmp_path, "QQP/dev.tsv", QQP_HEADER + good + "9\t17\t18\tOnly one question\t0\n")
    write(tmp_path, "QQP/test.tsv", "id\tquestion1\tquestion2\n0\tWhy?\tWhy not?\n")
    with caplog.at_level(logging.WARNING, logger="pea_kd.glue"):
        train = load_examples("qqp", "train", tmp_path)
    assert train == [Example("train-0", 'How do I "learn" Python?', "What is the best way to learn Python?", 1),
                     Example("train-3", 'How do I "learn" Python?', "What is the best way to learn Python?", 0)]
    assert len(caplog.records) == 1 and "skipped 2 malformed rows" in caplog.records[0].getMessage()
    with pytest.raises(GlueFormatError, match=r"QQP/dev\.tsv:3: expected 6 tab-separated columns .*, got 5"):
        load_examples("qqp", "dev", tmp_path)  # only train has the documented exception
    assert load_examples("qqp", "test", tmp_path) == [Example("test-0", "Why?", "Why not?", None)]


MNLI_COLUMNS = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                "sentence2_parse\tsentence1\tsentence2")


def _mnli_row(index, genre, premise, hypothesis, *labels):
    return "\t".join([str(index), "31193", "31193n", genre, "( ( x ) )", "( y )", "(ROOT (S x))", "(ROOT (S y))",
                      premise, hypothesis, *labels]) + "\n"


def test_mnli_layouts_and_split_aliases(tmp_path):
    write(tmp_path, "MNLI/train.tsv", MNLI_COLUMNS + "\tlabel1\tgold_label\n"
          + _mnli_row(0, "government", "Conceptually cream skimming.", "Product and geography.", "neutral", "neutral")
          + _mnli_row(1, "telephone", "you know", "You lose.", "entailment", "entailment"))
    dev_header = MNLI_COLUMNS + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
    five_votes = ("contradiction",) * 5
    write(tmp_path, "MNLI/dev_matched.tsv", dev_header + _mnli_row(0, "slate", "The new rights.", "Everyone.",
                                                                   *five_votes, "contradiction"))
    write(tmp_path, "MNLI/dev_mismatched.tsv", dev_header + _mnli_row(0, "letters", "Your gift.", "Hundreds.",
                                                                      *five_votes, "entailment"))
    write(tmp_path, "MNLI/test_matched.tsv", MNLI_COLUMNS + "\n" + _mnli_row(0, "slate", "P.", "H."))
    write(tmp_path, "MNLI/test_mismatched.tsv", MNLI_COLUMNS + "\n" + _mnli_row(0, "letters", "P2.", "H2."))

    train = load_examples("MNLI", "train", tmp_path)
    assert [(e.text_a, e.text_b, e.label) for e in train] == [
        ("Conceptually cream skimming.", "Product and geography.", 2), ("you know", "You lose.", 1)]
    assert load_examples("mnli", "dev", tmp_path) == [Example("dev_matched-0", "The new rights.", "Everyone.", 0)]
    assert load_examples("mnli", "dev_mismatched", tmp_path)[0].label == 1
    assert load_examples("mnli-mm", "dev", tmp_path)[0].guid == "dev_mismatched-0"
    assert load_examples("mnli", "test", tmp_path)[0] == Example("test_matched-0", "P.", "H.", None)
    assert load_examples("mnli-mm", "test", tmp_path)[0].text_a == "P2."


# ---------------------------------------------------------------- every error path

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_missing_split_names_path_and_download_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_examples("mrpc", "dev", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "MRPC" / "dev.tsv") in message and "the data_dir argument" in message
    assert "make data TASK=mrpc" in message and "python -m pea_kd download-glue --tasks MRPC" in message
    assert "\n" not in message


@pytest.mark.parametrize("relative,content,task,split,message", [
    ("RTE/dev.tsv", RTE_HEADER + "0\tA.\tB.\tentailment\n1\tA.\tB.\n", "rte", "dev",
     r"RTE/dev\.tsv:3: expected 4 tab-separated columns \(index, sentence1, sentence2, label\), got 3$"),
    ("RTE/dev.tsv", RTE_HEADER + "0\tA.\tB.\tentailment\n\n", "rte", "dev",
     r"RTE/dev\.tsv:3: expected 4 tab-separated columns .*, got 1$"),
    ("RTE/dev.tsv", RTE_HEADER + "0\tA.\tB.\tentailment\n1\tA.\tB.\tcontradiction\n", "rte", "dev",
     r"RTE/dev\.tsv:3: expected a label in \{entailment, not_entailment\}, got 'contradiction'$"),
    ("CoLA/train.tsv", "gj04\t1\t\tFine.\ngj04\t2\t*\tBad label.\n", "cola", "train",
     r"CoLA/train\.tsv:2: expected a label in \{0, 1\}, got '2'$"),
    ("STS-B/dev.tsv", "\t".join(["index", "genre", "filename", "year", "old_index", "source1", "source2",
                                 "sentence1", "sentence2", "score"]) + "\n0\tg\tf\ty\t0\tn\tn\tA.\tB.\tfive\n",
     "stsb", "dev", r"STS-B/dev\.tsv:2: expected a numeric score, got 'five'$"),
    ("RTE/dev.tsv", b"", "rte", "dev", r"RTE/dev\.tsv:1: expected a header line, got an empty file$"),
    ("CoLA/dev.tsv", b"", "cola", "dev", r"CoLA/dev\.tsv:1: expected a data row, got an empty file$"),
    ("RTE/dev.tsv", RTE_HEADER, "rte", "dev", r"RTE/dev\.tsv:2: expected at least one data row, got end of file$"),
    ("RTE/dev.tsv", "index\tsentence1\tsentence2\n0\tA.\tB.\n", "rte", "dev",
     r"RTE/dev\.tsv:1: expected header 'index\\tsentence1\\tsentence2\\tlabel', got 'index\\tsentence1\\tsentence2'$"),
    ("RTE/dev.tsv", RTE_HEADER.encode() + b"0\tA.\tB.\tentailment\n1\tCaf\xe9.\tB.\tentailment\n", "rte", "dev",
     r"RTE/dev\.tsv:3: expected UTF-8 text, got byte 0xe9$"),
])
def test_malformed_files_raise_one_line_errors(tmp_path, relative, content, task, split, message):
    path = write(tmp_path, relative, content)
    with pytest.raises(GlueFormatError, match=message) as err:
        load_examples(task, split, tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_line_endings_and_byte_order_mark(tmp_path):
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
    write(tmp_path, "MRPC/train.tsv", header + '0\t1\t2\t" Quoted\tplain "\r\n1\t3\t4\tA\tB')
    assert load_examples("mrpc", "train", tmp_path) == [Example("train-0", '" Quoted', 'plain "', 0),
                                                        Example("train-1", "A", "B", 1)]
