"""An SPS plan as a table: which module each effective layer runs, with Q/K swapped or not, and what it shares.

A display helper for notebook 05; pea_kd.sps makes the plans. Machinery: skip on a first reading.
"""
from __future__ import annotations


def describe_plan(plan) -> str:
    """A table of the plan: one row per effective layer, the module it runs, whether Q/K are swapped, and which
    other effective layers share its parameters. Example for `make_plan(2, "sps")`:

        2 layers of parameters, 4 effective layers
        effective  module           Q/K      shares parameters with
        e1         encoder.layer.0  normal   e3
        e2         encoder.layer.1  normal   e4
        e3         encoder.layer.0  swapped  e1
        e4         encoder.layer.1  swapped  e2
    """
    plan = [(int(i), bool(s)) for i, s in plan]
    uses: dict[int, list[int]] = {}
    for e, (index, _) in enumerate(plan, start=1):
        uses.setdefault(index, []).append(e)
    rows = [("effective", "module", "Q/K", "shares parameters with")]
    for e, (index, swap) in enumerate(plan, start=1):
        others = ", ".join(f"e{k}" for k in uses[index] if k != e) or "-"
        rows.append((f"e{e}", f"encoder.layer.{index}", "swapped" if swap else "normal", others))
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    lines = [f"{len(uses)} layers of parameters, {len(plan)} effective layers"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    return "\n".join(lines)
