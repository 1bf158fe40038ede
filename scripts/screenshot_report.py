"""Open an HTML report in headless Chromium and save a full-page screenshot (a look in a real browser).

    python scripts/screenshot_report.py reports/explain/report.html docs/report_screenshot.png

Prints the page height in CSS pixels (the content's extent). Needs Debian's ``chromium`` package
(``apt-get install chromium``); runs offline: the report embeds everything it shows.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(html: Path | str, png: Path, width: int = 1200, height: int = 20000, timeout: int = 120,
               wait_ms: int = 0) -> int:
    """Render ``html`` (a file, or a URL) at ``width`` in a tall window and save it cropped to the content;
    returns the content's height in pixels. ``wait_ms``: virtual time for a page's scripts to draw it (a
    JavaScript app such as MLflow's UI)."""
    exe = chromium()
    if exe is None:
        raise SystemExit("no chromium found: apt-get install chromium")
    target = html if isinstance(html, str) else html.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        raw = Path(profile) / "raw.png"
        wait = [f"--virtual-time-budget={wait_ms}"] if wait_ms else []
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *wait,
                        f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={raw}",
                        target], check=True, capture_output=True, timeout=timeout)
        with Image.open(raw) as img:
            page = img.convert("RGB")
    grey = np.asarray(page.convert("L"))
    rows = np.flatnonzero((grey < 250).any(axis=1))
    extent = int(rows[-1]) + 1 if len(rows) else 0
    png.parent.mkdir(parents=True, exist_ok=True)
    page.crop((0, 0, page.width, min(page.height, extent + 20))).save(png)
    return extent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1200)
    args = parser.parse_args()
    print(f"page height: {screenshot(args.html, args.png, args.width)} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
