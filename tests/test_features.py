"""pea_kd.features and pea_kd.feature_cache: encoding, the on-disk cache (round trip, invalidation, corruption),
batching and collation."""
import logging
import os

import numpy as np
import pytest
import torch

from bert_mini import load_tokenizer, resolve_model_dir
from bert_mini.tokenization import BertTokenizer
from pea_kd.feature_cache import CACHE_ENV, load_features
from pea_kd.features import Features, collate, count_batches, encode_examples, make_batches
from pea_kd.padding_report import padding_stats
from pea_kd.glue import Example, load_examples, split_path

WORDS = "the a movie film was great terrible boring quite surprisingly funny sad long plot actors music".split()
STSB_COLUMNS = "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("minilm-l6")


class CountingTokenizer:
    """Wraps a tokenizer and counts encode_batch calls (0 new calls = the cache was used)."""

    def __init__(self, tok, fingerprint=None):
        self.tok, self.calls = tok, 0
        self.fingerprint = fingerprint or tok.fingerprint

    def encode_batch(self, *args, **kwargs):
        self.calls += 1
        return self.tok.encode_batch(*args, **kwargs)


def sentence(rng, n_words):
    return " ".join(rng.choice(WORDS, size=n_words))


@pytest.fixture
def glue_dir(tmp_path):
    """A tiny GLUE root: SST-2 train (single sentences, 60 rows) and STS-B train (pairs, float scores)."""
    rng = np.random.default_rng(0)
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    rows = [f"{sentence(rng, int(rng.integers(1, 40)))}\t{i % 2}" for i in range(60)]
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (tmp_path / "glue" / "STS-B").mkdir()
    rows = [f"{i}\tmain-news\tf\t2012\t{i}\tnone\tnone\t{sentence(rng, 5 + i)}\t{sentence(rng, 3)}\t{i / 4:.2f}"
            for i in range(12)]
    (tmp_path / "glue" / "STS-B" / "train.tsv").write_text("\t".join(STSB_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return tmp_path / "glue"


def assert_features_equal(a: Features, b: Features):
    assert len(a) == len(b)
    for x, y in zip(a.input_ids + a.token_type_ids, b.input_ids + b.token_type_ids):
        np.testing.assert_array_equal(x, y)
    assert (a.labels is None) == (b.labels is None)
    if a.labels is not None:
        assert a.labels.dtype == b.labels.dtype
        np.testing.assert_array_equal(a.labels, b.labels)


# ---------------------------------------------------------------- encoding

def test_encode_examples_matches_tokenizer_dtypes_and_truncation(tok):
    examples = [Example("train-0", "A short one.", "And a second sentence here.", 1),
                Example("train-1", " ".join(["word"] * 50), "tail", 0)]
    feats = encode_examples(examples, tok, max_length=16)
    assert len(feats) == 2 and feats.labels.dtype == np.int64 and list(feats.labels) == [1, 0]
    assert feats.input_ids[0].dtype == np.int32 and feats.token_type_ids[0].dtype == np.int8
    enc = tok.encode("A short one.", "And a second sentence here.", max_length=16)
    assert feats.input_ids[0].tolist() == enc.input_ids and feats.token_type_ids[0].tolist() == enc.token_type_ids
    assert feats.lengths.tolist() == [len(enc.input_ids), 16]  # the long pair is truncated to max_length
    assert feats.token_type_ids[1][-2:].tolist() == [1, 1]  # longest-first keeps "tail [SEP]" as segment B
    assert not feats.is_regression


def test_encode_examples_regression_unlabeled_and_mixed(tok):
    reg = encode_examples([Example("d-0", "a", "b", 3.5), Example("d-1", "c", "d", 1.0)], tok)
    assert reg.labels.dtype == np.float32 and reg.is_regression
    test = encode_examples([Example("test-0", "a", None, None), Example("test-1", "b c", None, None)], tok)
    assert test.labels is None and all(t.max() == 0 for t in test.token_type_ids)
    with pytest.raises(ValueError, match="example d-1 has label None"):
        encode_examples([Example("d-0", "a", None, 1), Example("d-1", "b", None, None)], tok)
    with pytest.raises(ValueError, match="example d-1 has text_b set"):
        encode_examples([Example("d-0", "a", None, 1), Example("d-1", "b", "c", 0)], tok)


def test_subset_and_lengths(tok):
    feats = encode_examples([Example(f"t-{i}", " ".join(["x"] * i), None, i % 3) for i in range(1, 8)], tok)
    assert feats.lengths.tolist() == [i + 2 for i in range(1, 8)]
    sub = feats.subset([5, 0, 2])
    assert sub.lengths.tolist() == [8, 3, 5] and sub.labels.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(sub.input_ids[0], feats.input_ids[5])
    with pytest.raises(IndexError, match="out of range"):
        feats.subset([7])


# ---------------------------------------------------------------- cache

def test_cache_round_trip_does_not_tokenize_again(glue_dir, tmp_path, tok):
    cache = tmp_path / "cache"
    for task, dtype in (("sst2", np.int64), ("sts-b", np.float32)):
        counting = CountingTokenizer(tok)
        first = load_features(task, "train", counting, max_length=32, data_dir=glue_dir, cache_dir=cache)
        second = load_features(task, "train", counting, max_length=32, data_dir=glue_dir, cache_dir=cache)
        assert counting.calls == 1
        assert_features_equal(first, second)
        assert_features_equal(first, encode_examples(load_examples(task, "train", glue_dir), tok, 32))
        assert second.labels.dtype == dtype
    assert sorted(p.name for p in cache.iterdir()) == [  # one file per split, no temporary files left
        f"SST-2-train-{tok.fingerprint}-L32.npz", f"STS-B-train-{tok.fingerprint}-L32.npz"]


def test_cache_dir_from_environment(glue_dir, tmp_path, tok, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env_cache"))
    load_features("sst2", "train", tok, data_dir=glue_dir)
    assert len(list((tmp_path / "env_cache").glob("SST-2-train-*.npz"))) == 1


def test_cache_invalidated_by_max_length_tokenizer_and_data(glue_dir, tmp_path, tok, caplog):
    cache, counting = tmp_path / "cache", CountingTokenizer(tok)

    def load(t=counting, max_length=32):
        return load_features("sst2", "train", t, max_length=max_length, data_dir=glue_dir, cache_dir=cache)

    base = load()
    short = load(max_length=8)
    assert counting.calls == 2 and short.lengths.max() == 8 < base.lengths.max()
    load(max_length=32)
    assert counting.calls == 2  # both lengths stay cached side by side

    cased = CountingTokenizer(BertTokenizer(resolve_model_dir("minilm-l6") / "vocab.txt", lowercase=False))
    assert cased.fingerprint != tok.fingerprint
    load(cased)
    assert cased.calls == 1

    path = split_path("sst2", "train", glue_dir)
    path.write_text(path.read_text() + "an extra final row\t1\n")
    with caplog.at_level(logging.INFO, logger="pea_kd.feature_cache"):
        edited = load()
    assert counting.calls == 3 and len(edited) == len(base) + 1
    assert any("different source_sha256" in r.getMessage() for r in caplog.records)
    load()
    assert counting.calls == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "wrong_key", "bad_offsets"])
def test_corrupt_cache_is_rebuilt_with_a_log_line(glue_dir, tmp_path, tok, caplog, damage):
    cache, counting = tmp_path / "cache", CountingTokenizer(tok)
    good = load_features("sst2", "train", counting, max_length=32, data_dir=glue_dir, cache_dir=cache)
    (path,) = cache.iterdir()
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        with np.load(path) as z:
            arrays = dict(z)
        if damage == "wrong_key":
            arrays["key"] = np.array('["not", "a", "dict"]')
        else:
            arrays["offsets"] = arrays["offsets"][::-1].copy()
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    with caplog.at_level(logging.WARNING, logger="pea_kd.feature_cache"):
        rebuilt = load_features("sst2", "train", counting, max_length=32, data_dir=glue_dir, cache_dir=cache)
    assert counting.calls == 2
    assert any("rebuilding" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    assert_features_equal(good, rebuilt)
    load_features("sst2", "train", counting, max_length=32, data_dir=glue_dir, cache_dir=cache)
    assert counting.calls == 2  # the rebuilt file is good


def test_missing_split_raises_glue_error(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="MRPC"):
        load_features("mrpc", "train", tok, data_dir=tmp_path, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- batching

LENGTHS = np.random.default_rng(1).integers(5, 129, size=3200)  # uniform lengths 5..128, like a wide GLUE task


@pytest.mark.parametrize("n,batch_size,shuffle", [(1003, 8, True), (1003, 8, False), (5, 32, True), (0, 4, True)])
def test_batches_cover_every_index_exactly_once(n, batch_size, shuffle):
    batches = make_batches(LENGTHS[:n], batch_size, shuffle=shuffle, bucket_size_multiplier=5)
    flat = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))
    assert all(b.dtype == np.int64 for b in batches)
    assert sum(len(b) < batch_size for b in batches) <= 1  # only the last bucket can leave a short batch


def test_batches_reproducible_per_seed_and_epoch():
    def run(seed, epoch):
        return [b.tolist() for b in make_batches(LENGTHS, 32, seed=seed, epoch=epoch)]

    assert run(0, 0) == run(0, 0) and run(3, 2) == run(3, 2)
    assert run(0, 0) != run(0, 1) and run(0, 0) != run(1, 0)
    # different epochs also put different examples together, not just reorder the same batches
    assert {tuple(sorted(b)) for b in run(0, 0)} != {tuple(sorted(b)) for b in run(0, 1)}
    # the batch order is shuffled too: batch lengths do not rise bucket by bucket (unshuffled: 1 drop in 100)
    longest = [LENGTHS[b].max() for b in make_batches(LENGTHS, 32)]
    assert np.sum(np.diff(longest) < 0) > len(longest) // 4


def test_bucketed_batches_have_homogeneous_lengths():
    batches = make_batches(LENGTHS, 32, seed=0, bucket_size_multiplier=50)
    spread = max(int(LENGTHS[b].max() - LENGTHS[b].min()) for b in batches)
    assert spread <= 8  # a bucket of 1600 sorted examples over 124 lengths: ~13 per length, ~3 lengths per batch
    stats = padding_stats(LENGTHS, 32, max_length=128)
    assert stats["bucketed_pad"] < 0.03 * stats["real_tokens"]  # almost no padding
    assert stats["random_pad"] > 0.6 * stats["real_tokens"]  # random batches: T_max ~ 125 vs mean length ~ 66
    assert stats["fixed_positions"] == 3200 * 128 and stats["saving_vs_fixed"] > 0.45
    assert stats["attention_saving_vs_fixed"] > stats["saving_vs_fixed"]  # T^2 cost: saving grows
    with pytest.raises(ValueError, match="max_length=64"):
        padding_stats(LENGTHS, 32, max_length=64)


def test_eval_batches_sorted_by_length_and_order_recoverable(tok):
    feats = encode_examples([Example(f"t-{i}", " ".join(["x"] * (i * 7 % 11)), None, i) for i in range(23)], tok)
    batches = make_batches(feats, 4, shuffle=False)
    flat_lengths = np.concatenate([feats.lengths[b] for b in batches])
    assert (np.diff(flat_lengths) <= 0).all()  # longest first
    predictions = np.empty(len(feats), dtype=np.int64)
    for b in batches:
        batch = collate(feats, b)
        predictions[batch["index"].numpy()] = batch["labels"].numpy()  # "model" = echo the label
    np.testing.assert_array_equal(predictions, feats.labels)


# ---------------------------------------------------------------- collate

def test_collate_pads_masks_and_keeps_values(tok):
    feats = encode_examples([Example(f"t-{i}", " ".join(["word"] * i), "pair", i % 2) for i in (1, 9, 4)], tok)
    batch = collate(feats, np.array([2, 1, 0]), pad_token_id=7)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "index"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (3, 13)
    assert all(v.dtype == torch.int64 for v in batch.values())
    assert batch["index"].tolist() == [2, 1, 0] and batch["labels"].tolist() == [0, 1, 1]
    assert batch["attention_mask"].sum(1).tolist() == [8, 13, 5]
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == 7).all() and (batch["token_type_ids"][pad] == 0).all()
    for row, i in enumerate([2, 1, 0]):
        n = len(feats.input_ids[i])
        assert batch["input_ids"][row, :n].tolist() == feats.input_ids[i].tolist()
        assert batch["token_type_ids"][row, :n].tolist() == feats.token_type_ids[i].tolist()
    with pytest.raises(IndexError, match="example index -1"):
        collate(feats, [0, -1])


def test_collate_regression_and_unlabeled(tok):
    reg = encode_examples([Example("d-0", "a b", "c", 4.2), Example("d-1", "a", "c d e", 0.0)], tok)
    batch = collate(reg, [0, 1])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == pytest.approx([4.2, 0.0])
    test = encode_examples([Example("test-0", "a b", None, None)], tok)
    assert "labels" not in collate(test, [0])


# ---------------------------------------------------------------- real GLUE data

@pytest.mark.skipif(not split_path("mrpc", "dev").is_file(), reason="GLUE MRPC not found (set GLUE_DIR)")
def test_real_mrpc_dev_cached_and_bucketed(tmp_path, tok):
    counting = CountingTokenizer(tok)
    feats = load_features("MRPC", "dev", counting, cache_dir=tmp_path)
    again = load_features("mrpc", "dev", counting, cache_dir=tmp_path)
    assert counting.calls == 1 and len(feats) == 408 and feats.labels.dtype == np.int64
    assert_features_equal(feats, again)
    examples = load_examples("mrpc", "dev")
    assert feats.input_ids[0].tolist() == tok.encode(examples[0].text_a, examples[0].text_b).input_ids
    stats = padding_stats(feats, 32, max_length=128)
    assert stats["saving_vs_fixed"] > 0.4 and stats["bucketed_pad"] < stats["random_pad"] / 3


# ---------------------------------------------------------------- digests recorded once (run identity, issue 25)

def test_the_inputs_digest_is_stored_with_the_cache_and_read_back_without_hashing(glue_dir, tmp_path, tok,
                                                                                   monkeypatch):
    from pea_kd import features as features_module
    cache = tmp_path / "cache"
    built = load_features("sst2", "train", tok, max_length=32, data_dir=glue_dir, cache_dir=cache)
    content = features_module.inputs_digest(built.input_ids, built.token_type_ids)
    assert built.digest == content
    labels = built.labels_digest
    monkeypatch.setattr(features_module, "inputs_digest", lambda *a: pytest.fail("the examples were hashed again"))
    monkeypatch.setattr(features_module, "rows_digest", lambda *a: pytest.fail("the labels were hashed again"))
    read = load_features("sst2", "train", tok, max_length=32, data_dir=glue_dir, cache_dir=cache)
    assert read.digest == content and read.labels_digest == labels
    assert read.lengths.tolist() == built.lengths.tolist()


def test_a_subset_digest_is_derived_and_a_relabelled_split_keeps_its_inputs_digest(tok):
    feats = encode_examples([Example(f"t-{i}", " ".join(["x"] * i), "y", i % 2) for i in range(1, 9)], tok)
    sub = feats.subset([5, 0, 2])
    assert sub.digest == feats.subset(np.array([5, 0, 2])).digest  # the same rows taken the same way: same name
    assert len({feats.digest, sub.digest, feats.subset([0, 2, 5]).digest, feats.subset([5, 0]).digest}) == 4
    assert feats.head(8) is feats and feats.head(100) is feats
    assert feats.head(3).digest == feats.subset([0, 1, 2]).digest
    relabelled = sub.with_labels(np.zeros(3, dtype=np.int64))
    assert relabelled.digest == sub.digest and relabelled.labels.tolist() == [0, 0, 0]
    assert relabelled.labels_digest != sub.labels_digest != feats.labels_digest
    import dataclasses  # a replace() may change the inputs: the digest is not carried over, it is recomputed
    other = dataclasses.replace(sub, input_ids=[ids[::-1].copy() for ids in sub.input_ids])
    assert other.digest not in (sub.digest, None)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 1599, 1600, 1601, 5000])
@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_count_batches_is_the_number_of_batches_without_building_them(n, batch_size):
    lengths = np.random.default_rng(n).integers(3, 60, n)
    for shuffle in (True, False):
        assert count_batches(n, batch_size, shuffle) == len(make_batches(lengths, batch_size, shuffle, 0, 3))
