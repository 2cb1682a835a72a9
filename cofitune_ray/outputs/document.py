"""The report's document model: blocks (headings, paragraphs, bullets, tables, preformatted text, images)
that render to Markdown and to HTML, so report.md and report.html always say the same thing; and how the
report prints numbers.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

MISSING = "n/a"


def fmt_score(value: float | None) -> str:
    """A Spec/Vers/Uni value as the report prints it: three decimals, or n/a."""
    return MISSING if value is None or math.isnan(value) else f"{value:.3f}"


def fmt_count(value: int | None) -> str:
    """An integer with thousands separators, or n/a."""
    return MISSING if value is None else f"{value:,}"


def fmt_percent(numerator: float, denominator: float) -> str:
    """numerator / denominator as a percentage with one decimal, or n/a when undefined."""
    if any(math.isnan(x) for x in (numerator, denominator)) or denominator <= 0:
        return MISSING
    return f"{100 * numerator / denominator:.1f}%"


def fmt_duration(seconds: float | None) -> str:
    """A wall time as `42.0 s`, `3m 05s` or `1h 02m`, or n/a."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"



@dataclass
class Heading:
    """A section title (level 1 or 2)."""

    level: int
    text: str

    def markdown(self) -> str:
        return "#" * self.level + " " + self.text

    def html(self) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"


@dataclass
class Paragraph:
    """Plain text."""

    text: str

    def markdown(self) -> str:
        return self.text

    def html(self) -> str:
        return f"<p>{html.escape(self.text)}</p>"


@dataclass
class Bullets:
    """An unordered list."""

    items: list[str]

    def markdown(self) -> str:
        return "\n".join(f"- {item}" for item in self.items)

    def html(self) -> str:
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in self.items) + "</ul>"


@dataclass
class Preformatted:
    """Text shown as is, in a monospace font (the tree drawing)."""

    text: str

    def markdown(self) -> str:
        return f"```\n{self.text}\n```"

    def html(self) -> str:
        return f"<pre>{html.escape(self.text)}</pre>"


@dataclass
class Table:
    """A table; Markdown cells escape `|` (node keys contain it)."""

    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]

    def markdown(self) -> str:
        lines = [self.headers, tuple("---" for _ in self.headers), *self.rows]
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Image:
    """An image by path relative to the report."""

    alt: str
    src: str

    def markdown(self) -> str:
        return f"![{self.alt}]({self.src})"

    def html(self) -> str:
        return f'<img src="{html.escape(self.src)}" alt="{html.escape(self.alt)}">'


_CSS = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    "pre{background:#f6f6f6;padding:1em;overflow-x:auto}img{max-width:100%}"
)


def render_html(blocks: list, title: str) -> str:
    """A standalone HTML page holding the blocks."""
    body = "\n".join(b.html() for b in blocks)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
