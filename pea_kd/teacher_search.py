"""Choose the teacher's recipe without looking at dev: a small grid scored on a held-out part of train.

A student can only be as good as what it distils, and a plain recipe (lr 5e-5, 3 epochs) leaves some teachers near
chance (MiniLM on RTE). Tuning that recipe on the dev set would leak dev into every row of the results table, so
the recipe is chosen the way a held-out experiment does it:

    fit, held = split_holdout(train, fraction, seed)             # dev is never read
    for lr in lrs, E in epochs, seed in seeds:
        teacher = finetune(pre-trained, fit, lr, E, seed)          # linear warm-up, then decay to 0 over E epochs
        score(lr, E) += primary metric of the *final* teacher on held / len(seeds)
    recipe = argmax score        ties -> fewer epochs, then the smaller lr (the cheaper, gentler recipe)

The pipeline then fine-tunes one teacher on all of train with that recipe (`reproduce.TEACHER_RECIPES`) and only
that teacher is scored on dev. A held-out set of a few hundred examples is small: one accuracy point is a handful
of examples, so the table prints the binomial standard error sqrt(p (1 - p) / n) next to each score.

    search_teacher_recipe("rte", out_dir="runs/rte/teacher-search")  -> search.md, search.json; one run dir a config
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Optional

from . import distributed
from .glue import get_task
from .teacher import finetune_teacher
from .storage import write_atomic
from .trainer import TrainConfig

SEARCH_JSON, SEARCH_MD = "search.json", "search.md"


def search_teacher_recipe(task, *, out_dir, model_name: str = "minilm-l6", lrs=(5e-5, 1e-4), epochs=(3, 6),
                          seeds=(0,), holdout: float = 0.2, config: Optional[TrainConfig] = None,
                          max_length: int = 128, data_dir=None, keep_models: bool = False) -> dict:
    """Fine-tune one teacher per (lr, epochs, seed) on train minus a held-out part; pick the best mean held-out score.

    config: the other settings (batch size, warm-up, ...); its lr, epochs and seed are replaced by the grid's.
    Finished runs are reused (an interrupted search resumes). keep_models=False removes each run's final/ model
    once it is scored (only the numbers are needed). Writes out_dir/search.json and search.md after every run and
    returns the search.json dict; its "best" entry holds the chosen {"lr", "epochs"}.
    """
    spec = get_task(task)
    if not (lrs and epochs and seeds):
        raise ValueError("search_teacher_recipe: lrs, epochs and seeds must each hold at least one value")
    base = dataclasses.replace(config or TrainConfig(), keep_best=False)
    out_dir = Path(out_dir)
    runs = []
    for n_epochs, lr, seed in itertools.product(sorted(epochs), sorted(lrs), seeds):  # cheap recipes first
        run_dir = out_dir / f"lr{lr:g}-ep{n_epochs}-seed{seed}"
        result = finetune_teacher(spec, out_dir=run_dir, model_name=model_name, max_length=max_length,
                                  data_dir=data_dir, holdout=holdout, resume=True,
                                  config=dataclasses.replace(base, lr=lr, epochs=n_epochs, seed=seed))
        if not keep_models and distributed.is_main():  # under torchrun, rank 0 alone writes and removes files
            shutil.rmtree(run_dir / "final", ignore_errors=True)
        runs.append({"lr": lr, "epochs": n_epochs, "seed": seed, "heldout": result.final_metrics,
                     "heldout_loss": result.final_dev_loss, "heldout_examples": result.meta["dev_examples"],
                     "curve": [h["metrics"][spec.primary_metric] for h in result.history],  # each evaluation
                     "seconds": result.seconds})
        summary = summarize_search(runs, spec.primary_metric)
        report = {"task": spec.name, "model": str(model_name), "holdout": holdout, "primary": spec.primary_metric,
                  "grid": {"lrs": list(lrs), "epochs": list(epochs), "seeds": list(seeds)},
                  "config": dataclasses.asdict(base), "runs": runs, "summary": summary,
                  "complete": len(runs) == len(lrs) * len(epochs) * len(seeds),
                  "best": {"lr": summary[0]["lr"], "epochs": summary[0]["epochs"]}}
        if distributed.is_main():
            write_atomic(out_dir / SEARCH_JSON, json.dumps(report, indent=2) + "\n")
            write_atomic(out_dir / SEARCH_MD, format_search(report))
    return report


def summarize_search(runs: list[dict], primary: str) -> list[dict]:
    """One row per (lr, epochs): mean held-out primary metric over seeds, best first (ties: fewer epochs, lower lr)."""
    rows = []
    for (lr, n_epochs), group in itertools.groupby(sorted(runs, key=lambda r: (r["lr"], r["epochs"])),
                                                   key=lambda r: (r["lr"], r["epochs"])):
        group = list(group)
        rows.append({"lr": lr, "epochs": n_epochs, "seeds": [r["seed"] for r in group],
                     "score": sum(r["heldout"][primary] for r in group) / len(group),
                     "loss": sum(r["heldout_loss"] for r in group) / len(group),
                     "heldout_examples": group[0]["heldout_examples"],
                     "seconds": sum(r["seconds"] for r in group)})
    return sorted(rows, key=lambda r: (-round(r["score"], 9), r["epochs"], r["lr"]))  # round: float-sum ties


def format_search(report: dict) -> str:
    """search.md: the grid as a table, best first, with the binomial standard error of each held-out score."""
    primary = report["primary"]
    lines = [f"# Teacher recipe search: {report['task']}, {report['model']}",
             "",
             f"Scored on a held-out {report['holdout']:.0%} of train (dev never read); final model of each run; "
             f"{primary} x 100, mean over seeds. Chosen: lr {report['best']['lr']:g}, "
             f"{report['best']['epochs']} epochs." + ("" if report["complete"] else " (search not finished)"),
             "",
             f"| lr | epochs | seeds | held-out {primary} | ± s.e. | held-out loss | n | time (s) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for row in report["summary"]:
        p, n = row["score"], row["heldout_examples"] * len(row["seeds"])
        se = math.sqrt(max(p * (1 - p), 0.0) / n) if primary == "acc" else float("nan")  # binomial, accuracy only
        lines.append(f"| {row['lr']:g} | {row['epochs']} | {','.join(map(str, row['seeds']))} | {100 * p:.1f} | "
                     f"{'-' if math.isnan(se) else f'{100 * se:.1f}'} | {row['loss']:.4f} | {n} | "
                     f"{row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


__all__ = ["search_teacher_recipe", "summarize_search", "format_search"]
