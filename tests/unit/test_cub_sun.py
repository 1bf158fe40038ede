"""CUB and SUN loaders (and apply_xlsa17) on miniature native-format fixtures with xlsa17 files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from niwt.data.cub import load_cub
from niwt.data.raw import DatasetError, RawDataset
from niwt.data.sun import load_sun
from niwt.data.xlsa17 import apply_xlsa17

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
               "004.Groove_billed_Ani"]
CUB_XLSA_ORDER = ["002.Laysan_Albatross", "003.Sooty_Albatross", "001.Black_footed_Albatross",
                  "004.Groove_billed_Ani"]  # seen first, like the real file
CUB_UNSEEN = ["001.Black_footed_Albatross", "004.Groove_billed_Ani"]
CUB_MPI = "/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/"
SUN_IMAGES = ["a/abbey/sun_aaa.jpg", "a/abbey/sun_aab.jpg", "a/apartment_building/outdoor/sun_baa.jpg",
              "a/apartment_building/outdoor/sun_bab.jpg", "b/beach/sun_caa.jpg", "b/beach/sun_cab.jpg"]
SUN_CLASSES = ["abbey", "apartment_building_outdoor", "beach"]
SUN_MPI = "/BS/Deep_Fragments/work/MSc/data/SUN/images/"


def _jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (shade, 0, 0)).save(path, "JPEG")


def _cell(items: list[str]) -> np.ndarray:
    return np.array(items, dtype=object).reshape(-1, 1)


def _col(indices: list[int]) -> np.ndarray:
    return np.asarray(indices, dtype=np.uint16).reshape(-1, 1)


def _write_xlsa(folder: Path, names: list[str], original: np.ndarray, image_files: list[str],
                labels: list[int], unseen: list[str], res101: bool = True, lists: bool = False) -> None:
    """att_splits.mat (+ res101.mat, + class lists) for images listed in ``image_files`` order.

    Per seen class the first image is trainval and the second test_seen; unseen images are
    test_unseen. ``original`` is (C, A) in ``names`` order; ``labels`` 0-based into ``names``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    locs: dict[str, list[int]] = {"trainval_loc": [], "test_seen_loc": [], "test_unseen_loc": []}
    seen_before: set[int] = set()
    for i, lab in enumerate(labels, start=1):
        if names[lab] in unseen:
            locs["test_unseen_loc"].append(i)
        else:
            locs["test_seen_loc" if lab in seen_before else "trainval_loc"].append(i)
            seen_before.add(lab)
    att = original / np.linalg.norm(original, axis=1, keepdims=True)
    scipy.io.savemat(str(folder / "att_splits.mat"), {
        "allclasses_names": _cell(names), "att": att.T, "original_att": original.T,
        **{k: _col(v) for k, v in locs.items()}})
    if res101:
        scipy.io.savemat(str(folder / "res101.mat"), {
            "image_files": _cell(image_files), "labels": _col([lab + 1 for lab in labels]),
            "features": np.zeros((3, len(labels)))})
    if lists:
        (folder / "trainvalclasses.txt").write_text("\n".join(n for n in names if n not in unseen) + "\n")
        (folder / "testclasses.txt").write_text("\n".join(unseen) + "\n")


# -------------------------------------------------------------------------------------------- CUB


def _cub_matrix() -> np.ndarray:
    """(4 classes, 3 attributes) percentages, distinct per class so misalignment shows."""
    return np.array([[10 * c + 1, 20 * c + 2, 50.0] for c in range(1, 5)])


def _mini_cub(tmp: Path, res101: bool = True, lists: bool = False, sent: bool = True) -> tuple[Path, Path]:
    """CUB_200_2011.tgz-like tree under ``tmp/cub`` and an xlsa17 CUB folder under ``tmp/xlsa``."""
    root, cub = tmp / "cub", tmp / "cub" / "CUB_200_2011"
    rel = [f"{c}/{c.split('.')[1]}_000{k}_{k}.jpg" for c in CUB_CLASSES for k in (1, 2)]
    for i, r in enumerate(rel):
        _jpeg(cub / "images" / r, 30 * i)
    (cub / "images.txt").write_text("".join(f"{i} {r}\n" for i, r in enumerate(rel, start=1)))
    (cub / "image_class_labels.txt").write_text("".join(f"{i} {(i - 1) // 2 + 1}\n" for i in range(1, 9)))
    (cub / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, start=1)))
    (cub / "attributes").mkdir()
    np.savetxt(cub / "attributes" / "class_attribute_labels_continuous.txt", _cub_matrix(), fmt="%.10f")
    (root / "attributes.txt").write_text(
        "1 has_bill_shape::curved\n2 has_wing_color::blue\n3 has_size::small\n")
    # res101.mat lists the images in another order than images.txt (reversed), as the real one does.
    order = list(reversed(range(8)))
    files = [CUB_MPI + rel[j] for j in order]
    labels = [CUB_XLSA_ORDER.index(CUB_CLASSES[j // 2]) for j in order]
    original = _cub_matrix()[[CUB_CLASSES.index(n) for n in CUB_XLSA_ORDER]]
    xlsa = tmp / "xlsa" / "CUB"
    _write_xlsa(xlsa, CUB_XLSA_ORDER, original, files, labels, CUB_UNSEEN, res101=res101, lists=lists)
    if sent:
        scipy.io.savemat(str(xlsa / "sent_splits.mat"), {
            "allclasses_names": _cell(CUB_XLSA_ORDER), "att": np.arange(20.0).reshape(5, 4),
            "trainval_loc": _col([1]), "test_seen_loc": _col([2]), "test_unseen_loc": _col([3])})
    return root, xlsa


def test_load_cub_with_res101(tmp_path: Path) -> None:
    root, xlsa = _mini_cub(tmp_path)
    raw = load_cub(root, xlsa)
    assert raw.name == "cub" and raw.class_names == CUB_XLSA_ORDER and raw.unseen == CUB_UNSEEN
    native = _cub_matrix()
    for i, name in enumerate(raw.class_names):  # attribute rows follow the xlsa17 class order
        np.testing.assert_allclose(raw.attributes[i], native[CUB_CLASSES.index(name)])
    assert raw.attribute_names == ["has_bill_shape::curved", "has_wing_color::blue", "has_size::small"]
    assert len(raw.image_paths) == 8 and all(Path(p).is_file() for p in raw.image_paths)
    assert Path(raw.image_paths[0]).parent.name == "004.Groove_billed_Ani"  # res101 order (reversed)
    for path, label, split in zip(raw.image_paths, raw.image_labels, raw.image_splits, strict=True):
        name = raw.class_names[label]
        assert Path(path).parent.name == name
        assert (split == "test_unseen") == (name in CUB_UNSEEN)
    assert sorted(raw.image_splits) == ["test_seen"] * 2 + ["test_unseen"] * 4 + ["trainval"] * 2
    sent = np.arange(20.0).reshape(5, 4).T  # (class in xlsa order, 5)
    assert raw.sentences is not None and raw.sentences.shape == (4, 5)
    np.testing.assert_allclose(raw.sentences, sent)


def test_cub_validation_classes_come_from_sent_splits(tmp_path: Path) -> None:
    """CUB's att_splits.mat has no val_loc; the protocol's train/val class split is in sent_splits.mat."""
    root, xlsa = _mini_cub(tmp_path)
    assert load_cub(root, xlsa).validation is None  # sent_splits.mat without train_loc/val_loc
    seen = [n for n in CUB_XLSA_ORDER if n not in CUB_UNSEEN]
    files = scipy.io.loadmat(str(xlsa / "res101.mat"))
    labels = files["labels"].ravel() - 1
    val_class = seen[1]
    val = [i + 1 for i, lab in enumerate(labels) if CUB_XLSA_ORDER[lab] == val_class]
    train = [i + 1 for i, lab in enumerate(labels) if CUB_XLSA_ORDER[lab] == seen[0]]
    scipy.io.savemat(str(xlsa / "sent_splits.mat"), {
        "allclasses_names": _cell(CUB_XLSA_ORDER), "att": np.arange(20.0).reshape(5, 4),
        "trainval_loc": _col([1]), "test_seen_loc": _col([2]), "test_unseen_loc": _col([3]),
        "train_loc": _col(train), "val_loc": _col(val)})
    assert load_cub(root, xlsa).validation == [val_class]


def test_load_cub_from_inner_dir_with_class_lists_only(tmp_path: Path) -> None:
    root, xlsa = _mini_cub(tmp_path, res101=False, lists=True, sent=False)
    raw = load_cub(root / "CUB_200_2011", xlsa)  # attributes.txt is found one level up
    assert raw.unseen == CUB_UNSEEN and raw.image_splits is None and raw.sentences is None
    assert raw.attribute_names[0] == "has_bill_shape::curved"
    for path, label in zip(raw.image_paths, raw.image_labels, strict=True):
        assert Path(path).parent.name == raw.class_names[label]


def test_load_cub_needs_xlsa17(tmp_path: Path) -> None:
    root, _ = _mini_cub(tmp_path)
    for xlsa in (None, tmp_path / "nowhere"):
        with pytest.raises(DatasetError, match=r"xlsa17 CUB split files.*att_splits\.mat"):
            load_cub(root, xlsa)


def test_load_cub_without_seen_unseen_information(tmp_path: Path) -> None:
    root, xlsa = _mini_cub(tmp_path, res101=False, lists=False)
    with pytest.raises(DatasetError, match="cannot tell seen from unseen"):
        load_cub(root, xlsa)


def test_load_cub_missing_image_is_named(tmp_path: Path) -> None:
    root, xlsa = _mini_cub(tmp_path)
    victim = root / "CUB_200_2011/images/003.Sooty_Albatross/Sooty_Albatross_0002_2.jpg"
    victim.unlink()
    with pytest.raises(DatasetError, match="missing locally.*Sooty_Albatross_0002_2.jpg"):
        load_cub(root, xlsa)


def test_load_cub_res101_image_not_in_images_txt(tmp_path: Path) -> None:
    root, xlsa = _mini_cub(tmp_path)
    mat = scipy.io.loadmat(str(xlsa / "res101.mat"))
    files = [str(np.ravel(f)[0]) for f in mat["image_files"].ravel()]
    files[3] = CUB_MPI + "002.Laysan_Albatross/not_here.jpg"
    scipy.io.savemat(str(xlsa / "res101.mat"), {"image_files": _cell(files), "labels": mat["labels"]})
    with pytest.raises(DatasetError, match="not in the local cub dataset.*not_here.jpg"):
        load_cub(root, xlsa)


def test_load_cub_class_mismatch(tmp_path: Path) -> None:
    root, xlsa = _mini_cub(tmp_path, res101=False, lists=True, sent=False)
    renamed = CUB_XLSA_ORDER[:3] + ["004.Groove_Billed_Ani"]
    _write_xlsa(xlsa, renamed, _cub_matrix(), [], [], [renamed[2], renamed[3]], res101=False, lists=True)
    with pytest.raises(DatasetError, match="differ.*004.Groove_billed_Ani"):
        load_cub(root, xlsa)


def test_load_cub_warns_when_original_att_disagrees(tmp_path: Path) -> None:
    root, xlsa = _mini_cub(tmp_path, res101=False, lists=True, sent=False)
    # original_att rows in the native order, not the xlsa17 one: misaligned.
    _write_xlsa(xlsa, CUB_XLSA_ORDER, _cub_matrix(), [], [], CUB_UNSEEN, res101=False, lists=True)
    with pytest.warns(UserWarning, match="class alignment"):
        load_cub(root, xlsa)


# -------------------------------------------------------------------------------------------- SUN


def _sun_labels() -> np.ndarray:
    return np.linspace(0.0, 1.0, 6 * 4).reshape(6, 4) ** 2


def _mini_sun(tmp: Path, images_dir: str = "images") -> tuple[Path, Path]:
    root = tmp / "sun"
    for i, rel in enumerate(SUN_IMAGES):
        _jpeg(root / images_dir / rel, 40 * i)
    db = root / "SUNAttributeDB"
    db.mkdir(parents=True)
    scipy.io.savemat(str(db / "images.mat"), {"images": _cell(SUN_IMAGES)})
    names = _cell(["sailing", "biking", "trees", "snow"])
    scipy.io.savemat(str(db / "attributes.mat"), {"attributes": names})
    scipy.io.savemat(str(db / "attributeLabels_continuous.mat"), {"labels_cv": _sun_labels()})
    means = _sun_labels().reshape(3, 2, 4).mean(axis=1)
    labels = [i // 2 for i in range(6)]
    xlsa = tmp / "xlsa" / "SUN"
    _write_xlsa(xlsa, SUN_CLASSES, means, [SUN_MPI + r for r in SUN_IMAGES], labels, ["beach"])
    return root, xlsa


def test_load_sun(tmp_path: Path) -> None:
    root, xlsa = _mini_sun(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the class means must agree with original_att
        raw = load_sun(root, xlsa)
    assert raw.name == "sun" and raw.class_names == SUN_CLASSES and raw.unseen == ["beach"]
    assert raw.attribute_names == ["sailing", "biking", "trees", "snow"]
    np.testing.assert_allclose(raw.attributes, _sun_labels().reshape(3, 2, 4).mean(axis=1), rtol=1e-6)
    assert raw.image_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert raw.image_splits == ["trainval", "test_seen"] * 2 + ["test_unseen"] * 2
    assert raw.image_paths[2].endswith("images/a/apartment_building/outdoor/sun_baa.jpg")
    assert all(Path(p).is_file() for p in raw.image_paths)


def test_load_sun_images_in_named_folder(tmp_path: Path) -> None:
    root, xlsa = _mini_sun(tmp_path, images_dir="SUNAttributeDB_Images/images")
    raw = load_sun(root, xlsa)
    assert "SUNAttributeDB_Images" in raw.image_paths[0]


def test_load_sun_needs_xlsa17(tmp_path: Path) -> None:
    root, _ = _mini_sun(tmp_path)
    with pytest.raises(DatasetError, match=r"645/72.*att_splits\.mat"):
        load_sun(root, None)


def test_load_sun_bad_label_matrix(tmp_path: Path) -> None:
    root, xlsa = _mini_sun(tmp_path)
    scipy.io.savemat(str(root / "SUNAttributeDB/attributeLabels_continuous.mat"),
                     {"labels_cv": np.ones((5, 4))})
    with pytest.raises(DatasetError, match=r"attributeLabels_continuous\.mat.*\(5, 4\)"):
        load_sun(root, xlsa)


# ------------------------------------------------------------------------------ AWA2-like apply


def test_apply_xlsa17_awa2_like(tmp_path: Path) -> None:
    names = ["antelope", "bat", "beaver"]
    images = tmp_path / "Animals_with_Attributes2" / "JPEGImages"
    paths = []
    for c in names:
        for k in (1, 2):
            _jpeg(images / c / f"{c}_1000{k}.jpg", 10 * k)
            paths.append(str(images / c / f"{c}_1000{k}.jpg"))
    att = np.array([[-1.0, 50.0], [10.0, 0.0], [30.0, 70.0]], dtype=np.float32)
    raw = RawDataset(name="awa2", class_names=names, unseen=["antelope"], attribute_names=["a", "b"],
                     attributes=np.maximum(att, 0), attributes_binary=(att > 20).astype(np.float32),
                     descriptions=["d0", "d1", "d2"], image_paths=paths,
                     image_labels=np.repeat(np.arange(3), 2))
    order = ["beaver", "antelope", "bat"]  # xlsa17 order differs from the native one
    mpi = "/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/"
    files = [mpi + f"{c}/{c}_1000{k}.jpg" for c in sorted(names) for k in (1, 2)]
    labels = [order.index(c) for c in sorted(names) for _ in (1, 2)]
    xlsa = tmp_path / "xlsa" / "AWA2"
    _write_xlsa(xlsa, order, att[[names.index(n) for n in order]], files, labels, ["bat"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # -1 in original_att counts as 0: no mismatch warning
        out = apply_xlsa17(raw, xlsa)
    assert out.class_names == order and out.unseen == ["bat"]
    assert out.descriptions == ["d2", "d0", "d1"]
    np.testing.assert_array_equal(out.attributes_binary, raw.attributes_binary[[2, 0, 1]])
    assert [out.class_names[i] for i in out.image_labels] == [Path(p).parent.name for p in out.image_paths]
    assert out.image_splits[2:4] == ["test_unseen", "test_unseen"]  # the two bat images
