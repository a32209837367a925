"""mkdocs hooks (mkdocs.yml): the README as the home page, and MyST code cells as code.

The site's home page is the README itself, its links made relative to docs/: docs/index.md
is only a stand-in (mkdocs needs a file there), so the README stays the one text, read at
build time. The README links only into docs/ (other paths are written as code), so dropping
the "docs/" prefix makes every link resolve inside the site.

The tutorial opens as a notebook through jupytext; its cells are plain ```python fences
(jupytext's Markdown format), which need nothing here. Should a page use MyST code cells
(jupytext's `--to myst` form: ```{code-cell} ipython3, with optional ":key: value" lines or a
YAML block after the fence), which Python-Markdown does not know, they are shown as Python
code blocks.
"""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
# the fence, then the cell's options: ":key: value" lines or a YAML block between two "---"
CODE_CELL = re.compile(r"^([ \t]*)```\{code-cell\}[^\n]*\n(?:(?:\1:[\w-]+:[^\n]*\n)+|\1---\n(?:.*\n)*?\1---\n)?",
                       flags=re.M)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if page.file.src_uri == "index.md":
        return re.sub(r"\]\(docs/", "](", README.read_text(encoding="utf-8"))
    return CODE_CELL.sub(lambda m: f"{m.group(1)}```python\n", markdown)
