"""One document model, two renderings: Markdown (figures as ``plots/<name>.png`` links) and a self-contained HTML
page (figures embedded as base64 data URIs, inline CSS, no external assets), so that the HTML can be mailed or
attached on its own."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

CSS = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}"
       "table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}"
       "th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}th{background:#f2f2f2}"
       "tr:nth-child(even) td{background:#fafafa}img{max-width:100%}figcaption{font-size:.8rem;color:#555}"
       "p.note{color:#8a5a00}")


@dataclass(frozen=True)
class Text:
    text: str
    note: bool = False  # something skipped or missing: set apart in the HTML


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Figure:
    name: str  # file stem under plots/
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


Block = Text | Table | Figure | Section


def drop_empty_columns(section: Section) -> None:
    """Leave out every table column whose cells are all ``-`` (nothing recorded), in place, subsections included:
    a column of dashes only tells the reader to look elsewhere."""
    for i, block in enumerate(section.blocks):
        if isinstance(block, Section):
            drop_empty_columns(block)
        elif isinstance(block, Table) and block.rows:
            keep = [c for c in range(len(block.header)) if any(str(row[c]) != "-" for row in block.rows)]
            section.blocks[i] = Table([block.header[c] for c in keep], [[row[c] for c in keep] for row in block.rows])


def figures(section: Section) -> list[Figure]:
    """Every figure of ``section`` and its subsections, in document order."""
    out: list[Figure] = []
    for block in section.blocks:
        if isinstance(block, Figure):
            out.append(block)
        elif isinstance(block, Section):
            out += figures(block)
    return out


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(section: Section, level: int = 1) -> str:
    out = [f"{'#' * level} {section.title}", ""]
    for block in section.blocks:
        if isinstance(block, Section):
            out.append(to_markdown(block, min(level + 1, 6)))
        elif isinstance(block, Table):
            out += ["| " + " | ".join(map(_md_cell, block.header)) + " |", "|" + "---|" * len(block.header)]
            out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, Figure):
            out += [f"![{block.caption}](plots/{block.name}.png)", ""]
        else:
            out += [f"_{' '.join(block.text.splitlines())}_" if block.note else block.text, ""]
    return "\n".join(out)


def _html_blocks(section: Section, level: int) -> list[str]:
    out = [f"<h{level}>{html.escape(section.title)}</h{level}>"]
    for block in section.blocks:
        if isinstance(block, Section):
            out += _html_blocks(block, min(level + 1, 6))
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Figure):
            data = base64.b64encode(block.png).decode()
            out.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        else:
            out.append(f'<p{" class=note" if block.note else ""}>{html.escape(block.text)}</p>')
    return out


def to_html(section: Section) -> str:
    body = "\n".join(_html_blocks(section, 1))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(section.title)}'
            f"</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
