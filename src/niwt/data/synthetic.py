"""The embedded default benchmark: a seeded, attribute-based zero-shot image dataset in AWA2 format.

Why it exists: the pipeline must run end to end, and be tested, without a 13 GB download. Writing
the real AWA2 on-disk format (not a private one) means the default run goes through
:func:`niwt.data.awa2.load_awa2`, the same loader a real AWA2 copy uses.

Design (from the feasibility study):

* Attribute groups with a few values each (shape, colour, pattern, size, outline). A class is one
  dominant value per group; any two classes differ in at least two groups, so no class is a
  one-attribute edit of another. The fifth group (outline) is not decoration: with only
  shape x colour x pattern x size, at most 5 * 4 * 2 = 40 combinations differ pairwise in two
  groups (delete the colour column and the rest must stay distinct), fewer than the 50 classes.
* Unseen classes are chosen so that every attribute value occurs in at least two seen classes:
  a value never seen in training cannot be mapped to neurons, which would test the data, not NIWT.
* Each image draws each group's value: the dominant one with probability ``dominant_prob``, else a
  uniformly random other value. The continuous class attribute is therefore the expected frequency
  of each value in the class, on AWA2's 0..100 scale; the binary matrix marks the dominant values.
* Nuisance: position, rotation (+-15 degrees, so horizontal and vertical stripes stay distinct),
  object size jitter, colour jitter, a light background tone and faint clutter scaled by ``clutter``.

Shapes are drawn from analytic signed distance functions at the output resolution, which gives
anti-aliased edges and a uniform-width outline at the cost of a few numpy operations per image
(5000 images of 64 px take a few seconds on one core).
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from niwt.data.raw import DatasetError
from niwt.errors import ParamsError
from niwt.io.atomic import fresh_temporary
from niwt.params import SyntheticParams

# Bump when the output for a given (params, seed) changes, so stale generated copies are rebuilt.
GENERATOR_VERSION = 2  # 2: + image_attributes.parquet (images unchanged)
MARKER = ".complete"

Group = tuple[str, tuple[str, ...]]
Combo = tuple[int, ...]

# Values in order of visual distinctness: small configurations keep only the first few of each group.
GROUPS: tuple[Group, ...] = (
    ("shape", ("circle", "square", "triangle", "cross", "diamond")),
    ("colour", ("red", "green", "blue", "yellow", "magenta", "cyan")),
    ("pattern", ("solid", "hstripes", "vstripes", "checker")),
    ("size", ("small", "large")),
    ("outline", ("none", "black")),
)
RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (35, 165, 45), "blue": (35, 65, 215),
    "yellow": (235, 205, 25), "magenta": (205, 45, 200), "cyan": (30, 195, 205),
}
# Half the largest extent of each shape relative to its nominal radius, rotation included.
_EXTENT = {"circle": 1.0, "square": 1.05, "triangle": 1.2, "cross": 1.06, "diamond": 1.0}
_RADIUS = {"small": 0.20, "large": 0.35}  # fraction of the image side: ~40% and ~70% wide
_MAX_ROTATION = np.deg2rad(15.0)
_DARK = 0.3  # brightness of the dark bands of a pattern, relative to the class colour
_OUTLINE_RGB = np.array([20.0, 20.0, 20.0])
_PATTERN_PHRASE = {"hstripes": "horizontal stripes", "vstripes": "vertical stripes",
                   "checker": "a checkerboard pattern"}
_PICK_ATTEMPTS = 200


@dataclasses.dataclass(frozen=True)
class Design:
    """The class-level content of a generated benchmark, before any image is drawn.

    Attributes:
        groups: the attribute groups in use (possibly truncated for small configurations).
        combos: per class, the index of its dominant value in each group; sorted by class name.
        names: class names, sorted.
        unseen: names of the unseen classes, in class order.
    """

    groups: tuple[Group, ...]
    combos: list[Combo]
    names: list[str]
    unseen: list[str]


def vocabulary(n_seen: int) -> tuple[Group, ...]:
    """The groups in use: each keeps at most ``n_seen // 2`` values (at least 2).

    Why: every value must occur in two seen classes, so a tiny test configuration (9 seen classes)
    cannot carry 6 colours; truncating keeps small configurations valid instead of failing.
    """
    keep = max(2, n_seen // 2)
    return tuple((group, values[:keep]) for group, values in GROUPS)


def attribute_names(groups: Sequence[Group]) -> list[str]:
    """Attribute column names, ``<group>_<value>`` (``colour_red``), group by group."""
    return [f"{group}_{value}" for group, values in groups for value in values]


def combo_values(groups: Sequence[Group], combo: Combo) -> dict[str, str]:
    """Map each group name to the value name a combination picks."""
    return {group: values[i] for (group, values), i in zip(groups, combo, strict=True)}


def class_name(values: Mapping[str, str]) -> str:
    """A readable unique name, ``large_red_hstripes_circle`` (+ ``_outlined`` for a black outline)."""
    name = "_".join(values[g] for g in ("size", "colour", "pattern", "shape"))
    return name + "_outlined" if values["outline"] == "black" else name


def describe_class(values: Mapping[str, str]) -> str:
    """One deterministic sentence from a class's dominant values, for the ``text`` domain.

    Example: ``{"size": "large", "colour": "red", "pattern": "hstripes", "shape": "circle",
    "outline": "none"}`` -> ``"A large red circle with horizontal stripes."``
    """
    size, colour, shape, pattern = values["size"], values["colour"], values["shape"], values["pattern"]
    extras = [_PATTERN_PHRASE[pattern]] if pattern != "solid" else []
    if values["outline"] == "black":
        extras.append("a thick black outline")
    solid = "solid " if pattern == "solid" else ""
    tail = " with " + " and ".join(extras) if extras else ""
    return f"A {size} {solid}{colour} {shape}{tail}."


def class_attributes(groups: Sequence[Group], combo: Combo, dominant_prob: float) -> np.ndarray:
    """Expected frequency (x100, AWA2's scale) of each attribute value among the class's images."""
    row: list[float] = []
    for (_, values), dominant in zip(groups, combo, strict=True):
        other = (1.0 - dominant_prob) / (len(values) - 1)
        row.extend(dominant_prob if i == dominant else other for i in range(len(values)))
    return np.asarray(row, dtype=np.float64) * 100.0


def class_attributes_binary(groups: Sequence[Group], combo: Combo) -> np.ndarray:
    """One-hot dominant values, group by group."""
    return np.concatenate([np.eye(len(values))[i] for (_, values), i in zip(groups, combo, strict=True)])


# --------------------------------------------------------------------------------------- design


def check_params(params: SyntheticParams, seed: int) -> None:
    """Reject configurations the generator cannot satisfy, before any work, naming the key."""
    p, key = params, "data.synthetic"
    if not 1 <= p.n_unseen < p.n_classes:
        raise ParamsError(f"{key}.n_unseen must be in [1, n_classes - 1], got {p.n_unseen}")
    if p.n_classes - p.n_unseen < 4:
        raise ParamsError(f"{key}: need at least 4 seen classes (every attribute value in two seen "
                          f"classes), got {p.n_classes - p.n_unseen}")
    bound = max_classes(vocabulary(p.n_classes - p.n_unseen))
    if p.n_classes > bound:
        raise ParamsError(f"{key}.n_classes={p.n_classes}: at most {bound} classes can differ pairwise "
                          "in two attribute groups with this vocabulary")
    checks = [(p.images_per_class >= 1, "images_per_class must be >= 1"),
              (p.image_size >= 16, "image_size must be >= 16"),
              (0.0 < p.dominant_prob <= 1.0, "dominant_prob must be in (0, 1]"),
              (0.0 <= p.clutter <= 1.0, "clutter must be in [0, 1]"),
              (seed >= 0, "base.seed must be >= 0")]
    for ok, message in checks:
        if not ok:
            raise ParamsError(f"{key}: {message}")


def max_classes(groups: Sequence[Group]) -> int:
    """Upper bound on classes that differ pairwise in >= 2 groups (Singleton bound).

    Dropping the largest group must leave all classes distinct, so there are at most as many classes
    as combinations of the other groups.
    """
    sizes = sorted(len(values) for _, values in groups)
    return int(np.prod(sizes[:-1]))


def _pick_classes(rng: np.random.Generator, sizes: Sequence[int], n: int) -> np.ndarray | None:
    """Greedy random code: shuffled combinations, kept when they differ from all kept in >= 2 groups."""
    combos = np.array(list(itertools.product(*(range(k) for k in sizes))), dtype=np.int64)
    chosen = np.empty((0, len(sizes)), dtype=np.int64)
    for index in rng.permutation(len(combos)):
        candidate = combos[index]
        if ((chosen != candidate).sum(axis=1) >= 2).all():
            chosen = np.vstack([chosen, candidate])
            if len(chosen) == n:
                return chosen
    return None


def _covered(seen: np.ndarray, sizes: Sequence[int]) -> bool:
    """True when every value of every group is the dominant value of at least two seen classes."""
    return all((np.bincount(seen[:, g], minlength=k) >= 2).all() for g, k in enumerate(sizes))


def _pick_unseen(rng: np.random.Generator, combos: np.ndarray, sizes: Sequence[int],
                 n_unseen: int) -> np.ndarray | None:
    """Random unseen subsets until the seen rest covers every value twice; None if none is found."""
    for _ in range(_PICK_ATTEMPTS):
        unseen = rng.choice(len(combos), size=n_unseen, replace=False)
        if _covered(np.delete(combos, unseen, axis=0), sizes):
            return unseen
    return None


def design_benchmark(params: SyntheticParams, seed: int) -> Design:
    """Choose the classes and the unseen split, deterministically from ``seed``.

    Raises:
        ParamsError: the sizes cannot be satisfied (the message says which constraint).
    """
    check_params(params, seed)
    groups = vocabulary(params.n_classes - params.n_unseen)
    sizes = [len(values) for _, values in groups]
    rng = np.random.default_rng([seed, 0])
    for _ in range(_PICK_ATTEMPTS):
        combos = _pick_classes(rng, sizes, params.n_classes)
        unseen = None if combos is None else _pick_unseen(rng, combos, sizes, params.n_unseen)
        if unseen is not None:
            return _make_design(groups, combos, set(unseen.tolist()))
    raise ParamsError(f"data.synthetic: found no {params.n_classes} classes with {params.n_unseen} "
                      f"unseen such that every attribute value is in two seen classes after "
                      f"{_PICK_ATTEMPTS} attempts; use more seen classes")


def _make_design(groups: tuple[Group, ...], combos: np.ndarray, unseen_rows: set[int]) -> Design:
    """Sort classes by name (as AWA2's classes.txt is alphabetical) and name the unseen ones."""
    rows = [(class_name(combo_values(groups, tuple(c))), tuple(int(v) for v in c), i in unseen_rows)
            for i, c in enumerate(combos)]
    rows.sort()
    return Design(groups=groups, combos=[r[1] for r in rows], names=[r[0] for r in rows],
                  unseen=[r[0] for r in rows if r[2]])


# ------------------------------------------------------------------------------------ rendering


def _sdf(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) to a shape of nominal radius r, in local coordinates.

    Formulas after Inigo Quilez's 2D distance functions; v points down the image.
    """
    if shape == "circle":
        return np.hypot(u, v) - r
    if shape == "square":
        return _sd_box(u, v, 0.85 * r, 0.85 * r)
    if shape == "triangle":
        return _sd_triangle(u, -v, 1.2 * r * np.sqrt(3.0) / 2.0)
    if shape == "cross":
        return np.minimum(_sd_box(u, v, r, 0.34 * r), _sd_box(u, v, 0.34 * r, r))
    if shape == "diamond":
        return _sd_rhombus(u, v, 0.72 * r, r)
    raise ValueError(f"unknown shape {shape!r}")


def _sd_box(u: np.ndarray, v: np.ndarray, bu: float, bv: float) -> np.ndarray:
    """Exact signed distance to an axis-aligned box with half-sizes (bu, bv)."""
    qu, qv = np.abs(u) - bu, np.abs(v) - bv
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    return outside + np.minimum(np.maximum(qu, qv), 0.0)


def _sd_triangle(x: np.ndarray, y: np.ndarray, half_side: float) -> np.ndarray:
    """Exact signed distance to an equilateral triangle, apex up (y up), centroid at the origin."""
    k = np.sqrt(3.0)
    px, py = np.abs(x) - half_side, y + half_side / k
    fold = px + k * py > 0.0
    px, py = np.where(fold, (px - k * py) / 2.0, px), np.where(fold, (-k * px - py) / 2.0, py)
    px = px - np.clip(px, -2.0 * half_side, 0.0)
    return -np.hypot(px, py) * np.sign(py)


def _sd_rhombus(u: np.ndarray, v: np.ndarray, bu: float, bv: float) -> np.ndarray:
    """Exact signed distance to a rhombus with half-diagonals (bu, bv)."""
    pu, pv = np.abs(u), np.abs(v)
    h = np.clip(((bu - 2 * pu) * bu - (bv - 2 * pv) * bv) / (bu * bu + bv * bv), -1.0, 1.0)
    d = np.hypot(pu - 0.5 * bu * (1.0 - h), pv - 0.5 * bv * (1.0 + h))
    return d * np.sign(pu * bv + pv * bu - bu * bv)


def _band(x: np.ndarray, period: float) -> np.ndarray:
    """Anti-aliased square wave in [0, 1] (1 = light band), bands of half the period."""
    signed = np.abs(np.mod(x - period / 4.0, period) - period / 2.0) - period / 4.0
    return np.clip(0.5 + signed, 0.0, 1.0)


def _pattern(pattern: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Weight of the light band (class colour) at each pixel; the rest is the dark version."""
    if pattern == "solid":
        return np.ones_like(u)
    if pattern == "hstripes":
        return _band(v, period)
    if pattern == "vstripes":
        return _band(u, period)
    a, b = _band(u, period), _band(v, period)
    return a * b + (1.0 - a) * (1.0 - b)


def _jitter_colour(rng: np.random.Generator, colour: str) -> np.ndarray:
    """The class colour with a small hue, saturation and brightness shift (nuisance, not signal)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in RGB[colour]))
    h = (h + rng.uniform(-0.02, 0.02)) % 1.0
    s, v = s * rng.uniform(0.85, 1.0), min(1.0, v * rng.uniform(0.85, 1.05))
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, clutter: float) -> np.ndarray:
    """A light, low-saturation tone plus a few faint blobs and lines, their number scaled by clutter."""
    size = yy.shape[0]
    tone = rng.uniform(160.0, 235.0) + rng.uniform(-12.0, 12.0, size=3)
    image = np.broadcast_to(tone, (size, size, 3)).copy()
    for _ in range(rng.poisson(6.0 * clutter)):
        amplitude = rng.uniform(-45.0, 45.0) * clutter + rng.uniform(-5.0, 5.0, size=3) * clutter
        cx, cy = rng.uniform(0, size, size=2)
        if rng.random() < 0.5:
            sigma = rng.uniform(0.03, 0.08) * size
            weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        else:
            angle = rng.uniform(0, np.pi)
            weight = np.clip(1.0 - np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle)), 0, 1)
        image += weight[..., None] * amplitude
    return image


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the object of one image is: enough to re-render its mask exactly (:func:`object_mask`).

    Attributes:
        shape: the shape value (``circle`` ...).
        centre_x, centre_y: centre in pixels (x right, y down; pixel centres at ``i + 0.5``).
        radius: nominal radius in pixels (size value x image side x jitter).
        angle: rotation in radians.
    """

    shape: str
    centre_x: float
    centre_y: float
    radius: float
    angle: float


def _draw_geometry(rng: np.random.Generator, shape: str, size: str, image_size: int) -> Geometry:
    """Radius, centre and rotation: the same draws, in the same order, as the generator always made."""
    r = _RADIUS[size] * image_size * rng.uniform(0.92, 1.08)
    slack = max(0.0, image_size / 2.0 - r * _EXTENT[shape] - 1.0)
    cx, cy = image_size / 2.0 + rng.uniform(-slack, slack, size=2)
    angle = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)
    return Geometry(shape, float(cx), float(cy), float(r), float(angle))


def _local_frame(g: Geometry, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object coordinates (u, v) of every pixel centre and the signed distance to the shape there."""
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float64) + 0.5
    cos, sin = np.cos(g.angle), np.sin(g.angle)
    u = (xx - g.centre_x) * cos + (yy - g.centre_y) * sin
    v = -(xx - g.centre_x) * sin + (yy - g.centre_y) * cos
    return u, v, _sdf(g.shape, u, v, g.radius)


def object_mask(g: Geometry, image_size: int) -> np.ndarray:
    """(size, size) coverage in [0, 1] of the object (fill and outline), exactly as rendered.

    The generator blends the object over the background with this coverage, so ``mask >= 0.5`` is
    the object's pixel set (what the Grad-CAM checks of ``explain`` measure against).
    """
    return np.clip(0.5 - _local_frame(g, image_size)[2], 0.0, 1.0)


def render_image(rng: np.random.Generator, values: Mapping[str, str], image_size: int,
                 clutter: float) -> np.ndarray:
    """Draw one object with the given attribute values; returns (size, size, 3) uint8 RGB."""
    return render_object(rng, values, image_size, clutter)[0]


def render_object(rng: np.random.Generator, values: Mapping[str, str], image_size: int,
                  clutter: float) -> tuple[np.ndarray, Geometry]:
    """Draw one object with the given attribute values: (size, size, 3) uint8 RGB and its geometry.

    Everything is computed at the output resolution from signed distances, so edges, stripes and
    the outline are anti-aliased without supersampling.
    """
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float64) + 0.5
    image = _background(rng, yy, xx, clutter)
    geometry = _draw_geometry(rng, values["shape"], values["size"], image_size)
    u, v, sdf = _local_frame(geometry, image_size)
    r = geometry.radius
    outer = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
    width = max(1.5, 0.15 * r) if values["outline"] == "black" else 0.0
    inner = np.clip(0.5 - (sdf + width), 0.0, 1.0)[..., None]
    period = max(4.0, round(image_size / 8.0))
    phase = rng.uniform(0.0, period, size=2)
    light = _pattern(values["pattern"], u + phase[0], v + phase[1], period)[..., None]
    colour = _jitter_colour(rng, values["colour"])
    fill = colour * (light + (1.0 - light) * _DARK)
    image = image * (1.0 - outer) + _OUTLINE_RGB * (outer - inner) + fill * inner
    image += rng.normal(0.0, 8.0 * clutter, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), geometry


def sample_values(rng: np.random.Generator, groups: Sequence[Group], combo: Combo,
                  dominant_prob: float) -> dict[str, str]:
    """Per-image values: the dominant one with probability ``dominant_prob``, else another, uniformly."""
    values = {}
    for (group, names), dominant in zip(groups, combo, strict=True):
        index = dominant
        if rng.random() >= dominant_prob:
            others = [i for i in range(len(names)) if i != dominant]
            index = others[int(rng.integers(len(others)))]
        values[group] = names[index]
    return values


# ------------------------------------------------------------------------------------- writing


def config_hash(params: SyntheticParams, seed: int) -> str:
    """Hash of everything that determines the output, stored in the marker to detect stale copies."""
    blob = json.dumps({"version": GENERATOR_VERSION, "params": dataclasses.asdict(params), "seed": seed},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _marker_hash(root: Path) -> str | None:
    """The config hash recorded in ``root``'s marker, or None when there is no readable marker."""
    try:
        return json.loads((root / MARKER).read_text())["hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_tables(root: Path, design: Design, params: SyntheticParams) -> None:
    """Write the AWA2 text files (classes, predicates, both matrices, splits, descriptions)."""
    values = [combo_values(design.groups, c) for c in design.combos]
    continuous = [class_attributes(design.groups, c, params.dominant_prob) for c in design.combos]
    binary = [class_attributes_binary(design.groups, c) for c in design.combos]
    unseen = set(design.unseen)
    files = {
        "classes.txt": [f"{i}\t{n}" for i, n in enumerate(design.names, 1)],
        "predicates.txt": [f"{i}\t{a}" for i, a in enumerate(attribute_names(design.groups), 1)],
        "predicate-matrix-continuous.txt": [" ".join(f"{x:.6f}" for x in row) for row in continuous],
        "predicate-matrix-binary.txt": [" ".join(str(int(x)) for x in row) for row in binary],
        "trainvalclasses.txt": [n for n in design.names if n not in unseen],
        "testclasses.txt": [n for n in design.names if n in unseen],
        "descriptions.txt": [f"{n}\t{describe_class(v)}" for n, v in zip(design.names, values, strict=True)],
    }
    for file_name, lines in files.items():
        (root / file_name).write_text("\n".join(lines) + "\n", encoding="utf-8")


IMAGE_ATTRIBUTES = "image_attributes.parquet"  # per image: true attribute values and object geometry


def _write_images(root: Path, design: Design, params: SyntheticParams, seed: int, progress: bool) -> None:
    """Render and save every image; each has its own RNG stream, so order and workers do not matter.

    What each image really shows (its sampled values, the object's geometry) is recorded in
    ``image_attributes.parquet`` (:func:`write_image_records`), from the draws the rendering makes
    anyway: recording adds no random draw, so the images are the same as without it.
    """
    total = len(design.names) * params.images_per_class
    records: list[dict] = []
    with tqdm(total=total, desc="synthetic images", unit="img", disable=not progress) as bar:
        for c, (name, combo) in enumerate(zip(design.names, design.combos, strict=True)):
            directory = root / "JPEGImages" / name
            directory.mkdir(parents=True)
            for i in range(params.images_per_class):
                rng = np.random.default_rng([seed, 1, c, i])
                values = sample_values(rng, design.groups, combo, params.dominant_prob)
                pixels, geometry = render_object(rng, values, params.image_size, params.clutter)
                file = directory / f"{name}_{10001 + i}.jpg"
                Image.fromarray(pixels).save(file, quality=95, subsampling=0)
                records.append({"path": file.relative_to(root).as_posix(), "class": name,
                                "attributes": [f"{g}_{values[g]}" for g, _ in design.groups],
                                **dataclasses.asdict(geometry)})
                bar.update(1)
    write_image_records(root / IMAGE_ATTRIBUTES, records, params.image_size)


def write_image_records(path: Path, records: list[dict], image_size: int) -> None:
    """Per-image ground truth as Parquet: ``path`` (relative to the dataset root), ``class``,
    ``attributes`` (the true ``<group>_<value>`` names, one per group) and the :class:`Geometry`
    fields; ``image_size`` in the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records)
    table = table.replace_schema_metadata({"image_size": str(image_size), "generator_version": str(GENERATOR_VERSION)})
    pq.write_table(table, path)


def geometry_of(record: Mapping) -> Geometry:
    """The :class:`Geometry` of one row of ``image_attributes.parquet``."""
    return Geometry(**{f.name: record[f.name] for f in dataclasses.fields(Geometry)})


def _check_target(root: Path) -> None:
    """Refuse to replace a directory this generator did not write (no marker, not empty)."""
    if root.exists() and (not root.is_dir() or (_marker_hash(root) is None and any(root.iterdir()))):
        raise DatasetError(f"{root}: exists and is not a generated synthetic dataset (no {MARKER} "
                           "marker); refusing to overwrite it, remove it or choose another root")


def _install(tmp: Path, root: Path, digest: str) -> None:
    """Move the finished tree into place; an existing generated copy is swapped out, then deleted."""
    if root.exists():
        if _marker_hash(root) == digest:  # another process finished first
            shutil.rmtree(tmp)
            return
        _check_target(root)
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
        os.replace(tmp, root)
        shutil.rmtree(old)
    else:
        os.replace(tmp, root)


def generate_synthetic(root: Path, params: SyntheticParams, seed: int, progress: bool = True) -> None:
    """Write the synthetic benchmark in AWA2 format to ``root``, unless an identical copy is there.

    The tree is built in a sibling temporary directory and moved into place with ``os.replace``,
    the ``.complete`` marker written last, so an interrupted run never leaves a half dataset that a
    later run would mistake for a finished one. Same (params, seed) -> byte-identical files.

    Raises:
        ParamsError: sizes the generator cannot satisfy.
        DatasetError: ``root`` exists and holds something this generator did not write.
    """
    root = Path(root)
    digest = config_hash(params, seed)
    if root.is_dir() and _marker_hash(root) == digest:
        return
    _check_target(root)
    design = design_benchmark(params, seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_temporary(root.parent, f".{root.name}.")  # also clears what a killed run left
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is not
    try:
        _write_tables(tmp, design, params)
        _write_images(tmp, design, params, seed, progress)
        marker = {"hash": digest, "version": GENERATOR_VERSION, "seed": seed,
                  "params": dataclasses.asdict(params)}
        (tmp / MARKER).write_text(json.dumps(marker, sort_keys=True) + "\n")
        _install(tmp, root, digest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
