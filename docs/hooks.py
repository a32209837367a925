"""mkdocs hook: the site's home page is the README itself, its links made relative to docs/.

docs/index.md is only a stand-in (mkdocs needs a file there); the README stays the one
text, read at build time. The README links only into docs/ (other paths are written as
code), so dropping the "docs/" prefix makes every link resolve inside the site.
"""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def on_page_markdown(markdown, page, config, files, **kwargs):
    if page.file.src_uri != "index.md":
        return markdown
    return re.sub(r"\]\(docs/", "](", README.read_text(encoding="utf-8"))
