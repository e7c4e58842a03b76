"""The README stays one short story, and every relative link in it and in docs/ leads somewhere."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    """Targets of the page's Markdown links and images that point into the checkout."""
    targets = LINK.findall(page.read_text(encoding="utf-8"))
    return [t for t in targets if not re.match(r"^(https?:|mailto:|#)", t)]


def test_the_readme_is_at_most_250_lines():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_every_relative_link_resolves():
    broken = [
        f"{page.relative_to(REPO)} -> {target}"
        for page in PAGES
        for target in relative_links(page)
        if not (page.parent / target.split("#")[0]).exists()
    ]
    assert not broken, broken


def test_the_link_finder_sees_links_and_images_but_not_urls(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](docs/x.md) ![b](fig.png) [c](https://example.org) [d](#top) `[e](f)`\n")
    assert relative_links(page) == ["docs/x.md", "fig.png", "f"]
