"""Screenshot MLflow's compare view of a sweep: the pipeline parent runs side by side (docs/mlflow_compare.png).

Each ``dvc exp run`` is one MLflow parent run carrying every pipeline param and every method's headline
(``niwt/H``, ``eszsl/cal_H``, ...). This script selects the finished parent runs that differ in ``--param``
(one per sweep point; the committed baseline too, when logged), starts ``mlflow server`` on a free local
port over the project's ``mlflow.db``, opens the compare view in headless Chromium (Debian's
``chromium``) and saves the page as a PNG, cropped to its content. The command that made the committed picture::

    python scripts/mlflow_compare_screenshot.py --project PROJECT --param inject.lambda --out docs/mlflow_compare.png

(PROJECT: a checkout after ``dvc repro`` and two ``dvc exp run -S inject.lambda=...``; README, MLflow).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from screenshot_report import chromium  # this folder: scripts/


def sweep_runs(uri: str, experiment: str, param: str) -> tuple[str, list[str]]:
    """(experiment id, run ids): the newest finished pipeline parent run per value of ``param``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"{uri}: no experiment {experiment!r}")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["start_time DESC"])
    chosen: dict[str, str] = {}
    for run in runs:
        if run.data.tags.get("niwt.stage") in ("pipeline", "baseline") and param in run.data.params:
            chosen.setdefault(run.data.params[param], run.info.run_id)
    if len(chosen) < 2:
        raise SystemExit(f"{uri}: fewer than two finished pipeline runs differ in {param} ({sorted(chosen)})")
    return exp.experiment_id, list(chosen.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Run in the page once the app has drawn it: the parameters table shows only what differs (the swept param),
# the metrics and parameters tables lose their height limits (every method's metrics in view), the assistant
# side panel is closed.
ARRANGE = """(async () => {
  for (const b of document.querySelectorAll('button[aria-label]')) {
    if (/close/i.test(b.getAttribute('aria-label'))) b.click();
  }
  const switches = [...document.querySelectorAll('[role="switch"]')];
  if (switches.length) switches[0].click();
  await new Promise(r => setTimeout(r, 500));
  for (let pass = 0; pass < 4; pass++) {  // inner panes first reveal what their parents must then hold
    for (const el of document.querySelectorAll('*')) {
      if (el.scrollHeight > el.clientHeight + 1) {
        el.style.maxHeight = 'none'; el.style.height = 'auto'; el.style.overflow = 'visible';
        el.dispatchEvent(new Event('scroll'));  // a virtualised list draws the rows now in view
      }
    }
    window.dispatchEvent(new Event('resize'));
    await new Promise(r => setTimeout(r, 700));
  }
  return document.documentElement.scrollHeight;
})()"""


async def _capture(url: str, out: Path, width: int, height: int) -> None:
    """Open ``url`` in headless Chromium, arrange the page (:data:`ARRANGE`) through the DevTools protocol
    and save a full-page PNG."""
    import asyncio
    import base64
    import tempfile

    import websockets

    exe = chromium()
    if exe is None:
        raise SystemExit("needs Chromium (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                    f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                    f"--window-size={width},{height}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            for _ in range(300):
                if port_file.is_file() and port_file.read_text().strip():
                    break
                await asyncio.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as answer:  # noqa: S310 (local)
                page = next(t for t in json.load(answer) if t["type"] == "page")
            async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
                ids = iter(range(1, 1_000_000))

                async def call(method: str, **params: object) -> dict:
                    n = next(ids)
                    await ws.send(json.dumps({"id": n, "method": method, "params": params}))
                    while True:
                        message = json.loads(await ws.recv())
                        if message.get("id") == n:
                            return message.get("result", {})

                await call("Page.enable")
                await call("Page.navigate", url=url)
                await asyncio.sleep(10)  # the app fetches the runs and draws them
                await call("Runtime.evaluate", expression=ARRANGE, awaitPromise=True)
                shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            browser.terminate()
            browser.wait(timeout=30)


def serve_and_capture(uri: str, experiment_id: str, run_ids: list[str], out: Path, width: int, height: int) -> None:
    """Serve ``uri`` with ``mlflow server`` (127.0.0.1 only) and save the compare view of ``run_ids``."""
    import asyncio

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):  # noqa: S310 (local http)
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"mlflow server on {base} did not start") from None
                time.sleep(1)
        query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])},
                                       quote_via=urllib.parse.quote)
        asyncio.run(_capture(f"{base}/#/compare-runs?{query}", out, width, height))
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, default=Path("."), help="the checkout holding mlflow.db")
    ap.add_argument("--experiment", default="niwt", help="MLflow experiment (tracking.experiment)")
    ap.add_argument("--param", default="inject.lambda", help="the swept param")
    ap.add_argument("--out", type=Path, default=Path("docs/mlflow_compare.png"))
    ap.add_argument("--size", default="1400x1000", help="browser window, WIDTHxHEIGHT")
    args = ap.parse_args(argv)
    uri = f"sqlite:///{(args.project / 'mlflow.db').absolute()}"
    experiment_id, run_ids = sweep_runs(uri, args.experiment, args.param)
    width, height = (int(v) for v in args.size.split("x"))
    serve_and_capture(uri, experiment_id, run_ids, args.out, width, height)
    print(f"{args.out}: compare view of {len(run_ids)} runs ({args.param})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
