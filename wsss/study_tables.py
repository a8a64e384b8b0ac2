"""The seed studies' tables as the comparison notebook shows them.

`wsss study` and `wsss ceiling` write `claims.csv` and `ceiling.csv` into the reports folder (the
checkout's `reports/` unless `$WSSS_REPORTS` says otherwise). The quick demo runs neither: it
writes its notebooks into `reports/demo/`, so its comparison shows the checkout's tables, the last
ones measured, rather than nothing (`table_folder`). A study that rewrites a table re-renders the
cell showing it in every executed comparison notebook (`refresh_table_cells`), as executing that
cell again would: without this, a notebook run before the study kept serving the rows it replaced.
"""
from __future__ import annotations

from pathlib import Path

from wsss.io import write_text
from wsss.paths import project_root, reports_dir

MARKDOWN_REPR = "<IPython.core.display.Markdown object>"  # IPython's text/plain of a displayed Markdown


def table_folder(table: str) -> Path:
    """The folder whose `table` (e.g. "claims.csv") the comparison reads: the reports folder when
    it holds one, else the checkout's reports/ when that does (the quick demo's case), else the
    reports folder (which then has none)."""
    here, checkout = reports_dir(), project_root() / "reports"
    return checkout if not (here / table).is_file() and (checkout / table).is_file() else here


def refresh_table_cells(folder: str | Path, marker: str, markdown: str, stamp: str, date: str) -> list[Path]:
    """Give every executed comparison notebook (07_compare*.ipynb in `folder`, its demo/ and runs/)
    `markdown` as the output of its code cells whose source holds `marker` and that have run; the
    cell's metadata records `date` under `wsss.<stamp>`. Returns the notebooks rewritten. The
    caller holds the table's lock."""
    import nbformat

    folder = Path(folder)
    refreshed = []
    for path in sorted(folder.glob("07_compare*.ipynb")) + sorted(folder.glob("*/07_compare*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source and c.outputs]
        for cell in cells:
            cell.outputs = [nbformat.v4.new_output("display_data", data={"text/markdown": markdown,
                                                                            "text/plain": MARKDOWN_REPR})]
            cell.metadata.setdefault("wsss", {})[stamp] = date
        if cells:
            write_text(path, nbformat.writes(nb) + "\n")
            refreshed.append(path)
    return refreshed
