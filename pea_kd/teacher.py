"""The teacher: fine-tune it once, then cache what distillation needs, so a student never runs it again.

    finetune_teacher(task, out_dir=...)    pre-trained checkpoint + task head, trained with CE (MSE for STS-B)
                                           -> out_dir/final/ (+ best/), result.json, log.jsonl  (docs/method.md#teacher)
    cache_teacher_outputs(out_dir, task)   one eval-mode pass over train and dev -> out_dir/teacher_outputs.pt:
        logits      z_t (N, C)                                 for the KD term  alpha T^2 KL(p_t || p_s)
        cls_hidden  (N, L_t + 1, H_t), row i = h_t^(i)[CLS]    for the PKD term beta MSE(norm(h_s), norm(h_t));
                    i = 0 is the embeddings output, i = 1..L_t the layers (not pooled, as the authors' code)
        labels      (N,) gold labels, for PTP's correct/wrong split
    load_teacher_outputs(...)              the cache, after checking it belongs to this task, tokenizer, max_length
                                           and data; a stale cache raises StaleTeacherCache (ensure_* recomputes it)

Rows are in example order, so a training batch's `index` selects its teacher rows.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch

from bert_mini import load_pretrained, load_tokenizer, save_pretrained

from . import distributed
from .features import Features, collate, load_features, make_batches, split_holdout
from .glue import get_task
from .identity import features_digest, file_digest
from .runtime import precision_name, resolve_amp, resolve_device, set_seed
from .storage import directory_lock, write_atomic
from .trainer import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)
CACHE_FILE = "teacher_outputs.pt"
CACHE_VERSION = 2  # 2: the teacher is identified by a digest of its weights, not its path; precision recorded


class StaleTeacherCache(ValueError):
    """teacher_outputs.pt is missing, unreadable or was computed for other data, tokenizer, task or max_length."""


def checkpoint_saver(tokenizer, label_names):
    """save_fn for the trainer: an HF-layout dir (bert_mini.save_pretrained) with the tokenizer files and labels."""
    def save(model, path):
        save_pretrained(model, path, tokenizer=tokenizer, label_names=label_names)
    return save


def finetune_teacher(task, *, out_dir, model_name: str = "minilm-l6", config: Optional[TrainConfig] = None,
                     max_length: int = 128, data_dir=None, max_train_examples: Optional[int] = None,
                     holdout: float = 0.0, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Fine-tune `model_name` (+ a new task head) on the task's train split with the task loss, select on dev.

    Writes out_dir/final/ and, with config.keep_best, out_dir/best/ (HF layout + vocab.txt). result.meta records
    the task, model, tokenizer fingerprint and sizes. max_train_examples keeps the first N examples (smoke runs).
    holdout > 0: train on the rest of train and evaluate on a seeded `holdout` fraction of it (split_holdout with
    config.seed) instead of dev, which is then never read: how `teacher_search` compares recipes.
    """
    spec = get_task(task)
    config = config or TrainConfig()
    tokenizer = load_tokenizer(model_name)
    train_data = load_features(spec, "train", tokenizer, max_length, data_dir).head(max_train_examples)
    if holdout:
        fit_idx, held_idx = split_holdout(len(train_data), holdout, config.seed)
        train_data, eval_data, eval_split = train_data.subset(fit_idx), train_data.subset(held_idx), "train-holdout"
    else:
        eval_data, eval_split = load_features(spec, spec.dev_split, tokenizer, max_length, data_dir), spec.dev_split
    set_seed(config.seed)  # the new head's initial weights depend on the seed only
    model = load_pretrained(model_name, num_labels=spec.num_labels)
    meta = {"stage": "teacher", "task": spec.name, "model": str(model_name), "max_length": max_length,
            "tokenizer": tokenizer.fingerprint, "num_labels": spec.num_labels,
            "num_layers": model.config.num_hidden_layers,
            "hidden_size": model.config.hidden_size, "train_examples": len(train_data), "eval_split": eval_split,
            "holdout": holdout, "dev_examples": len(eval_data)}
    return train(model, train_data, eval_data, task=spec, out_dir=out_dir, config=config, loss="ce",
                 save_fn=checkpoint_saver(tokenizer, spec.labels), resume=resume, overwrite=overwrite, meta=meta)


def teacher_model_dir(teacher_dir, which: str = "final") -> Path:
    """The checkpoint of a teacher run: `teacher_dir` itself if it holds config.json, else teacher_dir/<which>/."""
    d = Path(teacher_dir)
    for candidate in (d, d / which):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{d}: no teacher checkpoint (config.json in it or in {which}/); "
                            "train one with `python -m pea_kd finetune-teacher`")


@torch.inference_mode()
def teacher_forward(model, data: Features, device, batch_size: int = 64, amp_dtype=None) -> dict:
    """Eval-mode pass over `data` in sorted-by-length batches: logits (N, C) and cls_hidden (N, L+1, H), float32."""
    model.eval()
    n, layers, hidden = len(data), len(model.bert.encoder.plan) + 1, model.config.hidden_size
    logits = torch.empty(n, model.num_labels)
    cls_hidden = torch.empty(n, layers, hidden)
    for idx in make_batches(data, batch_size, shuffle=False):
        b = collate(data, idx, pad_token_id=model.config.pad_token_id)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(b["input_ids"].to(device), b["attention_mask"].to(device), b["token_type_ids"].to(device),
                        output_hidden_states=True)
        logits[b["index"]] = out.logits.float().cpu()
        cls_hidden[b["index"]] = torch.stack([h[:, 0] for h in out.hidden_states], dim=1).float().cpu()  # [CLS]
    return {"logits": logits, "cls_hidden": cls_hidden}


def cache_teacher_outputs(teacher_dir, task, splits=("train", "dev"), max_length: int = 128, data_dir=None,
                          batch_size: int = 64, which: str = "final", device: str = "auto", amp: str = "off") -> Path:
    """Run the fine-tuned teacher once per split and write <teacher_dir>/teacher_outputs.pt atomically.

    File: {"version", "task", "teacher" (model dir, for information), "teacher_weights" (sha256 of its
    model.safetensors: what identifies the teacher), "precision" ("fp32", "bf16", "fp16"), "max_length",
    "tokenizer" (fingerprint), "num_examples": {split: N}, "digests": {split: features_digest},
    "splits": {split: {"logits", "cls_hidden", "labels"}}, "seconds": wall time of computing it}.
    amp: float32 by default ("off"), so the cached targets are exact; "auto" uses bf16/fp16 on CUDA.
    """
    started = time.perf_counter()
    spec = get_task(task)
    model_dir = teacher_model_dir(teacher_dir, which).resolve()
    model = load_pretrained(model_dir, num_labels=spec.num_labels)
    if model.load_report.newly_initialized:
        raise ValueError(f"{model_dir}: no fine-tuned {spec.name} head with {spec.num_labels} outputs; "
                         "is this a teacher for another task?")
    tokenizer = load_tokenizer(model_dir)
    dev = resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    model.to(dev)
    payload = {"version": CACHE_VERSION, "task": spec.name, "teacher": str(model_dir),
               "teacher_weights": file_digest(model_dir / "model.safetensors"), "precision": precision_name(amp_dtype),
               "max_length": max_length, "tokenizer": tokenizer.fingerprint, "num_examples": {}, "digests": {},
               "splits": {}}
    for split in splits:
        data = load_features(spec, split, tokenizer, max_length, data_dir)
        outputs = teacher_forward(model, data, dev, batch_size, amp_dtype)
        outputs["labels"] = torch.from_numpy(data.labels) if data.labels is not None else None
        payload["splits"][split] = outputs
        payload["num_examples"][split] = len(data)
        payload["digests"][split] = features_digest(data)
        log.info("teacher cache: %s %s: %d examples", spec.name, split, len(data))
    payload["seconds"] = time.perf_counter() - started
    path = Path(teacher_dir) / CACHE_FILE
    write_atomic(path, lambda f: torch.save(payload, f))
    return path


def load_teacher_outputs(path, task, max_length: int, tokenizer_fingerprint: str, split_sizes: dict,
                         digests: Optional[dict] = None, teacher_weights: Optional[str] = None,
                         precision: Optional[str] = None) -> dict:
    """Read a teacher cache and refuse it (StaleTeacherCache, one line saying what differs) unless it matches.

    split_sizes: {split: N expected}; digests: optional {split: features_digest(...)} for an exact data check;
    teacher_weights: optional file_digest of the model.safetensors the cache must come from (the weights, not the
    path: a retrained teacher is another teacher, a moved one the same); precision: optional "fp32"/"bf16"/"fp16".
    """
    path = Path(path)
    if not path.is_file():
        raise StaleTeacherCache(f"{path}: no teacher cache; run `python -m pea_kd cache-teacher`")
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # pages shared, read on demand
    except Exception as err:  # truncated, corrupt or not a torch file
        raise StaleTeacherCache(f"{path}: unreadable teacher cache ({type(err).__name__}); recompute it") from None
    spec = get_task(task)
    expected = {"version": CACHE_VERSION, "task": spec.name, "max_length": max_length,
                "tokenizer": tokenizer_fingerprint, **({"teacher_weights": teacher_weights} if teacher_weights else {}),
                **({"precision": precision} if precision else {})}
    for key, value in expected.items():
        if cache.get(key) != value:
            raise StaleTeacherCache(f"{path}: stale teacher cache: {key} is {cache.get(key)!r}, expected {value!r}")
    for split, n in split_sizes.items():
        if split not in cache["splits"]:
            raise StaleTeacherCache(f"{path}: stale teacher cache: no {split!r} split "
                                    f"(has {', '.join(cache['splits'])})")
        rows = {k: len(v) for k, v in cache["splits"][split].items() if v is not None}
        if cache["num_examples"][split] != n or any(r != n for r in rows.values()):
            raise StaleTeacherCache(f"{path}: stale teacher cache: {split} has {cache['num_examples'][split]} "
                                    f"examples, the data has {n}")
        if digests and split in digests and cache["digests"].get(split) != digests[split]:
            raise StaleTeacherCache(f"{path}: stale teacher cache: the {split} inputs changed (data or tokenisation)")
    return cache


def ensure_teacher_outputs(teacher_dir, task, splits=("train", "dev"), max_length: int = 128, data_dir=None,
                           which: str = "final", device: str = "auto", amp: str = "off") -> dict:
    """The validated teacher cache of `splits` (tokenised with the teacher's tokenizer), recomputed if missing/stale.

    Valid = same task, data, tokenizer, max_length, teacher *weights* and precision (resolve_amp(amp, device)).
    Recomputing holds the teacher directory's lock: a second process waits for it, then reads its cache.
    """
    model_dir = teacher_model_dir(teacher_dir, which).resolve()
    tokenizer = load_tokenizer(model_dir)
    features = {s: load_features(task, s, tokenizer, max_length, data_dir) for s in splits}  # disk-cached ids
    path = Path(teacher_dir) / CACHE_FILE
    args = (task, max_length, tokenizer.fingerprint, {s: len(f) for s, f in features.items()},
            {s: features_digest(f) for s, f in features.items()}, file_digest(model_dir / "model.safetensors"),
            precision_name(resolve_amp(amp, resolve_device(device))))
    with distributed.main_process_first():  # under torchrun: rank 0 checks (or recomputes) it, the others then read
        try:
            return load_teacher_outputs(path, *args)
        except StaleTeacherCache as err:
            if path.is_file():  # a cache that exists but no longer matches is worth a warning; a first run is not
                log.warning("%s; recomputing it", err)
            else:
                log.info("computing the teacher cache %s", path)
        with directory_lock(teacher_dir, wait=True):
            try:  # another process may have computed it while this one waited
                return load_teacher_outputs(path, *args)
            except StaleTeacherCache:
                cache_teacher_outputs(teacher_dir, task, tuple(splits), max_length, data_dir, which=which,
                                      device=device, amp=amp)
        return load_teacher_outputs(path, *args)
