"""Data augmentation the teacher labels (beyond the paper): new training pairs made by replacing words.

A small student learns from the teacher only on the examples it is shown; the teacher could say more on other
sentences. TinyBERT (Jiao et al., 2020) makes them by word replacement, and the teacher labels every one:

    for each training example x (each sentence of a pair on its own: a replacement never crosses the [SEP]) and each
    variant v = 1..V:
        for each position p holding a whole word w (not a ## piece, not followed by one, alphabetic, not a stop word):
            with probability r:   w <- a uniform draw from N_K(w)
    N_K(w) = the K words u != w with the largest cos(E[w], E[u]) = E[w].E[u] / (||E[w]|| ||E[u]||)

E is the teacher's own input word-embedding table (V_vocab x H): our teacher (MiniLM) has no masked-LM head to
propose words, and its embeddings place words used alike near each other. Candidates u are whole-word tokens too, so a
replaced token is one token: lengths, segments and truncation stay those of the original. Defaults: r = 0.4, K = 15
(TinyBERT's), V = 8 variants per example (TinyBERT used 20-30), seen in one epoch over the (1 + V) x data: the costliest
row (Pea-KD + DA + hidden) then stays within 3x of Pea-KD's training time per seed (docs/method.md#beyond-the-paper).
The teacher labels every variant once (`augmented_teacher_rows`), for every seed and student.

No gold label is invented: an augmented example's label is GOLD_MISSING (-1; NaN for regression), and the losses
read only the teacher on it (losses.task_loss with has_gold). `augmented_training_data` joins the originals and their
variants. The set is deterministic for its settings (example i draws its variants from the seed [seed, i]) and
cached next to the features cache (data/cache/augment/), named by a digest of everything it depends on: the settings,
the stop words, the training data's digests and the embedding table's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from bert_mini import load_pretrained, load_tokenizer

from .feature_cache import resolve_cache_dir
from .features import Features
from .glue import get_task
from .identity import derived_digest, file_digest, rows_digest
from .runtime import resolve_device
from .step_inputs import GOLD_MISSING
from .storage import directory_lock, write_atomic
from .teacher import teacher_forward, teacher_model_dir
from .teacher_cache import StaleTeacherCache, load_teacher_outputs, write_teacher_cache
from .teacher_rows import TeacherRows

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EMBEDDING_KEY = "embeddings.word_embeddings.weight"  # the teacher's input word-embedding table E (V_vocab, H)
STOP_WORDS = frozenset("""a an the and or but nor so yet if then than as of at by for from in into on onto to with
without about over under up down out off is am are was were be been being do does did done have has had having will
would shall should can could may might must it its itself this that these those i me my we us our you your he him his
she her they them their what which who whom whose when where why how all any both each few more most other some such
no not only own same too very just there here s t""".split())  # kept as they are: they carry the sentence's form


@dataclass(frozen=True)
class AugmentConfig:
    """rate: r, the probability of replacing a whole word.   variants: V, new examples per training example.
    neighbours: K, candidates per word.   seed: the draws' seed (the set is the same for every student seed)."""

    rate: float = 0.4
    variants: int = 8
    neighbours: int = 15
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.rate <= 1.0:  # the first setting that is out of range, named as it is typed
            raise ValueError(f"--augment-rate (r, the probability of replacing a word) must be in (0, 1], "
                             f"got {self.rate}")
        for flag, value, what in (("--augment-variants", self.variants, "V, variants per training example"),
                                  ("--augment-neighbours", self.neighbours, "K, candidates per word")):
            if value < 1:
                raise ValueError(f"{flag} ({what}) must be >= 1, got {value}")
        if self.seed < 0:
            raise ValueError(f"augment: the seed of the draws must be >= 0, got {self.seed}")


def replaceable(vocab: dict) -> np.ndarray:
    """(V_vocab,) bool: the tokens that may be replaced or be a replacement: alphabetic whole words, no stop word."""
    ok = np.zeros(len(vocab), dtype=bool)
    for token, i in vocab.items():
        ok[i] = token.isascii() and token.isalpha() and token not in STOP_WORDS  # "##ing", "[SEP]", "1990": no
    return ok


def is_piece(vocab: dict) -> np.ndarray:
    """(V_vocab,) bool: continuation pieces (##...), which make the token before them part of a longer word."""
    out = np.zeros(len(vocab), dtype=bool)
    out[[i for token, i in vocab.items() if token.startswith("##")]] = True
    return out


def nearest_neighbours(embeddings: torch.Tensor, words: np.ndarray, candidates: np.ndarray, k: int,
                       chunk: int = 1024) -> np.ndarray:
    """(len(words), k) token ids: for each word w, the k candidates u != w of largest cos(E[w], E[u])."""
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # E / ||E||: a dot product is then the cosine
    cand = torch.from_numpy(np.flatnonzero(candidates))
    if k >= len(cand):
        raise ValueError(f"augment: {k} neighbours asked, but the vocabulary has {len(cand)} candidate words")
    out = np.zeros((len(words), k), dtype=np.int32)
    for start in range(0, len(words), chunk):
        w = torch.from_numpy(words[start:start + chunk].astype(np.int64))
        sims = e[w] @ e[cand].T  # cos(E[w], E[u]) for every candidate u
        sims[cand[None, :] == w[:, None]] = -2.0  # never the word itself
        out[start:start + len(w)] = cand[sims.topk(k, dim=-1).indices].numpy()
    return out


def augment_features(train: Features, embeddings: torch.Tensor, vocab: dict, config: AugmentConfig) -> Features:
    """The V variants of every example of `train`, example-major (row i V + v = variant v of example i), labels
    GOLD_MISSING; the steps of the module docstring, with the seed [config.seed, i] for example i."""
    can, piece = replaceable(vocab), is_piece(vocab)
    words = np.unique(np.concatenate(train.input_ids)) if len(train) else np.zeros(0, np.int32)
    words = words[can[words]]
    table = np.zeros((len(vocab), config.neighbours), dtype=np.int32)  # row w = N_K(w), for the words that occur
    table[words] = nearest_neighbours(embeddings, words, can, config.neighbours)
    input_ids, token_type_ids = [], []
    for i, ids in enumerate(train.input_ids):
        # whole words: replaceable and not followed by a ## piece (the last token is [SEP], never replaceable)
        slots = np.flatnonzero(can[ids] & ~np.append(piece[ids[1:]], False))
        rng = np.random.default_rng([config.seed, i])
        for _ in range(config.variants):
            new = ids.copy()
            chosen = slots[rng.random(len(slots)) < config.rate]  # each word with probability r
            new[chosen] = table[ids[chosen], rng.integers(config.neighbours, size=len(chosen))]  # w <- N_K(w)[j]
            input_ids.append(new)
            token_type_ids.append(train.token_type_ids[i])
    regression = train.labels is not None and np.issubdtype(train.labels.dtype, np.floating)
    missing = np.full(len(input_ids), np.nan if regression else GOLD_MISSING,
                      dtype=np.float32 if regression else np.int64)
    return Features(input_ids, token_type_ids, missing)


def embedding_table(model_dir) -> torch.Tensor:
    """E, the word-embedding table of the checkpoint in `model_dir` (model.safetensors)."""
    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
        key = next((k for k in f.keys() if k.endswith(EMBEDDING_KEY)), None)
        if key is None:
            raise ValueError(f"{model_dir}/model.safetensors: no {EMBEDDING_KEY} tensor to find neighbours in")
        return f.get_tensor(key)


def augment_key(train: Features, embeddings: torch.Tensor, config: AugmentConfig) -> dict:
    """Everything the augmented set depends on; its digest names the cache file."""
    return {"version": FORMAT_VERSION, **asdict(config), "train_inputs": train.digest,
            "train_labels": train.labels_digest, "embeddings": rows_digest(embeddings),
            "stop_words": hashlib.sha256(" ".join(sorted(STOP_WORDS)).encode()).hexdigest()[:16]}


def load_augmented(task_name: str, train: Features, model_dir, vocab: dict, config: AugmentConfig,
                   cache_dir=None) -> Features:
    """The augmented set of `train` (augment_features with the teacher checkpoint's embeddings), read from its cache
    file when one with the same key exists, else built and written atomically (with its inputs' digest)."""
    embeddings = embedding_table(model_dir)
    if embeddings.shape[0] != len(vocab):
        raise ValueError(f"{model_dir}: embedding table has {embeddings.shape[0]} rows, the vocabulary {len(vocab)}")
    key = augment_key(train, embeddings, config)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = resolve_cache_dir(cache_dir).parent / "augment" / f"{task_name.lower()}-{name}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) == key:
                bounds = np.stack([z["offsets"][:-1], z["offsets"][1:]], axis=1).tolist()
                ids, types = z["ids"], z["types"]
                out = Features([ids[a:b] for a, b in bounds], [types[a:b] for a, b in bounds], z["labels"])
                out._digest = str(z["digest"])  # recorded when written: nothing is hashed again
                return out
        log.info("augment: %s was built for other settings; rebuilding it", path)
    out = augment_features(train, embeddings, vocab, config)
    offsets = np.concatenate([[0], np.cumsum(out.lengths)])
    arrays = {"key": np.array(json.dumps(key, sort_keys=True)), "ids": np.concatenate(out.input_ids),
              "types": np.concatenate(out.token_type_ids), "offsets": offsets, "labels": out.labels,
              "digest": np.array(out.digest)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.savez(f, **arrays))
    log.info("augment: %d variants of %d examples -> %s", len(out), len(train), path)
    return out


def augmented_training_data(train: Features, augmented: Features) -> Features:
    """The originals, then their variants, as one training set (row i < N: example i, as before); its digests are
    derived from both parts' recorded ones."""
    out = Features(train.input_ids + augmented.input_ids, train.token_type_ids + augmented.token_type_ids,
                   np.concatenate([train.labels, augmented.labels.astype(train.labels.dtype)]))
    out._digest = derived_digest(train.digest, b"augmented", augmented.digest.encode())
    out._labels_digest = derived_digest(train.labels_digest, b"augmented", augmented.labels_digest.encode())
    return out


def augmented_teacher_rows(teacher_dir, task, augmented: Features, layers, max_length: int = 128,
                           device: str = "auto", which: str = "final") -> tuple[TeacherRows, float]:
    """The teacher's logits and [CLS] states (`layers`) on the augmented set, computed once, in float32, into
    <teacher_dir>/teacher_outputs-augmented-<its digest>.pt (teacher_outputs.pt's format, one split "augmented"; row
    digests recorded as it is written) and shared by every seed and student; a file that lacks some of `layers` is
    recomputed with the layers it had and those. Returns (rows, the seconds computing it took)."""
    spec = get_task(task)
    model_dir = teacher_model_dir(teacher_dir, which).resolve()
    tokenizer = load_tokenizer(model_dir)
    path = Path(teacher_dir) / f"teacher_outputs-augmented-{augmented.digest}.pt"
    weights = file_digest(model_dir / "model.safetensors")
    args = (spec, max_length, tokenizer.fingerprint, {"augmented": len(augmented)}, {"augmented": augmented.digest},
            weights, "fp32", layers)
    with directory_lock(teacher_dir, wait=True):
        try:
            cache = load_teacher_outputs(path, *args)
        except StaleTeacherCache as err:
            layers = sorted(set(layers) | set(getattr(err, "stored", ())))  # MissingTeacherLayers: keep the stored
            started = time.perf_counter()
            model = load_pretrained(model_dir, num_labels=spec.num_labels)
            dev = resolve_device(device)
            rows = teacher_forward(model.to(dev), augmented, dev, layers=list(layers))  # one eval pass, float32
            header = {"task": spec.name, "teacher": str(model_dir), "teacher_weights": weights, "precision": "fp32",
                      "max_length": max_length, "tokenizer": tokenizer.fingerprint,
                      "num_layers": len(model.bert.encoder.plan), "hidden_size": model.config.hidden_size,
                      "layers": sorted(layers), "cls_dtype": "float32", "num_examples": {"augmented": len(augmented)},
                      "digests": {"augmented": augmented.digest}, "seconds": time.perf_counter() - started}
            write_teacher_cache(path, header, {"augmented": {**rows, "labels": None}})
            log.info("augment: teacher outputs on %d augmented examples in %.0f s -> %s", len(augmented),
                     header["seconds"], path)
            cache = load_teacher_outputs(path, *args)
    return TeacherRows.from_cache(cache, "augmented"), cache["seconds"]


def joined_rows(train: TeacherRows, augmented: TeacherRows) -> TeacherRows:
    """The teacher rows of augmented_training_data: the originals', then the variants' (the same layers)."""
    missing = augmented.missing_layers(train.layers) if train.cls_hidden is not None else []
    if missing:
        raise ValueError(f"augment: the augmented set's teacher rows lack layers {missing}")
    cls = None if train.cls_hidden is None else torch.cat([train.cls_hidden, augmented.cls_hidden[
        :, [augmented.layers.index(t) for t in train.layers]].to(train.cls_hidden.dtype)])  # the same columns
    digests = {k: derived_digest(d, b"augmented", augmented.digests[k].encode()) for k, d in train.digests.items()}
    return TeacherRows(torch.cat([train.logits, augmented.logits]), cls, train.layers, train.num_layers, digests)


def with_augmented(task, teacher_dir, train: Features, rows: TeacherRows, tokenizer, config: AugmentConfig,
                   max_length: int = 128, device: str = "auto", which: str = "final") -> tuple[Features, TeacherRows]:
    """A distillation run's training data and teacher rows with the variants appended (what distill_student trains
    on with --augment): the set from its cache (load_augmented), its teacher rows computed once (same layers)."""
    model_dir = teacher_model_dir(teacher_dir, which)
    if load_tokenizer(model_dir).fingerprint != tokenizer.fingerprint:
        raise ValueError("augment: the student's tokenizer differs from the teacher's; the replacements come from the "
                         "teacher's vocabulary")
    augmented = load_augmented(get_task(task).name, train, model_dir, tokenizer.vocab, config)
    aug_rows, _ = augmented_teacher_rows(teacher_dir, task, augmented, rows.layers, max_length, device, which)
    return augmented_training_data(train, augmented), joined_rows(rows, aug_rows)
