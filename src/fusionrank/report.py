"""Markdown reports with plots: NDCG by system, learned modality weights, per-query differences."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_systems(table: pd.DataFrame, metric: str, path: Path) -> Path:
    """Grouped bar chart: one group per system, one bar per catalogue variant."""
    plt = _plt()
    piv = table.pivot(index="system", columns="variant", values=metric).loc[list(dict.fromkeys(table["system"]))]
    ax = piv.plot.barh(figsize=(8, 0.35 * len(piv) + 1.5))
    ax.set_xlabel(metric)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    lo = np.nanmin(piv.to_numpy())
    ax.set_xlim(max(0, lo - 0.1), min(1, np.nanmax(piv.to_numpy()) + 0.03))
    plt.tight_layout()
    plt.savefig(path, dpi=110)
    plt.close()
    return path


def plot_weights(weights: dict[str, dict[str, float]], path: Path) -> Path:
    """Bars of modality weights (alpha_k or mean gate weights) per model."""
    plt = _plt()
    df = pd.DataFrame(weights).T.fillna(0)
    ax = df.plot.bar(figsize=(7, 3.5), rot=0)
    ax.set_ylabel("weight")
    ax.set_title("learned modality weights")
    plt.tight_layout()
    plt.savefig(path, dpi=110)
    plt.close()
    return path


def plot_per_query(diff: pd.Series, label: str, path: Path) -> Path:
    """Sorted per-query differences (system minus baseline)."""
    plt = _plt()
    d = diff.sort_values().to_numpy()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(np.arange(len(d)), d, width=1.0, color=np.where(d >= 0, "tab:green", "tab:red"))
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("queries (sorted)")
    ax.set_ylabel("Δ NDCG@10")
    ax.set_title(label)
    plt.tight_layout()
    plt.savefig(path, dpi=110)
    plt.close()
    return path


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, (float, np.floating)) and np.isfinite(v) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(path: Path, title: str, sections: list[tuple[str, Any]]) -> Path:
    """Sections are (heading, content) where content is text, a DataFrame or an image Path."""
    out = [f"# {title}", ""]
    for head, content in sections:
        out += [f"## {head}", ""]
        if isinstance(content, pd.DataFrame):
            out.append(markdown_table(content))
        elif isinstance(content, Path):
            out.append(f"![{head}]({content.name})")
        else:
            out.append(str(content))
        out.append("")
    path.write_text("\n".join(out))
    return path
