"""`python -m pea_kd export-hf DIR OUT`: any student or teacher as a plain BERT that every HF consumer can run.

An SPS student stores L layers and runs a plan over them (`pea_kd.sps`). Unrolling the plan gives a plain BERT with
one layer per effective layer e_1 .. e_|plan|:

    plan step (i, swap)  ->  layer e = a copy of Layer_i;  if swap: W_q <-> W_k and b_q <-> b_k in the copy

so an SPS-L student becomes a 2L-layer BERT whose upper L layers are the lower ones with query and key exchanged
(sps6: 9 layers, 3'..5' on top of 0..5). The forward pass is the same computation, step for step, so the logits are
equal; `export_hf` checks it on a fixed batch before it reports success. What is lost is the sharing: the file
holds 2L layers of weights (training the exported model would also untie the copies); what is gained is a
directory that `AutoModelForSequenceClassification` / `AutoTokenizer` and the hub open as they are.
A plain student or a teacher (model_type "bert") is written again as it is, with its tokenizer and labels.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from bert_mini import BertConfig, BertForSequenceClassification, load_pretrained, load_tokenizer, save_pretrained
from bert_mini.checkpoint_files import read_state_dict

from .cli import register_command
from .glue import get_task
from .sps import get_encoder
from .student_files import STUDENT_FILE
from .students import load_student

log = logging.getLogger(__name__)
EXPORT_TOLERANCE = 1e-5  # max |logit difference| allowed between the source and the export (fp32)
# Layer'_j: Q = x W_k + b_k, K = x W_q + b_q, so the copy of a swapped step stores W_k, b_k as its query and vice versa.
_SWAP_QK = {f"attention.self.{a}.{p}": f"attention.self.{b}.{p}"
            for a, b in (("query", "key"), ("key", "query")) for p in ("weight", "bias")}


def unroll(model: BertForSequenceClassification) -> BertForSequenceClassification:
    """A plain BERT with one real layer per step of `model`'s plan (Q/K exchanged where the plan swaps them), in the
    same train/eval mode as `model`."""
    plan = get_encoder(model).plan
    config = BertConfig(**{**model.config.to_dict(), "num_hidden_layers": len(plan)})
    plain = BertForSequenceClassification(config, model.num_labels)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("bert.encoder.layer.")}
    for effective, (index, swap) in enumerate(plan):
        source = f"bert.encoder.layer.{index}."
        for key, tensor in model.state_dict().items():
            if key.startswith(source):
                name = key[len(source):]
                if swap:
                    name = _SWAP_QK.get(name, name)
                state[f"bert.encoder.layer.{effective}.{name}"] = tensor.clone()
    plain.load_state_dict(state, strict=True)
    return plain.train(model.training)


def _label_names(src: Path, num_labels: int, meta: dict | None):
    """id2label of the source config.json, else the GLUE task's labels recorded in student.json, else None."""
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if "id2label" in config and len(config["id2label"]) == num_labels:
        return [config["id2label"][str(i)] for i in range(num_labels)]
    task = ((meta or {}).get("extra") or {}).get("task")
    if task:
        labels = get_task(task).labels
        if labels is not None and len(labels) == num_labels:
            return list(labels)
    return None


def _num_labels(src: Path) -> int:
    """Rows of the saved classifier (read from the weights, so that directories written before id2label work)."""
    state, path = read_state_dict(src)
    weight = state.get("classifier.weight")
    if weight is None:
        raise ValueError(f"{path}: no classifier.weight; export-hf exports classifiers (a student or a teacher)")
    return int(weight.shape[0])


def export_hf(src: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> dict:
    """Write `src` (a save_student directory, or a teacher / plain BERT classifier) as a plain HF BERT in `out_dir`.

    Returns {source, out_dir, variant, num_layers, exported_layers, num_labels, max_abs_logit_diff, tokenizer}.
    Raises ValueError, writing nothing, when the exported model's logits differ from the source's by more than
    EXPORT_TOLERANCE on a fixed batch, or when `out_dir` exists and `overwrite` is False.
    """
    src, out_dir = Path(src), Path(out_dir)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: not a model directory (no config.json)")
    if src.resolve() == out_dir.resolve():
        raise ValueError(f"export-hf: OUT_DIR {out_dir} is the source directory; choose another one")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"export-hf: {out_dir} exists; pass --overwrite to replace it")
    meta = None
    if (src / STUDENT_FILE).is_file():
        model = load_student(src)
        meta = model.student_meta
    else:
        model = load_pretrained(src, num_labels=_num_labels(src))
    model.eval()
    plain = unroll(model)

    generator = torch.Generator().manual_seed(0)  # a fixed batch: 2 rows, padding in the second one
    vocab = model.config.vocab_size
    input_ids = torch.randint(0, vocab, (2, 16), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[1, 10:] = 0
    token_type_ids = (torch.arange(16) >= 8).long().expand(2, 16).contiguous()
    with torch.no_grad():
        diff = (model(input_ids, attention_mask=mask, token_type_ids=token_type_ids).logits
                - plain(input_ids, attention_mask=mask, token_type_ids=token_type_ids).logits).abs().max().item()
    if not diff <= EXPORT_TOLERANCE:
        raise ValueError(f"export-hf: the unrolled model's logits differ from {src}'s by {diff:.2e} "
                         f"(> {EXPORT_TOLERANCE}); nothing was written")

    has_tokenizer = (src / "vocab.txt").is_file() or (src / "tokenizer.json").is_file()
    if not has_tokenizer:
        log.warning("%s has no vocab.txt or tokenizer.json: %s gets no tokenizer files, AutoTokenizer will not open "
                    "it", src, out_dir)
    save_pretrained(plain, out_dir, tokenizer=load_tokenizer(src) if has_tokenizer else None,
                    label_names=_label_names(src, model.num_labels, meta))
    return {"source": str(src), "out_dir": str(out_dir), "variant": (meta or {}).get("variant", "original"),
            "num_layers": model.config.num_hidden_layers, "exported_layers": plain.config.num_hidden_layers,
            "num_labels": model.num_labels, "max_abs_logit_diff": diff, "tokenizer": has_tokenizer}


def _configure(p):
    p.add_argument("student_dir", metavar="STUDENT_DIR",
                   help="a student directory (with student.json), a teacher checkpoint (e.g. runs/mrpc/teacher/final) "
                        "or any plain BERT classifier directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where to write the plain-BERT directory")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def _run(args, parser):
    return export_hf(args.student_dir, args.out_dir, args.overwrite)


register_command("export-hf", "write a student (SPS unrolled) or teacher as a plain BERT that Hugging Face opens",
                 _configure, _run)

__all__ = ["export_hf", "unroll", "EXPORT_TOLERANCE"]
