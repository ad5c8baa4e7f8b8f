r"""HTML page → title, main-content text, canonical link and the page's shape (pure functions, no Dagster).

Besides the text, `extract_page` reads what tells a listing from an article and what the page asks of crawlers:
the meta description (`description`, else `og:description`), `og:type`, the `<meta name="robots">` directives,
and the main content's link items: every list item that holds a link, and every link outside a list item, with
their hrefs as written and their words (`assets/ingest/crawl.py` decides from these which pages are listings).

The text keeps the page's structure as plain text: one paragraph per block element, separated by blank
lines; whitespace inside a paragraph collapsed to single spaces (sentences are never split across lines);
`<br>` becomes a line break; list items start with "- "; control characters become spaces; an image in a
`<figure>` is its alt text, on a line of its own.

What a sentence splitter must not cut is marked as Markdown would mark it, so that it stays recognizable as one
unit in the text (assets/index/context.py reads these marks):
- a code block (`<pre>`) keeps its lines between fence lines: "```python" (its language, else "code") ... "```";
- display math is a paragraph of its own between "$$" marks: TeX written in the page (`$$...$$`, `\[...\]`,
  `\begin{align*}...\end{align*}` alone in a paragraph), KaTeX's rendered `.katex-display` (its TeX
  annotation) and MathML `<math display="block">` (its TeX annotation or `alttext`); inline math stays in its
  sentence (`\(...\)`, KaTeX's `.katex` as `\(TeX\)`);
- a table is one paragraph, a row per line, cells joined by " | "; after a header row (`<th>` cells), every row's
  cells carry their column's header ("Cost: £56"), so a row read alone still says what its numbers are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin

import lxml.etree
import lxml.html

_BLOCK_TAGS = frozenset(
    "address article aside blockquote caption dd details dialog div dl dt fieldset figcaption figure footer "
    "form h1 h2 h3 h4 h5 h6 header hgroup hr li main nav ol p section summary table ul".split()
)
_CELL_TAGS = frozenset({"td", "th"})


@dataclass(frozen=True)
class LinkItem:
    """A link-bearing part of the main content: a list item holding links (all of its words count), or a link
    outside any list item (its own words)."""

    hrefs: tuple[str, ...]
    words: int


@dataclass(frozen=True)
class ExtractedPage:
    title: str
    text: str
    canonical_href: str | None
    description: str = ""
    og_type: str = ""
    robots: frozenset[str] = frozenset()  # directives of <meta name="robots">, lower-cased: noindex, nofollow, ...
    link_items: tuple[LinkItem, ...] = ()


_WORD = re.compile(r"\w+")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


class _ParagraphWriter:
    def __init__(self) -> None:
        self.paragraphs: list[str] = []
        self._lines: list[list[str]] = [[]]
        self._prefix = ""  # a list marker waiting for the item's first words

    def add(self, text: str | None) -> None:
        if text and text.strip():
            if self._prefix:
                text, self._prefix = self._prefix + text.lstrip(), ""
            self._lines[-1].append(text)
        elif text:
            self._lines[-1].append(text)

    def start_list_item(self) -> None:
        self._prefix = "- "

    def line_break(self) -> None:
        self._lines.append([])

    def flush(self) -> None:
        lines = [" ".join("".join(parts).split()) for parts in self._lines]
        paragraph = "\n".join(line for line in lines if line)
        at = 0
        for math in _DISPLAY_MATH.finditer(paragraph):  # display math written in the page: a paragraph of its own
            self._append(paragraph[at : math.start()])
            self.paragraphs.append(display_math(_unwrap_math(math.group(1))))
            at = math.end()
        self._append(paragraph[at:])
        self._lines = [[]]

    def _append(self, paragraph: str) -> None:
        if paragraph.strip():
            self.paragraphs.append(paragraph.strip())

    def add_verbatim(self, text: str) -> None:
        self.flush()
        kept = "\n".join(line.rstrip() for line in text.strip("\n").splitlines())
        if kept.strip():
            self.paragraphs.append(kept)


FENCE = "```"
_DISPLAY_MATH = re.compile(r"(\$\$.+?\$\$|\\\[.+?\\\]|^\\begin\{([A-Za-z]+\*?)\}.+?\\end\{\2\}$)", re.S | re.M)


def _unwrap_math(tex: str) -> str:
    if tex.startswith("$$"):
        return tex[2:-2]
    if tex.startswith("\\["):
        return tex[2:-2]
    return tex


def display_math(tex: str) -> str:
    """Display math as its own paragraph: "$$", the TeX, "$$" (one unit for the sentence splitter)."""
    return f"$$ {' '.join(tex.split())} $$"


def code_block(code: str, language: str = "") -> str:
    """A code block's lines between fence lines (one unit for the sentence splitter). The opening fence always
    carries an info string (the language, else "code"), so that a bare closing fence, at the start of a chunk cut
    inside a block, is never read as an opening one."""
    return f"{FENCE}{language or 'code'}\n{code}\n{FENCE}"


def _language(pre: lxml.html.HtmlElement) -> str:
    """The language a code block declares in its class (`language-python`, `lang-sql`), else ""."""
    for element in (pre, *pre.iter("code")):
        for name in _classes(element):
            if name.startswith(("language-", "lang-")):
                return re.sub(r"[^\w+#.-]", "", name.split("-", 1)[1])
    return ""


def _classes(element: lxml.html.HtmlElement) -> set[str]:
    return set((element.get("class") or "").split())


def _tex_of(element: lxml.html.HtmlElement) -> str | None:
    """The TeX source a rendered formula carries (KaTeX's or MathML's annotation, else MathML's alttext)."""
    for annotation in element.iter("annotation"):
        if (annotation.get("encoding") or "").lower() == "application/x-tex":
            return annotation.text_content().strip()
    alttext = element.get("alttext")
    return alttext.strip() if alttext else None


def _in_figure(element: lxml.html.HtmlElement) -> bool:
    return any(ancestor.tag == "figure" for ancestor in element.iterancestors())


def _table_rows(table: lxml.html.HtmlElement) -> list[str]:
    """The table's rows, one line each; after a header row, each cell as "Header: cell" (empty cells left out)."""
    lines: list[str] = []
    header: list[str] | None = None
    for row in table.iter("tr"):
        cells = [c for c in row if isinstance(c.tag, str) and c.tag in _CELL_TAGS]
        texts = [" ".join(c.text_content().split()) for c in cells]
        if not any(texts):
            continue
        if header is None and not lines and all(c.tag == "th" for c in cells):
            header = texts
            lines.append(" | ".join(texts))
        elif header and len(texts) == len(header):
            lines.append(" | ".join(f"{h}: {t}" if h else t for h, t in zip(header, texts, strict=True) if t))
        else:
            lines.append(" | ".join(texts))
    return lines


def _walk(element: lxml.html.HtmlElement, out: _ParagraphWriter) -> None:
    tag = element.tag if isinstance(element.tag, str) else None  # comments and PIs have no str tag
    classes = _classes(element) if tag else set()
    if tag is None:
        pass
    elif tag == "br":
        out.line_break()
    elif tag == "pre":
        code = element.text_content().strip("\n")
        out.add_verbatim(code_block(code, _language(element)) if code.strip() else "")
    elif "katex-display" in classes or (tag == "math" and element.get("display") == "block"):
        tex = _tex_of(element)
        out.add_verbatim(display_math(tex if tex is not None else element.text_content()))
    elif "katex" in classes or tag == "math":
        tex = _tex_of(element)
        out.add(f"\\({tex}\\)" if tex is not None else element.text_content())
    elif tag == "img" and (element.get("alt") or "").strip() and _in_figure(element):
        out.line_break()  # a figure's image is content: its alt text says what it shows
        out.add(element.get("alt"))
        out.line_break()
    elif tag == "table":
        out.flush()
        caption = element.find("caption")
        if caption is not None:
            out.add(caption.text_content())
            out.line_break()
        for line in _table_rows(element):
            out.add(line)
            out.line_break()
        out.flush()
    elif tag == "tr":
        cells = [" ".join(cell.text_content().split()) for cell in element if cell.tag in _CELL_TAGS]
        out.line_break()
        out.add(" | ".join(cells))
        out.line_break()
    elif tag in _BLOCK_TAGS:
        out.flush()
        if tag == "li":
            out.start_list_item()
        out.add(element.text)
        for child in element:
            _walk(child, out)
        out.flush()
    else:
        out.add(element.text)
        for child in element:
            _walk(child, out)
    out.add(element.tail)


def element_text(element: lxml.html.HtmlElement) -> str:
    out = _ParagraphWriter()
    out.add(element.text)
    for child in element:
        _walk(child, out)
    out.flush()
    return "\n\n".join(out.paragraphs)


def _outermost(elements: list[lxml.html.HtmlElement]) -> list[lxml.html.HtmlElement]:
    chosen = set(elements)
    return [e for e in elements if not any(a in chosen for a in e.iterancestors())]


def parse_html(html: str) -> lxml.html.HtmlElement | None:
    if not html or not html.strip():
        return None
    # lxml refuses str input that carries an encoding declaration (XHTML pages)
    html = _CONTROL_CHARS.sub(" ", _XML_DECLARATION.sub("", html, count=1))
    try:
        return lxml.html.document_fromstring(html)
    except (lxml.etree.ParserError, ValueError):
        return None


def _meta(root: lxml.html.HtmlElement) -> dict[str, str]:
    """`<meta name|property=... content=...>` by lower-cased name (the first of each), content whitespace-collapsed."""
    found: dict[str, str] = {}
    for meta in root.iter("meta"):
        name = (meta.get("name") or meta.get("property") or "").strip().lower()
        if name and name not in found:
            found[name] = " ".join((meta.get("content") or "").split())
    return found


def words_of(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation and spacing ignored): how pages' words are counted and compared."""
    return _WORD.findall(text.lower())


def robots_directives(content: str) -> frozenset[str]:
    """`"NoIndex, follow"` → {"noindex", "follow"}; `none` means noindex and nofollow."""
    directives = {part.strip().lower() for part in content.split(",") if part.strip()}
    if "none" in directives:
        directives |= {"noindex", "nofollow"}
    return frozenset(directives)


def link_items(containers: list[lxml.html.HtmlElement]) -> tuple[LinkItem, ...]:
    """The link-bearing parts of the main content, in document order (see LinkItem)."""
    items: dict[lxml.html.HtmlElement, list[str]] = {}
    for container in containers:
        for anchor in container.iter("a"):
            href = (anchor.get("href") or "").strip()
            if not href:
                continue
            item = anchor
            for ancestor in anchor.iterancestors():
                if ancestor is container:
                    break
                if ancestor.tag == "li":
                    item = ancestor  # the outermost list item within the container
            items.setdefault(item, []).append(href)
    outermost = [e for e in items if not any(a in items for a in e.iterancestors())]
    merged = {e: list(items[e]) for e in outermost}
    for element, hrefs in items.items():
        if element not in merged:
            owner = next(a for a in element.iterancestors() if a in merged)
            merged[owner].extend(hrefs)
    return tuple(LinkItem(tuple(hrefs), len(words_of(element_text(e)))) for e, hrefs in merged.items())


def extract_page(html: str, content_selectors: list[str], drop_selectors: list[str]) -> ExtractedPage:
    """Title, main text, canonical link and shape of a page; malformed or empty HTML gives empty strings."""
    root = parse_html(html)
    if root is None:
        return ExtractedPage(title="", text="", canonical_href=None)
    canonical = root.xpath("//link[@rel='canonical']/@href")
    head_title = " ".join((root.findtext(".//title") or "").split())
    meta = _meta(root)

    containers: list[lxml.html.HtmlElement] = []
    for selector in content_selectors:
        containers = _outermost(root.cssselect(selector))
        if containers:
            break
    if not containers:
        containers = [root]

    heading = next((h for c in containers for h in c.iter("h1")), None)
    title = " ".join(heading.text_content().split()) if heading is not None else ""
    if heading is not None:
        heading.drop_tree()
    for container in containers:
        for selector in drop_selectors:
            for element in container.cssselect(selector):
                if element is not container:
                    element.drop_tree()

    text = "\n\n".join(t for t in (element_text(c) for c in containers) if t)
    return ExtractedPage(
        title=title or head_title,
        text=text,
        canonical_href=canonical[0].strip() if canonical and canonical[0].strip() else None,
        description=meta.get("description") or meta.get("og:description", ""),
        og_type=meta.get("og:type", "").lower(),
        robots=robots_directives(meta.get("robots", "")),
        link_items=link_items(containers),
    )


def resolve_canonical(page_url: str, canonical_href: str | None) -> str:
    return urljoin(page_url, canonical_href) if canonical_href else page_url
