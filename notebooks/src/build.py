"""Build notebooks/NAME.ipynb from notebooks/src/NAME.py (percent format, as jupytext writes it).

Cells start with `# %%` (code) or `# %% [markdown]` (markdown, lines prefixed by `# `);
`# %% tags=["parameters"]` tags a cell. Keeping the source as plain Python makes notebook diffs
reviewable; run `python notebooks/src/build.py` after editing a source.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import nbformat

HEADER = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def build(src: Path, dst: Path) -> None:
    cells, kind, tags, lines = [], None, [], []

    def flush() -> None:
        if kind is None:
            return
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in text.splitlines())
            cell = nbformat.v4.new_markdown_cell(text)
        else:
            cell = nbformat.v4.new_code_cell(text)
        if tags:
            cell.metadata["tags"] = tags
        # Ids from position and content, so rebuilding an unchanged source gives an identical file.
        cell.id = hashlib.sha1(f"{len(cells)}:{text}".encode()).hexdigest()[:8]
        cells.append(cell)

    for line in src.read_text().splitlines():
        m = HEADER.match(line)
        if m:
            flush()
            kind = "markdown" if m.group("md") else "code"
            tags = json.loads(m.group("tags")) if m.group("tags") else []
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    dst.write_text(nbformat.writes(nb) + "\n")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    names = sys.argv[1:] or [p.stem for p in here.glob("[0-9a-z]*.py") if p.name != "build.py"]
    for name in names:
        build(here / f"{name}.py", here.parent / f"{name}.ipynb")
        print(f"built notebooks/{name}.ipynb")
