"""Animated export of a run's Fig. 5 panels: an animated GIF (Pillow, always there) or an MP4 / WebM video
(PyAV, optional: requirements-video.txt), over the run's frames, for slides.

The drift AdvFT causes is a motion, and a still loses it. Plotly renders images on the server only through
Kaleido and a Chromium (~10 s an image here), far too slow for dozens of frames, so the frames are drawn
here with Pillow, from what the app's charts are drawn from: the same points (core.figures.panel_points),
the same fixed axes (core.figures.fixed_axes, fitted over every exported frame, so that points move and
the axes never do; the zoom panel's axes are core.figures.zoom_ranges), the same colours, marker shapes
and font sizes (core.figures.theme: assets/style/theme.json), on an opaque background.

Video: PyAV's wheels bundle FFmpeg with libx264 and libvpx, so MP4 (H.264) and WebM (VP9) need no system
codecs; it encodes in this process (no ffmpeg subprocess to find or feed through a pipe), its wheel is
about half the size of imageio-ffmpeg's, and it decodes too (the tests read the files back with it).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .advft import Snapshot, epoch_label
from .errors import UserError
from .figures import PANEL_TITLES, Points, Projection, Ranges, fixed_axes, panel_points, theme, zoom_ranges
from .runs import RunDir

FORMATS = {".gif": "gif", ".mp4": "mp4", ".webm": "webm"}
PANELS = ("mr", "mf", "zoom")           # M_R | M_F | M_F's zoom on where the OOD probes start
SUPERSAMPLE = 2                          # drawn at twice the size, then reduced: smooth edges without AA drawing
VIDEO_CODECS = {"mp4": ("libx264", {"crf": "20", "preset": "veryfast"}),
                "webm": ("libvpx-vp9", {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"})}
VIDEO_INSTALL = "pip install -r requirements-video.txt"


class AnimationError(UserError, ValueError):
    """An export that cannot be made as asked (a format, a run without frames, a missing encoder)."""


@dataclass(frozen=True)
class AnimationSpec:
    """What an export looks like. `fps` frames per second; `width` the file's width in pixels (the height
    follows from the panels); `panels` any of PANELS in order; `max_frames` evenly spaced frames of the run
    at most (first and last kept); `hold_s` how long the last frame stays before the loop starts again."""

    fps: float = 4.0
    width: int = 1200
    panels: tuple[str, ...] = PANELS
    style: str = "presentation"
    max_frames: int = 120
    hold_s: float = 1.5

    def validate(self) -> "AnimationSpec":
        if not (0.5 <= self.fps <= 30):
            raise AnimationError(f"the frame rate must be from 0.5 to 30 frames/s (got {self.fps:g})")
        if not (320 <= self.width <= 3840):
            raise AnimationError(f"the width must be from 320 to 3840 px (got {self.width})")
        if not self.panels or any(p not in PANELS for p in self.panels) or len(set(self.panels)) != len(self.panels):
            raise AnimationError(f"panels must be distinct names from {', '.join(PANELS)} (got {','.join(self.panels)})")
        if self.style not in ("screen", "presentation"):
            raise AnimationError(f"the style must be screen or presentation (got {self.style})")
        if not (2 <= self.max_frames <= 1000):
            raise AnimationError(f"the number of frames must be from 2 to 1000 (got {self.max_frames})")
        if not (0 <= self.hold_s <= 30):
            raise AnimationError(f"the hold of the last frame must be from 0 to 30 s (got {self.hold_s:g})")
        return self


def parse_panels(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def format_of(path: str | Path) -> str:
    """'gif', 'mp4' or 'webm' from a file name; an AnimationError names the choices otherwise."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise AnimationError(f"'{Path(path).name}': name the file .gif, .mp4 or .webm (the format follows the suffix)")
    return fmt


def video_available() -> tuple[bool, str]:
    """Whether MP4/WebM can be written here (PyAV installed), and if not, how to get it."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False, f"MP4 and WebM need PyAV ({VIDEO_INSTALL}); the GIF needs nothing more"
    return True, f"PyAV {av.__version__}"


# ---------------------------------------------------------------- the run's frames


@dataclass(frozen=True)
class Film:
    """The snapshots to animate and what each frame is called."""

    snapshots: list[Snapshot]
    labels: list[str]
    classes: tuple[str, ...]


def frame_count(run: RunDir) -> int:
    """How many frames an animation of the run can have now (before `max_frames`): its frames, else its
    epoch snapshots. Cheap: it reads file names only."""
    steps = run.frame_steps()
    return len(steps) if len(steps) >= 2 else len(run.snapshot_epochs())


def no_frames_message(run: RunDir, count: int) -> str:
    return (f"run '{run.name}' has {count} saved frame(s) so far; an animation needs two or more "
            "(a run saves one every few steps: let it run a moment)")


def film(run: RunDir, max_frames: int = AnimationSpec.max_frames) -> Film:
    """A run's frames (one every few steps), or its epoch snapshots when it has no frames; evenly spaced,
    at most `max_frames`. Works on a live run too: frames are written atomically."""
    from .data import DATASETS
    from .training import evenly

    config = run.config()  # RunError when it is not a run
    steps = run.frame_steps()
    per_epoch = config.advft.i_g + config.advft.i_f
    if len(steps) >= 2:
        snaps = [run.load_frame(s) for s in evenly(steps, max_frames)]
        labels = [epoch_label(s.step, per_epoch) for s in snaps]
    else:
        snaps = [run.load_snapshot(e) for e in evenly(run.snapshot_epochs(), max_frames)]
        labels = [epoch_label(s.epoch * per_epoch, per_epoch) for s in snaps]
    if len(snaps) < 2:
        raise AnimationError(no_frames_message(run, len(snaps)))
    return Film(snaps, labels, DATASETS[config.dataset].classes if config.dataset in DATASETS else
                tuple(str(i) for i in range(int(snaps[0].head.shape[0]))))


# ---------------------------------------------------------------- drawing


def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans where the system has it (close to the charts' Verdana-like face, with every glyph used
    here); else Pillow's own bundled face."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _rgba(colour: str, opacity: float) -> tuple[int, int, int, int]:
    return (*_rgb(colour), round(255 * opacity))


def nice_ticks(lo: float, hi: float, fits) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k apart) inside [lo, hi]: the closest spacing for which
    fits(ticks) is true (their labels do not touch), else the widest."""
    mag = 10 ** math.floor(math.log10(max(hi - lo, 1e-12))) / 100
    ticks: list[float] = []
    for step in (m * mag * 10 ** k for k in range(5) for m in (1, 2, 5)):
        first = math.ceil(lo / step) * step
        ticks = [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]
        if fits(ticks):
            break
    return ticks


def _tick_text(v: float) -> str:
    return f"{v:g}".replace("-", "\u2212")  # a real minus sign, as Plotly writes it


@dataclass
class _Panel:
    kind: str
    box: tuple[int, int, int]   # left, top, side of the square plot area (supersampled pixels)
    outer: tuple[int, int]      # the panel's whole width, tick labels included: where its title may go
    ranges: Ranges
    title: str


@dataclass
class Renderer:
    """Draws Fig. 5 frames of one run in one style at one size. The parts that never change (backgrounds,
    grids, ticks, M_R's ID and OOD points, the legend) are drawn once into `base`."""

    first: Snapshot
    proj: Projection
    ranges: Ranges
    classes: tuple[str, ...]
    spec: AnimationSpec
    base: Image.Image | None = field(default=None, init=False)

    def __post_init__(self):
        t = theme(self.spec.style)
        self.t, s = t, SUPERSAMPLE
        self.font = _font(t["font_size"] * s)
        self.title_font = _font((t["font_size"] + 2) * s)
        self.marker = t["marker_size"] * s
        fs = t["font_size"] * s
        width = self.spec.width * s
        pad, gap = 12 * s, 20 * s
        y_axis = int(3.3 * fs)   # room for the y tick labels left of each plot
        top = int(2.2 * fs)      # the panel titles
        usable = width - 2 * pad - gap * (len(self.spec.panels) - 1)
        zoom = zoom_ranges(self.first, self.proj)
        self.panels, left = [], pad
        panel_w = usable // len(self.spec.panels)  # equal widths, as in the app (core.figures.fig5_panels)
        for kind in self.spec.panels:
            side = panel_w - y_axis - 4 * s
            self.panels.append(_Panel(kind, (left + y_axis, top, side), (left, left + panel_w),
                                      zoom if kind == "zoom" else self.ranges,
                                      PANEL_TITLES[kind]))
            left += panel_w + gap
        tallest = max(p.box[2] for p in self.panels)
        self.legend_top = top + tallest + int(1.9 * fs)
        height = self.legend_top + self._legend() * int(1.6 * fs) + pad
        # Whole pixels once reduced, and even ones: H.264 and VP9 in yuv420p need even sides.
        self.size = (width - width % (2 * s), height + (-height) % (2 * s))
        self.base = self._draw_base()

    # ------------------------------------------------------------ coordinates
    @staticmethod
    def _visible(panel: _Panel, xy: np.ndarray) -> np.ndarray:
        """Data points -> the pixels of those inside the panel's plot area (Plotly clips the same way)."""
        left, top, side = panel.box
        (x0, x1), (y0, y1) = panel.ranges.x, panel.ranges.y
        px = np.stack([left + (xy[:, 0] - x0) / (x1 - x0) * side, top + (y1 - xy[:, 1]) / (y1 - y0) * side], 1)
        keep = (px[:, 0] >= left) & (px[:, 0] <= left + side) & (px[:, 1] >= top) & (px[:, 1] <= top + side)
        return px[keep]

    # ------------------------------------------------------------ markers (the theme's symbols), at pixels
    @staticmethod
    def _circles(d, px, colour, opacity, size, outline_only=False):
        r, c = size / 2, _rgba(colour, opacity)
        for x, y in px:
            if outline_only:
                d.ellipse((x - r, y - r, x + r, y + r), outline=c, width=SUPERSAMPLE)
            else:
                d.ellipse((x - r, y - r, x + r, y + r), fill=c)

    @staticmethod
    def _crosses(d, px, colour, opacity, size):
        r, c, w = size / 2, _rgba(colour, opacity), max(SUPERSAMPLE, round(size / 5))
        for x, y in px:
            d.line((x - r, y - r, x + r, y + r), fill=c, width=w)
            d.line((x - r, y + r, x + r, y - r), fill=c, width=w)

    @staticmethod
    def _stars(d, px, colour, opacity, size):
        outer, inner = size / 2, size / 2 * 0.45
        corners = [(math.cos(a), math.sin(a)) for a in (math.pi / 2 + k * math.pi / 5 for k in range(10))]
        for x, y in px:
            pts = [(x + (outer if k % 2 == 0 else inner) * cx, y - (outer if k % 2 == 0 else inner) * cy)
                   for k, (cx, cy) in enumerate(corners)]
            d.polygon(pts, fill=_rgba(colour, opacity), outline=(255, 255, 255, 255))

    def _rays(self, d, panel: _Panel, rays) -> None:
        """The frozen head's class directions, dotted, from the origin to the edge of the plot."""
        if rays is None:
            return
        reach = max(abs(v) for v in (*panel.ranges.x, *panel.ranges.y)) * 1.5
        w = max(SUPERSAMPLE, (self.t["line_width"] - 1) * SUPERSAMPLE)
        for c, vec in enumerate(np.asarray(rays, dtype=np.float64)):
            line = np.linspace(0, 1, 400)[:, None] * (vec / (np.linalg.norm(vec) + 1e-12) * reach)[None]
            px = self._visible(panel, line)  # the ray's part inside the plot
            if len(px) < 2:
                continue
            a, b = px[0], px[-1]
            length = float(np.hypot(*(b - a)))
            unit, pos = (b - a) / max(length, 1e-9), 0.0
            while pos < length:  # dots, as Plotly's dash="dot"
                d.line((*(a + unit * pos), *(a + unit * min(pos + w, length))), fill=_rgb(self.t["classes"][c % 10]),
                       width=w)
                pos += 3 * w

    def _id_points(self, d, panel: _Panel, p: Points) -> None:
        for c in range(len(self.classes)):
            self._circles(d, self._visible(panel, p.id[p.labels == c]), self.t["classes"][c % 10], 0.8, self.marker)

    # ------------------------------------------------------------ the parts
    def _draw_base(self) -> Image.Image:
        t, s = self.t, SUPERSAMPLE
        img = Image.new("RGB", self.size, _rgb(t["paper_bg"]))  # opaque: readable on a dark slide
        d = ImageDraw.Draw(img, "RGBA")
        before = panel_points(self.first, self.proj, "before")
        for panel in self.panels:
            left, top, side = panel.box
            (x0, x1), (y0, y1) = panel.ranges.x, panel.ranges.y
            d.rectangle((left, top, left + side, top + side), fill=_rgb(t["plot_bg"]))
            room = 0.6 * self.t["font_size"] * s

            def fits(ticks: list[float]) -> bool:  # the x labels side by side with some room between them
                return len(ticks) * (max(self.font.getlength(_tick_text(v)) for v in ticks) + room) <= side if ticks else False

            ticks_x, ticks_y = nice_ticks(x0, x1, fits), nice_ticks(y0, y1, fits)
            for v in ticks_x:
                x = left + (v - x0) / (x1 - x0) * side
                d.line((x, top, x, top + side), fill=_rgb(t["grid"]), width=s * (2 if v == 0 else 1))
                d.text((x, top + side + 4 * s), _tick_text(v), font=self.font, fill=_rgb(t["text"]), anchor="ma")
            for v in ticks_y:
                y = top + (y1 - v) / (y1 - y0) * side
                d.line((left, y, left + side, y), fill=_rgb(t["grid"]), width=s * (2 if v == 0 else 1))
                d.text((left - 6 * s, y), _tick_text(v), font=self.font, fill=_rgb(t["text"]), anchor="rm")
            if panel.kind == "mr":  # M_R's ID and OOD points never move (its G(z) stars do)
                self._rays(d, panel, before.rays)
                self._id_points(d, panel, before)
                self._crosses(d, self._visible(panel, before.ood), t["roles"]["ood"], 0.55, self.marker)
            elif panel.kind == "mf":
                self._rays(d, panel, before.rays)
            else:  # the zoom: M_R's OOD positions, faint, under M_F's
                self._circles(d, self._visible(panel, before.ood), t["roles"]["ood_before"], 1.0, self.marker, True)
        self._legend(d)
        return img

    def _legend_entries(self) -> list[tuple[str, str, str]]:
        t = self.t
        return [*((f"ID {name}", "id", t["classes"][c % 10]) for c, name in enumerate(self.classes)),
                ("OOD", "ood", t["roles"]["ood"]), ("G(z)", "gen", t["roles"]["generator"]),
                *([("OOD under M_R", "ood_before", t["roles"]["ood_before"])] if "zoom" in self.spec.panels else [])]

    def _legend(self, d=None) -> int:
        """The legend below the panels (ID classes, OOD, G(z)), wrapped into rows; returns the row count
        (`d` None: only measure)."""
        s, fs = SUPERSAMPLE, self.t["font_size"] * SUPERSAMPLE
        x, row, right = 12 * s, 0, self.spec.width * s - 12 * s
        for text, kind, colour in self._legend_entries():
            w = int(1.4 * fs) + int(self.font.getlength(text)) + fs
            if x + w > right and x > 12 * s:
                x, row = 12 * s, row + 1
            if d is not None:
                cy = self.legend_top + row * int(1.6 * fs) + fs // 2
                at = np.array([[x + 0.6 * fs, cy]])
                if kind in ("id", "ood_before"):
                    self._circles(d, at, colour, 1.0, self.marker * 1.4, kind == "ood_before")
                elif kind == "ood":
                    self._crosses(d, at, colour, 1.0, self.marker * 1.4)
                else:
                    self._stars(d, at, colour, 1.0, self.marker * 2.2)
                d.text((x + int(1.3 * fs), cy), text, font=self.font, fill=_rgb(self.t["text"]), anchor="lm")
            x += w
        return row + 1

    def frame(self, snapshot: Snapshot, label: str) -> Image.Image:
        """One frame: the base, this snapshot's moving points, and the titles (M_F's names the frame)."""
        t = self.t
        img = self.base.copy()
        d = ImageDraw.Draw(img, "RGBA")
        before, after = panel_points(snapshot, self.proj, "before"), panel_points(snapshot, self.proj, "after")
        for panel in self.panels:
            # G(z) first, then the OOD crosses on top, as in the app: the larger stars must not hide the crosses
            if panel.kind == "mr":
                self._stars(d, self._visible(panel, before.gen), t["roles"]["generator"], 0.85, self.marker * 1.8)
                title, colour = panel.title, t["roles"]["m_r"]
            else:
                if panel.kind == "mf":
                    self._id_points(d, panel, after)
                self._stars(d, self._visible(panel, after.gen), t["roles"]["generator"], 0.85, self.marker * 1.8)
                self._crosses(d, self._visible(panel, after.ood), t["roles"]["ood"], 0.55, self.marker)
                title = f"M_F, {label}" if panel.kind == "mf" else panel.title
                colour = t["roles"]["m_f"]
            left, top, side = panel.box
            lo, hi = panel.outer
            font = self.title_font
            while font.getlength(title) > hi - lo and font.size > t["font_size"] * SUPERSAMPLE:
                font = _font(font.size - SUPERSAMPLE)  # a long title shrinks, never below the charts' font size
            half = font.getlength(title) / 2  # centred over the plot, moved back inside the panel if it sticks out
            centre = min(max(left + side / 2, lo + half), hi - half)
            d.text((centre, top - 8 * SUPERSAMPLE), title, font=font, fill=_rgb(colour), anchor="md")
        return img.reduce(SUPERSAMPLE)


# ---------------------------------------------------------------- writing files


def renderer_for(f: Film, spec: AnimationSpec) -> Renderer:
    """Axes fitted once over every frame of the film: points move, axes never do."""
    proj, ranges = fixed_axes(f.snapshots[0], fit=f.snapshots)
    return Renderer(f.snapshots[0], proj, ranges, f.classes, spec)


def durations_ms(n: int, spec: AnimationSpec) -> list[int]:
    """Each frame's display time: a GIF counts in hundredths of a second (8 frames/s is 0.12 s a frame)."""
    step = 10 * round(100 / spec.fps)
    return [step] * (n - 1) + [step + 10 * round(100 * spec.hold_s)]


def _palette_colours(style: str) -> list[tuple[int, int, int]]:
    """The theme's own colours, kept exact in a GIF's palette (a white background stays white)."""
    t = theme(style)
    named = [t["paper_bg"], t["plot_bg"], t["grid"], t["text"], *t["classes"], *t["roles"].values(), "#ffffff"]
    return list(dict.fromkeys(_rgb(c) for c in named))


def _to_palette(im: Image.Image, colours: np.ndarray) -> Image.Image:
    """Each pixel to its nearest palette colour, exact colours exactly (Pillow's own mapping works on a coarser
    grid of colours and can turn the white background into 253, 253, 253)."""
    rgb = np.asarray(im, dtype=np.int32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    unique, inverse = np.unique(packed, return_inverse=True)
    parts = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], 1)
    nearest = ((parts[:, None, :] - colours[None]) ** 2).sum(2).argmin(1).astype(np.uint8)
    out = Image.fromarray(nearest[inverse].reshape(packed.shape), mode="P")
    out.putpalette(colours.astype(np.uint8).flatten().tolist())
    return out


def write_gif(images: list[Image.Image], spec: AnimationSpec) -> bytes:
    """One palette for every frame: the theme's colours exactly, then the blends (edges, overlaps) of the first
    and the last frame, so that colours never flicker; no dithering (flat colours compress well and stay
    crisp); looping forever."""
    w, h = images[0].size
    both = Image.new("RGB", (w, 2 * h))
    both.paste(images[0], (0, 0))
    both.paste(images[-1], (0, h))
    exact = _palette_colours(spec.style)
    blends = both.quantize(colors=256 - len(exact), method=Image.Quantize.MEDIANCUT).getpalette()[:3 * (256 - len(exact))]
    colours = np.array(exact + [tuple(blends[i:i + 3]) for i in range(0, len(blends), 3)], dtype=np.int32)
    frames = [_to_palette(im, colours) for im in images]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations_ms(len(frames), spec),
                   loop=0, disposal=1, optimize=False)
    return buf.getvalue()


def write_video(images: list[Image.Image], spec: AnimationSpec, fmt: str) -> bytes:
    ok, why = video_available()
    if not ok:
        raise AnimationError(why)
    import av
    from fractions import Fraction

    codec, options = VIDEO_CODECS[fmt]
    buf = io.BytesIO()
    rate = Fraction(spec.fps).limit_denominator(1000)
    hold = round(spec.hold_s * spec.fps)  # a video's frames all last as long: the last one is repeated
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = images[0].size
        stream.pix_fmt = "yuv420p"
        for im in [*images, *[images[-1]] * hold]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(im), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@dataclass(frozen=True)
class Animation:
    data: bytes
    fmt: str
    frames: int
    size: tuple[int, int]
    seconds: float   # to draw and encode


def animate(run: RunDir, fmt: str = "gif", spec: AnimationSpec = AnimationSpec()) -> Animation:
    """The run's Fig. 5 panels over its frames as a GIF, MP4 or WebM file (its bytes)."""
    spec = spec.validate()
    if fmt not in FORMATS.values():
        raise AnimationError(f"unknown format '{fmt}'; choose gif, mp4 or webm")
    if fmt != "gif":
        ok, why = video_available()
        if not ok:
            raise AnimationError(why)  # before any drawing
    t0 = time.perf_counter()
    f = film(run, spec.max_frames)
    renderer = renderer_for(f, spec)
    images = [renderer.frame(s, label) for s, label in zip(f.snapshots, f.labels)]
    data = write_gif(images, spec) if fmt == "gif" else write_video(images, spec, fmt)
    return Animation(data, fmt, len(images), images[0].size, time.perf_counter() - t0)
