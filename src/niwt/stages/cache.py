"""``cache``: decode every image of the split table once, into the decoded-image cache.

The later stages that read images (finetune, extract, inject, evaluate, explain) take the cache
with ``--cache`` and read its memory-mapped arrays instead of decoding the files; what is stored,
and why the default's numbers do not change, is in :mod:`niwt.data.cache`. ``cache.enabled:
false`` writes a cache that says it is disabled, and the stages decode the files as before.
Build processes are the ``NIWT_WORKERS`` execution setting (0, the default: all cores). Precomputed
features (``data.name: xlsa17``) have no pixels to decode: their cache says it is disabled, and the
stages read the features' own memory map (:mod:`niwt.data.features`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from niwt.data.cache import build_cache, write_disabled
from niwt.data.features import is_feature_table
from niwt.data.images import check_images_exist
from niwt.data.tables import read_splits
from niwt.params import Params, Runtime
from niwt.stages import StageResult


def run(p: Params, rt: Runtime, data: Path, out: Path, raw: Path | None = None) -> StageResult:
    splits_file = Path(data) / "splits.parquet"
    # the raw files' fingerprint (the fingerprint stage's output): pixels rewritten at the same paths
    raw_digest = hashlib.sha256(Path(raw).read_bytes()).hexdigest() if raw is not None else ""
    if not p.cache.enabled:
        return StageResult(write_disabled(splits_file, Path(out), raw_digest))
    splits = read_splits(splits_file)
    if is_feature_table(splits.path):
        print("[cache] feature rows (data.name: xlsa17): nothing to decode", flush=True)
        # prepare copied the features: no stage reads the raw files again, so their fingerprint stays out
        return StageResult(write_disabled(splits_file, Path(out)))
    check_images_exist(splits.path, splits.image_id, splits_file)  # before any work
    stats = build_cache(splits_file, Path(out), p.model.image_size, workers=rt.workers, progress=rt.progress,
                        raw=raw_digest)
    print(f"[cache] {stats['n_images']} images, {stats['size_bytes'] / 2**20:.1f} MiB, "
          f"{stats['shards_built']} shards built, {stats['shards_reused']} reused, {stats['build_seconds']:.1f} s",
          flush=True)
    return StageResult(stats)
