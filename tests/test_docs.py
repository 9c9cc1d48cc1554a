"""The repository explains itself: every "§N" or "§N.M" reference in the code, the notebooks and the
documents resolves to a heading of METHOD.md, and nothing points outside the repository for it."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sources():
    for pattern in ("*.py", "*.md", "tests/*.py", "notebooks/*.ipynb"):
        for path in glob.glob(os.path.join(ROOT, pattern)):
            yield os.path.relpath(path, ROOT), open(path, encoding="utf-8").read()


def test_every_section_reference_resolves_in_method_md():
    method = open(os.path.join(ROOT, "METHOD.md"), encoding="utf-8").read()
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", method, flags=re.M))
    assert {"1", "5", "5.3", "7"} <= headings
    refs = [(path, n) for path, text in sources() for n in re.findall(r"§\s?(\d+(?:\.\d+)?)", text)]
    assert len(refs) > 20  # the code does cite the method
    missing = [(path, n) for path, n in refs if n not in headings]
    assert not missing, f"§ references with no heading in METHOD.md: {missing}"


def test_nothing_points_outside_the_repository():
    outside = ("../" + "shared", "shared/" + "METHOD")  # spelled in two parts so this file is no offender
    offenders = [path for path, text in sources() if any(s in text for s in outside)]
    assert not offenders
