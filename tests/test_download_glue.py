"""pea_kd.glue_download (`python -m pea_kd download-glue`, `make data`) against a local HTTP server on 127.0.0.1,
plus the MRPC conversion checked on real data."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pea_kd import glue_download as glue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import run_cli  # noqa: E402
from test_download import LocalHTTPServer, closed_port_url  # noqa: E402  (the shared 127.0.0.1 test server)

ROOT = Path(__file__).resolve().parent.parent

GLUE_DIR = Path(os.environ.get("GLUE_DIR", ROOT.parent / "shared" / "glue_data"))
BOM_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def make_zip(files: dict[str, str], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


RTE_ZIP = make_zip({
    "RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tA dog runs.\tAn animal moves.\tentailment\n",
    "RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tIt rains.\tIt is dry.\tnot_entailment\n",
    "RTE/test.tsv": "index\tsentence1\tsentence2\n0\tA.\tB.\n",
})


def leftovers(data_dir: Path) -> list[str]:
    """Hidden temp dirs / download dirs left in data_dir."""
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".")) if data_dir.exists() else []


# ------------------------------------------------------------------------------------------------- archive tasks

def test_zip_task_extracts_into_task_dir(tmp_path):
    with LocalHTTPServer({"/RTE.zip": RTE_ZIP}) as srv:
        assert glue.download_task("RTE", tmp_path, base_url=srv.url, progress=False) is True
        assert [r[1] for r in srv.requests] == ["/RTE.zip"]
    assert sorted(p.name for p in (tmp_path / "RTE").iterdir()) == ["dev.tsv", "test.tsv", "train.tsv"]
    assert (tmp_path / "RTE" / "dev.tsv").read_text().endswith("It is dry.\tnot_entailment\n")
    assert leftovers(tmp_path) == []


def test_zip_without_top_level_folder_and_official_archive_names(tmp_path):
    flat = make_zip({"train.tsv": "a\n", "dev.tsv": "b\n", "test.tsv": "c\n"})
    with LocalHTTPServer({"/QNLIv2.zip": flat}) as srv:  # QNLI comes as QNLIv2.zip upstream
        glue.download_task("QNLI", tmp_path, base_url=srv.url, progress=False)
    assert (tmp_path / "QNLI" / "test.tsv").read_text() == "c\n"


def test_mnli_needs_its_five_split_files(tmp_path):
    files = {f"MNLI/{s}": "x\n" for s in glue.TASKS["MNLI"][1] if s != "dev_mismatched.tsv"}
    with LocalHTTPServer({"/MNLI.zip": make_zip(files)}) as srv:
        with pytest.raises(glue.GlueDownloadError, match="lacks dev_mismatched.tsv"):
            glue.download_task("MNLI", tmp_path, base_url=srv.url, progress=False)
    assert not (tmp_path / "MNLI").exists() and leftovers(tmp_path) == []


def test_corrupted_zip_clear_error_and_no_partial_task_dir(tmp_path):
    corrupt = RTE_ZIP[: len(RTE_ZIP) // 2] + b"\x00" * 64
    with LocalHTTPServer({"/RTE.zip": corrupt}) as srv:
        with pytest.raises(glue.GlueDownloadError) as info:
            glue.download_task("RTE", tmp_path, base_url=srv.url, progress=False)
    msg = str(info.value)
    assert f"{srv.url}/RTE.zip" in msg and "corrupt" in msg
    assert not (tmp_path / "RTE").exists()
    assert leftovers(tmp_path) == []  # neither the temp extraction dir nor the bad archive


def test_crc_error_inside_zip_is_detected(tmp_path):
    files = {"RTE/train.tsv": "t" * 200, "RTE/dev.tsv": "d\n", "RTE/test.tsv": "e\n"}
    data = bytearray(make_zip(files, zipfile.ZIP_STORED))
    data[data.index(b"t" * 200) + 10] ^= 0x01  # flip one bit of the stored train.tsv: a valid zip, a bad CRC
    with LocalHTTPServer({"/RTE.zip": bytes(data)}) as srv:
        with pytest.raises(glue.GlueDownloadError, match="corrupt"):
            glue.download_task("RTE", tmp_path, base_url=srv.url, progress=False)
    assert not (tmp_path / "RTE").exists() and leftovers(tmp_path) == []


def test_wrong_archive_checksum_clear_error(tmp_path, monkeypatch):
    wrong = "ab" * 32
    monkeypatch.setitem(glue.SOURCE_SHA256, "RTE.zip", wrong)
    with LocalHTTPServer({"/RTE.zip": RTE_ZIP}) as srv:
        with pytest.raises(glue.DownloadError) as info:
            glue.download_task("RTE", tmp_path, base_url=srv.url, progress=False)
    assert "RTE.zip" in str(info.value) and wrong in str(info.value) and "checksum" in str(info.value)
    assert not (tmp_path / "RTE").exists() and leftovers(tmp_path) == []


def test_unverified_archive_logs_a_warning(tmp_path, caplog):
    with LocalHTTPServer({"/RTE.zip": RTE_ZIP}) as srv, caplog.at_level(logging.WARNING, logger=glue.__name__):
        glue.download_task("RTE", tmp_path, base_url=srv.url, progress=False)
    assert "no known sha256 for RTE.zip" in caplog.text and "checksum was not verified" in caplog.text


def test_present_task_is_skipped_without_request(tmp_path):
    (tmp_path / "RTE").mkdir()
    for split in ("train.tsv", "dev.tsv", "test.tsv"):
        (tmp_path / "RTE" / split).write_text("kept\n")
    with LocalHTTPServer({"/RTE.zip": RTE_ZIP}) as srv:
        assert glue.download_task("RTE", tmp_path, base_url=srv.url, progress=False) is False
        assert srv.requests == []
    assert (tmp_path / "RTE" / "train.tsv").read_text() == "kept\n"


def test_incomplete_existing_task_dir_is_an_error_not_overwritten(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("mine\n")
    with pytest.raises(glue.GlueDownloadError, match="delete it"):
        glue.download_task("RTE", tmp_path, base_url=closed_port_url(), progress=False)
    assert (tmp_path / "RTE" / "train.tsv").read_text() == "mine\n"


def test_unreachable_server_no_partial_files(tmp_path):
    with pytest.raises(glue.DownloadError, match="no network"):
        glue.download_task("RTE", tmp_path, base_url=closed_port_url(), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_official_urls_are_the_standard_ones():
    assert glue.OFFICIAL_URLS["CoLA.zip"] == "https://dl.fbaipublicfiles.com/glue/data/CoLA.zip"
    assert glue.OFFICIAL_URLS["QQP-clean.zip"] == "https://dl.fbaipublicfiles.com/glue/data/QQP-clean.zip"
    assert glue.OFFICIAL_URLS["msr_paraphrase_train.txt"] == \
        "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt"
    assert glue.OFFICIAL_URLS["mrpc_dev_ids.tsv"].startswith("https://firebasestorage.googleapis.com/")
    assert glue.source_url("RTE.zip", "http://127.0.0.1:1/m/") == "http://127.0.0.1:1/m/RTE.zip"


# ---------------------------------------------------------------------------------------------------------- MRPC

MSR_TRAIN = BOM_HEADER + (
    "1\t101\t102\tFirst sentence .\tFirst sentence again .\r\n"
    "0\t201\t202\tA dev row .\tAnother one .\r\n"
    "1\t301\t302\tThird train row .\tStill train .\r\n"
)
MSR_TEST = BOM_HEADER + "1\t901\t902\tTest A .\tTest B .\r\n0\t903\t904\tTest C .\tTest D .\r\n"
DEV_IDS = "201\t202\n"


def test_mrpc_end_to_end_from_local_server(tmp_path):
    files = {"/msr_paraphrase_train.txt": MSR_TRAIN.encode(), "/msr_paraphrase_test.txt": MSR_TEST.encode(),
             "/mrpc_dev_ids.tsv": DEV_IDS.encode()}
    with LocalHTTPServer(files) as srv:
        assert glue.download_task("MRPC", tmp_path, base_url=srv.url, progress=False)
    out = tmp_path / "MRPC"
    assert (out / "train.tsv").read_bytes() == (
        BOM_HEADER + "1\t101\t102\tFirst sentence .\tFirst sentence again .\n"
        "1\t301\t302\tThird train row .\tStill train .\n").encode()
    assert (out / "dev.tsv").read_bytes() == (BOM_HEADER + "0\t201\t202\tA dev row .\tAnother one .\n").encode()
    assert (out / "test.tsv").read_bytes() == (
        "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t901\t902\tTest A .\tTest B .\n"
        "1\t903\t904\tTest C .\tTest D .\n").encode()
    assert (out / "dev_ids.tsv").read_text() == DEV_IDS and (out / "msr_paraphrase_train.txt").exists()
    assert leftovers(tmp_path) == []


def test_mrpc_malformed_row_names_file_and_line(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "msr_paraphrase_train.txt").write_text(BOM_HEADER + "1\t1\t2\tonly four\n", encoding="utf8")
    (tmp_path / "src" / "msr_paraphrase_test.txt").write_text(MSR_TEST, encoding="utf8")
    (tmp_path / "src" / "dev_ids.tsv").write_text(DEV_IDS)
    with pytest.raises(glue.GlueDownloadError, match=r"msr_paraphrase_train.txt, line 2: expected 5"):
        glue.download_task("MRPC", tmp_path / "glue", mrpc_dir=tmp_path / "src", progress=False)
    assert not (tmp_path / "glue" / "MRPC").exists() and leftovers(tmp_path / "glue") == []
    assert (tmp_path / "src" / "msr_paraphrase_train.txt").exists()  # the user's files are never deleted


@pytest.mark.skipif(not (GLUE_DIR / "MRPC" / "train.tsv").is_file(), reason="GLUE_DIR MRPC data missing")
def test_mrpc_conversion_reproduces_real_files_byte_for_byte(tmp_path):
    """Rebuild msr_paraphrase_{train,test}.txt + dev ids from the real TSVs, convert, compare bytes."""
    real = {s: (GLUE_DIR / "MRPC" / s).read_bytes() for s in ("train.tsv", "dev.tsv", "test.tsv")}
    train_lines = real["train.tsv"].decode("utf8").splitlines(keepends=True)
    dev_lines = real["dev.tsv"].decode("utf8").splitlines(keepends=True)
    test_lines = real["test.tsv"].decode("utf8").splitlines(keepends=True)
    assert train_lines[0] == dev_lines[0] == BOM_HEADER
    # Original order is unknown, but the converter keeps the relative order inside each split: interleave freely.
    src = tmp_path / "src"
    src.mkdir()
    body = train_lines[1:] + dev_lines[1:]
    (src / "msr_paraphrase_train.txt").write_bytes((BOM_HEADER + "".join(body)).replace("\n", "\r\n").encode())
    test_body = ["1\t" + line.split("\t", 1)[1] for line in test_lines[1:]]  # index column -> a Quality column
    (src / "msr_paraphrase_test.txt").write_bytes((BOM_HEADER + "".join(test_body)).replace("\n", "\r\n").encode())
    (src / "dev_ids.tsv").write_text("".join("\t".join(l.split("\t")[1:3]) + "\n" for l in dev_lines[1:]))
    out = tmp_path / "out"
    out.mkdir()
    glue.format_mrpc(src / "msr_paraphrase_train.txt", src / "msr_paraphrase_test.txt", src / "dev_ids.tsv", out)
    for split, data in real.items():
        assert (out / split).read_bytes() == data, split
    assert glue.sha256_of(out / "train.tsv") == glue.REFERENCE_SHA256["MRPC/train.tsv"]


# ------------------------------------------------------------------------------------------------------------ CLI

def test_parse_tasks_aliases_and_all():
    assert glue.parse_tasks("mrpc,RTE,sst2,sts-b,MRPC") == ["MRPC", "RTE", "SST-2", "STS-B"]
    assert glue.parse_tasks("all") == list(glue.TASKS)


def test_cli_bad_task_one_line_error(capsys):
    code, _, err = run_cli(capsys, "download-glue", "--tasks", "MRPC,FOO", "--data-dir", "/nonexistent/never")
    last = err.strip().splitlines()[-1]  # after the usage line, as every usage error of the CLI
    assert code == 2 and "'FOO'" in last and "CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE, WNLI" in last


def test_cli_help_documents_every_flag(capsys):
    code, out, _ = run_cli(capsys, "download-glue", "--help")
    assert code == 0
    for flag in ("--tasks", "--data-dir", "--base-url", "--mrpc-dir", "--no-progress"):
        assert flag in out


def test_cli_downloads_then_skips_into_glue_dir(tmp_path, capsys, monkeypatch):
    with LocalHTTPServer({"/RTE.zip": RTE_ZIP}) as srv:
        monkeypatch.setenv("PEA_KD_GLUE_URL", srv.url)
        monkeypatch.setenv("GLUE_DIR", str(tmp_path))  # no --data-dir: where the reader looks
        runs = [run_cli(capsys, "download-glue", "--tasks", "rte", "--no-progress") for _ in range(2)]
        assert len(srv.requests) == 1
    assert [code for code, _, _ in runs] == [0, 0]
    assert [json.loads(out)["tasks"] for _, out, _ in runs] == [{"RTE": "downloaded"}, {"RTE": "present"}]
    assert json.loads(runs[0][1])["data_dir"] == str(tmp_path) and (tmp_path / "RTE" / "dev.tsv").is_file()


def test_make_data_runs_the_package_downloader():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "\t$(PY) -m pea_kd download-glue --tasks $(TASK)\n" in makefile


def test_cli_network_failure_exit_1_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "download-glue", "--tasks", "WNLI", "--data-dir", tmp_path, "--base-url",
                           closed_port_url())
    lines = [l for l in err.splitlines() if "error" in l]
    assert code == 1 and len(lines) == 1 and "WNLI" in lines[0] and "no network" in lines[0]
    assert "GLUE_DIR" in lines[0]


# ------------------------------------------------------------------------------ reproduce fetches a missing task

def test_ensure_task_data_downloads_a_missing_task_once(tmp_path, monkeypatch):
    from pea_kd.glue import load_examples
    from pea_kd.glue_download import ensure_task_data
    with LocalHTTPServer({"/RTE.zip": RTE_ZIP}) as srv:
        monkeypatch.setenv("PEA_KD_GLUE_URL", srv.url)
        assert ensure_task_data("rte", tmp_path, progress=False) == tmp_path
        assert ensure_task_data("rte", tmp_path, progress=False) == tmp_path  # present: no second request
        assert [r[1] for r in srv.requests] == ["/RTE.zip"]
    assert load_examples("rte", "dev", tmp_path)[0].text_b == "It is dry."


def test_ensure_task_data_without_network_is_one_line_naming_glue_dir_and_make_data(tmp_path, monkeypatch):
    from pea_kd.glue_download import ensure_task_data
    monkeypatch.setenv("PEA_KD_GLUE_URL", closed_port_url())
    with pytest.raises(FileNotFoundError) as err:
        ensure_task_data("sst-2", tmp_path / "glue", progress=False)
    message = str(err.value)
    assert "\n" not in message and "GLUE_DIR" in message and "`make data TASK=sst-2`" in message
    assert str(tmp_path / "glue") in message and leftovers(tmp_path / "glue") == []


@pytest.mark.parametrize("mode", ["--smoke", "--estimate", None])
def test_reproduce_without_data_or_network_fails_in_one_line(tmp_path, mode):
    env = {**os.environ, "PEA_KD_GLUE_URL": closed_port_url(), "GLUE_DIR": str(tmp_path / "glue")}
    cmd = [sys.executable, "-m", "pea_kd", "reproduce", "--task", "rte", "--out-root", str(tmp_path / "runs"),
           "--no-progress"] + ([mode] if mode else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m pea_kd reproduce: error: GLUE RTE is not in"), proc.stderr
    assert "GLUE_DIR" in last and "make data TASK=rte" in last and "Errno" not in proc.stderr


def test_reproduce_estimate_downloads_the_missing_task_first(tmp_path):
    rows = "".join(f"{i}\tA dog number {i} runs.\tAn animal moves.\tentailment\n" for i in range(40))
    archive = make_zip({"RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n" + rows,
                        "RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n" + rows,
                        "RTE/test.tsv": "index\tsentence1\tsentence2\n0\tA.\tB.\n"})
    with LocalHTTPServer({"/RTE.zip": archive}) as srv:
        env = {**os.environ, "PEA_KD_GLUE_URL": srv.url, "GLUE_DIR": str(tmp_path / "glue"),
               "PEA_KD_CACHE_DIR": str(tmp_path / "cache")}
        proc = subprocess.run([sys.executable, "-m", "pea_kd", "reproduce", "--task", "rte", "--estimate",
                               "--out-root", str(tmp_path / "runs"), "--no-progress"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [r[1] for r in srv.requests] == ["/RTE.zip"]
    assert (tmp_path / "glue" / "RTE" / "train.tsv").read_text().endswith("An animal moves.\tentailment\n")
