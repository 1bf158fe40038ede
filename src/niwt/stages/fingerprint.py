"""``fingerprint``: digests of everything the pipeline reads that DVC cannot track by itself.

``dvc.yaml`` runs it on every ``dvc repro`` (``always_changed``); three small outputs, each a dep of the
stages that read what it describes, change exactly when that changes:

* ``--out``: the raw dataset's file list, sizes and modification times (``prepare`` and ``cache``: a
  rewritten image reruns the cache even when the split table stays byte-identical);
* ``--model-files``: the content of ``model.weights`` and ``model.class_names`` when they name files
  (``finetune``, ``finetune_validation``: a retrained classifier saved over the old one reruns them);
* ``--pool-files``: an ``inject.pool`` folder's file list (``validate``, ``inject``).

Paths are resolved against the project root, so ``dvc exp run --temp/--queue`` fingerprint the
workspace's files. See :mod:`niwt.data.fingerprint`.
"""

from __future__ import annotations

import time
from pathlib import Path

from niwt.data.fingerprint import fingerprint, named_files
from niwt.importance.degenerate import check_structure
from niwt.io.atomic import write_json
from niwt.io.project import resolve_root
from niwt.params import Params, Runtime
from niwt.stages import StageResult


def run(p: Params, rt: Runtime, out: Path, model_files: Path | None = None,
        pool_files: Path | None = None) -> StageResult:
    # a layer that cannot work is refused here, in seconds, not by extract after hours of training; at
    # 224 px, a size every architecture takes (the structure does not depend on it; model.image_size is cache's)
    verdict = check_structure(p.model.arch, p.extract.layer, 224, width=p.model.width,
                              hidden=p.model.hidden, allow=p.extract.allow_degenerate)
    print(f"[fingerprint] importance layer {verdict.layer} of {p.model.arch}: "
          + (f"first nonlinearity above it: {verdict.nonlinearity}" if verdict.nonlinearity
             else "degenerate (extract.allow_degenerate: true)"), flush=True)
    start = time.perf_counter()
    name = p.data.name
    anchor = Path(out).absolute().parent
    root = None if name == "synthetic" else resolve_root(p.data.root, anchor)
    entry = fingerprint(name, root, p.data.dataset if name == "xlsa17" else "CUB")
    if model_files is not None:
        named = {"model.weights": p.model.weights, "model.class_names": p.model.class_names}
        write_json(model_files, named_files(named, {"model.weights": ("none", "imagenet")}, anchor))
    if pool_files is not None:
        write_json(pool_files, named_files({"inject.pool": p.inject.pool}, {"inject.pool": ("train", "noise")}, anchor))
    write_json(out, entry)
    folders = entry.get("folders", {}).values()
    metrics = {"n_files": sum(f.get("files", 0) for f in folders), "bytes": sum(f.get("bytes", 0) for f in folders)}
    missing = [label for label, f in entry.get("folders", {}).items() if f.get("missing")]
    if missing:
        print(f"[fingerprint] not on disk yet: {missing} (prepare will say what to do)", flush=True)
    print(f"[fingerprint] {metrics['n_files']} raw files in {time.perf_counter() - start:.2f} s", flush=True)
    return StageResult(metrics)
