"""Stacked-bar plots (PNG) of where time goes, like vLLM's layer-wise visualiser:
  <base>_<phase>_layers.png      one bar per layer, stacked by op category
  <base>_decode_steps.png        one bar per decode step, stacked by layer group
"""
from __future__ import annotations

import collections

from ..analysis.analysis import Analysis
from ..analysis.tables import scope_order
from ..runs import files as runfiles
from ..trace.categories import CATEGORIES


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _stacked(ax, labels, series: dict[str, list[float]]):
    bottom = [0.0] * len(labels)
    for name, values in series.items():
        ax.bar(range(len(labels)), values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.legend(fontsize=7, ncol=2)


def _save(fig, path: str, out: runfiles.Outputs) -> str:
    """PNG (named, since the temp file's name has no .png) through `out`: whole or not at all."""
    try:
        return out.write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        _plt().close(fig)


def layer_plot(analysis: Analysis, phase: str, path: str, out: runfiles.Outputs) -> str:
    ops = analysis.phase_ops(phase)
    nsteps = max(1, len(analysis.phase_steps(phase)))
    per = collections.defaultdict(lambda: collections.Counter())
    for o in ops:
        per[o.layer][o.category] += o.self_ns / 1e6 / nsteps
    layers = sorted(per, key=scope_order)
    series = {c: [per[l][c] for l in layers] for c in CATEGORIES if any(per[l][c] for l in layers)}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4.5))
    _stacked(ax, [l.replace("model.layers.", "layer ") for l in layers], series)
    ax.set_ylabel("ms per step (op self time)")
    ax.set_title(f"{phase}: time per layer, by op category")
    fig.tight_layout()
    return _save(fig, path, out)


def decode_steps_plot(analysis: Analysis, path: str, out: runfiles.Outputs) -> str | None:
    steps = analysis.phase_steps("decode")
    if not steps:
        return None
    groups = ("attention", "mlp", "norm", "lm_head", "sampler", "other")

    def group(o):
        s = o.scope
        if s.endswith("self_attn"):
            return "attention"
        if s.endswith(".mlp"):
            return "mlp"
        if s.endswith("layernorm") or s == "model.norm":
            return "norm"
        return s if s in ("lm_head", "sampler") else "other"
    series = {g: [] for g in groups}
    for st in steps:
        c = collections.Counter()
        for o in st.ops:
            c[group(o)] += o.self_ns / 1e6
        for g in groups:
            series[g].append(c[g])
    series = {g: v for g, v in series.items() if any(v)}
    labels = [f"{s.step} (b{s.record.batch_size})" if s.record else str(s.step) for s in steps]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(steps) + 2), 4.5))
    _stacked(ax, labels, series)
    ax.set_ylabel("ms (op self time)")
    ax.set_xlabel("decode step (batch size)")
    ax.set_title("decode steps, by part of the model")
    fig.tight_layout()
    return _save(fig, path, out)


def write_plots(analysis: Analysis, base: str, out: runfiles.Outputs | None = None) -> list[str]:
    out = out or runfiles.Outputs()
    written = [layer_plot(analysis, p, f"{base}_{p}_layers.png", out) for p in analysis.phases]
    steps = decode_steps_plot(analysis, f"{base}_decode_steps.png", out)
    return written + ([steps] if steps else [])
