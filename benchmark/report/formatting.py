"""Text shared by every part of the report: numbers, counts and durations as written, pipe
tables, the bold best cell, and short organ names for narrow column headers.

Pure string functions; nothing here reads a frame or writes a file.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import pandas as pd


def md_table(header: list[str], rows: list[list[str]], align: str) -> str:
    """Pipe table padded for reading as plain text; align is one of 'l'/'r' per column."""
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    widths = [max(3, *(len(r[i]) for r in esc)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(w) if a == "r" else c.ljust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|".join(
        "-" * (w + 1) + ":" if a == "r" else "-" * (w + 2)
        for w, a in zip(widths, align, strict=True)
    )
    return "\n".join([line(esc[0]), f"|{rule}|", *map(line, esc[1:])])


def f3(x: float) -> str:
    return "—" if x is None or pd.isna(x) else f"{x:.3f}"


def count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def count_or_dash(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:,.0f}"


def plural(n: float, word: str) -> str:
    return f"{count(n)} {word}{'' if n == 1 else 's'}"


def time_unit(seconds: float) -> tuple[str, float]:
    """A unit that keeps the numbers short: s below 2 min, min below 2 h, else h."""
    if seconds < 120:
        return "s", 1.0
    if seconds < 7200:
        return "min", 60.0
    return "h", 3600.0


def duration(seconds: float) -> str:
    unit, scale = time_unit(seconds)
    return f"{seconds / scale:.1f} {unit}"


def budget_header(budget: str, n_labeled: float) -> str:
    return f"{budget} · {plural(n_labeled, 'slice')}"


_WORD_ABBREV = {
    "adrenal": "adr.",
    "gallbladder": "gallbl.",
    "esophagus": "esoph.",
    "oesophagus": "esoph.",
    "duodenum": "duod.",
    "pancreas": "panc.",
    "kidney": "kid.",
    "prostate": "prost.",
    "bladder": "bladder",
    "gland": "",
}
_SIDES = {"right": "R", "left": "L"}
_ACRONYMS = {"ivc": "IVC", "inferior vena cava": "IVC", "postcava": "IVC"}


def _short_organ(name: str) -> str:
    """Short column header for an organ: right_kidney -> R kidney, left_adrenal -> L adr."""
    spaced = re.sub(r"[_\-\s]+", " ", str(name)).strip()
    if spaced.lower() in _ACRONYMS:
        return _ACRONYMS[spaced.lower()]
    words = [_SIDES.get(w.lower(), w) for w in spaced.split(" ")]
    short = " ".join(words)
    # Only shorten further when the header would be wider than a 3-decimal number needs.
    if len(short) > 8:
        words = [_WORD_ABBREV.get(w.lower(), w if len(w) <= 8 else w[:6] + ".") for w in words]
        short = " ".join(w for w in words if w)
    return short


def short_organs(organs: Iterable[str]) -> dict[str, str]:
    organs = list(organs)
    short = {o: _short_organ(o) for o in organs}
    clashes = {s for s, n in Counter(short.values()).items() if n > 1}
    return {o: (str(o) if s in clashes else s) for o, s in short.items()}


def bold_best(
    values: dict[str, float], text: dict[str, str], higher: bool = True
) -> dict[str, str]:
    """Bold the best value (highest, or lowest when not `higher`; ties included) when there
    is something to compare."""
    finite = {k: v for k, v in values.items() if v is not None and not pd.isna(v)}
    if len(finite) < 2:
        return text
    best = max(finite.values()) if higher else min(finite.values())
    return {k: (f"**{t}**" if finite.get(k) == best else t) for k, t in text.items()}
