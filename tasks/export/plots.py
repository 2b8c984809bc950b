"""A run's plots as PNG: evolved share by round, mean instruction length by round, rejections by reason per round;
for a scored run (``score:``) its complexity and quality scores.

They are written next to the dataset card (``export/plots/``, see ``tasks.export``) and shown in the Prefect UI
inside the run's summary artifact as ``data:`` images (Prefect's UI renders a Markdown image's ``src`` as is).
The PNGs carry no software version or date, so the same run gives the same bytes.
"""

from __future__ import annotations

import base64
import io

from storage import StorageSettings, resolve
from tasks.core.summaries import RoundSummary
from tasks.export.scores import BIN_LABELS, ScoreBins

# file name -> title; the order is the order in the card and the UI
PLOTS = {
    "evolved_share.png": "Evolved share by round",
    "instruction_length.png": "Mean instruction length by round",
    "rejections.png": "Rejections by reason per round",
}
# a scored run's plots, one per kind of score some row has (``tasks.export.scores``): file name -> title
SCORE_PLOTS = {
    "complexity_scores.png": "Complexity scores",
    "quality_scores.png": "Quality scores",
}
FIGSIZE, DPI = (6.4, 3.6), 80


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # workers have no display
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _no_data(ax, title: str, text: str = "no rounds") -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def evolved_share_png(rounds: list[RoundSummary]) -> bytes:
    """Bars: the share of each round's pool that evolved, labelled ``evolved/pool``."""
    fig, ax = _figure()
    title = PLOTS["evolved_share.png"]
    if not rounds:
        _no_data(ax, title)
        return _png(fig)
    labels = [f"round {r.round}" for r in rounds]
    shares = [100.0 * r.evolved / r.pool_in if r.pool_in else 0.0 for r in rounds]
    bars = ax.bar(labels, shares, color="#4c78a8")
    ax.bar_label(bars, labels=[f"{r.evolved}/{r.pool_in} ({share:.0f}%)" for r, share in zip(rounds, shares,
                                                                                         strict=True)], padding=2)
    ax.set(title=title, ylabel="evolved (% of pool)", ylim=(0, max(100.0, *shares) * 1.1))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def instruction_length_png(lengths: dict[str, float]) -> bytes:
    """Bars: mean instruction length in words, the seeds then each round's evolutions."""
    fig, ax = _figure()
    title = PLOTS["instruction_length.png"]
    if not lengths:
        _no_data(ax, title, "no instructions")
        return _png(fig)
    bars = ax.bar(list(lengths), list(lengths.values()), color="#59a14f")
    ax.bar_label(bars, labels=[f"{v:g}" for v in lengths.values()], padding=2)
    ax.set(title=title, ylabel="words (mean)", ylim=(0, max(lengths.values()) * 1.15 or 1))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def rejections_png(rounds: list[RoundSummary]) -> bytes:
    """Stacked bars: each round's rejected candidates by reason."""
    fig, ax = _figure()
    title = PLOTS["rejections.png"]
    reasons = sorted({reason for r in rounds for reason in r.rejected})
    if not reasons:
        _no_data(ax, title, "no rejections" if rounds else "no rounds")
        return _png(fig)
    from matplotlib import colormaps

    colors = colormaps["tab20"]
    labels = [f"round {r.round}" for r in rounds]
    bottom = [0] * len(rounds)
    for i, reason in enumerate(reasons):
        counts = [r.rejected.get(reason, 0) for r in rounds]
        ax.bar(labels, counts, bottom=bottom, label=reason, color=colors(i % 20))
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set(title=title, ylabel="rejected candidates")
    handles, names = ax.get_legend_handles_labels()  # listed top-down, as stacked
    ax.legend(handles[::-1], names[::-1], fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0),
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def score_png(bins: ScoreBins, kind: str) -> bytes:
    """Grouped bars: rows per score of one kind (1..6, then none), every scored row beside the exported rows."""
    import numpy as np

    fig, ax = _figure()
    at = np.arange(len(BIN_LABELS))
    for offset, which, label, color in ((-0.2, "scored", "scored rows", "#4c78a8"),
                                        (0.2, "final", "exported rows", "#f58518")):
        bars = ax.bar(at + offset, getattr(bins, which)[kind], width=0.4, color=color,
                      label=f"{label} ({bins.rows(which)})")
        ax.bar_label(bars, padding=2, fontsize="small")
    top = max(max(bins.scored[kind]), max(bins.final[kind]))
    ax.set_xticks(at, BIN_LABELS)
    ax.set(title=SCORE_PLOTS[f"{kind}_scores.png"], xlabel="score (at its nearest whole number)", ylabel="rows",
           ylim=(0, top * 1.3 or 1))  # room for the legend above the bars
    ax.yaxis.get_major_locator().set_params(integer=True)  # rows: whole numbers
    ax.legend(frameon=False, fontsize="small", loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def run_plots(rounds: list[RoundSummary], lengths: dict[str, float],
              scores: ScoreBins | None = None) -> dict[str, bytes]:
    """File name -> PNG bytes of every plot of a run (``scores``: a scored run's score bins)."""
    return {
        "evolved_share.png": evolved_share_png(rounds),
        "instruction_length.png": instruction_length_png(lengths),
        "rejections.png": rejections_png(rounds),
        **{f"{kind}_scores.png": score_png(scores, kind) for kind in (scores.kinds if scores else [])},
    }


def plot_kind(name: str) -> str:
    """The export kind of a plot file: ``evolved_share.png`` -> ``plot_evolved_share``."""
    return "plot_" + name.removesuffix(".png")


def png_data_uri(data: bytes) -> str:
    """A PNG as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def plots_markdown(export_files: dict[str, str], settings: StorageSettings | None = None) -> str:
    """The exported plots, read back from storage, as Markdown images with ``data:`` URIs (for a Prefect
    artifact), each followed by where the file is."""
    parts = []
    for name, title in {**PLOTS, **SCORE_PLOTS}.items():
        uri = export_files.get(plot_kind(name))
        if uri is None:
            continue
        fs, path = resolve(uri, settings)
        parts.append(f"**{title}**\n\n![{title}]({png_data_uri(fs.cat_file(path))})\n\n`{uri}`\n")
    return "\n".join(parts)
