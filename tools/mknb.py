"""Write a notebook template from a list of cells (developer helper; templates carry no outputs).

Usage in a script: ``from tools.mknb import write; write("notebooks/01_cohort.ipynb", [("md", "..."), ("params", "..."), ("code", "...")])``
"""
from __future__ import annotations

import nbformat


def write(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            c = nbformat.v4.new_code_cell(src)
            if kind == "params":
                c.metadata["tags"] = ["parameters"]
            elif kind == "hide":
                c.metadata["tags"] = ["hide-input"]
            nb.cells.append(c)
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{i:02d}"
    nbformat.write(nb, path)
