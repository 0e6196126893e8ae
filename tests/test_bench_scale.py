"""`python -m pea_kd_bench.scale` at tiny sizes: what each line reports, its ratios, and that the
synthetic task never reaches the GLUE task table. Not timed: the speed targets belong to `make bench`."""
import json

import pytest

from pea_kd import glue
from pea_kd_bench import scale

KEYS = {"examples", "features_seconds", "teacher_cache_seconds", "teacher_cache_bytes", "trainer_build_seconds",
        "step_ms", "peak_rss_mb", "features_load_seconds", "teacher_cache_check_seconds", "epoch_batches_seconds"}


def test_bench_scale_prints_one_json_object_per_size_with_the_ratios_to_the_first(capsys, tmp_path):
    records = scale.main(["--examples", "40", "--examples", "90", "--steps", "3", "--rounds", "2", "--threads", "1",
                          "--work-dir", tmp_path])
    out = capsys.readouterr().out
    small, large = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["examples"] for r in records] == [40, 90]  # also returned, for a caller in Python
    for record, n in ((small, 40), (large, 90)):
        assert KEYS <= set(record) and record["examples"] == n and record["dev_examples"] == n
        assert record["teacher_cache_layers"] == [2, 4]  # pkd_layer_map(6, 3) = [(1, 2), (2, 4)]
        # logits (C = 3) and 2 of the 7 layers, float32, for train and dev: the file is those rows plus a little
        rows = 2 * n * (3 + 2 * scale.SHAPE["hidden_size"]) * 4
        assert rows < record["teacher_cache_bytes"] < rows + 40_000
        assert len(record["step_ms_rounds"]) == 2 and record["step_ms"] > 0 and record["peak_rss_mb"] > 100
        assert 8 * 12 <= record["step_positions"] <= 32 * 47  # B x T_max: 8 or 32 pairs of 12 to 47 tokens
        assert set(record["peak_rss_mb_after"]) == {"data", "features", "features_load", "teacher_cache",
                                                     "teacher_cache_check", "trainer_build"}
        assert record["peak_rss_mb"] >= max(record["peak_rss_mb_after"].values())
    assert large["vs_examples"] == 40 and "vs_examples" not in small and "step_ms_ratio" not in small
    for key in ("trainer_build_ratio", "step_ms_ratio", "step_cost_ratio"):  # medians of per-round ratios
        low, high = large[f"{key}_range"]
        assert 0 < low <= large[key] <= high
    low, high = large["trainer_build_seconds_range"]
    assert 0 < low <= large["trainer_build_seconds"] <= high
    assert list(tmp_path.iterdir()) == []  # the temporary GLUE directory and caches are gone
    assert "SYNTH-NLI" not in glue.TASKS
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue.get_task("synth-nli")


def test_the_synthetic_task_reads_like_a_glue_pair_task(tmp_path):
    scale.write_task(tmp_path, 30, scale.pseudo_words(50))
    train = glue.load_examples(scale.TASK, "train", tmp_path)
    assert len(train) == 30 and len(glue.load_examples(scale.TASK, "dev", tmp_path)) == 30
    assert all(e.text_b and 6 <= len(e.text_a.split()) <= 30 and 3 <= len(e.text_b.split()) <= 14 for e in train)
    assert {e.label for e in train} <= {0, 1, 2}
