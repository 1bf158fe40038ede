"""A miniature ``data.name: folder`` dataset (the README's 'Your own data and classifier' layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# colour-coded classes: three attributes (how red, green, blue a class is) and a texture flag
CLASSES = {
    "red_fox": ("seen", (220, 40, 30), 0, "a small red animal"),
    "green_frog": ("seen", (40, 200, 50), 1, "a green animal with speckles"),
    "blue_jay": ("seen", (30, 60, 210), 0, "a blue bird"),
    "yellow_duck": ("seen", (220, 210, 40), 1, "a yellow bird with speckles"),
    "cyan_fish": ("unseen", (40, 200, 210), 0, "a cyan animal that swims"),
    "purple_moth": ("unseen", (200, 40, 200), 1, "a purple insect with speckles"),
}
MODES = ("jpeg", "png", "webp", "grey", "rgba", "cmyk")


def _image(path: Path, colour: tuple[int, int, int], speckled: int, mode: str, rng: np.random.Generator,
           size: int) -> None:
    pixels = np.asarray(colour, dtype=np.float64) + rng.normal(0, 25, (size, size, 3))
    if speckled:
        pixels[::3, ::3] = 255
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if mode == "grey":
        img.convert("L").save(path.with_suffix(".png"))
    elif mode == "rgba":
        img.convert("RGBA").save(path.with_suffix(".png"))
    elif mode == "cmyk":
        img.convert("CMYK").save(path.with_suffix(".jpg"), "JPEG")
    elif mode == "webp":
        img.save(path.with_suffix(".webp"), "WEBP")
    elif mode == "png":
        img.save(path.with_suffix(".png"))
    else:
        img.save(path.with_suffix(".jpg"), "JPEG", quality=90)


def make_folder(root: Path, per_class: int = 8, size: int = 24, seed: int = 0, modes: bool = True) -> Path:
    """Write images/<class>/*, classes.csv and attributes.csv under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for name, (_, colour, speckled, _) in CLASSES.items():
        folder = root / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _image(folder / f"{i:03d}", colour, speckled, MODES[i % len(MODES)] if modes else "jpeg", rng, size)
    lines = ["class,split,description"] + [f"{n},{s},{d}" for n, (s, _, _, d) in CLASSES.items()]
    (root / "classes.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = ["class,red,green,blue,speckled"]
    for name, (_, colour, speckled, _) in CLASSES.items():
        rows.append(",".join([name, *(f"{c / 255:.3f}" for c in colour), str(speckled)]))
    (root / "attributes.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root
