"""HTML building blocks that escape by construction.

Every string that reaches the page goes through ``esc`` unless it is an ``Html`` (markup this package
built itself from escaped parts). A manifest is untrusted input: labels, names and messages in it
end up as text, never as markup. The page also carries a Content-Security-Policy that allows no
script, no network and only ``data:`` images, so even a mistake here cannot run code or fetch.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

#: no script, no network: inline styles and data: images only
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2330;
background:#f5f6f8;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:0 0 10px;border-bottom:1px solid #dde1e7;
padding-bottom:4px}h3{font-size:1.05em;margin:14px 0 6px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:16px 20px;margin:16px 0}
table{border-collapse:collapse;font-size:.9em;margin:6px 0;max-width:100%}
th,td{border-bottom:1px solid #e6e9ee;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:3px 12px;border-radius:12px;font-weight:700;color:#fff}
.pass{background:#1f8a4c}.fail{background:#c0392b}.none{background:#7f8c8d}
.ok{color:#1f8a4c;font-weight:600}.bad{color:#c0392b;font-weight:600}
.muted{color:#6b7280}.note{color:#6b7280;font-style:italic}
img.plot{max-width:100%;height:auto;display:block;margin:8px 0}
code{background:#f0f2f5;padding:1px 4px;border-radius:3px;font-size:.92em;word-break:break-all}
ul{margin:4px 0 4px 20px;padding:0}
"""


_VOID = frozenset({"img", "meta", "br", "hr"})


class Html(str):
    """Markup built by this package from escaped parts: inserted as is."""

    __slots__ = ()


def esc(value: Any) -> Html:
    """``value`` as HTML text (``Html`` passes through; everything else is escaped, quotes included)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Any]) -> Html:
    return Html("".join(esc(p) for p in parts))


def _attr(key: str) -> str:
    """A Python keyword's attribute name: ``http_equiv`` → ``http-equiv``, ``for_`` → ``for``."""
    return key.rstrip("_").replace("_", "-")


def tag(element: str, /, *children: Any, cls: str | None = None, **attrs: Any) -> Html:
    """``<element attrs>children</element>``; attribute values and children escaped (``cls`` → ``class``)."""
    if cls:
        attrs["class"] = cls
    rendered = "".join(f' {_attr(key)}="{esc(value)}"' for key, value in attrs.items() if value is not None)
    if element in _VOID:
        return Html(f"<{element}{rendered}>")
    return Html(f"<{element}{rendered}>{join(children)}</{element}>")


def fmt(value: Any, digits: int = 4) -> str:
    """A figure for a table: numbers with ``digits`` significant digits, None as –, text as is."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.{digits}g}"
    return str(value)


def ratio(value: float | None) -> str:
    """A ratio for people, as verify prints it: ``1.28×``, ``31.4×``, ``8,530×``; – when unknown."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return "∞×"
    return f"{value:,.0f}×" if value >= 100 else f"{value:.3g}×"


def verdict(passed: bool | None, *, word: str | None = None) -> Html:
    """A PASSED / FAILED / not measured badge."""
    if passed is None:
        return tag("span", word or "not measured", cls="badge none")
    return tag("span", word or ("PASSED" if passed else "FAILED"), cls="badge " + ("pass" if passed else "fail"))


def ok(passed: Any) -> Html:
    if passed is None:
        return tag("span", "–", cls="muted")
    return tag("span", "pass", cls="ok") if passed else tag("span", "FAIL", cls="bad")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[int] = ()) -> Html:
    """A table; cells are escaped text (``Html`` cells as is); columns in ``numeric`` right-aligned."""
    head = tag("tr", *(tag("th", h) for h in headers))
    body = [tag("tr", *(tag("td", c, cls="num" if i in numeric else None) for i, c in enumerate(row))) for row in rows]
    return tag("table", tag("thead", head), tag("tbody", *body))


def facts(pairs: Iterable[tuple[str, Any]]) -> Html:
    """A two-column table of names and values."""
    return tag("table", tag("tbody", *(tag("tr", tag("th", k), tag("td", v)) for k, v in pairs)))


def note(text: Any) -> Html:
    return tag("p", text, cls="note")


def image(uri: str, alt: str) -> Html:
    """An embedded figure (``uri`` must be a ``data:image/png;base64,`` URI made by ``plots``)."""
    if not uri.startswith("data:image/png;base64,"):
        raise ValueError("only embedded PNG figures go in a report")
    return tag("img", src=uri, alt=alt, cls="plot")


def section(ident: str, title: str, *body: Any) -> Html:
    return tag("section", tag("h2", title), *body, id=ident)


def page(title: str, subtitle: Any, sections: Sequence[Html], generator: str) -> str:
    """The whole document: one file, inline style, no script, nothing fetched."""
    return (
        "<!DOCTYPE html>\n"
        + tag(
            "html",
            tag(
                "head",
                tag("meta", charset="utf-8"),
                tag("meta", http_equiv="Content-Security-Policy", content=CSP),
                tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
                tag("title", title),
                tag("style", Html(STYLE)),
            ),
            tag(
                "body",
                tag("main", tag("header", tag("h1", title), tag("p", subtitle, cls="muted")), *sections),
                tag("footer", tag("main", tag("p", generator, cls="muted"))),
            ),
            lang="en",
        )
        + "\n"
    )
