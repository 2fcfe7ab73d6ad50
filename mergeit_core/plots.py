"""Pictures of a run as PNG bytes (matplotlib, Agg backend: no display needed). The assets embed
them in their metadata, where the Dagster UI shows them."""

from __future__ import annotations

import io
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # before pyplot: a server or a test has no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mergeit_core.figures import ClusterMap, Funnel  # noqa: E402

_DPI = 80  # 6.4 x 4.8 in -> 512 x 384 px: readable in the UI, about 30-60 kB each


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=_DPI)
    plt.close(figure)
    return buffer.getvalue()


def cluster_map_png(points: ClusterMap, *, title: str = "Topic clusters") -> bytes:
    """The rows on the plane of the cluster centres' first two principal components, coloured by
    cluster; rows in the current selection ringed in black."""
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    keys = sorted(set(points.cluster_keys))
    colours = plt.get_cmap("tab20" if len(keys) > 10 else "tab10")
    labels = np.array(points.cluster_keys)
    for index, key in enumerate(keys):
        mine = labels == key
        axes.scatter(points.xy[mine, 0], points.xy[mine, 1], s=9, color=colours(index % colours.N),
                     label=key if len(keys) <= 20 else None, alpha=0.8, linewidths=0)
    if points.selected.any():
        axes.scatter(points.xy[points.selected, 0], points.xy[points.selected, 1], s=22, facecolors="none",
                     edgecolors="black", linewidths=0.4, label=f"selected ({int(points.selected.sum())})")
    shown = len(points.cluster_keys)
    axes.set_title(f"{title}: {len(keys)} clusters, {shown:,} of {points.rows:,} rows")
    axes.set_xlabel(f"cluster centres' PC1 ({points.explained_variance[0]:.0%} of their variance)")
    axes.set_ylabel(f"cluster centres' PC2 ({points.explained_variance[1]:.0%})")
    if len(keys) <= 20 or points.selected.any():
        axes.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _png(figure)


def cluster_size_histogram_png(sizes: Mapping[str, int], *, budget: int | None = None) -> bytes:
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    values = list(sizes.values())
    if values:
        axes.hist(values, bins=min(30, max(5, len(values) // 2)), color="#4c72b0", edgecolor="white")
    if budget is not None:
        axes.axvline(budget, color="#c44e52", linestyle="--", label=f"selection budget {budget}")
        axes.legend(fontsize=8)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"Cluster sizes ({len(values)} clusters)")
    axes.set_xlabel("rows in cluster")
    axes.set_ylabel("clusters")
    return _png(figure)


def funnel_png(counts: Funnel) -> bytes:
    """Source rows -> accepted -> selected -> final (merged samples + selected rows kept)."""
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    steps = ["source rows read", "accepted", "selected", "final dataset"]
    y = np.arange(len(steps))[::-1]
    axes.barh(y[:3], [counts.rows_read, counts.accepted, counts.selected], color="#4c72b0")
    axes.barh(y[3], counts.kept_selected, color="#55a868", label=f"selected rows kept ({counts.kept_selected})")
    axes.barh(y[3], counts.merged, left=counts.kept_selected, color="#dd8452",
              label=f"merged samples ({counts.merged}, from {counts.rows_in_merges} rows)")
    for position, value in zip(y, [counts.rows_read, counts.accepted, counts.selected, counts.final_rows]):
        axes.text(value, position, f" {value:,}", va="center", fontsize=9)
    axes.set_yticks(y, steps)
    axes.set_xlim(0, max(counts.rows_read, 1) * 1.15)
    axes.set_title("From source files to the final dataset")
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    return _png(figure)


def merge_outcomes_png(reasons: Mapping[str, int]) -> bytes:
    """Merge groups by outcome: merged, or the reason they were not kept."""
    figure, axes = plt.subplots(figsize=(6.4, max(2.4, 0.45 * len(reasons) + 1.2)))
    labels = list(reasons) or ["no merge groups"]
    values = list(reasons.values()) or [0]
    colours = ["#55a868" if label == "merged" else "#c44e52" for label in labels]
    y = np.arange(len(labels))[::-1]
    axes.barh(y, values, color=colours)
    for position, value in zip(y, values):
        axes.text(value, position, f" {value}", va="center", fontsize=9)
    axes.set_yticks(y, [label if len(label) <= 40 else label[:39] + "…" for label in labels])
    axes.set_xlim(0, max(max(values), 1) * 1.2)
    axes.set_title(f"Merge groups by outcome ({sum(values)} groups)")
    return _png(figure)
