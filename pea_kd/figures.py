"""The notebooks' figures, so that a notebook cell shows an idea in a line or two instead of fifty lines of matplotlib.

Every function draws one picture from numbers the notebook has already computed with the project's own code (nothing
here trains or evaluates), returns its matplotlib Figure or what it drew where a notebook checks the picture against
the library, and leaves `plt.show()` to the cell. Symbols as in docs/method.md#notation: B batch size, n sequence
length, H hidden size, h heads, d = H / h, L layers; c the teacher's confidence, t1/t2 the PTP thresholds,
h^S_i / h^T_j the student's and the teacher's [CLS] states, a layer map a list of pairs (i, j).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch, Rectangle

# ------------------------------ notebooks 01, 02, 04 and the assignments

PIPELINE = [  # (title, what the stage does), left to right: Pea-KD's stages
    ("teacher", "BERT fine-tuned\non the task (CE)"),
    ("teacher cache", "its logits $z_t$ and\n[CLS] states $h^T_j$,\nevery train example"),
    ("PTP", "an SPS student\ntrained on 4 labels:\nteacher right? sure?"),
    ("SPS student", "3 layers run twice\n(6 effective), Q/K\nswapped in pass 2"),
    ("KD + PKD", "soft targets at $T$\n+ matched [CLS]\nstates (weight $\\beta$)"),
]


def _box(ax, x, y, width, height, text, colour, fontsize=8.0, **text_kw):
    """A rounded box with centred text; (x, y) is its lower-left corner."""
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.03", facecolor=colour, alpha=0.45,
                                edgecolor="k"))
    ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=fontsize, **text_kw)


def _arrow(ax, start, end, colour="k", **kw):
    """An arrow from `start` to `end` (data coordinates); `kw` goes to the arrow's properties (connectionstyle)."""
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=colour, **kw))


def pipeline(save_to: str | Path | None = None):
    """Pea-KD in one picture: teacher -> teacher cache -> PTP -> SPS student -> KD + PKD, the cache feeding PTP's
    labels and the final stage's targets. save_to: also write it as a PNG (docs/pipeline.png)."""
    fig, ax = plt.subplots(figsize=(10.5, 2.4))
    colours = ["0.8", "C2", "C1", "C0", "C3"]
    for k, ((title, what), colour) in enumerate(zip(PIPELINE, colours)):
        _box(ax, 2.2 * k, 0.0, 1.8, 1.3, f"{title}\n\n{what}", colour, fontsize=7.5)
        if k:
            _arrow(ax, (2.2 * k - 0.4, 0.65), (2.2 * k - 0.02, 0.65))
    _arrow(ax, (2.2 * 1 + 0.9, 1.36), (2.2 * 4 + 0.9, 1.36), colour="C2", connectionstyle="arc3,rad=-0.12")
    ax.text(2.2 * 2.5 + 0.9, 2.0, "the same cache: targets of KD and PKD (no teacher forward pass while training)",
            ha="center", fontsize=7.5, color="C2")
    for k, label in [(1, "read once"), (2, "PTP encoder\ninitialises"), (3, "trained with")]:
        ax.text(2.2 * k + 2.0, -0.25, label, ha="center", va="top", fontsize=7, color="0.3")
    ax.text(2.2 * 4 + 1.9, 0.65, "→ student", va="center", fontsize=8)
    ax.set_xlim(-0.1, 10.9); ax.set_ylim(-0.7, 2.2); ax.axis("off")
    fig.tight_layout()
    if save_to is not None:
        fig.savefig(save_to, dpi=80)
    return fig


def bert_layer(steps, mask_shape, title: str):
    """One post-LN BERT layer as a column of boxes. steps: (what the box computes, shape in symbols, shape in numbers)
    from the layer's input to its output; the attention boxes are steps 1-5, the feed-forward box step 6."""
    fig, ax = plt.subplots(figsize=(10.5, 6.3))
    top = len(steps) - 1
    colour = ["0.85"] + ["C0"] * 5 + ["C1"] * (len(steps) - 7) + ["0.85"]
    for i, (what, symbols, shape) in enumerate(steps):
        y = top - i
        _box(ax, 0, y + 0.12, 5.0, 0.62, "", colour[i])
        ax.text(0.15, y + 0.43, what, va="center", fontsize=8.5)
        ax.text(5.3, y + 0.43, f"{symbols} = {shape}", va="center", fontsize=8.5, family="monospace")
        if i:
            _arrow(ax, (2.5, y + 1.09), (2.5, y + 0.79))
    for src, dst in ((0, 5), (5, 7)):  # x -> a and a -> x': the residual connections
        _arrow(ax, (0, top - src + 0.43), (0, top - dst + 0.43), colour="C3", connectionstyle="arc3,rad=0.35")
        ax.text(-0.75, top - (src + dst) / 2 + 0.43, "residual", color="C3", fontsize=8, rotation=90, va="center")
    _box(ax, 9.0, top - 2 + 0.02, 2.5, 0.82, f"padding mask m\n(B, 1, 1, n) = {mask_shape}\n0: real key, most "
         "negative\nfloat: padded key", "C2", fontsize=7.5)
    _arrow(ax, (8.95, top - 2 + 0.43), (7.9, top - 2 + 0.43), colour="C2")
    ax.text(9.0, top - 4 + 0.43, "attention\nsub-layer", color="C0", fontsize=8.5, va="center")
    ax.text(9.0, top - 6 + 0.43, "feed-forward\nsub-layer", color="C1", fontsize=8.5, va="center")
    ax.set_xlim(-1.0, 11.7); ax.set_ylim(-0.2, len(steps)); ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def padding(lengths, schemes: dict, fixed: int):
    """Each example of `lengths` as a bar (its real tokens dark, its padding light), grouped into the batches of each
    scheme: {name: list of index arrays}, plus one panel padded to `fixed`. Titles give the positions computed."""
    lengths = np.asarray(lengths)
    panels = {f"fixed: every batch padded to {fixed}": [np.arange(len(lengths))], **schemes}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), sharey=True)
    for ax, (name, batches) in zip(axes, panels.items()):
        row, computed = 0, 0
        for batch in batches:
            width = fixed if name.startswith("fixed") else lengths[batch].max()
            for i in batch:
                ax.barh(row, width, color="0.85", height=0.9)
                ax.barh(row, lengths[i], color="C0", height=0.9)
                row += 1
            computed += width * len(batch)
            ax.axhline(row - 0.5, color="k", lw=0.6)
        ax.set_title(f"{name}\n{computed:,} positions for {lengths.sum():,} real tokens", fontsize=8)
        ax.set_xlabel("tokens"); ax.invert_yaxis()
    axes[0].set_ylabel("examples (lines separate batches)")
    fig.tight_layout()
    return fig


def length_histograms(lengths: dict, limit: int):
    """One histogram of token counts per task, {name: lengths}, with a dashed line at the truncation length."""
    fig, axes = plt.subplots(1, len(lengths), figsize=(2.4 * len(lengths), 2.3))
    for ax, (name, values) in zip(axes, lengths.items()):
        ax.hist(values, bins=30, color="C0")
        ax.axvline(limit, color="C3", ls="--", lw=1)
        ax.set_title(name); ax.set_xlabel("tokens")
    fig.tight_layout()
    return fig


def positions_per_token(stats: dict, title: str):
    """Token positions one epoch computes per real token under fixed, random and bucketed padding,
    {task name: pea_kd.padding_report.padding_stats(...)}; 1 means no padding at all."""
    x = np.arange(len(stats))
    fig, ax = plt.subplots(figsize=(7, 2.8))
    for k, (scheme, colour) in enumerate([("fixed", "C7"), ("random", "C1"), ("bucketed", "C0")]):
        ax.bar(x + (k - 1) * 0.27, [s[f"{scheme}_positions"] / s["real_tokens"] for s in stats.values()], 0.27,
               label=scheme, color=colour)
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xticks(x, list(stats)); ax.set_ylabel("positions / real tokens"); ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def attention_map(probs, tokens, title: str):
    """One head's attention probabilities A[i, j] (query i, key j) as a heatmap with the tokens on both axes."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    ax.imshow(np.asarray(probs), cmap="Blues", vmin=0)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90); ax.set_yticks(range(len(tokens)), tokens)
    ax.set_xlabel("key j (attended to)"); ax.set_ylabel("query i"); ax.set_title(title)
    fig.tight_layout()
    return fig


def tempered_softmax(logits, probs: dict, entropy: dict):
    """softmax(z / T) of one example's logits for each temperature, {T: probabilities}, side by side per class."""
    fig, ax = plt.subplots(figsize=(6, 2.6))
    for k, (T, p) in enumerate(probs.items()):
        ax.bar(np.arange(len(p)) + (k - (len(probs) - 1) / 2) * 0.2, np.asarray(p), 0.2,
               label=f"T = {T} (entropy {entropy[T]:.2f})")
    ax.set_xticks(range(len(logits)), [f"class {i}\nz = {v:g}" for i, v in enumerate(logits)])
    ax.set_ylabel("softmax(z / T)"); ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def gradient_vs_temperature(temps, bare, scaled, ce: float):
    """log-log: the gradient norm of the bare KL and of T^2 KL against T, a 1/T^2 guide and the CE gradient's norm."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.loglog(temps, bare, "o-", label="KL alone")
    ax.loglog(temps, scaled, "s-", label="T² · KL (the kd loss, α = 1)")
    ax.loglog(temps, bare[0] * temps ** -2.0, "k:", lw=1, label="∝ 1/T²")
    ax.axhline(ce, color="C3", ls="--", lw=1, label="CE on gold labels")
    ax.set_xlabel("temperature T"); ax.set_ylabel("‖∂L/∂z_s‖"); ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def annealing_schedule(steps, temps):
    """An annealed temperature T_k against the optimiser step k, next to the soft term's weight T_k^2 (log scale)."""
    fig, ax = plt.subplots(1, 2, figsize=(8, 2.5))
    ax[0].plot(steps, temps)
    ax[0].set(xlabel="optimiser step k", ylabel="$T_k$", title="temperature")
    ax[1].plot(steps, [t ** 2 for t in temps])
    ax[1].set(xlabel="optimiser step k", ylabel="$T_k^2$", title="weight of the soft term", yscale="log")
    fig.tight_layout()
    return fig


def layer_maps(maps: dict):
    """PKD's layer maps, {name: (L_t, L_s, [(i, j), ...])}: teacher and student layers at their relative depths
    l / L, a line for each matched pair (student layer i, teacher layer j)."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3 * len(maps), 3.2))
    for ax, (name, (L_t, L_s, pairs)) in zip(axes, maps.items()):
        ax.scatter(np.zeros(L_t + 1), np.arange(L_t + 1) / L_t, c="C0", s=18)
        ax.scatter(np.ones(L_s + 1), np.arange(L_s + 1) / L_s, c="C1", s=18)
        for i, j in pairs:
            ax.plot([0, 1], [j / L_t, i / L_s], "k-", lw=1)
            ax.text(-0.12, j / L_t, str(j), ha="right", va="center", fontsize=7)
            ax.text(1.12, i / L_s, str(i), ha="left", va="center", fontsize=7)
        ax.set_xlim(-0.5, 1.5); ax.set_xticks([0, 1], [f"teacher ({L_t})", "student"]); ax.set_yticks([])
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel("relative depth")
    fig.tight_layout()
    return fig


def similarity_matrix(h_s, h_t, tau: float):
    """InfoNCE's B x B matrix S[b, b'] = cos(h_s[b], h_t[b']) / tau (student anchors as rows, teacher candidates as
    columns, positives on the diagonal) next to its row-wise softmax, whose diagonal the loss pushes towards 1."""
    u = h_s / h_s.norm(dim=-1, keepdim=True)
    v = h_t / h_t.norm(dim=-1, keepdim=True)
    S = (u @ v.T / tau).detach().numpy()
    P = np.exp(S - S.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, values, title, cmap in ((axes[0], S, f"S = cos(h_s[b], h_t[b']) / τ, τ = {tau}", "RdBu_r"),
                                    (axes[1], P, "softmax over each row (b' = candidates)", "Blues")):
        limit = np.abs(values).max()
        image = ax.imshow(values, cmap=cmap, vmin=-limit if cmap == "RdBu_r" else 0, vmax=limit)
        for b in range(len(values)):  # the positives
            ax.add_patch(plt.Rectangle((b - 0.5, b - 0.5), 1, 1, fill=False, edgecolor="k", lw=1.2))
        ax.set_xlabel("teacher candidate b'"); ax.set_ylabel("student anchor b"); ax.set_title(title, fontsize=8.5)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


# ------------------------------ notebooks 03 and 05-08

PTP_COLOURS = ["C2", "C8", "C3", "C1"]  # PTP labels 0-3, the same colour in every figure


def learning_curves(records: list, dev_loss_before: float, majority_acc: float, best_step: int, schedule: list,
                    epoch_steps: int, epochs: int, metric: str = "acc"):
    """Notebook 03: training and dev loss, dev metric and learning rate against the optimiser step.

    records: the run's log.jsonl lines (dicts with step, train_loss, dev_loss, metrics, lr); dev_loss_before: the dev
    loss before training (drawn at step 0); majority_acc: always answering the majority class (a fraction);
    schedule: lr * f(k) for k = 0 .. N_steps; epoch_steps: optimiser steps per epoch (a thin line at each epoch end).
    """
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    axes[0].plot(steps, [r["train_loss"] for r in records], "o-", label="train (mean since last eval)")
    axes[0].plot([0, *steps], [dev_loss_before, *[r["dev_loss"] for r in records]], "s-", label="dev")
    axes[0].axhline(np.log(2), color="gray", ls=":", lw=1, label="ln 2")
    axes[0].set_xlabel("step"); axes[0].set_ylabel("cross-entropy"); axes[0].legend(fontsize=8)
    axes[1].plot(steps, [100 * r["metrics"][metric] for r in records], "s-", color="C1")
    axes[1].axhline(100 * majority_acc, color="gray", ls=":", lw=1, label="majority class")
    axes[1].axvline(best_step, color="C2", ls="--", lw=1, label="best dev")
    axes[1].set_xlabel("step"); axes[1].set_ylabel(f"dev {metric} (%)"); axes[1].legend(fontsize=8)
    axes[2].plot(range(len(schedule)), schedule, lw=1, label="lr * f(k)")
    axes[2].plot(steps, [r["lr"] for r in records], "o", label="logged (rate of the next update)")
    axes[2].set_xlabel("step k"); axes[2].set_ylabel("learning rate"); axes[2].legend(fontsize=8)
    for ax in axes[:2]:
        for e in range(1, epochs):
            ax.axvline(e * epoch_steps, color="k", lw=0.5, alpha=0.3)
    plt.tight_layout()
    return fig


def confidence_histogram(conf: np.ndarray, correct: np.ndarray):
    """Notebook 03: the teacher's confidence c = max_j p_t(j) on each dev example, right answers stacked on wrong
    ones (binary task: c in [1/2, 1])."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.hist([conf[correct], conf[~correct]], bins=np.linspace(0.5, 1.0, 21), stacked=True, color=["C2", "C3"],
            label=[f"correct ({correct.sum()})", f"wrong ({(~correct).sum()})"])
    ax.set_xlabel("confidence c = max softmax(z_t)"); ax.set_ylabel("dev examples"); ax.legend(fontsize=8)
    plt.tight_layout()
    return fig


def ptp_pipeline(class_names: list):
    """Notebook 06: teacher -> cached logits -> the four PTP labels -> PTP student -> new head -> KD + PKD."""
    fig, ax = plt.subplots(figsize=(9.5, 3.4))
    boxes = {  # name: (x, y, text, colour)
        "teacher": (0.0, 1.6, "fine-tuned teacher\n(notebook 03)", "C0"),
        "logits": (2.35, 1.6, "logits $z_t$ on the\ntraining set (cache)", "0.75"),
        "labels": (4.7, 1.6, "4 PTP labels\n$c$ vs $t_1$, $t_2$; $\\hat y$ vs $y$", "C2"),
        "ptp": (7.05, 1.6, "PTP student (SPS, 4-way head)\nCE on the PTP labels", "C1"),
        "handoff": (7.05, 0.0, "same encoder,\nnew C-way task head", "C1"),
        "kd": (4.7, 0.0, "KD + PKD from the teacher\n(notebook 04) = Pea-KD", "C3"),
    }
    for x, y, text, colour in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), 2.0, 0.95, boxstyle="round,pad=0.05", facecolor=colour, alpha=0.8))
        ax.text(x + 1.0, y + 0.47, text, ha="center", va="center", fontsize=8)
    for a, b in (("teacher", "logits"), ("logits", "labels"), ("labels", "ptp"), ("ptp", "handoff"),
                 ("handoff", "kd")):
        (xa, ya, *_), (xb, yb, *_) = boxes[a], boxes[b]
        if ya == yb and xb > xa:  # left to right
            start, end = (xa + 2.05, ya + 0.47), (xb - 0.05, yb + 0.47)
        elif yb < ya:  # down
            start, end = (xa + 1.0, ya - 0.05), (xb + 1.0, yb + 1.0)
        else:  # right to left
            start, end = (xa - 0.05, ya + 0.47), (xb + 2.05, yb + 0.47)
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color="k"))
    ax.annotate("", xy=(4.65, 0.45), xytext=(1.0, 1.55),
                arrowprops=dict(arrowstyle="-|>", color="C0", linestyle="--", connectionstyle="arc3,rad=0.25"))
    ax.text(1.2, 0.35, "the teacher's soft targets and [CLS] states", color="C0", fontsize=8)
    for i, name in enumerate(class_names):
        ax.text(3.9 + 2.3 * (i % 2), 3.05 - 0.3 * (i // 2), f"{i}: {name}", fontsize=8, color="C2")
    ax.set_xlim(-0.2, 9.3); ax.set_ylim(-0.2, 3.3); ax.axis("off")
    plt.tight_layout()
    return fig


def ptp_regions(conf: np.ndarray, right: np.ndarray, t1: float, t2: float, class_names: list, title: str) -> list:
    """Notebook 06: every training example at its confidence c (logit axis) in the band of the teacher's correct or
    wrong answers, t1 splitting the one and t2 the other: the four PTP labels as four regions.

    Returns the number of points drawn in each region, in label order 0-3 (the notebook checks them against
    build_ptp_labels). The rule is the labels' (c > t: confident, c <= t: unconfident).
    """
    c_plot = np.clip(conf, 0.5, 1 - 1e-9)
    x_max = 1 - (1 - c_plot.max()) / 3  # a little room right of the most confident example
    bands = {True: (1.0, ((t1, x_max, 0), (0.5, t1, 1))), False: (0.0, ((t2, x_max, 2), (0.5, t2, 3)))}
    jitter = np.random.default_rng(0).uniform(-0.36, 0.12, size=len(c_plot))  # the text goes above the points
    drawn = [0, 0, 0, 0]
    fig, ax = plt.subplots(figsize=(8.5, 3.3))
    for is_right, (y0, regions) in bands.items():
        for left, right_edge, k in regions:
            inside = (right == is_right) & (c_plot > left if k in (0, 2) else c_plot <= right_edge)
            drawn[k] = int(inside.sum())
            ax.fill_between([left, right_edge], y0 - 0.43, y0 + 0.43, color=PTP_COLOURS[k], alpha=0.18, lw=0)
            ax.scatter(c_plot[inside], y0 + jitter[inside], s=9, color=PTP_COLOURS[k], zorder=3)
            middle = 1 / (1 + np.sqrt((1 - left) / left * (1 - right_edge) / right_edge))  # middle on the logit axis
            ax.text(middle, y0 + 0.29, f"{k}: {class_names[k]} ({drawn[k]})", ha="center", va="center", fontsize=8)
        threshold, name = (t1, "t1") if is_right else (t2, "t2")
        ax.plot([threshold, threshold], [y0 - 0.45, y0 + 0.45], "k--", lw=1.2)
        ax.text(threshold, y0 - 0.47, f"{name} = {threshold:.3f}", ha="center", va="top", fontsize=8)
    ax.set_xscale("logit")
    ticks = [t for t in (0.5, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999, 0.9999) if t < x_max]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks]); ax.minorticks_off()
    ax.set_xlim(0.5, x_max); ax.set_ylim(-0.65, 1.5)
    ax.set_yticks([0, 1], [f"teacher wrong\n({(~right).sum()})", f"teacher correct\n({right.sum()})"])
    ax.set_xlabel("teacher's confidence c = max softmax(z_t) on its training example (logit axis)")
    ax.set_title(title, fontsize=9)
    plt.tight_layout()
    return drawn


def threshold_sweep(sweep: np.ndarray, shares: np.ndarray, zoom: np.ndarray, zoom_shares: np.ndarray,
                    median_t1: float, authors_t1: float, class_names: list):
    """Notebook 06: the share of each PTP label as t1 moves (t2 fixed), and a zoom on the median and the authors' t1.

    shares, zoom_shares: (len(thresholds), 4) fractions per label for the thresholds in sweep and zoom.
    """
    lo, hi = zoom[0], zoom[-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    for ax, ts, sh in ((axes[0], sweep, shares), (axes[1], zoom, zoom_shares)):
        for k, name in enumerate(class_names):
            ax.plot(ts, 100 * sh[:, k], color=PTP_COLOURS[k], label=f"{k}: {name}")
        ax.axvline(median_t1, color="k", ls="--", lw=1)
        ax.axvline(authors_t1, color="C4", ls=":", lw=1.5)
        ax.set_xlabel("t1"); ax.set_ylabel("share of train (%)")
    axes[0].axvspan(lo, hi, color="0.9", zorder=0)
    axes[0].legend(fontsize=7, loc="center left")
    for t, text, colour in ((median_t1, f"median t1\n= {median_t1:.3f}", "k"),
                            (authors_t1, f"authors' t1\n= {authors_t1}", "C4")):
        axes[1].text(t, 0.88, text, color=colour, fontsize=8, ha="right" if t == min(median_t1, authors_t1) else "left",
                     va="center", transform=axes[1].get_xaxis_transform(),
                     bbox=dict(facecolor="white", edgecolor="none", pad=1))
    axes[1].set_xlim(lo, hi); axes[1].set_title("zoom on the grey band", fontsize=9)
    plt.tight_layout()
    return fig


def hidden_state_stacks(student_shapes: list, plan: list, teacher_shape: tuple, cached: list, layer_map: list,
                        cos: np.ndarray) -> list:
    """Notebook 08: the SPS student's hidden states next to the teacher's cached [CLS] rows, with the layer map.

    student_shapes: the shape of each student state (embeddings first); plan: the encoder's (module, swap_qk) steps;
    teacher_shape: (B, L_t + 1, H) of the teacher rows; cached: the teacher layers the cache holds; layer_map: the
    PKD pairs (i, j); cos: (len(student_shapes), len(cached)) mean cosine of h^S_i and h^T_j over the batch.
    Left: the two stacks and an arrow per pair; right: the cosines, the mapped pairs framed. Returns the pairs drawn.
    """
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.35, 1]})
    for e, shape in enumerate(student_shapes):  # student stack, bottom to top
        swapped = e > 0 and plan[e - 1][1]
        name = "embeddings" if e == 0 else f"e{e}: layer {plan[e - 1][0]}" + ("′ (Q↔K)" if swapped else "")
        colour = "0.85" if e == 0 else f"C{plan[e - 1][0]}"
        ax.add_patch(FancyBboxPatch((0, e), 2.3, 0.7, boxstyle="round,pad=0.02", alpha=0.8, edgecolor="k",
                                    facecolor=colour, hatch="//" if swapped else None))
        ax.text(1.15, e + 0.35, f"{name}\n{tuple(shape)}", ha="center", va="center", fontsize=7.5,
                bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=0.5))
    for j in range(teacher_shape[1]):  # teacher rows: the cached layers, and NaN columns for the others
        here = j in cached
        ax.add_patch(FancyBboxPatch((4.2, j), 2.0, 0.7, boxstyle="round,pad=0.02", facecolor="C9" if here else "0.9",
                                    alpha=0.5, edgecolor="k", linestyle="-" if here else ":"))
        what = f"[:, {j}] {(teacher_shape[0], teacher_shape[2])}" if here else f"[:, {j}] not cached (NaN)"
        ax.text(5.2, j + 0.35, f"teacher {'embeddings' if j == 0 else f'layer {j}'}\n{what}", ha="center",
                va="center", fontsize=7.5)
    drawn = []
    for i, j in layer_map:
        ax.annotate("", xy=(4.15, j + 0.35), xytext=(2.35, i + 0.35), arrowprops=dict(arrowstyle="<->", color="k"))
        drawn.append((i, j))
    n_states = len(student_shapes)
    ax.text(1.15, n_states + 0.1, "student_hidden_states\n" + " + ".join(
        f"{student_shapes.count(s)} x {tuple(s)}" for s in dict.fromkeys(student_shapes)), ha="center", fontsize=8)
    ax.text(5.2, n_states + 0.1, f"teacher_cls_hidden\n{tuple(teacher_shape)} = (B, L_t + 1, H)", ha="center",
            fontsize=8)
    ax.text(3.25, -0.55, "PKD: [CLS] (position 0) of each mapped pair,\nnormalised, squared difference", ha="center",
            fontsize=7.5)
    ax.set_xlim(-0.2, 6.4); ax.set_ylim(-0.9, n_states + 0.9); ax.axis("off")
    im = ax2.imshow(cos, origin="lower", cmap="viridis")
    for i, j in layer_map:
        ax2.add_patch(Rectangle((cached.index(j) - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="white", lw=2))
    ax2.set_xticks(range(len(cached)), cached)
    ax2.set_xlabel("teacher layer j (the cached ones)"); ax2.set_ylabel("student state i (0 = embeddings)")
    ax2.set_title("mean cos(h^S_i, h^T_j) of the [CLS] vectors; framed: the layer map", fontsize=8.5)
    fig.colorbar(im, ax=ax2, fraction=0.046)
    plt.tight_layout()
    return drawn


def sps_plans(plans: dict):
    """Notebook 05: one column per variant, one box per effective layer (bottom to top) coloured by the module it runs;
    a dashed arrow joins a reuse to the module's first use, a hatched box runs with Q and K swapped (a prime).

    plans: {variant name: its plan, a list of (module index, swap_qk)} (pea_kd.sps.make_plan).
    """
    fig, axes = plt.subplots(1, len(plans), figsize=(2.8 * len(plans), 3.6), sharey=True)
    depth = max(len(plan) for plan in plans.values())
    for ax, (variant, plan) in zip(np.atleast_1d(axes), plans.items()):
        for e, (module, swapped) in enumerate(plan):  # effective layer e + 1 runs module `module`
            ax.add_patch(FancyBboxPatch((0.2, e + 0.15), 1.6, 0.7, boxstyle="round,pad=0.02", facecolor=f"C{module}",
                                        alpha=0.85, hatch="//" if swapped else None, edgecolor="k"))
            ax.text(1.0, e + 0.5, f"layer {module}" + ("′  (Q↔K)" if swapped else ""), ha="center", va="center",
                    fontsize=8, color="white", weight="bold")
            ax.text(0.1, e + 0.5, f"e{e + 1}", ha="right", va="center", fontsize=7)
            first = next(i for i, (m, _) in enumerate(plan) if m == module)
            if first != e:  # a reuse: connect it to the module's first use
                ax.annotate("", xy=(1.85, first + 0.5), xytext=(1.85, e + 0.5),
                            arrowprops=dict(arrowstyle="->", linestyle="--", color="0.3",
                                            connectionstyle="arc3,rad=-0.4"))
        ax.add_patch(FancyBboxPatch((0.2, -0.85), 1.6, 0.7, boxstyle="round,pad=0.02", facecolor="0.85", edgecolor="k"))
        ax.text(1.0, -0.5, "embeddings", ha="center", va="center", fontsize=8)
        ax.set_title(f"{variant}\n{len(plan)} effective layers, {len(set(m for m, _ in plan))} modules", fontsize=9)
        ax.set_xlim(-0.3, 2.6); ax.set_ylim(-1.0, depth + 0.2); ax.axis("off")
    fig.text(0.5, 0.01, "dashed: the same module (shared parameters) runs again; hatched: run with Q and K swapped",
             ha="center", fontsize=8)
    plt.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def attention_maps(maps: list, titles: list, tokens: list):
    """Notebook 05: attention probabilities A (query i down, key j across) side by side, one panel per map."""
    fig, axes = plt.subplots(1, len(maps), figsize=(4.3 * len(maps), 4.6))
    for ax, A, title in zip(np.atleast_1d(axes), maps, titles):
        ax.imshow(np.asarray(A), cmap="Blues", vmin=0)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
        ax.set_title(title, fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel("query i"); np.atleast_1d(axes)[min(1, len(maps) - 1)].set_xlabel("key j")
    plt.tight_layout()
    return fig


def method_bars(results: dict, methods: list, majority: dict, metrics=("acc", "f1")) -> int:
    """Notebook 07: the final dev score of each method (mean ± std over seeds, in %; orange: the SPS students, with
    2L effective layers), the teacher (dashed) and the majority class (dotted), one panel per metric.

    results: a results.json (its summary, teacher, config and optional other_runs); majority: {metric: score in %}.
    Each seed is a dot when the summary keeps per-seed values, an earlier run of the table (other_runs) a cross.
    Returns the number of seed dots drawn.
    """
    rows = {r["method"]: r for r in results["summary"]}
    x = np.arange(len(methods))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.75 * len(metrics), 3.4))
    dots = 0
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        mean = [rows[m]["final"][metric][0] for m in methods]
        std = [rows[m]["final"][metric][1] or 0.0 for m in methods]
        depth = max(rows[m]["effective_layers"] for m in methods)
        ax.bar(x, mean, yerr=std, capsize=3, alpha=0.85,
               color=["C1" if rows[m]["effective_layers"] == depth else "C0" for m in methods])
        for k, m in enumerate(methods):  # each seed of the method, when the file keeps them
            seeds = rows[m].get("per_seed", {}).get("final", {}).get(metric, [])
            ax.plot(np.full(len(seeds), k) + np.linspace(-0.15, 0.15, len(seeds)), seeds, "o", color="k", ms=3,
                    label="one seed" if k == 0 and seeds else None)
            dots += len(seeds)
        teacher = 100 * results["teacher"]["final"][metric]
        ax.axhline(teacher, color="k", ls="--", lw=1, label="teacher")
        ax.axhline(majority[metric], color="0.35", ls=":", lw=1.5, label="majority class")
        for other in results.get("other_runs", []):
            again = {r["method"]: r["final"][metric][0] for r in other["summary"]}
            ax.plot(x, [again[m] for m in methods], "kx", ms=5, label=f"earlier run, seeds {other['seeds']}")
        ax.set_ylim(min(min(mean) - max(std), majority[metric]) - 3, teacher + 3)
        ax.set_xticks(x, methods, rotation=30, fontsize=8)
        ax.set_title(f"{results['task']} dev {metric} (final, %), {len(results['config']['seeds'])} seeds", fontsize=9)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower right")
    plt.tight_layout()
    return dots
