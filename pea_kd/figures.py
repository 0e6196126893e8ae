"""The notebooks' figures: each function draws one picture of an idea and returns its matplotlib Figure.

A notebook cell calls one of them in a line or two, so the reader sees the idea and not the plotting code. The numbers a
figure shows are computed in the notebook with the project's own code and passed in; a function here only draws them.
Symbols as in docs/method.md#notation: B batch size, n sequence length, H hidden size, h heads, d = H / h, L layers.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch

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
    {task name: pea_kd.features.padding_stats(...)}; 1 means no padding at all."""
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
