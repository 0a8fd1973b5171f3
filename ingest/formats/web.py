"""HTML pages, rendered as light markdown so headings drive the split like in .md files."""

from __future__ import annotations

from ingest.documents import LoadedDocument, Section, SourceFile
from ingest.formats.markup import title_from_name
from ingest.textio import read_text

_HTML_DROP = ("script", "style", "nav", "footer", "header", "noscript", "svg", "form", "aside", "template")
_HTML_BLOCKS = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "tr", "dt", "dd", "blockquote"]
_HTML_CONTAINERS = ["p", "li", "pre", "tr", "dt", "dd", "blockquote"]


def load_html(file: SourceFile, max_bytes: int) -> LoadedDocument:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(read_text(file.path, max_bytes), "html.parser")
    title_tag = soup.find("title")
    h1 = soup.find("h1")
    title = (title_tag.get_text(" ", strip=True) if title_tag else "") or (
        h1.get_text(" ", strip=True) if h1 else ""
    )
    for tag in soup(list(_HTML_DROP)):
        tag.decompose()
    body = soup.find("main") or soup.find("article") or soup.body or soup
    return LoadedDocument(file.source, title or title_from_name(file.path), "html", [Section(html_to_markdown(body))])


def html_to_markdown(node) -> str:
    """Render HTML as light markdown: headings, paragraphs, list items, code blocks, table rows."""
    lines: list[str] = []
    for element in node.find_all(_HTML_BLOCKS):
        if element.find_parent(_HTML_CONTAINERS) is not None:
            continue  # its text is already part of an enclosing block
        if element.name == "tr":
            cells = [cell.get_text(" ", strip=True) for cell in element.find_all(["th", "td"])]
            if any(cells):
                lines.append("| " + " | ".join(cells) + " |")
            continue
        text = element.get_text(" ", strip=True)
        if not text:
            continue
        if element.name[0] == "h" and element.name[1:].isdigit():
            lines.append("")
            lines.append("#" * int(element.name[1:]) + " " + text)
            lines.append("")
        elif element.name == "li":
            lines.append(f"- {text}")
        elif element.name == "pre":
            lines.append(f"```\n{element.get_text()}\n```")
        else:
            lines.append(text)
            lines.append("")
    return "\n".join(lines).strip()
