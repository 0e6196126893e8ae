"""pea_kd.teacher and pea_kd.distill: teacher fine-tuning, the teacher cache (contents, validation, recompute) and
distillation that reads only the cache."""
import json

import pytest
import torch

from bert_mini import load_pretrained, load_tokenizer
from pea_kd import distill as distill_module
from pea_kd import teacher as teacher_module
from pea_kd.features import load_features
from pea_kd.students import load_student
from pea_kd.teacher import (CACHE_FILE, StaleTeacherCache, cache_teacher_outputs, ensure_teacher_outputs,
                            features_digest, finetune_teacher, load_teacher_outputs)
from pea_kd.trainer import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = dict(epochs=1, batch_size=16, lr=1e-3, progress=False)


@pytest.fixture
def teacher_dir(tiny_env, tmp_path):
    checkpoint, _ = tiny_env
    finetune_teacher("mrpc", out_dir=tmp_path / "teacher", model_name=str(checkpoint), max_length=32,
                     config=TrainConfig(keep_best=True, **FAST))
    return tmp_path / "teacher"


def test_finetune_teacher_writes_loadable_checkpoints_and_meta(teacher_dir, tiny_env):
    checkpoint, _ = tiny_env
    result = json.loads((teacher_dir / "result.json").read_text())
    meta = result["meta"]
    assert (meta["stage"], meta["task"], meta["model"], meta["num_labels"]) == ("teacher", "MRPC", str(checkpoint), 2)
    assert meta["tokenizer"] == load_tokenizer(checkpoint).fingerprint and meta["train_examples"] == 64
    assert set(result["final_metrics"]) == {"acc", "f1", "acc_and_f1"}
    for which in ("final", "best"):
        model = load_pretrained(teacher_dir / which, num_labels=2)
        assert not model.load_report.newly_initialized  # the fine-tuned head is in the checkpoint
        assert (teacher_dir / which / "vocab.txt").read_text() == (checkpoint / "vocab.txt").read_text()


def test_cache_rows_are_the_teachers_outputs_in_example_order(teacher_dir):
    path = cache_teacher_outputs(teacher_dir, "mrpc", max_length=32)
    cache = torch.load(path, weights_only=True)
    model = load_pretrained(teacher_dir / "final", num_labels=2).eval()
    tok = load_tokenizer(teacher_dir / "final")
    assert (cache["version"], cache["task"], cache["max_length"], cache["precision"]) == (2, "MRPC", 32, "fp32")
    assert cache["tokenizer"] == tok.fingerprint
    for split, n in (("train", 64), ("dev", 24)):
        rows = cache["splits"][split]
        assert cache["num_examples"][split] == n
        assert rows["logits"].shape == (n, 2) and rows["cls_hidden"].shape == (n, 3, 32)  # L_t + 1 = 3, H_t = 32
        assert rows["logits"].dtype == rows["cls_hidden"].dtype == torch.float32
        data = load_features("mrpc", split, tok, 32)
        assert torch.equal(rows["labels"], torch.from_numpy(data.labels))
        for i in (0, 5, n - 1):  # one example alone, no padding: the cached row must match it
            with torch.no_grad():
                out = model(torch.tensor(data.input_ids[i][None], dtype=torch.long),
                            token_type_ids=torch.tensor(data.token_type_ids[i][None], dtype=torch.long),
                            output_hidden_states=True)
            torch.testing.assert_close(rows["logits"][i], out.logits[0], atol=1e-5, rtol=1e-5)
            for layer in range(3):
                torch.testing.assert_close(rows["cls_hidden"][i, layer], out.hidden_states[layer][0, 0],
                                           atol=1e-5, rtol=1e-5)


def test_stale_or_broken_cache_is_refused_with_the_reason(teacher_dir):
    path = cache_teacher_outputs(teacher_dir, "mrpc", max_length=32)
    tok = load_tokenizer(teacher_dir / "final")
    sizes = {"train": 64, "dev": 24}
    digest = {"train": features_digest(load_features("mrpc", "train", tok, 32))}
    assert load_teacher_outputs(path, "mrpc", 32, tok.fingerprint, sizes, digest)["task"] == "MRPC"
    cases = [(("rte", 32, tok.fingerprint, sizes), "task is 'MRPC', expected 'RTE'"),
             (("mrpc", 64, tok.fingerprint, sizes), "max_length is 32, expected 64"),
             (("mrpc", 32, "other", sizes), "tokenizer"),
             (("mrpc", 32, tok.fingerprint, {"train": 65}), "train has 64 examples, the data has 65"),
             (("mrpc", 32, tok.fingerprint, {"test": 10}), "no 'test' split"),
             (("mrpc", 32, tok.fingerprint, sizes, {"train": "0" * 16}), "train inputs changed")]
    for args, message in cases:
        with pytest.raises(StaleTeacherCache, match=message):
            load_teacher_outputs(path, *args)
    with pytest.raises(StaleTeacherCache, match="no teacher cache"):
        load_teacher_outputs(teacher_dir / "missing.pt", "mrpc", 32, tok.fingerprint, sizes)
    path.write_bytes(path.read_bytes()[:100])  # truncated file
    with pytest.raises(StaleTeacherCache, match="unreadable"):
        load_teacher_outputs(path, "mrpc", 32, tok.fingerprint, sizes)


def test_ensure_recomputes_a_stale_cache(teacher_dir, tiny_env):
    _, glue = tiny_env
    cache_teacher_outputs(teacher_dir, "mrpc", max_length=16)  # another max_length: stale for 32
    cache = ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32)
    assert cache["max_length"] == 32
    assert torch.load(teacher_dir / CACHE_FILE, weights_only=True)["max_length"] == 32
    lines = (glue / "MRPC" / "train.tsv").read_text().splitlines()  # edit the data: same size, other text
    lines[1] = lines[1].replace("the", "a").replace("cat", "dog") + " red"
    (glue / "MRPC" / "train.tsv").write_text("\n".join(lines) + "\n")
    calls = []
    original = teacher_module.cache_teacher_outputs
    teacher_module.cache_teacher_outputs = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32)
    finally:
        teacher_module.cache_teacher_outputs = original
    assert calls == [1]


def test_distillation_reads_the_cache_and_never_runs_the_teacher(teacher_dir, tiny_env, tmp_path, monkeypatch):
    checkpoint, _ = tiny_env
    cache_teacher_outputs(teacher_dir, "mrpc", max_length=32)

    def forbidden(*args, **kwargs):
        raise AssertionError("the teacher model was run or loaded during distillation")
    monkeypatch.setattr(teacher_module, "teacher_forward", forbidden)
    monkeypatch.setattr(distill_module, "load_pretrained", forbidden)
    result = distill_module.distill_student(
        "mrpc", out_dir=tmp_path / "student", teacher_dir=teacher_dir, student_model=str(checkpoint), num_layers=2,
        variant="sps", loss="kd+pkd", max_length=32, max_train_examples=40, config=TrainConfig(**FAST))
    assert result.meta["effective_layers"] == 4  # 2 layers, SPS
    assert [tuple(p) for p in result.meta["layer_map"]] == [(2, 1)]  # pkd_layer_map(L_t=2, L_s=4): e2 <-> layer 1
    assert result.meta["train_examples"] == 40
    assert set(result.history[-1]["train_parts"]) == {"kd", "ce", "pkd"}
    student = load_student(tmp_path / "student" / "final")
    assert student.student_meta["variant"] == "sps" and student.student_meta["extra"]["loss"] == "kd+pkd"


def test_distill_argument_checks():
    with pytest.raises(ValueError, match="--teacher-dir"):
        distill_module.check_distill_args("kd", 3, "original", None)
    with pytest.raises(ValueError, match="1 effective layer"):
        distill_module.check_distill_args("kd+pkd", 1, "original", "t")
    with pytest.raises(ValueError, match="sps6"):
        distill_module.check_distill_args("kd", 3, "sps6", "t")
    distill_module.check_distill_args("ce", 3, "sps", None)  # FT needs no teacher
    distill_module.check_distill_args("kd+pkd", 1, "sps", "t")  # SPS-1L has 2 effective layers: e1 <-> teacher
