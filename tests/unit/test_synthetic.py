"""The synthetic benchmark generator: design constraints, determinism, AWA2 round trip, idempotence.

Why these: the default pipeline's results are only meaningful if the generated benchmark keeps its
promises (classes distinguishable, every unseen attribute value seen in training, the continuous
matrix equal to what the images actually show) and if a rerun reproduces it byte for byte.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from niwt.data import synthetic
from niwt.data.awa2 import load_awa2
from niwt.data.raw import DatasetError
from niwt.data.synthetic import (
    IMAGE_ATTRIBUTES,
    MARKER,
    RGB,
    attribute_names,
    class_attributes,
    combo_values,
    describe_class,
    design_benchmark,
    generate_synthetic,
    geometry_of,
    object_mask,
    render_object,
    sample_values,
)
from niwt.errors import ParamsError
from niwt.params import SyntheticParams

SMALL = SyntheticParams(n_classes=12, n_unseen=3, images_per_class=4, image_size=32)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "synthetic"
    generate_synthetic(root, SMALL, seed=0, progress=False)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("params", [SMALL, SyntheticParams()], ids=["small", "default"])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_design_constraints(params: SyntheticParams, seed: int) -> None:
    design = design_benchmark(params, seed)
    combos = np.array(design.combos)
    assert len(design.names) == len(set(design.names)) == params.n_classes
    assert design.names == sorted(design.names)
    for a, b in itertools.combinations(range(len(combos)), 2):
        assert (combos[a] != combos[b]).sum() >= 2, (design.names[a], design.names[b])
    assert len(design.unseen) == params.n_unseen and set(design.unseen) <= set(design.names)
    seen = combos[[n not in design.unseen for n in design.names]]
    for g, (_, values) in enumerate(design.groups):
        assert (np.bincount(seen[:, g], minlength=len(values)) >= 2).all()


def test_default_vocabulary_is_full() -> None:
    design = design_benchmark(SyntheticParams(), 0)
    assert [len(v) for _, v in design.groups] == [5, 6, 4, 2, 2]
    assert "colour_cyan" in attribute_names(design.groups) and "pattern_hstripes" in attribute_names(
        design.groups)


@pytest.mark.parametrize(("change", "message"), [
    ({"n_classes": 100}, "at most 80 classes"),
    ({"n_classes": 5, "n_unseen": 2}, "at least 4 seen"),
    ({"n_unseen": 0}, "n_unseen"),
    ({"dominant_prob": 0.0}, "dominant_prob"),
    ({"image_size": 8}, "image_size"),
])
def test_impossible_sizes(change: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        design_benchmark(dataclasses.replace(SyntheticParams(), **change), 0)


def test_round_trip_through_awa2_loader(small_root: Path) -> None:
    design = design_benchmark(SMALL, 0)
    ds = load_awa2(small_root, name="synthetic")
    assert ds.class_names == design.names and ds.unseen == design.unseen
    assert ds.attribute_names == attribute_names(design.groups)
    assert len(ds.image_paths) == SMALL.n_classes * SMALL.images_per_class
    np.testing.assert_array_equal(np.bincount(ds.image_labels), [SMALL.images_per_class] * SMALL.n_classes)
    assert Path(ds.image_paths[0]).name == f"{design.names[0]}_10001.jpg"
    with Image.open(ds.image_paths[-1]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    assert ds.descriptions == [describe_class(combo_values(design.groups, c)) for c in design.combos]
    np.testing.assert_array_equal(ds.attributes_binary.sum(axis=1), len(design.groups))


def test_continuous_matrix_is_expected_frequency(small_root: Path) -> None:
    ds = load_awa2(small_root)
    design = design_benchmark(SMALL, 0)
    start = 0
    for _, values in design.groups:
        block = ds.attributes[:, start:start + len(values)]
        start += len(values)
        np.testing.assert_allclose(block.sum(axis=1), 100.0, atol=1e-3)
        np.testing.assert_allclose(block.max(axis=1), 100.0 * SMALL.dominant_prob, atol=1e-4)
        np.testing.assert_allclose(np.sort(block, axis=1)[:, 0],
                                   100.0 * (1 - SMALL.dominant_prob) / (len(values) - 1), atol=1e-4)
        np.testing.assert_array_equal(block.argmax(axis=1), ds.attributes_binary[:, start - len(values):
                                                                                  start].argmax(axis=1))


def test_sampling_matches_continuous_attributes() -> None:
    """The matrix claims expected frequencies; check it against what the per-image sampler draws."""
    design = design_benchmark(SMALL, 0)
    combo, rng = design.combos[0], np.random.default_rng(0)
    names = attribute_names(design.groups)
    counts = np.zeros(len(names))
    for _ in range(4000):
        for group, value in sample_values(rng, design.groups, combo, 0.9).items():
            counts[names.index(f"{group}_{value}")] += 1
    np.testing.assert_allclose(counts / 40.0, class_attributes(design.groups, combo, 0.9), atol=2.5)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, small_root: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    generate_synthetic(again, SMALL, seed=0, progress=False)
    generate_synthetic(other, SMALL, seed=1, progress=False)
    assert _files(again) == _files(small_root)
    assert _files(other) != _files(small_root)
    first = sorted((other / "JPEGImages").rglob("*.jpg"))[0]
    assert first.read_bytes() != sorted((small_root / "JPEGImages").rglob("*.jpg"))[0].read_bytes()


def test_rerun_is_a_no_op_and_new_config_regenerates(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    generate_synthetic(root, SMALL, seed=0, progress=False)
    marker_time = (root / MARKER).stat().st_mtime_ns
    generate_synthetic(root, SMALL, seed=0, progress=False)
    assert (root / MARKER).stat().st_mtime_ns == marker_time
    bigger = dataclasses.replace(SMALL, images_per_class=5)
    generate_synthetic(root, bigger, seed=0, progress=False)
    assert len(load_awa2(root).image_paths) == 5 * SMALL.n_classes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]  # no temp dirs left


def test_refuses_to_overwrite_foreign_directory(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        generate_synthetic(root, SMALL, seed=0, progress=False)
    assert (root / "precious.txt").read_text() == "keep me"


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "render_object", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "synthetic", SMALL, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def _records(root: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(root / IMAGE_ATTRIBUTES).to_pylist()


def test_recorded_truth_reproduces_every_image(small_root: Path) -> None:
    """Replaying an image's RNG stream with its recorded values re-renders the stored file byte for
    byte, with the recorded geometry; the mask from that geometry covers the object's colour."""
    import io

    design = design_benchmark(SMALL, 0)
    records = {r["path"]: r for r in _records(small_root)}
    assert len(records) == SMALL.n_classes * SMALL.images_per_class
    for c, name in enumerate(design.names):
        for i in range(SMALL.images_per_class):
            rec = records[f"JPEGImages/{name}/{name}_{10001 + i}.jpg"]
            rng = np.random.default_rng([0, 1, c, i])
            values = sample_values(rng, design.groups, design.combos[c], SMALL.dominant_prob)
            assert rec["attributes"] == [f"{g}_{values[g]}" for g, _ in design.groups] and rec["class"] == name
            values = {g: a[len(g) + 1:] for (g, _), a in zip(design.groups, rec["attributes"], strict=True)}
            pixels, geometry = render_object(rng, values, SMALL.image_size, SMALL.clutter)
            assert geometry == geometry_of(rec)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=95, subsampling=0)
            assert buf.getvalue() == (small_root / rec["path"]).read_bytes()
            mask = object_mask(geometry, SMALL.image_size)
            if values["pattern"] == "solid" and values["outline"] == "none":  # inside: the class colour
                distance = np.abs(pixels.astype(float) - RGB[values["colour"]]).mean(-1)
                assert distance[mask == 1].mean() < distance[mask == 0].mean() - 40


def test_recorded_values_agree_with_the_class_attributes(small_root: Path) -> None:
    ds = load_awa2(small_root)
    design = design_benchmark(SMALL, 0)
    records = _records(small_root)
    agree = []
    for r in records:
        assert [a.split("_", 1)[0] for a in r["attributes"]] == [g for g, _ in design.groups]
        idx = [ds.attribute_names.index(a) for a in r["attributes"]]
        row = ds.class_names.index(r["class"])
        assert (ds.attributes[row, idx] > 0).all()
        agree.append(ds.attributes_binary[row, idx])
    # each value is the class's dominant one with probability dominant_prob (0.97): 240 draws
    assert 0.9 <= np.mean(agree) < 1.0


def test_pure_classes_record_exactly_the_class_attributes(tmp_path: Path) -> None:
    root = tmp_path / "pure"
    generate_synthetic(root, dataclasses.replace(SMALL, images_per_class=2, dominant_prob=1.0), 0, progress=False)
    ds = load_awa2(root)
    for r in _records(root):
        truth = np.isin(ds.attribute_names, r["attributes"]).astype(float)
        np.testing.assert_array_equal(truth, ds.attributes_binary[ds.class_names.index(r["class"])])


@pytest.mark.parametrize(("values", "sentence"), [
    ({"size": "large", "colour": "red", "pattern": "hstripes", "shape": "circle", "outline": "none"},
     "A large red circle with horizontal stripes."),
    ({"size": "small", "colour": "blue", "pattern": "solid", "shape": "square", "outline": "black"},
     "A small solid blue square with a thick black outline."),
    ({"size": "small", "colour": "cyan", "pattern": "checker", "shape": "cross", "outline": "black"},
     "A small cyan cross with a checkerboard pattern and a thick black outline."),
])
def test_describe_class(values: dict[str, str], sentence: str) -> None:
    assert describe_class(values) == sentence
