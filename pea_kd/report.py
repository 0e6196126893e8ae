"""Write a reproduction's results: results.json (everything), results.md (the table), results.png, curves.png.

The table separates the two ways of reading a dev score:
  final      the model at the end of training, no selection: the honest headline;
  best dev   the best evaluation seen during training, selected *and* scored on dev: optimistic (the authors' way).
"""
from __future__ import annotations

import json
from pathlib import Path

from .glue import get_task
from .storage import write_atomic


DERIVED_METRICS = ("acc_and_f1", "corr")  # averages of the other columns: in results.json, not in the table


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
    for row in results["summary"]:
        lines.append("| " + " | ".join(
            [row["method"], str(len(row["seeds"])), f"{row['parameters'] / 1e6:.1f}M", str(row["effective_layers"])]
            + [_pm(row["final"][m], len(row["seeds"])) for m in metrics]
            + [_pm(row["best_dev"][m], len(row["seeds"])) for m in metrics]
            + [f"{row['seconds'][0]:.0f}"]) + " |")
    return "\n".join(lines)


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


def format_markdown(results: dict) -> str:
    """results.md: the setting in words, the table, and how to read it."""
    cfg, env = results["config"], results["environment"]
    seeds = ", ".join(str(s) for s in cfg["seeds"])
    smoke = " **SMOKE RUN: a few dozen examples, numbers are meaningless.**" if cfg["smoke"] else ""
    return "\n".join([
        f"# Pea-KD reproduction on {results['task']}{smoke}",
        "",
        f"Teacher `{cfg['teacher']}` fine-tuned {_epochs(cfg['teacher_epochs'])} at learning rate "
        f"{cfg.get('teacher_lr') or cfg['lr']}; {cfg['student_layers']}-layer students from the same pre-trained "
        f"checkpoint, {_epochs(cfg['student_epochs'])}; PTP {_epochs(cfg['ptp_epochs'])}; learning rate {cfg['lr']} "
        f"for students and PTP; batch {cfg['batch_size']}, max length {cfg['max_length']}; KD alpha {cfg['alpha']}, "
        f"T {cfg['temperature']}, PKD beta {cfg['beta']}. Seeds: {seeds}. Device: {env['device']}, "
        f"precision {_precision(env)}, "
        f"torch {env['torch']}, {env.get('jobs', 1)} training process(es) at a time with {env['torch_threads']} thread(s) each.",
        "",
        format_table(results),
        "",
        "- **final**: the model at the end of training, no selection (the headline). Mean ± std over seeds, in %.",
        f"- **best dev**: the metrics of the dev evaluation with the best {get_task(results['task']).primary_metric} "
        "during training (one per epoch unless --eval-every), selected and scored on the same dev set (how the "
        "authors report; optimistic).",
        "- **params**: parameters including the task head; SPS students have exactly the parameters of the "
        "original student and twice its effective layers.",
        "- **time / seed**: training + evaluation seconds of one seed, PTP stage included where used; the teacher's "
        f"outputs were cached once{_seconds(results['teacher']['cache_seconds'])}.",
        f"- Peak resident memory of the largest process: {env['peak_rss_mb']:.0f} MB. Wall time of this invocation "
        f"(stages already finished are reused): {results['wall_seconds_this_invocation']:.0f} s.",
        "",
    ])


def plot_results(results: dict, path: Path) -> None:
    """Bar chart of the final primary metric per method (mean ± std over seeds), teacher as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = get_task(results["task"]).primary_metric
    rows = results["summary"]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    means = [r["final"][metric][0] for r in rows]
    stds = [r["final"][metric][1] for r in rows]
    ax.bar([r["method"] for r in rows], means, yerr=stds, capsize=4, color="#4C72B0")
    ax.axhline(100 * results["teacher"]["final"][metric], color="k", linestyle="--", label="teacher")
    low = min(m - s for m, s in zip(means, stds))
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


def write_report(results: dict, root: Path) -> None:
    """Write results.json, results.md, results.png and curves.png into `root`, each atomically."""
    root = Path(root)
    write_atomic(root / "results.json", json.dumps(results, indent=1, default=str) + "\n")
    write_atomic(root / "results.md", format_markdown(results))
    for name, plot in (("results.png", plot_results), ("curves.png", plot_curves)):
        write_atomic(root / name, lambda f: plot(results, f))
