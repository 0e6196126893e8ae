"""pea_kd.teacher and pea_kd.distill: teacher fine-tuning, the teacher cache (contents, validation, recompute) and
distillation that reads only the cache."""
import json

import pytest
import torch

from bert_mini import load_pretrained, load_tokenizer
from pea_kd import distill as distill_module
from pea_kd import teacher as teacher_module
from pea_kd import teacher_cache
from pea_kd.feature_cache import load_features
from pea_kd.identity import features_digest
from pea_kd.students import load_student
from pea_kd.teacher import CACHE_FILE, cache_teacher_outputs, ensure_teacher_outputs, finetune_teacher
from pea_kd.teacher_cache import StaleTeacherCache, load_teacher_outputs
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
    assert (cache["version"], cache["task"], cache["max_length"], cache["precision"]) == (3, "MRPC", 32, "fp32")
    assert cache["tokenizer"] == tok.fingerprint
    assert (cache["num_layers"], cache["hidden_size"], cache["layers"], cache["cls_dtype"]) == (2, 32, [0, 1, 2],
                                                                                                "float32")
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


# ---------------------------------------------------------------- the cache holds what the losses read (issue 25)

def test_a_cache_of_chosen_layers_holds_exactly_those_columns_and_their_digests(teacher_dir):
    from pea_kd.identity import rows_digest
    full = torch.load(cache_teacher_outputs(teacher_dir, "mrpc", max_length=32), weights_only=True)
    path = cache_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[2])
    part = torch.load(path, weights_only=True)
    assert (part["layers"], part["num_layers"]) == ([2], 2)
    for split, n in (("train", 64), ("dev", 24)):
        rows = part["splits"][split]
        assert rows["cls_hidden"].shape == (n, 1, 32)
        assert torch.equal(rows["cls_hidden"][:, 0], full["splits"][split]["cls_hidden"][:, 2])
        assert torch.equal(rows["logits"], full["splits"][split]["logits"])
        assert part["row_digests"][split] == {"logits": rows_digest(rows["logits"]),
                                              "cls_hidden/2": rows_digest(rows["cls_hidden"][:, 0])}
        assert part["row_digests"][split]["cls_hidden/2"] == full["row_digests"][split]["cls_hidden/2"]
    logits_only = torch.load(cache_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=()), weights_only=True)
    assert logits_only["layers"] == [] and logits_only["splits"]["train"]["cls_hidden"] is None
    with pytest.raises(ValueError, match=r"layers \[3\] out of range for a 2-layer teacher"):
        cache_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[3])


def test_ensure_reuses_a_cache_holding_the_layers_asked_for_and_extends_one_that_lacks_some(teacher_dir, monkeypatch):
    calls = []
    original = teacher_module.cache_teacher_outputs
    monkeypatch.setattr(teacher_module, "cache_teacher_outputs",
                        lambda *a, **k: calls.append(k["layers"]) or original(*a, **k))
    assert ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[1])["layers"] == [1]
    assert ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=())["layers"] == [1]  # logits: reused
    assert ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[2])["layers"] == [1, 2]  # both kept
    assert ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[1, 2])["layers"] == [1, 2]
    assert ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32)["layers"] == [0, 1, 2]  # None: every layer
    assert calls == [[1], [1, 2], None]
    tok = load_tokenizer(teacher_dir / "final")
    cache_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[1])
    with pytest.raises(teacher_cache.MissingTeacherLayers, match=r"holds layers \[1\] of 0..2, not \[0, 2\]"):
        load_teacher_outputs(teacher_dir / CACHE_FILE, "mrpc", 32, tok.fingerprint, {"train": 64}, layers=[0, 1, 2])


def test_distillation_caches_only_the_layer_map_and_refuses_a_loss_that_reads_more(teacher_dir, tiny_env, tmp_path,
                                                                                  monkeypatch):
    from pea_kd.losses import LossConfig, LossResult, register_loss, registry
    from pea_kd.teacher_rows import TeacherRows
    from pea_kd.trainer import Trainer
    checkpoint, _ = tiny_env
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the test's loss leaves with the test
    run = dict(teacher_dir=teacher_dir, student_model=str(checkpoint), max_length=32, config=TrainConfig(**FAST))
    result = distill_module.distill_student("mrpc", out_dir=tmp_path / "pkd", num_layers=2, variant="sps",
                                            loss="kd+pkd", **run)
    assert [tuple(p) for p in result.meta["layer_map"]] == [(2, 1)]
    cache = torch.load(teacher_dir / CACHE_FILE, weights_only=True)
    assert cache["layers"] == [1] and cache["splits"]["train"]["cls_hidden"].shape == (64, 1, 32)  # 1 of 3 layers
    identity = json.loads((tmp_path / "pkd" / "result.json").read_text())["meta"]["identity"]
    assert (identity["teacher_layers"], identity["teacher_dtype"]) == ([1], "float32")

    @register_loss("last_cls_cos", requires=("student_hidden_states", "teacher_cls_hidden"))
    def last_cls_cos(inputs):
        """1 - cos(last student [CLS], last teacher [CLS]): may read any teacher layer (teacher_layers="all")."""
        t = inputs.teacher_cls_hidden[:, -1].detach()
        loss = 1 - torch.nn.functional.cosine_similarity(inputs.student_hidden_states[-1][:, 0], t).mean()
        return LossResult(loss, {"last_cls_cos": loss.detach()})

    rows = TeacherRows.from_cache(cache, "train")
    tok = load_tokenizer(checkpoint)
    data = load_features("mrpc", "train", tok, 32)
    student = load_pretrained(checkpoint, num_labels=2)
    with pytest.raises(ValueError, match=r"reads teacher layers 0, 2, which the teacher cache does not hold \(it "
                                         r"has 1 of 0..2\); recompute it"):
        Trainer(student, data, data, task="mrpc", out_dir=tmp_path / "x", loss="kd+last_cls_cos", teacher=rows,
                config=TrainConfig(**FAST))
    with pytest.raises(ValueError, match="reads teacher layers 2, which"):
        Trainer(student, data, data, task="mrpc", out_dir=tmp_path / "x", loss="kd+pkd", teacher=rows,
                loss_config=LossConfig(layer_map=[(1, 1), (2, 2)]), config=TrainConfig(**FAST))
    distill_module.distill_student("mrpc", out_dir=tmp_path / "cos", num_layers=1, variant="sps",
                                   loss="kd+last_cls_cos", **run)  # distill asks for every layer: the cache grows
    assert torch.load(teacher_dir / CACHE_FILE, weights_only=True)["layers"] == [0, 1, 2]


def test_teacher_rows_fill_the_stored_layers_and_leave_the_others_nan(teacher_dir):
    from pea_kd.teacher_rows import TeacherRows
    full = TeacherRows.from_cache(ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32), "train")
    cache_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[0, 2])
    part = TeacherRows.from_cache(ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[2]), "train")
    index = torch.tensor([5, 0, 63])
    rows = part.cls_rows(index, torch.device("cpu"))
    assert rows.shape == (3, 3, 32) and torch.isnan(rows[:, 1]).all()
    assert torch.equal(rows[:, [0, 2]], full.cls_rows(index, torch.device("cpu"))[:, [0, 2]])
    assert part.identity({"logits", "cls_hidden"}, [2]) == full.identity({"logits", "cls_hidden"}, [2])
    assert part.identity({"logits"}, ()) != part.identity({"logits", "cls_hidden"}, [2])
    assert part.head(10).identity({"logits"}, ()) != part.identity({"logits"}, ()) and part.head(64) is part


def test_verify_finds_rows_edited_behind_the_recorded_digests(capsys, teacher_dir):
    from test_cli import run_cli
    path = cache_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[1, 2])
    argv = ["cache-teacher", "--task", "mrpc", "--teacher-dir", teacher_dir, "--verify"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0 and json.loads(out)["verified"] is True
    cache = torch.load(path, weights_only=True)
    cache["splits"]["dev"]["cls_hidden"][3, 1] += 1.0  # layer 2 of one dev row, edited by hand; digests kept
    torch.save(cache, path)
    assert teacher_cache.verify_teacher_outputs(path) == {"train": [], "dev": ["cls_hidden/2"]}
    code, out, err = run_cli(capsys, *argv)
    assert code == 1 and "rows differ from the digests recorded when it was written (dev: cls_hidden/2)" in err


def test_the_layers_a_set_of_students_needs_is_the_union_of_their_layer_maps(tmp_path):
    from bert_mini import BertConfig
    (tmp_path / "bert-base").mkdir()
    BertConfig(num_hidden_layers=12).to_json(tmp_path / "bert-base" / "config.json")
    need = distill_module.teacher_layers_needed
    assert need(tmp_path / "bert-base", [("kd+pkd", 3, "original")]) == (4, 8)  # PKD, 3 layers
    assert need(tmp_path / "bert-base", [("kd+pkd", 3, "sps")]) == (2, 4, 6, 8, 10)  # Pea-KD: 6 effective layers
    reproduce = [("ce", 3, "original"), ("kd", 3, "original"), ("kd+pkd", 3, "original"), ("kd+pkd", 3, "sps")]
    assert need(tmp_path / "bert-base", reproduce) == (2, 4, 6, 8, 10)  # 5 of 13 layers for the whole table
    assert need(tmp_path / "bert-base", [("kd", 3, "sps"), ("ce", 6, "original")]) == ()  # logits only


def test_a_half_precision_cache_is_recorded_kept_when_extended_and_read_in_float32(teacher_dir, tiny_env, tmp_path):
    checkpoint, _ = tiny_env
    full = torch.load(cache_teacher_outputs(teacher_dir, "mrpc", max_length=32), weights_only=True)
    path = cache_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[1], cls_dtype="float16")
    half = torch.load(path, weights_only=True)
    rows = half["splits"]["train"]
    assert half["cls_dtype"] == "float16" and rows["cls_hidden"].dtype == torch.float16
    assert rows["logits"].dtype == torch.float32 and torch.equal(rows["logits"], full["splits"]["train"]["logits"])
    assert torch.equal(rows["cls_hidden"][:, 0], full["splits"]["train"]["cls_hidden"][:, 1].half())
    grown = ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[1, 2])  # a run adds a layer
    assert grown["layers"] == [1, 2] and grown["cls_dtype"] == "float16"
    result = distill_module.distill_student("mrpc", out_dir=tmp_path / "s", teacher_dir=teacher_dir, num_layers=2,
                                            student_model=str(checkpoint), variant="sps", loss="kd+pkd",
                                            max_length=32, config=TrainConfig(**FAST))
    assert result.meta["identity"]["teacher_dtype"] == "float16" and result.final_step == 4
    exact = ensure_teacher_outputs(teacher_dir, "mrpc", max_length=32, layers=[1], cls_dtype="float32")
    assert exact["cls_dtype"] == "float32" and exact["layers"] == [1]  # asked for float32: recomputed
    with pytest.raises(ValueError, match="cls_dtype must be one of float32, float16, bfloat16, got 'int8'"):
        cache_teacher_outputs(teacher_dir, "mrpc", max_length=32, cls_dtype="int8")
