"""A student on disk: its directory (an HF-layout checkpoint plus `student.json`), written atomically and read back
with its plan checked.

    student.json   {variant, plan, num_layers, effective_layers, num_labels, num_parameters, extra}
    config.json    model_type "bert" for an "original" student; "pea_kd_sps" (SPS_MODEL_TYPE) for one whose layers
                   run more than once, which Hugging Face and bert_mini.load_pretrained refuse to run as a plain BERT

pea_kd.students calls these by one line each. Machinery: skip on a first reading.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bert_mini import save_pretrained
from bert_mini.checkpoint_files import read_json, replace_dir

from .sps import make_plan
from .storage import write_atomic

STUDENT_FILE = "student.json"
SPS_MODEL_TYPE = "pea_kd_sps"  # config.json model_type of students whose layers run more than once


def model_type_of(variant: str) -> str:
    """config.json `model_type` of a student: "bert" for a plain ("original") one, SPS_MODEL_TYPE otherwise."""
    return "bert" if str(variant).lower() == "original" else SPS_MODEL_TYPE


def read_student_meta(student_dir: str | os.PathLike) -> dict:
    """The parsed `student.json` of a directory written by `save_student` (checked for the required fields)."""
    path = Path(student_dir) / STUDENT_FILE
    meta = read_json(path, f"not found; is {student_dir} a directory written by save_student?")
    missing = [k for k in ("variant", "plan", "num_layers", "num_labels") if k not in meta]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
    meta["plan"] = [(int(i), bool(s)) for i, s in meta["plan"]]
    try:
        expected = make_plan(int(meta["num_layers"]), meta["variant"])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if meta["plan"] != expected:
        raise ValueError(f"{path}: stored plan {meta['plan']} is not the plan of variant {meta['variant']!r} "
                         f"with {meta['num_layers']} layers")
    return meta


def check_same_student(meta: dict, variant: str, num_layers: int, directory) -> None:
    """Refuse a stored student (its student.json `meta`) of another variant or depth than the one asked for."""
    if str(meta["variant"]).lower() != str(variant).lower() or int(meta["num_layers"]) != num_layers:
        raise ValueError(f"build_student: encoder_from={directory} holds a {meta['num_layers']}-layer "
                         f"{meta['variant']!r} student, but variant={variant!r}, num_layers={num_layers} was asked for")


def check_stored_layers(who: str, directory, model, num_layers: int) -> None:
    """Refuse a checkpoint whose config.json disagrees with student.json on the number of layers."""
    if model.config.num_hidden_layers != num_layers:
        raise ValueError(f"{who}: {directory}/config.json has num_hidden_layers={model.config.num_hidden_layers}, "
                         f"{STUDENT_FILE} says {num_layers}")


def write_student_dir(model, out_dir, variant: str, meta: dict, tokenizer=None, label_names=None) -> Path:
    """Write `out_dir` = HF-layout checkpoint (bert_mini.save_pretrained, model_type of `variant`) + student.json
    holding `meta`, in a staging directory renamed into place: a reader sees the old or the new directory."""
    json.dumps(meta)  # fail before writing anything if extra_meta is not JSON-serialisable
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging.{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    save_pretrained(model, staging, tokenizer=tokenizer, label_names=label_names, model_type=model_type_of(variant))
    write_atomic(staging / STUDENT_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    replace_dir(staging, out_dir)  # swap: the old dir renamed away, the new one in, then the old one deleted
    return out_dir
