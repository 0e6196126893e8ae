"""The teacher: fine-tune it once, then cache what distillation needs, so a student never runs it again.

    finetune_teacher(task, out_dir=...)    pre-trained checkpoint + task head, trained with CE (MSE for STS-B)
                                           -> out_dir/final/ (+ best/), result.json, log.jsonl  (docs/method.md#teacher)
    cache_teacher_outputs(out_dir, task)   one eval-mode pass over train and dev -> out_dir/teacher_outputs.pt:
        logits      z_t (N, C)                                 for the KD term  alpha T^2 KL(p_t || p_s)
        cls_hidden  (N, K, H_t), column k = h_t^(l_k)[CLS]     for the PKD term beta MSE(norm(h_s), norm(h_t));
                    l_k = layers[k]: 0 is the embeddings output, 1..L_t the layers (not pooled, as the authors' code)
        labels      (N,) gold labels, for PTP's correct/wrong split
    ensure_teacher_outputs(out_dir, task)  the cache if it is valid for this data and teacher (and holds the layers
                                           asked for), else recomputed: what distillation calls

The data goes one way: the teacher computes the rows, pea_kd.teacher_cache writes them with their digests (and
reads and checks them), pea_kd.teacher_rows is what a run sees of one split, and the trainer reads those rows. Rows
are in example order, so a training batch's `index` selects its teacher rows.

Which layers: `cache-teacher` keeps every layer (K = L_t + 1) unless told otherwise; distillation asks
`ensure_teacher_outputs` for the layers its loss reads, which for PKD is the layer map only (sizes on MNLI:
docs/performance.md). Stored as float16 (`cls_dtype`, chosen and recorded), half of each.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from bert_mini import load_pretrained, load_tokenizer, save_pretrained

from .feature_cache import load_features
from .features import Features, collate, make_batches, split_holdout
from .glue import get_task
from .identity import features_digest, file_digest
from .mixed_precision import inference_autocast
from .runtime import precision_name, resolve_amp, resolve_device, set_seed
from .teacher_cache import CACHE_FILE, CLS_DTYPES, write_teacher_cache
from .teacher_cache_reuse import check_cls_dtype, check_teacher_head, checked_layers, reuse_or_recompute
from .trainer import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)


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


def teacher_forward(model, data: Features, device, batch_size: int = 64, amp_dtype=None,
                    layers: Optional[Sequence[int]] = None, cls_dtype: torch.dtype = torch.float32) -> dict:
    """Eval-mode pass over `data` in sorted-by-length batches: logits (N, C) float32 and cls_hidden (N, K, H), column
    k = the [CLS] vector of hidden state layers[k] (default: every layer, 0 = embeddings .. L; none: None), computed
    in float32 (or under `amp_dtype` autocast) and stored as `cls_dtype`."""
    model.eval()
    layers = list(range(len(model.bert.encoder.plan) + 1) if layers is None else layers)
    logits = torch.empty(len(data), model.num_labels)
    cls_hidden = torch.empty(len(data), len(layers), model.config.hidden_size, dtype=cls_dtype) if layers else None
    with inference_autocast(device, amp_dtype):  # no_grad + autocast; fast path: each weight cast once per pass
        for idx in make_batches(data, batch_size, shuffle=False):
            b = collate(data, idx, pad_token_id=model.config.pad_token_id)
            out = model(b["input_ids"].to(device), b["attention_mask"].to(device), b["token_type_ids"].to(device),
                        output_hidden_states=bool(layers), cls_only=True)  # only [CLS] rows are kept
            logits[b["index"]] = out.logits.float().cpu()
            if layers:
                cls_hidden[b["index"]] = torch.stack([out.hidden_states[i][:, 0] for i in layers],
                                                     dim=1).float().cpu().to(cls_dtype)
    return {"logits": logits, "cls_hidden": cls_hidden}


def cache_teacher_outputs(teacher_dir, task, splits=("train", "dev"), max_length: int = 128, data_dir=None,
                          batch_size: int = 64, which: str = "final", device: str = "auto", amp: str = "off",
                          layers: Optional[Sequence[int]] = None, cls_dtype: str = "float32") -> Path:
    """Run the fine-tuned teacher once per split and write <teacher_dir>/teacher_outputs.pt atomically.

    layers: the teacher layers whose [CLS] vectors to keep (0 = embeddings .. L_t); None = all of them, () = none
    (logits only, e.g. for PTP). PKD reads only its layer map, so `ensure_teacher_outputs` asks for just those.
    cls_dtype: how cls_hidden is stored, "float32" (exact, the default), "float16" or "bfloat16" (half the bytes;
    the trainer computes the loss in float32 from them; float16 keeps 11 significant bits, bfloat16 8).
    The file's fields: docs/runs_and_storage.md, "The teacher cache file".
    amp: float32 by default ("off"), so the cached targets are exact; "auto" uses bf16/fp16 on CUDA.
    """
    started = time.perf_counter()
    spec = get_task(task)
    check_cls_dtype(cls_dtype)  # float32, float16 or bfloat16
    model_dir = teacher_model_dir(teacher_dir, which).resolve()
    model = load_pretrained(model_dir, num_labels=spec.num_labels)
    check_teacher_head(model, model_dir, spec)  # a fine-tuned head for this task
    num_layers = len(model.bert.encoder.plan)
    layers = checked_layers(layers, num_layers)  # sorted; None = every layer 0..L_t
    tokenizer = load_tokenizer(model_dir)
    dev = resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    model.to(dev)
    header = {"task": spec.name, "teacher": str(model_dir),
              "teacher_weights": file_digest(model_dir / "model.safetensors"), "precision": precision_name(amp_dtype),
              "max_length": max_length, "tokenizer": tokenizer.fingerprint, "num_layers": num_layers,
              "hidden_size": model.config.hidden_size, "layers": layers, "cls_dtype": cls_dtype,
              "num_examples": {}, "digests": {}}
    outputs = {}
    for split in splits:
        data = load_features(spec, split, tokenizer, max_length, data_dir)
        outputs[split] = teacher_forward(model, data, dev, batch_size, amp_dtype, layers, CLS_DTYPES[cls_dtype])
        outputs[split]["labels"] = torch.from_numpy(data.labels) if data.labels is not None else None
        header["num_examples"][split] = len(data)
        header["digests"][split] = features_digest(data)
        log.info("teacher cache: %s %s: %d examples, layers %s", spec.name, split, len(data), layers)
    header["seconds"] = time.perf_counter() - started
    return write_teacher_cache(Path(teacher_dir) / CACHE_FILE, header, outputs)  # row digests computed as written


def ensure_teacher_outputs(teacher_dir, task, splits=("train", "dev"), max_length: int = 128, data_dir=None,
                           which: str = "final", device: str = "auto", amp: str = "off",
                           layers: Optional[Sequence[int]] = None, cls_dtype: Optional[str] = None) -> dict:
    """The validated teacher cache of `splits` (tokenised with the teacher's tokenizer), recomputed if missing/stale.

    Valid = same task, data, tokenizer, max_length, teacher *weights* and precision (resolve_amp(amp, device)), and
    it holds the [CLS] vectors of `layers` (None = every layer), stored as `cls_dtype` (None: as the file has them;
    a cache computed here is float32). A cache that lacks some layers is recomputed with the layers it had *and* the
    new ones, in its dtype, so students with different layer maps end up sharing one cache.
    Recomputing holds the teacher directory's lock: a second process waits for it, then reads its cache.
    """
    model_dir = teacher_model_dir(teacher_dir, which).resolve()
    tokenizer = load_tokenizer(model_dir)
    features = {s: load_features(task, s, tokenizer, max_length, data_dir) for s in splits}  # disk-cached ids
    path = Path(teacher_dir) / CACHE_FILE
    args = (task, max_length, tokenizer.fingerprint, {s: len(f) for s, f in features.items()},
            {s: features_digest(f) for s, f in features.items()}, file_digest(model_dir / "model.safetensors"),
            precision_name(resolve_amp(amp, resolve_device(device))), layers, cls_dtype)
    return reuse_or_recompute(path, args, teacher_dir, layers, cls_dtype, lambda keep, dtype: cache_teacher_outputs(
        teacher_dir, task, tuple(splits), max_length, data_dir, which=which, device=device, amp=amp, layers=keep,
        cls_dtype=dtype))  # the cache when valid, else recomputed under the teacher directory's lock
