"""Run every notebook top to bottom, as CI does: a change in the code that breaks a notebook, or makes
one of its asserts false, fails here. The outputs committed in notebooks/ are left untouched.

    python tests/test_notebooks.py    # re-execute them and write the outputs back (after a change)
"""
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          "notebooks", "*.ipynb")))


def execute(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path):
    execute(path)


def test_there_are_four_notebooks():
    assert [os.path.basename(p)[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


if __name__ == "__main__":
    for p in NOTEBOOKS:
        nbformat.write(execute(p), p)
        print("executed", p)
