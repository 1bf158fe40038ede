"""``fingerprint``: a digest of the raw dataset's file list, sizes and modification times.

``dvc.yaml`` runs it on every ``dvc repro`` (``always_changed``) and ``prepare`` depends on its
output, so an edit to the raw data reruns ``prepare`` (and, when the tables change, what follows),
while an untouched tree reruns nothing. ``data.root`` is resolved against the project root, so
``dvc exp run --temp/--queue`` fingerprint the workspace's data. See :mod:`niwt.data.fingerprint`.
"""

from __future__ import annotations

import time
from pathlib import Path

from niwt.data.fingerprint import fingerprint
from niwt.io.atomic import write_json
from niwt.io.project import resolve_root
from niwt.params import Params, Runtime
from niwt.stages import StageResult


def run(p: Params, rt: Runtime, out: Path) -> StageResult:
    start = time.perf_counter()
    name = p.data.name
    root = None if name == "synthetic" else resolve_root(p.data.root, Path(out).absolute().parent)
    entry = fingerprint(name, root, p.data.dataset if name == "xlsa17" else "CUB")
    write_json(out, entry)
    folders = entry.get("folders", {}).values()
    metrics = {"n_files": sum(f.get("files", 0) for f in folders), "bytes": sum(f.get("bytes", 0) for f in folders)}
    missing = [label for label, f in entry.get("folders", {}).items() if f.get("missing")]
    if missing:
        print(f"[fingerprint] not on disk yet: {missing} (prepare will say what to do)", flush=True)
    print(f"[fingerprint] {metrics['n_files']} raw files in {time.perf_counter() - start:.2f} s", flush=True)
    return StageResult(metrics)
