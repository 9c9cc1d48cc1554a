"""The repository explains itself: every "§N" or "§N.M" reference in the code, the notebooks and the
documents resolves to a heading of METHOD.md, and nothing points outside the repository for it.
What the product imports is what requirements.txt installs."""
import ast
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sources():
    for pattern in ("*.py", "*.md", "lib/*.py", "experiments/*.py", "tests/*.py", "notebooks/*.ipynb"):
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


# import name -> the requirements.txt entry that installs it
DISTRIBUTIONS = {"torch": "torch", "tiktoken": "tiktoken", "numpy": "numpy", "matplotlib": "matplotlib",
                 "safetensors": "safetensors", "regex": "regex", "gguf": "gguf"}


def test_every_third_party_import_is_declared_or_optional():
    """Every module the product's files import is the standard library, one of the product's own files,
    a requirement, or an optional extra imported inside `try: ... except ImportError`."""
    declared = {re.split(r"[<>=~ ]", line.strip())[0] for line in open(os.path.join(ROOT, "requirements.txt"))
                if line.strip() and not line.startswith("#")}
    product = [p for pattern in ("*.py", "lib/*.py") for p in glob.glob(os.path.join(ROOT, pattern))]
    own = {os.path.basename(p)[:-3] for p in product} | {"lib", "experiments"}
    undeclared = []
    for path in product:
        if os.path.basename(path) == "conftest.py":  # the tests' own, not the product's
            continue
        tree = ast.parse(open(path, encoding="utf-8").read())
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in t.handlers)
            for n in ast.walk(t)}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for top in {n.split(".")[0] for n in names}:
                if top in sys.stdlib_module_names or top in own or id(node) in guarded:
                    continue
                if DISTRIBUTIONS.get(top) not in declared:
                    undeclared.append(f"{os.path.basename(path)}: {top}")
    assert not undeclared, f"imported but not in requirements.txt (nor guarded by except ImportError): {undeclared}"


def test_every_implemented_in_names_a_real_function():
    """METHOD.md's "Implemented in: `file.py` → `name`" lines point at functions and classes that exist."""
    method = open(os.path.join(ROOT, "METHOD.md"), encoding="utf-8").read()
    pairs = re.findall(r"`([\w/]+\.py)` → `([\w.]+)`", method)
    assert len(pairs) > 20
    missing = []
    for file, name in pairs:
        tree = ast.parse(open(os.path.join(ROOT, file), encoding="utf-8").read())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        if name.split(".")[-1] not in defined:
            missing.append(f"{file} → {name}")
    assert not missing, f"METHOD.md names what does not exist: {missing}"
