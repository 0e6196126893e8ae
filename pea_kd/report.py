"""Write a reproduction's results: results.json (everything), results.md (the table), results.png, curves.png.

The table separates the two ways of reading a dev score:
  final      the model at the end of training, no selection: the honest headline;
  best dev   the best evaluation seen during training, selected *and* scored on dev: optimistic (the authors' way).
Next to the teacher it shows the floor: the majority class, what a model that ignores its input scores on dev
(`majority_baseline`). Each method's row is a mean ± std over seeds (`summarize`); the seeds' own values are in
results.json (`summary[i]["per_seed"]`) and in a second table of results.md.

`with_provenance` prepares a finished results.json for notebooks/results/ (`python -m pea_kd publish-results`).
"""
from __future__ import annotations

import copy
import datetime
import json
import statistics
from pathlib import Path
from typing import Optional

import numpy as np

from .glue import get_task
from .metrics import compute_metrics
from .storage import write_atomic


DERIVED_METRICS = ("acc_and_f1", "corr")  # averages of the other columns: in results.json, not in the table


def majority_baseline(task, train_labels, dev_labels) -> dict:
    """The dev metrics of a model that ignores its input and always answers the same thing, from the *training* labels.

    classification: the most frequent training label (ties -> the lowest class id);  regression (STS-B): the mean
    training score. Scored with `pea_kd.metrics.compute_metrics`, so the numbers are those of the table's other rows.
    A constant has no correlation with the gold scores: pea_kd.metrics scores its Pearson and Spearman 0.
    Returns {"rule", "prediction" (class id or score), "label" (label string or None), "train_share" (fraction of
    train with that label, or None), "train_examples", "dev_examples", "metrics" ({metric: fraction})}.
    """
    spec = get_task(task)
    train, dev = np.asarray(train_labels), np.asarray(dev_labels)
    if train.ndim != 1 or len(train) == 0:
        raise ValueError(f"majority_baseline: {spec.name} needs a non-empty 1-D array of training labels, "
                         f"got shape {train.shape}")
    if spec.is_regression:
        prediction, label, share, rule = float(train.mean()), None, None, "mean training score"
    else:
        counts = np.bincount(train.astype(np.int64), minlength=spec.num_labels)
        prediction = int(np.argmax(counts))  # argmax: the first (lowest) class id among equally frequent ones
        label, share, rule = spec.labels[prediction], float(counts[prediction] / len(train)), "majority class of train"
    return {"rule": rule, "prediction": prediction, "label": label, "train_share": share,
            "train_examples": len(train), "dev_examples": len(dev),
            "metrics": compute_metrics(spec, np.full(len(dev), prediction), dev)}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict], metrics: tuple) -> list[dict]:
    """One row per method: mean ± std of every final and best-dev metric over seeds (and, under "per_seed", the
    values of each seed, in %), parameters, depth, time."""
    rows = []
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        row = {"method": name, "slug": mine[0]["slug"], "seeds": [r["seed"] for r in mine],
               "parameters": mine[0]["parameters"], "effective_layers": mine[0]["effective_layers"],
               "seconds": mean_std([r["seconds"] for r in mine])}
        per_seed = {kind: {m: [100 * r[kind][m] for r in mine] for m in metrics} for kind in ("final", "best_dev")}
        for kind, values in per_seed.items():
            row[kind] = {m: mean_std(v) for m, v in values.items()}
        row["per_seed"] = per_seed  # in %, in the order of row["seeds"]: what the mean ± std summarises
        rows.append(row)
    return rows


def _majority_name(majority: dict) -> str:
    if majority["label"] is None:
        return f"mean training score ({majority['prediction']:.2f})"
    return f'majority class ("{majority["label"]}")'


def _pm(mean_std, seeds: int) -> str:
    mean, std = mean_std
    return f"{mean:.1f} ± {std:.1f}" if seeds > 1 else f"{mean:.1f}"


def format_table(results: dict) -> str:
    """The markdown table: one row per method, teacher first; metric columns in percent, mean ± std over seeds."""
    metrics = [m for m in get_task(results["task"]).metrics if m not in DERIVED_METRICS]
    head = (["method", "seeds", "params", "eff. layers"] + [f"{m} (final)" for m in metrics]
            + [f"{m} (best dev)" for m in metrics] + ["time / seed (s)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t = results["teacher"]
    lines.append("| " + " | ".join(
        [f"teacher ({t['layers']}L)", "1", f"{t['parameters'] / 1e6:.1f}M", str(t["layers"])]
        + [f"{100 * t['final'][m]:.1f}" for m in metrics] + [f"{100 * t['best_dev'][m]:.1f}" for m in metrics]
        + [f"{t['seconds']:.0f}"]) + " |")
    majority = results.get("majority")  # absent from results.json files written before it existed
    if majority:  # no training and no selection: the same numbers under final and best dev
        scores = [f"{100 * majority['metrics'][m]:.1f}" for m in metrics]
        lines.append("| " + " | ".join([_majority_name(majority), "-", "-", "-"] + scores + scores + ["-"]) + " |")
    for row in results["summary"]:
        lines.append("| " + " | ".join(
            [row["method"], str(len(row["seeds"])), f"{row['parameters'] / 1e6:.1f}M", str(row["effective_layers"])]
            + [_pm(row["final"][m], len(row["seeds"])) for m in metrics]
            + [_pm(row["best_dev"][m], len(row["seeds"])) for m in metrics]
            + [f"{row['seconds'][0]:.0f}"]) + " |")
    return "\n".join(lines)


def format_seed_table(results: dict) -> str:
    """Markdown: one row per method, one column per seed, the final primary metric in %; "" if no method has two
    seeds."""
    rows = [r for r in results["summary"] if "per_seed" in r]
    if not any(len(r["seeds"]) > 1 for r in rows):
        return ""
    metric = get_task(results["task"]).primary_metric
    seeds = sorted({s for r in rows for s in r["seeds"]})
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|" + "---|" * (len(seeds) + 1)]
    for row in rows:
        value = dict(zip(row["seeds"], row["per_seed"]["final"][metric]))
        lines.append(f"| {row['method']} | " + " | ".join(f"{value[s]:.1f}" if s in value else "-" for s in seeds)
                     + " |")
    return "\n".join(lines)


def _majority_note(majority: Optional[dict]) -> list[str]:
    if not majority:
        return []
    if majority["label"] is None:
        return [f"- **{_majority_name(majority)}**: always answering {majority['prediction']:.2f}, the mean score of "
                f"the {majority['train_examples']:,} training examples, scored on dev. A constant has no correlation "
                "with the gold scores: pea_kd.metrics scores it 0, the floor every model must beat."]
    return [f"- **majority class**: always answering \"{majority['label']}\", the most frequent label of the training "
            f"set ({100 * majority['train_share']:.1f}% of {majority['train_examples']:,} examples), scored on dev "
            "with the same metrics: what a model that ignores its input gets."]


def _beyond_note(augment: Optional[dict]) -> list[str]:
    if not augment:
        return []
    return [f"- **†** not in the paper (ours): the final stage also trains on {augment['variants']} teacher-labelled "
            f"variants of each training example (each whole word replaced with probability {augment['rate']} by one "
            f"of its {augment['neighbours']} nearest words in the teacher's embedding table; no gold label on them), "
            f"{_epochs(augment['epochs'])}; the teacher labelled the {augment['examples']:,} variants once"
            f"{_seconds(augment['teacher_seconds'])}. **+ hidden**: every token's hidden state distilled too."]


def _seconds(seconds) -> str:
    return " (time not recorded)" if seconds is None else f" in {seconds:.0f} s"


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _precision(env: dict) -> str:
    """How the stages computed, in words (results.json written before precision was recorded: fp32 on CPU)."""
    precision = env.get("precision", "fp32")
    if precision == "fp32":
        return "fp32"
    return f"{precision} autocast (fp32 weights, optimiser and loss; teacher targets cached in fp32)"


def _unrecorded(runs: list) -> str:
    """The stages the peak memory cannot count: reused ones whose worker stored no record (an older version)."""
    missing = sum("process" not in r for r in runs)
    return f" (not counting {missing} reused stage(s) that recorded no memory: made by an older version)" \
        if missing else ""


def format_markdown(results: dict) -> str:
    """results.md: the setting in words, the table, and how to read it."""
    cfg, env = results["config"], results["environment"]
    seeds = ", ".join(str(s) for s in cfg["seeds"])
    smoke = " **SMOKE RUN: a few dozen examples, numbers are meaningless.**" if cfg["smoke"] else ""
    seed_table = format_seed_table(results)
    per_seed = ["", f"Final dev {get_task(results['task']).primary_metric} of each seed, in %:", "", seed_table] \
        if seed_table else []
    return "\n".join([
        f"# Pea-KD reproduction on {results['task']}{smoke}",
        "",
        f"Teacher `{cfg['teacher']}` fine-tuned {_epochs(cfg['teacher_epochs'])} at learning rate "
        f"{cfg.get('teacher_lr') or cfg['lr']}; {cfg['student_layers']}-layer students from the same pre-trained "
        f"checkpoint, {_epochs(cfg['student_epochs'])}; PTP {_epochs(cfg['ptp_epochs'])}; learning rate {cfg['lr']} "
        f"for students and PTP; batch {cfg['batch_size']}, max length {cfg['max_length']}; KD alpha {cfg['alpha']}, "
        f"T {cfg['temperature']}, PKD beta {cfg['beta']}. Seeds: {seeds}. Device: {env['device']}, "
        f"precision {_precision(env)}, "
        f"torch {env['torch']}, {env.get('jobs', 1)} training process(es) at a time with {env['torch_threads']} "
        f"thread(s) each.",
        "",
        format_table(results),
        *per_seed,
        "",
        "- **final**: the model at the end of training, no selection (the headline). Mean ± std over seeds, in %.",
        f"- **best dev**: the metrics of the dev evaluation with the best {get_task(results['task']).primary_metric} "
        "during training (one per epoch unless --eval-every), selected and scored on the same dev set (how the "
        "authors report; optimistic).",
        *_majority_note(results.get("majority")),
        *_beyond_note(results.get("augment")),
        "- **params**: parameters including the task head; SPS students have exactly the parameters of the "
        "original student and twice its effective layers.",
        "- **time / seed**: training + evaluation seconds of one seed, PTP stage included where used; the teacher's "
        f"outputs were cached once{_seconds(results['teacher']['cache_seconds'])}.",
        f"- Peak resident memory of the largest process: {env['peak_rss_mb']:.0f} MB{_unrecorded(results['runs'])}. "
        f"Wall time of this invocation (stages already finished are reused): "
        f"{results['wall_seconds_this_invocation']:.0f} s.",
        "",
    ])


def plot_results(results: dict, path: Path) -> None:
    """Bar chart of the final primary metric per method (mean ± std over seeds, each seed a dot), the teacher as a
    dashed line and the majority class as a dotted one."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = get_task(results["task"]).primary_metric
    rows = results["summary"]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    means = [r["final"][metric][0] for r in rows]
    stds = [r["final"][metric][1] for r in rows]
    ax.bar([r["method"] for r in rows], means, yerr=stds, capsize=4, color="#4C72B0")
    for i, row in enumerate(rows):  # each seed's value on its method's bar (older results.json files have none)
        seeds = row.get("per_seed", {}).get("final", {}).get(metric, [])
        ax.plot([i] * len(seeds), seeds, "k.", markersize=4, label="seeds" if i == 0 and seeds else None)
    ax.axhline(100 * results["teacher"]["final"][metric], color="k", linestyle="--", label="teacher")
    floor = [100 * results["majority"]["metrics"][metric]] if results.get("majority") else []
    if floor:
        ax.axhline(floor[0], color="0.5", linestyle=":", label=_majority_name(results["majority"]))
    low = min([m - s for m, s in zip(means, stds)] + floor)
    ax.set_ylim(max(0.0, low - 5), None)
    ax.set_ylabel(f"dev {metric} (final, %)")
    ax.set_title(f"{results['task']}: {len(results['config']['seeds'])} seed(s)")
    ax.legend(loc="lower right")
    fig.autofmt_xdate(rotation=20)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_curves(results: dict, path: Path) -> None:
    """Dev primary metric against epoch for every run (one colour per method, one line per seed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = get_task(results["task"]).primary_metric
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    colours = {}
    for run in results["runs"]:
        history = run["result"]["history"]
        colour = colours.setdefault(run["method"], f"C{len(colours)}")
        ax.plot([h["epoch"] for h in history], [100 * h["metrics"][metric] for h in history], color=colour,
                marker="o", markersize=3, label=run["method"] if run["seed"] == results["config"]["seeds"][0] else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"dev {metric} (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def with_provenance(results: dict, source: str, note: str = "", previous: Optional[dict] = None,
                    allow_incomplete: bool = False, allow_smoke: bool = False) -> dict:
    """A results.json made fit to commit (notebooks/results/): the same dict with a "provenance" entry first.

    Refused (ValueError, one line) unless the run is complete and not a smoke run (unless allowed), and unless the
    report has the majority-class row and the per-seed values (rerunning `reproduce` with the same settings reuses
    every finished stage and rewrites a report that has them). `previous`: the results file being replaced; its
    table becomes the first entry of "other_runs" (followed by its own other_runs), so a published history stays.
    """
    if not results.get("complete") and not allow_incomplete:
        raise ValueError(f"{source}: the reproduction is not complete (some method/seed stages have not run); "
                         "finish it, or allow an incomplete table explicitly")
    if results["config"].get("smoke") and not allow_smoke:
        raise ValueError(f"{source}: a smoke run (a few dozen examples): its numbers are meaningless")
    if "majority" not in results or any("per_seed" not in row for row in results["summary"]):
        raise ValueError(f"{source} was written before reports had a majority-class row and per-seed values: rerun "
                         "`python -m pea_kd reproduce` with the same settings (finished stages are reused)")
    env = results["environment"]
    provenance = {
        "source": f"`python -m pea_kd reproduce --task {results['task'].lower()}` (make reproduce): {source}",
        "code_commit": env.get("code_commit") or "not recorded",
        "environment": f"{env.get('device')}, precision {env.get('precision', 'fp32')}, {env.get('cpu_count')} CPU "
                       f"core(s), torch {env.get('torch')}, {env.get('jobs', 1)} training process(es) at a time",
        "contents": "summary: mean ± std over seeds and, under per_seed, each seed's value (in %); runs: one record "
                    "per method and seed with its training history; majority: the majority class of train on dev",
        "published": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if note:
        provenance["note"] = note
    published = {"provenance": provenance, **{k: copy.deepcopy(v) for k, v in results.items() if k != "provenance"}}
    if previous is not None:
        described = previous.get("provenance", {}).get("source", "the previously published results")
        published["other_runs"] = [{"description": f"previously published: {described}",
                                    "seeds": previous["config"]["seeds"],
                                    "summary": [{"method": r["method"], "final": r["final"]}
                                                for r in previous["summary"]]}] + previous.get("other_runs", [])
    return published


def write_report(results: dict, root: Path) -> None:
    """Write results.json, results.md, results.png and curves.png into `root`, each atomically."""
    root = Path(root)
    write_atomic(root / "results.json", json.dumps(results, indent=1, default=str) + "\n")
    write_atomic(root / "results.md", format_markdown(results))
    for name, plot in (("results.png", plot_results), ("curves.png", plot_curves)):
        write_atomic(root / name, lambda f: plot(results, f))
