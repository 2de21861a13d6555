"""Is the animated export fast and small enough for a lecture? One table, targets checked in the same run.

    python3 bench/bench_animate.py [--repeat 3]

Times `python -m core animate recorded-lecture --out fig5.gif --width 1200` as a user would (process start
to exit), in the presentation style, and reads the file's size. Targets: <= 20 s and <= 5 MB on a 2-core
CPU. MP4 and WebM are timed too where PyAV is installed (no targets: the GIF is what slides embed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def export(out: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "core", "animate", "recorded-lecture", "--out", str(out),
                           "--width", "1200"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the export failed: {done.stderr.strip()}")
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    try:
        import av  # noqa: F401
        formats = ["gif", "mp4", "webm"]
    except ImportError:
        formats = ["gif"]
    out = Path(tempfile.mkdtemp(prefix="bench-animate-"))
    load = os.getloadavg()
    print(f"recorded-lecture, 1200 px, presentation style · {os.cpu_count()} CPUs · load {load[0]:.2f} {load[1]:.2f}")
    print(f"{'measure (median of ' + str(a.repeat) + ')':34s} {'measured':24s} {'target':8s} met")
    for fmt in formats:
        path = out / f"fig5.{fmt}"
        wall = statistics.median(export(path) for _ in range(a.repeat))
        mb = path.stat().st_size / 1e6
        rows = [(f"{fmt.upper()} export wall time (s)", f"{wall:.1f}", "<= 20" if fmt == "gif" else "", wall <= 20),
                (f"{fmt.upper()} file size (MB)", f"{mb:.2f}", "<= 5" if fmt == "gif" else "", mb <= 5)]
        for name, value, target, ok in rows:
            print(f"{name:34s} {value:24s} {target:8s} {'' if not target else 'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
