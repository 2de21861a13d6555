"""Every Plotly figure of the project: snapshots, histories and experiment reports in, figures out.
The app and the experiments (CLI) both draw with these, so a chart looks the same everywhere.

One colour language (assets/style/theme.json) for every figure: ID points by class (circles), OOD
points in one colour (crosses), generator samples in one colour (stars), M_R and M_F each in their
own colour. The 'presentation' style swaps in a white background, large fonts, thick markers and
colour-blind-safe colours (Okabe-Ito), for slides.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .advft import Snapshot
from .attacks import ATTACKS

STYLE_DIR = Path(__file__).resolve().parent.parent / "assets" / "style"
HEADROOM = 0.25  # fixed axes: M_R's extent plus this fraction on every side
# A legend in rows at the figure's foot: the margin grows to hold it, so it never covers an axis title and
# never scrolls (a legend at the side does, once its entries outgrow the chart's height).
LEGEND_BELOW = dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, itemsizing="constant")


@functools.lru_cache(maxsize=None)
def _themes() -> dict:
    return json.loads((STYLE_DIR / "theme.json").read_text())


def theme(style: str) -> dict:
    t = dict(_themes()[style])
    t["markers"] = _themes()["markers"]
    return t


def style_layout(fig: go.Figure, style: str, height: int, **extra) -> go.Figure:
    t = theme(style)
    extra.setdefault("margin", dict(l=10, r=10, t=50, b=10))
    extra.setdefault("legend", dict(itemsizing="constant"))
    extra["legend"] = {**extra["legend"], "font": dict(size=t["font_size"])}
    fig.update_layout(
        template="plotly_white", height=height, font=dict(size=t["font_size"], color=t["text"]),
        paper_bgcolor=t["paper_bg"], plot_bgcolor=t["plot_bg"], **extra)
    for axes in (fig.update_xaxes, fig.update_yaxes):
        axes(gridcolor=t["grid"], zerolinecolor=t["grid"], tickfont=dict(size=t["font_size"]),
             title_font=dict(size=t["font_size"]), automargin=True)  # margins grow to fit tick labels and titles
    fig.update_annotations(font_size=t["font_size"] + 2)  # subplot titles
    return fig


# ---------------------------------------------------------------- projection of wide features


class Projection:
    """Penultimate features -> 2-D, fitted ONCE on M_R's ID probe features and reused for every
    epoch, so that a moving point means moving features, not a moving projection."""

    def __init__(self, ref_features, kind: str = "pca", seed: int = 0):
        x = np.asarray(ref_features, dtype=np.float64)
        self.dim = x.shape[1]
        self.kind = "identity" if self.dim == 2 else kind
        if self.kind == "pca":
            self.mean = x.mean(0)
            _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
            self.components = vt[:2]
            self.explained = float((s[:2] ** 2).sum() / max((s ** 2).sum(), 1e-12))
        elif self.kind == "umap":
            # Imported only when asked: the import and first fit take tens of seconds (numba JIT).
            os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.cwd() / ".numba-cache"))
            import umap

            self.reducer = umap.UMAP(n_components=2, random_state=seed).fit(x)
        elif self.kind != "identity":
            raise ValueError(f"unknown projection '{kind}'")

    @property
    def axis_names(self) -> tuple[str, str]:
        """The plot plane's axis titles."""
        return {"identity": ("feature 1", "feature 2"), "pca": ("PC 1", "PC 2"), "umap": ("UMAP 1", "UMAP 2")}[self.kind]

    @property
    def label(self) -> str:
        if self.kind == "identity":
            return "the 2-D penultimate features themselves"
        if self.kind == "pca":
            return (f"PCA of the {self.dim}-D features, fitted on M_R's ID probe features "
                    f"({100 * self.explained:.0f}% of their variance)")
        return f"UMAP of the {self.dim}-D features, fitted on M_R's ID probe features (transform for the rest)"

    def __call__(self, features) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if self.kind == "identity":
            return x
        if self.kind == "pca":
            return (x - self.mean) @ self.components.T
        return self.reducer.transform(x)

    def directions(self, head) -> np.ndarray | None:
        """Class directions (rows of the frozen head) in the plot plane; None when non-linear."""
        w = np.asarray(head, dtype=np.float64)
        if self.kind == "identity":
            return w
        if self.kind == "pca":
            return w @ self.components.T  # a direction has no offset: project without the mean
        return None


# ---------------------------------------------------------------- fixed axes


@dataclass
class Ranges:
    """Square axis ranges shared by every panel; they only ever grow, and remember when they did."""

    x: tuple[float, float]
    y: tuple[float, float]
    extended_at: list | None = None

    @classmethod
    def around(cls, *point_sets: np.ndarray) -> "Ranges":
        pts = np.concatenate([p for p in point_sets if len(p)])
        lo, hi = pts.min(0), pts.max(0)
        centre, half = (lo + hi) / 2, (hi - lo).max() / 2 * (1 + HEADROOM) + 1e-6
        return cls((centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half), [])

    def extend(self, label, *point_sets: np.ndarray) -> bool:
        pts = np.concatenate([p for p in point_sets if len(p)])
        lo, hi = pts.min(0), pts.max(0)
        if lo[0] >= self.x[0] and hi[0] <= self.x[1] and lo[1] >= self.y[0] and hi[1] <= self.y[1]:
            return False
        grown = Ranges.around(np.array([[self.x[0], self.y[0]], [self.x[1], self.y[1]]]), pts)
        self.x, self.y = grown.x, grown.y
        if label not in self.extended_at:  # one mention per epoch, however many frames extend it
            self.extended_at.append(label)
        return True


# ---------------------------------------------------------------- Fig. 5


def _np(t) -> np.ndarray:
    return t.numpy() if hasattr(t, "numpy") else np.asarray(t)


@dataclass
class Points:
    """One panel's projected points: ID (with labels), OOD, generator samples, class directions."""

    id: np.ndarray
    labels: np.ndarray
    ood: np.ndarray
    gen: np.ndarray
    rays: np.ndarray | None


def panel_points(snapshot: Snapshot, proj: Projection, which: str) -> Points:
    """which: 'before' (M_R) or 'after' (M_F at the snapshot's epoch)."""
    f = getattr(snapshot, which)
    return Points(proj(_np(f.id)), _np(snapshot.labels), proj(_np(f.ood)), proj(_np(f.gen)),
                  proj.directions(_np(snapshot.head)))


def fixed_axes(reference: Snapshot, kind: str = "pca", seed: int = 0, fit=()) -> tuple[Projection, Ranges]:
    """The plane and ranges a view keeps while its points move: fitted once on M_R's ID features, around
    M_R's points, and around M_R's and M_F's points of every snapshot in `fit` (an atlas margin's epochs),
    so that moving through them moves points, never the axes."""
    proj = Projection(reference.before.id, kind, seed)
    sets = []
    for snap, which in [(reference, "before"), *((s, w) for s in fit for w in ("before", "after"))]:
        p = panel_points(snap, proj, which)
        sets += [p.id, p.ood, p.gen]
    return proj, Ranges.around(*sets)


def _add_points(fig, p: Points, row: int, col: int, style: str, classes, ranges: Ranges, legend: bool,
                tag: str = "") -> None:
    """Rays, ID points per class, OOD points, G(z) points; each trace's meta is '<tag>:<role>' so a
    live figure can swap in new points without being rebuilt (see refresh_fig5)."""
    t = theme(style)
    size, mk = t["marker_size"], t["markers"]
    if p.rays is not None:
        reach = max(abs(v) for v in (*ranges.x, *ranges.y)) * 1.5
        for c, w in enumerate(p.rays):
            end = w / (np.linalg.norm(w) + 1e-12) * reach
            fig.add_trace(go.Scatter(x=[0, end[0]], y=[0, end[1]], mode="lines", hoverinfo="skip",
                                     line=dict(color=t["classes"][c % 10], width=max(1, t["line_width"] - 1),
                                               dash="dot"),
                                     legendgroup=f"class{c}", showlegend=False), row=row, col=col)
    for c, name in enumerate(classes):
        sel = p.labels == c
        fig.add_trace(go.Scatter(x=p.id[sel, 0], y=p.id[sel, 1], mode="markers", name=f"ID {name}",
                                 legendgroup=f"class{c}", showlegend=legend, meta=f"{tag}:class{c}",
                                 marker=dict(color=t["classes"][c % 10], size=size, symbol=mk["id"], opacity=0.8)),
                      row=row, col=col)
    # G(z) first, then the OOD crosses on top: the stars are larger and must not hide the crosses.
    fig.add_trace(go.Scatter(x=p.gen[:, 0], y=p.gen[:, 1], mode="markers", name="G(z)", legendgroup="gen",
                             showlegend=legend, meta=f"{tag}:gen",
                             marker=dict(color=t["roles"]["generator"], size=size * 1.8, symbol=mk["generator"],
                                         opacity=0.85, line=dict(color="white", width=1))),
                  row=row, col=col)
    fig.add_trace(go.Scatter(x=p.ood[:, 0], y=p.ood[:, 1], mode="markers", name="OOD", legendgroup="ood",
                             showlegend=legend, meta=f"{tag}:ood",
                             marker=dict(color=t["roles"]["ood"], size=size, symbol=mk["ood"], opacity=0.55,
                                         line=dict(width=max(1, size / 5)))),
                  row=row, col=col)


def _square_axes(fig, ranges: Ranges, n: int) -> None:
    """Equal scales on both axes; a panel narrower than it is tall keeps to the top, under its title."""
    for i in range(1, n + 1):
        suffix = "" if i == 1 else str(i)
        fig.update_layout(**{f"xaxis{suffix}": dict(range=list(ranges.x), constrain="domain"),
                             f"yaxis{suffix}": dict(range=list(ranges.y), scaleanchor=f"x{suffix}",
                                                    scaleratio=1, constrain="domain", constraintoward="top")})


ZOOM = 2.0  # the zoom panel spans M_R's OOD extent times this: room to see the first steps of the drift


def zoom_ranges(snapshot: Snapshot, proj: Projection) -> Ranges:
    """Fixed axes around where M_R puts the OOD probes (near the origin for a 2-D LeNet, while the ID
    classes reach out along their rays): the drift of the first F steps is visible there at once."""
    ood = panel_points(snapshot, proj, "before").ood
    lo, hi = ood.min(0), ood.max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2 * ZOOM + 1e-6
    return Ranges((centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half), [])


def _zoom_points(fig, before: Points, after: Points, style: str, col: int) -> None:
    """M_R's OOD positions (faint grey circles, fixed) under M_F's OOD crosses and G(z) stars (tag 'zoom')."""
    t, mk = theme(style), theme(style)["markers"]
    size = t["marker_size"]
    fig.add_trace(go.Scatter(x=before.ood[:, 0], y=before.ood[:, 1], mode="markers", name="OOD under M_R",
                             hoverinfo="skip", legendgroup="ood_before", showlegend=True,
                             marker=dict(color=t["roles"]["ood_before"], size=size, symbol="circle-open",
                                         line=dict(width=max(1, size / 5)))),
                  row=1, col=col)
    fig.add_trace(go.Scatter(x=after.gen[:, 0], y=after.gen[:, 1], mode="markers", name="G(z)", showlegend=False,
                             meta="zoom:gen", marker=dict(color=t["roles"]["generator"], size=size * 1.8,
                                                          symbol=mk["generator"], opacity=0.85)), row=1, col=col)
    fig.add_trace(go.Scatter(x=after.ood[:, 0], y=after.ood[:, 1], mode="markers", name="OOD", showlegend=False,
                             meta="zoom:ood", marker=dict(color=t["roles"]["ood"], size=size, symbol=mk["ood"],
                                                          opacity=0.55, line=dict(width=max(1, size / 5)))),
                  row=1, col=col)


# The panels of Fig. 5 (the app's chart and the animated export): equal widths, so the zoom is as large as
# the others, and titles short enough for a third of a 1280 px slide in the presentation style's font.
PANEL_TITLES = {"mr": "M_R, before AdvFT", "mf": "M_F", "zoom": "M_F zoom: OOD start"}


def fig5_panels(snapshot: Snapshot, proj: Projection, ranges: Ranges, classes, style: str = "screen",
                now_title: str | None = None, height: int = 520, zoom: bool = True) -> go.Figure:
    """M_R (before) | M_F (now), the paper's Fig. 5 on the same fixed axes; with `zoom`, a third panel on
    fixed axes around where the OOD probes start, where M_F's first steps already show. The legend sits
    below the panels, wrapped into rows: every entry visible, never behind a scrollbar."""
    t = theme(style)
    now_title = now_title or f"M_F, epoch {snapshot.epoch}"
    titles = [PANEL_TITLES["mr"], now_title] + ([PANEL_TITLES["zoom"]] if zoom else [])
    fig = make_subplots(1, len(titles), subplot_titles=titles, horizontal_spacing=0.035)
    before, after = panel_points(snapshot, proj, "before"), panel_points(snapshot, proj, "after")
    _add_points(fig, before, 1, 1, style, classes, ranges, legend=True, tag="before")
    _add_points(fig, after, 1, 2, style, classes, ranges, legend=False, tag="now")
    _square_axes(fig, ranges, 2)
    if zoom:
        _zoom_points(fig, before, after, style, 3)
        z = zoom_ranges(snapshot, proj)
        fig.update_layout(xaxis3=dict(range=list(z.x), constrain="domain"),  # its own scale: ticks on its right
                          yaxis3=dict(range=list(z.y), scaleanchor="x3", scaleratio=1, constrain="domain",
                                      constraintoward="top", side="right"))
        fig.layout.annotations[2].font.color = t["roles"]["m_f"]
    fig.layout.annotations[0].font.color = t["roles"]["m_r"]
    fig.layout.annotations[1].font.color = t["roles"]["m_f"]
    x_name, y_name = proj.axis_names
    fig.update_xaxes(title_text=x_name, title_standoff=4, ticklabelstandoff=6)  # clear of the lowest y label
    fig.update_yaxes(title_text=y_name, title_standoff=2, row=1, col=1)
    fig.update_yaxes(showticklabels=False, row=1, col=2)  # M_F's axes are M_R's, labelled on its left
    fig.layout.meta = frame_meta(snapshot)
    return style_layout(fig, style, height, uirevision="fig5", legend=LEGEND_BELOW)


def frame_meta(snapshot: Snapshot) -> dict:
    """Which frame a Fig. 5 figure shows, in its layout.meta: a page (or a browser test) reads from the drawn
    chart what it shows, not only what was sent to it."""
    return {"step": snapshot.step, "epoch": snapshot.epoch}


def refresh_fig5(fig: go.Figure, snapshot: Snapshot, proj: Projection, ranges: Ranges,
                 now_title: str | None = None) -> None:
    """Put a newer snapshot's M_F points into a figure made by fig5_panels for the same run: ~3 ms
    instead of ~50-150 ms for a rebuild (the live view refreshes twice a second). M_R's panel keeps
    its points but takes the new G(z) stars (M_R's view of the generator's current samples)."""
    p = panel_points(snapshot, proj, "after")
    before_gen = panel_points(snapshot, proj, "before").gen

    def role_points(role: str) -> np.ndarray:
        return p.ood if role == "ood" else p.gen if role == "gen" else p.id[p.labels == int(role[len("class"):])]

    with fig.batch_update():
        for trace in fig.data:
            tag, _, role = (trace.meta or "").partition(":")
            if tag in ("now", "zoom") or (tag, role) == ("before", "gen"):
                xy = before_gen if tag == "before" else role_points(role)
                trace.x, trace.y = xy[:, 0], xy[:, 1]
        fig.layout.annotations[1].text = now_title or f"M_F, epoch {snapshot.epoch}"
        fig.layout.meta = frame_meta(snapshot)
        _square_axes(fig, ranges, 2)


PROBE_TAGS = ("probe:before", "probe:path", "probe:after", "probe:zoom")


def mark_probe(fig: go.Figure, before_xy: np.ndarray | None, after_xy: np.ndarray | None, style: str) -> None:
    """Mark one probed input in a figure made by fig5_panels: where M_R puts it (left panel), where M_F
    puts it (middle and zoom panels), and in the middle a dotted path from M_R's place to M_F's, so that
    "stays put" and "jumps" read at a glance. None clears the marks. The four traces are added once and
    then only their points change (app/chart.js then moves points instead of redrawing the chart)."""
    t = theme(style)
    have = {tr.meta: tr for tr in fig.data if tr.meta in PROBE_TAGS}
    if len(have) < len(PROBE_TAGS):
        size, outline = t["marker_size"] * 2.4, dict(color=t["text"], width=max(2, t["line_width"] - 1))
        mark = dict(symbol="diamond", size=size, color="#ffffff", line=outline)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="your input", meta="probe:before", marker=mark,
                                 legendgroup="probe", showlegend=True), row=1, col=1)
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", meta="probe:path", hoverinfo="skip",
                                 showlegend=False, legendgroup="probe",
                                 line=dict(color=t["text"], width=max(1, t["line_width"] - 1), dash="dot"),
                                 marker=dict(symbol="diamond-open", size=size * 0.7, color=t["text"])),
                      row=1, col=2)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", meta="probe:after", marker=mark, legendgroup="probe",
                                 showlegend=False), row=1, col=2)
        if len(fig.layout.annotations) > 2:  # the zoom panel
            fig.add_trace(go.Scatter(x=[], y=[], mode="markers", meta="probe:zoom", marker=mark, legendgroup="probe",
                                     showlegend=False), row=1, col=3)
        have = {tr.meta: tr for tr in fig.data if tr.meta in PROBE_TAGS}
    points = {"probe:before": [before_xy], "probe:after": [after_xy], "probe:zoom": [after_xy],
              "probe:path": [before_xy, after_xy]}
    with fig.batch_update():
        for tag, trace in have.items():
            xy = [p for p in points[tag] if p is not None]
            if tag == "probe:path" and len(xy) < 2:
                xy = []
            trace.x, trace.y = [float(p[0]) for p in xy], [float(p[1]) for p in xy]
        have["probe:before"].showlegend = before_xy is not None  # no legend entry for nothing drawn


def small_multiples(snapshots: list[tuple[str, Snapshot]], proj: Projection, ranges: Ranges, classes,
                    style: str = "screen", height: int = 330) -> go.Figure:
    """M_F in several (title, snapshot) panels with the same axes: epochs of a run, or runs compared."""
    fig = make_subplots(1, len(snapshots), subplot_titles=[title for title, _ in snapshots],
                        horizontal_spacing=0.03)
    for i, (_, snap) in enumerate(snapshots, start=1):
        _add_points(fig, panel_points(snap, proj, "after"), 1, i, style, classes, ranges, legend=(i == 1))
    _square_axes(fig, ranges, len(snapshots))
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return style_layout(fig, style, height, legend=LEGEND_BELOW)


# ---------------------------------------------------------------- generator samples


def gen_grid(images, style: str = "screen", cols: int = 4, height: int = 330) -> go.Figure:
    """The generator's current samples G(z) for a fixed z, as one tiled image."""
    x = _np(images)  # uint8 (n, C, H, W)
    n, c, h, w = x.shape
    rows = -(-n // cols)
    pad = 2
    tile = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        img = x[i].transpose(1, 2, 0)
        tile[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = \
            np.repeat(img, 3, axis=2) if c == 1 else img
    fig = go.Figure(go.Image(z=tile, hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style_layout(fig, style, height, margin=dict(l=0, r=0, t=10, b=0))


# ---------------------------------------------------------------- curves


CURVES = (  # (history key, title, log scale, role colour)
    ("l_g", "L_G (generator)", False, "generator"),
    ("l_f1", "L_F1 (margin)", False, "m_f"),
    ("l_f2", "L_F2 (ID drift)", False, "m_f"),
    ("acc_after", "Acc (test, %)", False, "m_f"),
    ("kl_test", "KL_test (log)", True, "m_f"),
    ("ood_agreement", "OOD agreement", False, "ood"),
)
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def log_decades(values) -> dict:
    """A log axis with one tick per decade, written 10^-3, over whole decades around the positive values:
    at least two labelled ticks however narrow their spread (a KL that stays within one decade)."""
    positive = [v for v in values if v is not None and v > 0]
    lo, hi = (math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))) if positive else (-3, -2)
    return dict(type="log", dtick=1, exponentformat="power", range=[lo - 0.03, max(hi, lo + 1) + 0.03])
ACC_SPAN = 2.0  # points: the smallest height of the accuracy axis


def curves(histories: dict[str, list[dict]], style: str = "screen", height: int | None = None) -> go.Figure:
    """Per-epoch curves in three rows of two (titles short enough for the presentation style in the Defend
    page's column at 1280 px); several runs (name -> history) are overlaid, told apart by line dash."""
    t = theme(style)
    fs = t["font_size"]
    legend = int(1.6 * fs + 6) * len(histories) if len(histories) > 1 else 0  # a row per run, at worst
    height = height or 22 * fs + 330 + legend  # rows tall enough for their tick labels and titles between rows
    gap = 3 * fs + 12  # px between rows: the row above's tick labels, then this row's titles
    fig = make_subplots(3, 2, subplot_titles=[c[1] for c in CURVES], vertical_spacing=gap / (height - 90 - legend),
                        horizontal_spacing=0.08 + fs / 400)
    for k, (name, history) in enumerate(histories.items()):
        dash = DASHES[k % len(DASHES)]
        for i, (key, title, log, role) in enumerate(CURVES):
            pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None and not (log and h[key] <= 0)]
            if key == "acc_after":
                pts = [(e, 100 * v) for e, v in pts]  # in points: a 0.1-point dip reads as 0.1, not as a crash
            row, col = divmod(i, 2)
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                     name=name, legendgroup=name, showlegend=(i == 0 and len(histories) > 1),
                                     line=dict(color=t["roles"][role], width=t["line_width"], dash=dash),
                                     marker=dict(size=t["marker_size"] + 1)), row=row + 1, col=col + 1)
            if key == "acc_after" and k == 0 and history:
                fig.add_hline(y=100 * history[0]["acc_before"], line=dict(color=t["roles"]["m_r"], dash="dot"),
                              annotation_text="M_R", annotation_position="bottom left", row=row + 1, col=col + 1)
    for i, (key, _, log, _) in enumerate(CURVES):
        if log:
            row, col = divmod(i, 2)
            fig.update_yaxes(**log_decades([h.get(key) for hist in histories.values() for h in hist]),
                             row=row + 1, col=col + 1)
    accs = [100 * h[key] for hist in histories.values() for h in hist for key in ("acc_after", "acc_before")
            if h.get(key) is not None]
    if accs:  # at least ACC_SPAN points tall, around the values: the scale never exaggerates a wobble
        mid, half = (max(accs) + min(accs)) / 2, max(ACC_SPAN, max(accs) - min(accs) + 0.2) / 2
        top = min(100.0, mid + half)
        fig.update_yaxes(range=[top - 2 * half, top], row=2, col=2)
    fig.update_xaxes(title_text="epoch", row=3)
    # Epochs start at 0 (M_R); labels a little lower, clear of the lowest y label in each panel's corner
    fig.update_xaxes(rangemode="nonnegative", ticklabelstandoff=fs // 2 + 2)
    return style_layout(fig, style, height, uirevision="curves", legend=LEGEND_BELOW)  # runs' names are long


# ---------------------------------------------------------------- attacks and experiments


def attack_curve(curves: dict[str, list[dict]], style: str = "screen", height: int = 380) -> go.Figure:
    """Surrogate test accuracy vs queries, one line per attack (told apart by dash)."""
    t = theme(style)
    fig = go.Figure()
    for i, (name, curve) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=[p["queries"] for p in curve], y=[p["acc"] for p in curve], name=name,
                                 mode="lines+markers",
                                 line=dict(width=t["line_width"], dash=DASHES[i % len(DASHES)]),
                                 marker=dict(size=t["marker_size"] + 1)))
    fig.update_xaxes(title_text="queries")
    fig.update_yaxes(title_text="surrogate test accuracy", range=[0, 1.02])
    return style_layout(fig, style, height, uirevision="attack-curve", margin=dict(l=60, r=20, t=30, b=10),
                        legend=LEGEND_BELOW)


KL_FLOOR = 1e-6  # where a KL of exactly 0 (N = 0: M_F is M_R) sits on a log axis


def atlas_tradeoff(cells: list, chosen, thief: str = "knockoff", style: str = "screen", height: int = 420) -> go.Figure:
    """The atlas' trade-off: the thief's best surrogate accuracy (y) against what honest users lose,
    KL_test (x, log), one point per (m, N) cell, a line per margin through its epochs; the chosen cell
    ringed. `cells` are core.atlas.AtlasCell, `thief` 'knockoff' or 'dfme'."""
    t = theme(style)
    fig = go.Figure()
    margins = sorted({c.margin for c in cells})
    for i, m in enumerate(margins):
        row = sorted((c for c in cells if c.margin == m and getattr(c, thief)), key=lambda c: c.epochs)
        fig.add_trace(go.Scatter(
            x=[max(c.kl_test, KL_FLOOR) for c in row], y=[100 * getattr(c, thief)["surrogate_best_acc"] for c in row],
            mode="lines+markers", name=f"m = {m:g}", line=dict(width=t["line_width"], dash=DASHES[i % len(DASHES)]),
            marker=dict(size=t["marker_size"] + 2), customdata=[[c.epochs, 100 * c.acc_after] for c in row],
            hovertemplate=f"m = {m:g}, N = %{{customdata[0]}}<br>KL_test %{{x:.1e}}<br>Acc_MF %{{customdata[1]:.2f}}%"
                          "<br>thief %{y:.1f}%<extra></extra>"))
    fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="this cell", hoverinfo="skip", meta="chosen",
                             marker=dict(size=4 * t["marker_size"] + 6, symbol="circle-open", color=t["roles"]["m_f"],
                                         line=dict(width=3))))
    ring_cell(fig, chosen, thief)
    # Short titles (the page's caption says the rest): they fit the Atlas' column in the presentation style
    fig.update_xaxes(type="log", title_text="KL_test: what honest users lose")
    fig.update_yaxes(title_text="thief's best accuracy (%)", rangemode="tozero")
    return style_layout(fig, style, height, uirevision="atlas-tradeoff", margin=dict(l=60, r=20, t=20, b=50))


def ring_cell(fig: go.Figure, chosen, thief: str = "knockoff") -> None:
    """Ring `chosen` in a figure made by atlas_tradeoff for the same thief: a slider move changes one
    trace instead of rebuilding the chart (~60 ms on a 2-core CPU)."""
    ring = next(t for t in fig.data if t.meta == "chosen")
    shown = chosen is not None and bool(getattr(chosen, thief))
    ring.visible = shown
    ring.x, ring.y = ([max(chosen.kl_test, KL_FLOOR)], [100 * getattr(chosen, thief)["surrogate_best_acc"]]) \
        if shown else ([], [])


def table_figure(report: dict, style: str = "screen", height: int = 420) -> go.Figure:
    """Tables 2-3 as bars: fidelity (Acc_MF) beside the thief's accuracy (Acc_MS after: best over training,
    the headline, and final) per defence; the paper's Acc_MS after as markers where it has one."""
    t = theme(style)
    rows = [r for r in report["rows"] if r.get("status") != "paper only"]
    names = [r["method"] for r in rows]
    fig = go.Figure([go.Bar(name="Acc_MF (honest users)", x=names, y=[r["acc_mf"] for r in rows],
                            marker_color=t["roles"]["m_f"]),
                     go.Bar(name="Acc_MS after, best (surrogate)", x=names, y=[r["acc_ms_after"] for r in rows],
                            marker_color=t["roles"]["ood"]),
                     go.Bar(name="Acc_MS after, final", x=names,
                            y=[r.get("acc_ms_after_final") for r in rows], marker_color=t["roles"]["ood"], opacity=0.45)])
    paper = [(r["method"], r.get("paper_acc_ms_after")) for r in report["rows"] if r.get("paper_acc_ms_after") is not None]
    if paper:
        p = report.get("paper") or {}
        fig.add_trace(go.Scatter(name=f"paper {p.get('table', '')}: Acc_MS after", x=[n for n, _ in paper],
                                 y=[v for _, v in paper], mode="markers",
                                 marker=dict(symbol="diamond", size=12, color=t["roles"]["m_r"])))
    a = report["attack"]
    fig.update_yaxes(title_text="test accuracy", range=[0, 1])
    return style_layout(fig, style, height, barmode="group", margin=dict(l=60, r=20, t=60, b=40),
                        title=f"{a['attack']} ({a['labels']} labels, Q = {a['queries']:,}) on {report['dataset']}")


def sweep_figure(report: dict, x: str, style: str = "screen", height: int = 420) -> go.Figure:
    """Fig. 4 (x = 'epoch') or a margin sweep (x = 'margin'): the thief's (best over training, the paper's
    protocol, and final) and the honest users' accuracy on the left axis, KL_test (log) on the right."""
    t = theme(style)
    rows = report["rows"]
    xs = [r[x] for r in rows]
    # a sweep with extra thieves (`sweep --also`) has <attack>_best_acc columns: one more pair of lines each
    extra = [a for a in ATTACKS if rows and f"{a}_best_acc" in rows[0] and a != report["attack"]["attack"]]
    thief = ATTACKS[report["attack"]["attack"]].label if extra else "surrogate"
    lines = [(thief, "surrogate_best_acc", "surrogate_acc", t["roles"]["ood"])]
    lines += [(ATTACKS[a].label, f"{a}_best_acc", f"{a}_acc", t["roles"]["generator"]) for a in extra]
    fig = go.Figure()
    for name, best, final, colour in lines:
        fig.add_trace(go.Scatter(name=f"{name} Acc_MS, best", x=xs, y=[r[best] for r in rows], mode="lines+markers",
                                 line=dict(color=colour, width=t["line_width"])))
        fig.add_trace(go.Scatter(name=f"{name} Acc_MS, final", x=xs, y=[r[final] for r in rows], mode="lines+markers",
                                 line=dict(color=colour, width=t["line_width"], dash="dash"), opacity=0.6))
    fig.add_traces([
        go.Scatter(name="protected Acc_MF", x=xs, y=[r["acc_mf"] for r in rows], mode="lines+markers",
                   line=dict(color=t["roles"]["m_f"], width=t["line_width"])),
        # a log axis has no place for the unprotected model's KL of 0: its point is left out, not drawn at 1e-12
        go.Scatter(name="KL_test", x=[xv for xv, r in zip(xs, rows) if r["kl_test"] > 0],
                   y=[r["kl_test"] for r in rows if r["kl_test"] > 0], mode="lines+markers",
                   yaxis="y2", line=dict(color=t["roles"]["m_r"], width=t["line_width"], dash="dot"))])
    fig.update_layout(xaxis_title={"epoch": "AdvFT epochs N", "margin": "margin m"}[x], yaxis_title="test accuracy",
                      yaxis_range=[0, 1], yaxis2={"title": "KL_test", "overlaying": "y", "side": "right",
                                                  **log_decades([r["kl_test"] for r in rows])})
    return style_layout(fig, style, height, margin=dict(l=60, r=60, t=60, b=10),
                        title=f"{' and '.join(ATTACKS[a].label for a in [report['attack']['attack'], *extra])} vs AdvFT "
                              f"on {report['dataset']}",
                        legend=LEGEND_BELOW)


# ---------------------------------------------------------------- the thief's view (core.attacks.thief_view)


WRONG = "#c62828"  # a wrong answer in the answers grid (with a cross, so colour is not the only sign)


def thief_confusions(view: dict, style: str = "screen", height: int = 420) -> go.Figure:
    """The attacked model's (the API's) and the surrogate's answers on the ID test set as confusion matrices, each row
    the share (%) of a true class: a good thief copies the left one's diagonal, a protected model's thief
    does not, while the left one (what honest users get) stays the same."""
    classes = [str(c) for c in view["classes"]]
    counts = {k: np.array(view[k], dtype=float) for k in ("target_confusion", "surrogate_confusion")}
    right = {k: np.trace(c) / max(c.sum(), 1) for k, c in counts.items()}
    fig = make_subplots(1, 2, horizontal_spacing=0.14, subplot_titles=(  # short: two of them fit half a slide
        f"API<br>{100 * right['target_confusion']:.0f}% right", f"thief<br>{100 * right['surrogate_confusion']:.0f}% right"))
    for col, key in ((1, "target_confusion"), (2, "surrogate_confusion")):
        c = counts[key]
        share = 100 * c / np.maximum(c.sum(1, keepdims=True), 1)
        fig.add_trace(go.Heatmap(z=share, x=classes, y=classes, zmin=0, zmax=100, colorscale="Blues", showscale=col == 2,
                                 colorbar=dict(ticksuffix="%", thickness=12), customdata=c,
                                 hovertemplate="true %{y}, answered %{x}: %{z:.0f}% (%{customdata:.0f} images)"
                                               "<extra></extra>"), 1, col)
    fig.update_xaxes(title_text="answered", type="category", tickangle=0)
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_yaxes(title_text="true class", row=1, col=1)
    return style_layout(fig, style, height, margin=dict(l=60, r=10, t=90, b=50))


def thief_answers(view: dict, images: np.ndarray, style: str = "screen", classes_per_row: int = 5,
                  height: int = 460) -> go.Figure:
    """Test images grouped by class (`classes_per_row` classes side by side, a class's examples one above the
    other), each captioned 'the API's answer · the thief's answer'; a wrong answer in red with a cross.
    `images` are the view's examples (core.attacks.example_images). Five classes a row leave each caption
    room for the presentation style's font at half a slide's width."""
    t = theme(style)
    ex, classes = view["examples"], [str(c) for c in view["classes"]]
    per_class: dict[int, list[int]] = {}
    for i, y in enumerate(ex["truth"]):
        per_class.setdefault(y, []).append(i)
    depth = max(len(v) for v in per_class.values())  # examples per class
    cols = min(classes_per_row, len(per_class))
    rows = -(-len(per_class) // cols) * depth
    n, c, h, w = images.shape
    pad, caption = max(2, w // 10), h * 2 // 3  # a caption band under each image
    cell_h, cell_w = h + caption, 2 * w  # captions are wider than a digit: room on both sides
    tile = np.full((rows * cell_h + pad, cols * cell_w, 3), 255, dtype=np.uint8)
    fig = go.Figure()
    for k, (y, members) in enumerate(sorted(per_class.items())):
        for r, i in enumerate(members):
            top, left = ((k // cols) * depth + r) * cell_h + pad, (k % cols) * cell_w + (cell_w - w) // 2
            img = images[i].transpose(1, 2, 0)
            tile[top:top + h, left:left + w] = np.repeat(img, 3, axis=2) if c == 1 else img
            answers = [(ex["target"][i], ex["target"][i] == y), (ex["surrogate"][i], ex["surrogate"][i] == y)]
            text = " · ".join(classes[a] if ok else f"<span style='color:{WRONG}'>{classes[a]}✗</span>"
                              for a, ok in answers)
            fig.add_annotation(x=left + w / 2, y=top + h + caption / 2, text=text, showarrow=False,
                               font=dict(size=t["font_size"], color=t["text"]))
    fig.add_trace(go.Image(z=tile, hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig = style_layout(fig, style, height, margin=dict(l=0, r=0, t=10, b=0))
    return fig.update_annotations(font_size=t["font_size"])  # style_layout sizes annotations as subplot titles


def thief_per_class(views: dict[str, dict], style: str = "screen", height: int = 380) -> go.Figure:
    """Per-class accuracy on the ID test set: a bar per result for its surrogate, a marker per result for the
    attacked model (what honest users get), so the classes the thief lost stand out."""
    from .metrics import per_class_accuracy

    t = theme(style)
    fig = go.Figure()
    for i, (name, view) in enumerate(views.items()):
        classes = [str(c) for c in view["classes"]]
        colour = (t["roles"]["ood"], t["roles"]["m_f"])[i % 2]
        fig.add_trace(go.Bar(name=f"thief · {name}", x=classes, y=per_class_accuracy(view["surrogate_confusion"]),
                             marker_color=colour, offsetgroup=name))
        fig.add_trace(go.Scatter(name=f"API · {name}", x=classes, offsetgroup=name,
                                 y=per_class_accuracy(view["target_confusion"]), mode="markers",
                                 marker=dict(symbol="line-ew", size=6 * t["marker_size"] + 10, color=colour,
                                             line=dict(width=t["line_width"] + 1, color=colour))))
    fig.update_xaxes(title_text="true class", type="category")
    fig.update_yaxes(title_text="share answered right", range=[0, 1.05])
    return style_layout(fig, style, height, barmode="group", scattermode="group",
                        margin=dict(l=60, r=20, t=20, b=10), legend=LEGEND_BELOW)


# ---------------------------------------------------------------- export


def chart_config(fmt: str, width: int, height: int, scale: float, filename: str) -> dict:
    """Plotly's own toolbar camera: client-side PNG or SVG, needs nothing on the server."""
    config = {"displaylogo": False,
              "toImageButtonOptions": {"format": fmt, "width": width, "height": height, "scale": scale,
                                       "filename": filename}}
    if fmt != "png":  # the camera's tooltip is plotly.js's fixed text; a chart-local locale renames it
        config.update(locale="en-advft", locales={"en-advft": {"dictionary": {
            "Download plot as a png": f"Download plot as {fmt.upper()}", "Download plot": f"Download plot as {fmt.upper()}"}}})
    return config


def static_export_status() -> tuple[bool, str]:
    """Whether the server can render PNG/SVG itself (Kaleido 1.x driving a Chromium)."""
    if importlib.util.find_spec("kaleido") is None:
        return False, ("server-side export needs the 'kaleido' package (pip install 'kaleido>=1,<2') and a "
                       "Chromium; the chart toolbar's camera works without either")
    browser = os.environ.get("BROWSER_PATH") or shutil.which("chromium") or shutil.which("google-chrome")
    if not browser:
        return False, "server-side export needs a Chromium/Chrome for Kaleido (set BROWSER_PATH); none found"
    return True, f"Kaleido with {browser}"


RENDER_TRIES = 3


def render_static(fig: go.Figure, fmt: str, width: int, height: int, scale: float) -> bytes:
    ok, why = static_export_status()
    if not ok:
        raise RuntimeError(why)
    if not os.environ.get("BROWSER_PATH"):
        os.environ["BROWSER_PATH"] = shutil.which("chromium") or shutil.which("google-chrome")
    # Kaleido's first render in a fresh browser tab can run before the tab's own script has loaded
    # ("ReferenceError: kaleido_scopes is not defined", more often on a busy machine); a second try works.
    for _ in range(RENDER_TRIES):
        try:
            return fig.to_image(format=fmt, width=width, height=height, scale=scale if fmt == "png" else 1)
        except Exception as e:  # kaleido's errors carry raw DevTools objects: say it in one line instead
            failure = e
    words = failure.args[0] if failure.args else ""
    detail = words.get("result", {}).get("description", "") if isinstance(words, dict) else str(words)
    raise RuntimeError(f"Kaleido could not render the image after {RENDER_TRIES} tries ({type(failure).__name__}: "
                       f"{str(detail).splitlines()[0][:160] if detail else 'no detail'})")
