"""bert_mini.download against a real HTTP server on 127.0.0.1 (a thread started by the test; no internet needed)."""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import struct
import threading
import time

import pytest

from bert_mini.download import (
    ChecksumError, DownloadError, NoNetworkError, NotFoundError, UnsupportedCheckpointError, download_file, fetch_model,
)


class LocalHTTPServer:
    """Serves `files` ({url path: bytes}) on 127.0.0.1:<free port>, with Range support and 404s.

    `requests` logs (method, path, Range header or None) of every request. `truncate_once` holds paths whose next
    answer announces the full Content-Length but closes the connection after half the body (an interrupted download).
    `ignore_range` holds paths for which Range headers are ignored (answer 200 with the whole file).
    """

    def __init__(self, files: dict[str, bytes] | None = None):
        self.files = dict(files or {})
        self.requests: list[tuple[str, str, str | None]] = []
        self.truncate_once: set[str] = set()
        self.ignore_range: set[str] = set()
        self.status: dict[str, int] = {}  # path -> error status to answer instead (e.g. 401)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                owner.requests.append(("GET", self.path, rng))
                body = owner.files.get(self.path)
                if body is None or self.path in owner.status:
                    self.send_response(owner.status.get(self.path, 404))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and self.path not in owner.ignore_range:
                    start = int(m.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.path in owner.truncate_once:
                    owner.truncate_once.discard(self.path)
                    payload = payload[: len(payload) // 2]
                self.wfile.write(payload)
                self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "LocalHTTPServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (bind a port, then close it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_HEADER = json.dumps({"w": {"dtype": "F32", "shape": [2560], "data_offsets": [0, 10240]}}).encode()
WEIGHTS = struct.pack("<Q", len(_HEADER)) + _HEADER + bytes(range(256)) * 40  # a valid 10 KiB model.safetensors
BIN_WEIGHTS = b"\x80\x02" + bytes(range(256)) * 40  # starts like a pickle, as an old pytorch_model.bin
CONFIG = b'{"hidden_size": 8, "num_hidden_layers": 1}'
VOCAB = b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n"


def hub_files(name: str, weights_file: str = "model.safetensors") -> dict[str, bytes]:
    return {f"/{name}/resolve/main/config.json": CONFIG, f"/{name}/resolve/main/vocab.txt": VOCAB,
            f"/{name}/resolve/main/{weights_file}": WEIGHTS if weights_file == "model.safetensors" else BIN_WEIGHTS}


# ---------------------------------------------------------------------------------------------------- download_file

def test_download_file_exact_bytes_and_checksum(tmp_path):
    with LocalHTTPServer({"/f.bin": WEIGHTS}) as srv:
        out = download_file(f"{srv.url}/f.bin", tmp_path / "sub" / "f.bin", sha256=sha(WEIGHTS), progress=False)
    assert out == tmp_path / "sub" / "f.bin"
    assert out.read_bytes() == WEIGHTS
    assert not (tmp_path / "sub" / "f.bin.part").exists()


def test_resume_sends_range_and_appends(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(WEIGHTS[:3000])  # an earlier, interrupted run
    with LocalHTTPServer({"/f.bin": WEIGHTS}) as srv:
        download_file(f"{srv.url}/f.bin", dest, sha256=sha(WEIGHTS), progress=False)
        assert srv.requests == [("GET", "/f.bin", "bytes=3000-")]
    assert dest.read_bytes() == WEIGHTS
    assert not (tmp_path / "f.bin.part").exists()


def test_resume_restarts_when_server_ignores_range(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not be kept")
    with LocalHTTPServer({"/f.bin": WEIGHTS}) as srv:
        srv.ignore_range.add("/f.bin")
        download_file(f"{srv.url}/f.bin", dest, progress=False)
        assert srv.requests[0][2] is not None  # it did ask for a range
    assert dest.read_bytes() == WEIGHTS


def test_oversized_part_416_restarts_from_scratch(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"x" * (len(WEIGHTS) + 5))
    with LocalHTTPServer({"/f.bin": WEIGHTS}) as srv:
        download_file(f"{srv.url}/f.bin", dest, sha256=sha(WEIGHTS), progress=False)
        assert [r[2] for r in srv.requests] == [f"bytes={len(WEIGHTS) + 5}-", None]
    assert dest.read_bytes() == WEIGHTS


def test_interrupted_transfer_keeps_part_then_resumes(tmp_path):
    dest = tmp_path / "f.bin"
    with LocalHTTPServer({"/f.bin": WEIGHTS}) as srv:
        srv.truncate_once.add("/f.bin")
        with pytest.raises(DownloadError, match="interrupted|stopped") as info:
            download_file(f"{srv.url}/f.bin", dest, progress=False)
        assert "again to resume" in str(info.value)
        assert not dest.exists()
        partial = (tmp_path / "f.bin.part").stat().st_size
        assert 0 < partial < len(WEIGHTS)
        download_file(f"{srv.url}/f.bin", dest, sha256=sha(WEIGHTS), progress=False)
        assert srv.requests[-1][2] == f"bytes={partial}-"
    assert dest.read_bytes() == WEIGHTS


def test_checksum_mismatch_leaves_nothing(tmp_path):
    dest = tmp_path / "f.bin"
    wrong = "0" * 64
    with LocalHTTPServer({"/f.bin": WEIGHTS}) as srv:
        with pytest.raises(ChecksumError) as info:
            download_file(f"{srv.url}/f.bin", dest, sha256=wrong, progress=False)
    msg = str(info.value)
    assert f"{srv.url}/f.bin" in msg and wrong in msg and sha(WEIGHTS) in msg
    assert list(tmp_path.iterdir()) == []  # neither f.bin nor f.bin.part


def test_404_raises_not_found_and_writes_nothing(tmp_path):
    with LocalHTTPServer({}) as srv:
        with pytest.raises(NotFoundError, match="404"):
            download_file(f"{srv.url}/missing.bin", tmp_path / "m.bin", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_401_explains_missing_or_gated_repo(tmp_path):
    with LocalHTTPServer({"/f.bin": WEIGHTS}) as srv:
        srv.status["/f.bin"] = 401
        with pytest.raises(DownloadError, match="HTTP 401.*may not exist, or it is gated"):
            download_file(f"{srv.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_clear_one_line_error(tmp_path):
    url = closed_port_url() + "/f.bin"
    with pytest.raises(NoNetworkError) as info:
        download_file(url, tmp_path / "f.bin", progress=False)
    msg = str(info.value)
    assert url in msg and "no network" in msg and "local directory" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_silent_server_times_out_with_download_error(tmp_path):
    with socket.socket() as listener:  # accepts the connection but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/f.bin"
        start = time.monotonic()
        with pytest.raises(DownloadError, match="no network"):
            download_file(url, tmp_path / "f.bin", timeout=0.3, progress=False)
        assert time.monotonic() - start < 5
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_progress_bar_can_be_disabled(tmp_path, capsys):
    with LocalHTTPServer({"/f.bin": WEIGHTS}) as srv:
        download_file(f"{srv.url}/f.bin", tmp_path / "f.bin", progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# ------------------------------------------------------------------------------------------------------ fetch_model

def test_fetch_model_downloads_into_named_directory(tmp_path):
    name = "google/bert_uncased_L-2_H-8_A-2"
    with LocalHTTPServer(hub_files(name)) as srv:
        out = fetch_model(name, cache_dir=tmp_path, base_url=srv.url, progress=False)
    assert out == tmp_path / "google--bert_uncased_L-2_H-8_A-2"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    assert (out / "model.safetensors").read_bytes() == WEIGHTS and (out / "vocab.txt").read_bytes() == VOCAB
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no staging directory left


def test_cache_hit_makes_no_request(tmp_path):
    with LocalHTTPServer(hub_files("bert-tiny")) as srv:
        first = fetch_model("bert-tiny", cache_dir=tmp_path, base_url=srv.url, progress=False)
        n = len(srv.requests)
        assert n == 3
        second = fetch_model("bert-tiny", cache_dir=tmp_path, base_url=srv.url, progress=False)
        assert second == first and len(srv.requests) == n


def test_safetensors_404_falls_back_to_bin(tmp_path):
    with LocalHTTPServer(hub_files("old-bert", "pytorch_model.bin")) as srv:
        out = fetch_model("old-bert", cache_dir=tmp_path, base_url=srv.url, progress=False)
        paths = [r[1] for r in srv.requests]
    base = "/old-bert/resolve/main/"
    assert paths.index(base + "model.safetensors") < paths.index(base + "pytorch_model.bin")
    assert (out / "pytorch_model.bin").read_bytes() == BIN_WEIGHTS
    assert not (out / "model.safetensors").exists()


def test_env_vars_choose_hub_and_cache(tmp_path, monkeypatch):
    with LocalHTTPServer(hub_files("bert-tiny")) as srv:
        monkeypatch.setenv("PEA_KD_HUB_URL", srv.url)
        monkeypatch.setenv("PEA_KD_CACHE", str(tmp_path / "envcache"))
        out = fetch_model("bert-tiny", progress=False)
    assert out == tmp_path / "envcache" / "bert-tiny" and (out / "config.json").read_bytes() == CONFIG


def test_interrupted_fetch_resumes_without_redownloading_finished_files(tmp_path):
    name = "bert-tiny"
    with LocalHTTPServer(hub_files(name)) as srv:
        srv.truncate_once.add(f"/{name}/resolve/main/model.safetensors")
        with pytest.raises(DownloadError):
            fetch_model(name, cache_dir=tmp_path, base_url=srv.url, progress=False)
        assert not (tmp_path / name).exists()  # the final directory never exists half-written
        assert (tmp_path / f"{name}.partial" / "model.safetensors.part").exists()
        srv.requests.clear()
        out = fetch_model(name, cache_dir=tmp_path, base_url=srv.url, progress=False)
        assert [r[1] for r in srv.requests] == [f"/{name}/resolve/main/model.safetensors"]
        assert srv.requests[0][2] is not None and srv.requests[0][2].startswith("bytes=")
    assert (out / "model.safetensors").read_bytes() == WEIGHTS
    assert not (tmp_path / f"{name}.partial").exists()


def test_fetch_model_unreachable_leaves_cache_empty(tmp_path):
    with pytest.raises(DownloadError) as info:
        fetch_model("bert-base-uncased", cache_dir=tmp_path, base_url=closed_port_url(), progress=False)
    msg = str(info.value)
    assert "bert-base-uncased/resolve/main/config.json" in msg and "no network" in msg
    assert list(tmp_path.iterdir()) == []


def test_fetch_model_unknown_name_404(tmp_path):
    with LocalHTTPServer({}) as srv:
        with pytest.raises(NotFoundError, match="config.json"):
            fetch_model("no-such-model", cache_dir=tmp_path, base_url=srv.url, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing, choices", [("model.safetensors", "model.safetensors, pytorch_model.bin"),
                                              ("vocab.txt", "vocab.txt, tokenizer.json")])
def test_fetch_model_without_any_of_the_choices_for_a_file_names_them(tmp_path, missing, choices):
    files = hub_files("w")  # no pytorch_model.bin, no tokenizer.json
    del files[f"/w/resolve/main/{missing}"]
    with LocalHTTPServer(files) as srv:
        with pytest.raises(NotFoundError, match=f"w: the hub at .* has none of {choices}"):
            fetch_model("w", cache_dir=tmp_path, base_url=srv.url, progress=False)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("bad", ["", "..", "../x", "/abs/path", "a/../b", "a/b/c", ".hidden", "a\\b", "x/"])
def test_invalid_names_rejected(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid model name"):
        fetch_model(bad, cache_dir=tmp_path, base_url=closed_port_url())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path, body, reason", [
    ("config.json", b"<!DOCTYPE html><html><body>Rate limited</body></html>", "an HTML page"),
    ("model.safetensors", WEIGHTS[:5000], "cut short"),  # as a body without Content-Length closed early
    ("config.json", CONFIG[:20], "not valid JSON"),
])
def test_a_file_that_is_not_what_it_claims_is_never_cached(tmp_path, path, body, reason):
    files = hub_files("bert-tiny")
    files[f"/bert-tiny/resolve/main/{path}"] = body  # status 200, a plausible size
    with LocalHTTPServer(files) as srv:
        with pytest.raises(DownloadError, match=f"{path} returned .*{reason}.*not a valid {path}") as err:
            fetch_model("bert-tiny", cache_dir=tmp_path, base_url=srv.url, progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bert-tiny").exists()  # nothing marked complete
    assert not list(tmp_path.rglob(path)) and not list(tmp_path.rglob("*.part"))


def test_a_corrupt_cache_entry_names_itself_and_how_to_refresh(tmp_path, monkeypatch):
    monkeypatch.setenv("PEA_KD_CACHE", str(tmp_path))
    with LocalHTTPServer(hub_files("bert-tiny")) as srv:
        entry = fetch_model("bert-tiny", base_url=srv.url, progress=False)
        (entry / "model.safetensors").write_bytes(WEIGHTS[:-100])  # e.g. a disk that filled up while copying
        with pytest.raises(DownloadError, match=rf"{tmp_path}/bert-tiny/model.safetensors is corrupt .*cut short.*"
                                                rf"delete {tmp_path}/bert-tiny \(rm -r\) and run again"):
            fetch_model("bert-tiny", base_url=srv.url, progress=False)


# ------------------------------------------------------------------------------- tokenizer.json instead of vocab.txt

def tokenizer_json(kind: str = "WordPiece") -> bytes:
    """A `tokenizers` file as transformers 5 saves it for BERT (WordPiece), or a GPT-2-like BPE one."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(VOCAB.decode().split() + ["[MASK]"])}
    if kind == "WordPiece":
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    else:
        tok = Tokenizer(models.BPE(vocab, merges=[], unk_token="[UNK]"))
    return tok.to_str().encode()


def test_a_checkpoint_with_only_tokenizer_json_is_fetched_and_its_tokenizer_loads(tmp_path):
    from bert_mini import load_tokenizer

    files = hub_files("tj-bert")
    del files["/tj-bert/resolve/main/vocab.txt"]
    files["/tj-bert/resolve/main/tokenizer.json"] = tokenizer_json()
    with LocalHTTPServer(files) as srv:
        out = fetch_model("tj-bert", cache_dir=tmp_path, base_url=srv.url, progress=False)
        base = "/tj-bert/resolve/main/"
        assert [r[1] for r in srv.requests] == [base + f for f in ("config.json", "vocab.txt", "tokenizer.json",
                                                                   "model.safetensors")]
        assert fetch_model("tj-bert", cache_dir=tmp_path, base_url=srv.url, progress=False) == out
        assert len(srv.requests) == 4  # a cache hit: no request
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    tokenizer = load_tokenizer(out)
    assert tokenizer.encode("Hello").input_ids == [2, 4, 3]  # [CLS] hello [SEP]: lower-cased by BertNormalizer


def test_a_tokenizer_json_of_another_kind_is_refused_in_one_line_before_the_weights(tmp_path):
    files = hub_files("bpe-model")
    del files["/bpe-model/resolve/main/vocab.txt"]
    files["/bpe-model/resolve/main/tokenizer.json"] = tokenizer_json("BPE")
    with LocalHTTPServer(files) as srv:
        with pytest.raises(UnsupportedCheckpointError) as err:
            fetch_model("bpe-model", cache_dir=tmp_path, base_url=srv.url, progress=False)
        assert not any(r[1].endswith(("model.safetensors", "pytorch_model.bin")) for r in srv.requests)
    message = str(err.value)
    assert "\n" not in message and message.startswith("bpe-model: the hub has no vocab.txt and its tokenizer.json")
    assert "a BPE tokenizer; bert_mini only reads BERT's WordPiece" in message and "nothing was kept" in message
    assert list(tmp_path.iterdir()) == []  # neither a cache entry nor a staging directory to resume


def test_a_hub_checkpoint_that_cannot_be_fetched_is_a_one_line_cli_error(capsys, monkeypatch, tmp_path):
    from test_cli import run_cli

    monkeypatch.setenv("PEA_KD_HUB_URL", closed_port_url())
    monkeypatch.setenv("PEA_KD_CACHE", str(tmp_path))
    code, _, err = run_cli(capsys, "distill", "--task", "mrpc", "--student-model", "org/offline", "--loss", "ce",
                           "--out-dir", tmp_path / "run")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "org/offline/resolve/main/config.json" in lines[0]
    assert lines[0].startswith("python -m pea_kd distill: error: cannot download") and "no network" in lines[0]
