"""pea_kd.augment: word replacement from the teacher's embedding neighbours, deterministic, cached by content, and
never a gold label on an augmented example."""
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pea_kd import augment
from pea_kd.augment import (GOLD_MISSING, AugmentConfig, augment_features, augment_key, augmented_training_data,
                            load_augmented, nearest_neighbours)
from pea_kd.features import Features
from pea_kd.step_inputs import gold_mask

# a toy vocabulary: specials, stop words, pieces, a number, and whole words (ids in order)
TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "of", "##ing", "##s", "1990",
          "cat", "dog", "run", "walk", "house", "home", "red", "blue", "big", "small", "car", "bus"]
VOCAB = {t: i for i, t in enumerate(TOKENS)}
WORDS = {i for t, i in VOCAB.items() if t.isalpha() and t not in ("the", "of")}


def _features(n=6, seed=0):
    rng = np.random.default_rng(seed)
    ids, types = [], []
    for _ in range(n):
        a = rng.integers(4, len(TOKENS), size=7).astype(np.int32)
        b = rng.integers(4, len(TOKENS), size=5).astype(np.int32)
        ids.append(np.concatenate([[2], a, [3], b, [3]]).astype(np.int32))
        types.append(np.array([0] * 9 + [1] * 6, dtype=np.int8))
    return Features(ids, types, rng.integers(0, 2, size=n).astype(np.int64))


def _embeddings(seed=0):
    return torch.randn(len(TOKENS), 8, generator=torch.Generator().manual_seed(seed))


def test_neighbours_are_the_most_cosine_similar_candidates_never_the_word_itself():
    e = _embeddings()
    candidates = np.array([i in WORDS for i in range(len(TOKENS))])
    words = np.array(sorted(WORDS))
    got = nearest_neighbours(e, words, candidates, k=3, chunk=2)  # chunked as for a large vocabulary
    for w, row in zip(words, got):  # independent: cosine by hand over the candidate list
        cos = {u: float(e[w] @ e[u] / (e[w].norm() * e[u].norm())) for u in WORDS if u != w}
        assert list(row) == sorted(cos, key=cos.get, reverse=True)[:3]


def test_only_whole_alphabetic_non_stop_words_are_replaced_lengths_and_segments_kept():
    train = _features(20)
    out = augment_features(train, _embeddings(), VOCAB, AugmentConfig(rate=1.0, variants=3, neighbours=4))
    assert len(out) == 3 * len(train)
    replaced = 0
    for i, ids in enumerate(train.input_ids):
        for v in range(3):
            new = out.input_ids[3 * i + v]
            assert len(new) == len(ids) and np.array_equal(out.token_type_ids[3 * i + v], train.token_type_ids[i])
            for p, (old, tok) in enumerate(zip(ids, new)):
                followed_by_piece = p + 1 < len(ids) and TOKENS[ids[p + 1]].startswith("##")
                if old not in WORDS or followed_by_piece:  # [CLS]/[SEP], stop words, ##pieces, numbers, "run ##ing"
                    assert tok == old, (TOKENS[old], p)
                else:  # rate 1: every whole word, by one of its 4 neighbours, itself a whole word
                    assert tok != old and tok in WORDS
                    replaced += 1
    assert replaced > 50
    assert (out.labels == GOLD_MISSING).all() and not gold_mask(out.labels).any()  # no gold label invented


def test_each_word_is_replaced_with_probability_rate():
    train = _features(200, seed=1)
    out = augment_features(train, _embeddings(), VOCAB, AugmentConfig(rate=0.4, variants=2, neighbours=4))
    slots = changed = 0
    for i, ids in enumerate(train.input_ids):
        whole = [p for p in range(len(ids)) if ids[p] in WORDS
                 and not (p + 1 < len(ids) and TOKENS[ids[p + 1]].startswith("##"))]
        for v in range(2):
            slots += len(whole)
            changed += sum(out.input_ids[2 * i + v][p] != ids[p] for p in whole)
    assert changed / slots == pytest.approx(0.4, abs=0.03)


def test_same_settings_same_pairs_another_seed_other_pairs():
    train, e = _features(10), _embeddings()
    a = augment_features(train, e, VOCAB, AugmentConfig(seed=3, neighbours=4))
    b = augment_features(train, e, VOCAB, AugmentConfig(seed=3, neighbours=4))
    c = augment_features(train, e, VOCAB, AugmentConfig(seed=4, neighbours=4))
    assert a.digest == b.digest and all(np.array_equal(x, y) for x, y in zip(a.input_ids, b.input_ids))
    assert c.digest != a.digest
    head = augment_features(train.head(4), e, VOCAB, AugmentConfig(seed=3, neighbours=4))  # example i: seed [3, i]
    assert all(np.array_equal(x, y) for x, y in zip(head.input_ids, a.input_ids[:len(head)]))


def test_every_setting_and_input_is_part_of_the_key():
    train, e = _features(), _embeddings()
    base = augment_key(train, e, AugmentConfig())
    changed = [augment_key(train, e, dataclasses.replace(AugmentConfig(), **{k: v}))
               for k, v in (("rate", 0.3), ("variants", 2), ("neighbours", 5), ("seed", 1))]
    changed.append(augment_key(train, _embeddings(seed=1), AugmentConfig()))  # another embedding table
    changed.append(augment_key(_features(seed=2), e, AugmentConfig()))  # other training inputs
    changed.append(augment_key(train.with_labels(1 - train.labels), e, AugmentConfig()))  # other labels
    with pytest.raises(ValueError, match="augment: 15 neighbours asked, but the vocabulary has 12 candidate words"):
        augment_features(train, e, VOCAB, AugmentConfig())
    assert all(key != base for key in changed) and len({str(sorted(k.items())) for k in changed}) == len(changed)
    for bad, message in (({"rate": 0.0}, r"--augment-rate \(r, .*\) must be in \(0, 1\], got 0\.0$"),
                         ({"rate": 1.5}, r"--augment-rate \(r, .*\) must be in \(0, 1\], got 1\.5$"),
                         ({"variants": 0}, r"--augment-variants \(V, .*\) must be >= 1, got 0$"),
                         ({"neighbours": 0}, r"--augment-neighbours \(K, .*\) must be >= 1, got 0$"),
                         ({"seed": -1}, r"augment: the seed of the draws must be >= 0, got -1$")):
        with pytest.raises(ValueError, match=message):
            AugmentConfig(**bad)


def test_the_set_is_cached_by_content_and_reread(tmp_path, monkeypatch):
    save_file({"embeddings.word_embeddings.weight": _embeddings()}, str(tmp_path / "model.safetensors"))
    train, cfg = _features(), AugmentConfig(variants=2, neighbours=4)
    first = load_augmented("MRPC", train, tmp_path, VOCAB, cfg, cache_dir=tmp_path / "cache" / "features")
    files = list((tmp_path / "cache" / "augment").glob("mrpc-*.npz"))
    assert len(files) == 1

    def never(*args, **kwargs):
        raise AssertionError("rebuilt instead of read")
    monkeypatch.setattr(augment, "augment_features", never)
    again = load_augmented("MRPC", train, tmp_path, VOCAB, cfg, cache_dir=tmp_path / "cache" / "features")
    assert again.digest == first.digest and all(np.array_equal(x, y) for x, y in zip(again.input_ids, first.input_ids))
    assert (again.labels == GOLD_MISSING).all()
    monkeypatch.undo()
    other = load_augmented("MRPC", train, tmp_path, VOCAB, AugmentConfig(variants=3, neighbours=4),
                           tmp_path / "cache" / "features")
    assert len(other) == 3 * len(train) and len(list((tmp_path / "cache" / "augment").glob("*.npz"))) == 2


def test_joined_training_data_keeps_the_originals_first_and_marks_gold():
    train = _features(4)
    aug = augment_features(train, _embeddings(), VOCAB, AugmentConfig(variants=2, neighbours=4))
    both = augmented_training_data(train, aug)
    assert len(both) == 12 and all(np.array_equal(both.input_ids[i], train.input_ids[i]) for i in range(4))
    assert gold_mask(both.labels).tolist() == [True] * 4 + [False] * 8
    assert both.digest not in (train.digest, aug.digest)
    regression = Features(train.input_ids, train.token_type_ids, np.linspace(0, 5, 4).astype(np.float32))
    reg_aug = augment_features(regression, _embeddings(), VOCAB, AugmentConfig(variants=1, neighbours=4))
    assert np.isnan(reg_aug.labels).all() and gold_mask(augmented_training_data(regression, reg_aug).labels).sum() == 4


@pytest.mark.usefixtures("single_thread")
def test_training_batches_carry_the_gold_mask_and_hidden_states_come_live_the_rest_cached(tiny_env):
    from bert_mini import load_pretrained, load_tokenizer
    from pea_kd.feature_cache import load_features
    from pea_kd.losses import build_loss
    from pea_kd.step_inputs import StepInputs
    from pea_kd.teacher_rows import TeacherRows

    checkpoint, _ = tiny_env
    train = load_features("mrpc", "train", load_tokenizer(checkpoint), 32).head(8)
    both = augmented_training_data(train, Features(train.input_ids, train.token_type_ids, np.full(8, GOLD_MISSING)))
    rows = TeacherRows.from_tensors(torch.randn(16, 2), torch.randn(16, 3, 32))
    spec, cpu = "kd+pkd+hidden", torch.device("cpu")
    with pytest.raises(ValueError, match="needs teacher_hidden_states, which the teacher cache lacks"):
        StepInputs(both, build_loss(spec), spec, [(1, 1)], rows, None, cpu, 0)
    inputs = StepInputs(both, build_loss(spec), spec, [(1, 1)], rows, load_pretrained(checkpoint, num_labels=2), cpu, 0)
    batch = inputs.load(np.array([0, 9, 3, 12]))
    assert batch.teacher["has_gold"].tolist() == [True, False, True, False]
    targets = inputs.teacher_targets(batch)
    assert torch.equal(targets["teacher_logits"], rows.logits[[0, 9, 3, 12]])  # z_t from the cache, not the live model
    assert len(targets["teacher_hidden_states"]) == 3  # embeddings + 2 layers, every token
    assert targets["teacher_hidden_states"][-1].shape == (4, batch["input_ids"].shape[1], 32)
    assert set(inputs.identity()) >= {"teacher_targets", "teacher_live"}
    plain = StepInputs(train, build_loss("kd"), "kd", [], TeacherRows.from_tensors(torch.randn(8, 2)), None, cpu, 0)
    assert "has_gold" not in plain.load(np.array([0, 1])).teacher  # every example has its label: nothing changes


@pytest.mark.usefixtures("single_thread")
def test_the_teacher_labels_the_variants_once_keeping_every_layer_asked_for(tiny_env, tmp_path, monkeypatch):
    from bert_mini import load_pretrained, load_tokenizer, save_pretrained
    from pea_kd.feature_cache import load_features
    from pea_kd.teacher_rows import TeacherRows

    checkpoint, _ = tiny_env
    tok = load_tokenizer(checkpoint)
    teacher_dir = tmp_path / "teacher"
    save_pretrained(load_pretrained(checkpoint, num_labels=2), teacher_dir / "final", tokenizer=tok)
    train = load_features("mrpc", "train", tok, 32).head(6)
    variants = Features(train.input_ids, train.token_type_ids, np.full(6, GOLD_MISSING))
    calls = []
    forward = augment.teacher_forward
    monkeypatch.setattr(augment, "teacher_forward", lambda *a, **k: calls.append(k["layers"]) or forward(*a, **k))
    first, _ = augment.augmented_teacher_rows(teacher_dir, "mrpc", variants, (1,), 32, "cpu")
    rows, seconds = augment.augmented_teacher_rows(teacher_dir, "mrpc", variants, (2,), 32, "cpu")  # another layer
    again, _ = augment.augmented_teacher_rows(teacher_dir, "mrpc", variants, (1, 2), 32, "cpu")  # both kept: read
    assert calls == [[1], [1, 2]] and seconds > 0 and again.layers == rows.layers == (1, 2)
    assert torch.equal(rows.logits, first.logits)  # the same teacher, the same float32 forward
    train_rows = TeacherRows(torch.randn(6, 2), torch.randn(6, 1, 32), (2,), 2, {"logits": "a", "cls_hidden/2": "b"})
    joined = augment.joined_rows(train_rows, again)  # the train rows' layer (2) taken from the variants' (1, 2)
    assert joined.layers == (2,) and torch.equal(joined.cls_hidden[6:, 0], again.cls_hidden[:, 1])
    assert torch.equal(joined.logits, torch.cat([train_rows.logits, again.logits]))
