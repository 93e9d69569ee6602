"""The documentation's code runs (issue 14): every ```python block of README.md and docs/*.md,
and every docstring example of the package.

A block runs in a namespace shared with the blocks before it in the same file. HTML comments
just above a block adjust it, and are the only way to leave a block out:

    <!-- doc-test: skip: needs a Slurm cluster -->          not run, with the reason shown
    <!-- doc-test: setup: config = small_config() -->       code run before the block
    <!-- doc-test: sub: n_replicates=200 => n_replicates=2 -->   text replaced before running
    <!-- doc-test: check: assert result.summary.shape[0] == 4 -->  code run after the block

Blocks that import PyMC are marked slow.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import bayesim_hpc

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_DIRECTIVE = re.compile(r"<!--\s*doc-test:\s*(skip|setup|sub|check):\s*(.*?)\s*-->", re.S)


@dataclass
class Block:
    file: Path
    number: int
    code: str
    skip: str | None = None
    setup: list[str] = field(default_factory=list)
    subs: list[tuple[str, str]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}#{self.number}"

    def source(self) -> str:
        code = self.code
        for old, new in self.subs:
            if old not in code:
                raise AssertionError(f"{self.id}: doc-test sub {old!r} no longer matches the block")
            code = code.replace(old, new)
        return code


def collect(path: Path) -> list[Block]:
    text = path.read_text()
    blocks = []
    for n, m in enumerate(_BLOCK.finditer(text), 1):
        before = text[:m.start()].rstrip()
        # the directives: the HTML comments that end right above the block
        comments = []
        while before.endswith("-->"):
            start = before.rfind("<!--")
            comments.insert(0, before[start:])
            before = before[:start].rstrip()
        b = Block(path, n, m.group(1))
        for c in comments:
            for kind, arg in _DIRECTIVE.findall(c):
                if kind == "skip":
                    b.skip = arg
                elif kind == "setup":
                    b.setup.append(arg)
                elif kind == "check":
                    b.checks.append(arg)
                else:
                    old, _, new = arg.partition(" => ")
                    b.subs.append((old, new))
        blocks.append(b)
    return blocks


ALL = [b for f in DOC_FILES for b in collect(f)]


def _param(b: Block):
    marks = [pytest.mark.slow] if "pymc" in b.code.lower() and not b.skip else []
    return pytest.param(b, id=b.id, marks=marks)


_namespaces: dict[Path, dict] = {}


@pytest.mark.parametrize("block", [_param(b) for b in ALL])
def test_doc_block_runs(block: Block, tmp_path, monkeypatch):
    if block.skip:
        pytest.skip(f"not run: {block.skip}")
    monkeypatch.chdir(tmp_path)
    ns = _namespaces.setdefault(block.file, {"__name__": "doc_test"})
    ns["tmp_path"] = tmp_path
    for code in block.setup:
        exec(compile(code, f"{block.id} (setup)", "exec"), ns)
    exec(compile(block.source(), block.id, "exec"), ns)
    for code in block.checks:
        exec(compile(code, f"{block.id} (check)", "exec"), ns)


def test_every_doc_file_has_its_blocks_collected():
    """A block the collector misses is a block nobody runs: count the fences by hand."""
    for f in DOC_FILES:
        fences = sum(1 for line in f.read_text().splitlines() if line.strip() == "```python")
        assert fences == len(collect(f)), f


def _modules():
    for info in pkgutil.walk_packages(bayesim_hpc.__path__, "bayesim_hpc."):
        yield info.name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (python -m doctest -v)"
