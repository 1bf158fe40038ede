"""One report, two renderings: markdown (PNG files beside it) and a self-contained HTML page.

The HTML embeds every image as base64 and uses no script, font or stylesheet from the network,
so it opens offline (a CI artifact, an e-mail attachment, an MLflow artifact view).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

_BOLD = re.compile(r"\*\*(.+?)\*\*")


@dataclass(frozen=True)
class Block:
    """``kind``: h1 | h2 | p | table | img. ``cells`` are strings; ``**x**`` marks bold."""

    kind: str
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    src: str = ""  # img: path relative to the report


def h1(text: str) -> Block:
    return Block("h1", text)


def h2(text: str) -> Block:
    return Block("h2", text)


def para(text: str) -> Block:
    return Block("p", text)


def table(header: list[str], rows: list[list[object]]) -> Block:
    return Block("table", header=tuple(header), rows=tuple(tuple(str(c) for c in r) for r in rows))


def image(src: str, caption: str = "") -> Block:
    return Block("img", caption, src=src)


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}\n")
        elif b.kind == "h2":
            out.append(f"## {b.text}\n")
        elif b.kind == "p":
            out.append(b.text + "\n")
        elif b.kind == "table":
            esc = lambda c: c.replace("|", "\\|")  # noqa: E731
            lines = ["| " + " | ".join(map(esc, b.header)) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(map(esc, r)) + " |" for r in b.rows]
            out.append("\n".join(lines) + "\n")
        elif b.kind == "img":
            out.append(f"![{b.text}]({b.src})\n" + (f"\n*{b.text}*\n" if b.text else ""))
    return "\n".join(out)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = _BOLD.sub(r"<b>\1</b>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;
font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}
figcaption{font-size:12px;color:#555}code{background:#f3f3f3;padding:0 3px}h2{border-bottom:1px solid #ddd}
img.thumb{width:64px;height:64px;max-width:none;border:none;display:block}"""


# Only the stage's own thumbnails: cells also carry names from the user's files (classes, attributes), and
# none of them may make the report read a file.
_IMAGE_CELL = re.compile(r"!\[([^\]]*)\]\((thumbs/[0-9]+\.png)\)")


def _cell(text: str, root: Path) -> str:
    """A table cell; one that is exactly ``![alt](thumbs/NNN.png)`` (a thumbnail the stage wrote under
    ``root``) is embedded."""
    found = _IMAGE_CELL.fullmatch(text)
    if found is None or not (root / found.group(2)).is_file():
        return _inline(text)
    data = base64.b64encode((root / found.group(2)).read_bytes()).decode("ascii")
    return f'<img class="thumb" alt="{html.escape(found.group(1))}" src="data:image/png;base64,{data}">'


def to_html(blocks: list[Block], root: Path, title: str) -> str:
    """Self-contained HTML; images under ``root`` are read and embedded as data URIs."""
    body: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{_inline(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "table":
            head = "".join(f"<th>{_inline(c)}</th>" for c in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_cell(c, root)}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "img":
            data = base64.b64encode((root / b.src).read_bytes()).decode("ascii")
            cap = f"<figcaption>{_inline(b.text)}</figcaption>" if b.text else ""
            body.append(f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">{cap}</figure>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
