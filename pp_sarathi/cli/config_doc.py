"""docs/guide.md's configuration reference, generated from the dataclasses in
``pp_sarathi/config.py``: one table per group (its docstring above it), one row per key with
the default and the field's doc line (the comment right above the field, else the comment on
its line).

    python -m pp_sarathi.cli.config_doc                   # print the reference
    python -m pp_sarathi.cli.config_doc --write docs/guide.md
    python -m pp_sarathi.cli.config_doc --check docs/guide.md   # exit 1 when stale
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import tokenize
from enum import Enum
from pathlib import Path

from .. import config as config_module
from ..config import RunConfig

BEGIN = "<!-- config reference: generated from pp_sarathi/config.py by `python -m pp_sarathi.cli.config_doc --write docs/guide.md`; do not edit by hand -->"
END = "<!-- end of generated config reference -->"


def field_docs() -> dict[tuple[str, str], str]:
    """(class name, field name) -> doc line, for every dataclass field in config.py."""
    source = inspect.getsource(config_module)
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    docs = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)) \
                    or "ClassVar" in ast.unparse(stmt.annotation):
                continue
            above, line = [], stmt.lineno - 1
            while line in comments and line not in code_lines:
                above.insert(0, comments[line])
                line -= 1
            doc = " ".join(above) or comments.get(stmt.end_lineno, "")
            docs[(node.name, stmt.target.id)] = doc
    return docs


def _default(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_default(v) for v in value) + "]"
    return str(value)


def _rows(obj, prefix: str, docs: dict) -> list[str]:
    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):  # a nested group (logging.wandb) joins its parent's table
            rows += _rows(value, f"{prefix}{f.name}.", docs)
            continue
        doc = docs.get((type(obj).__name__, f.name), "")
        rows.append(f"| `{prefix}{f.name}` | {_default(value)} | {doc} |")
    return rows


def _table(obj, prefix: str, docs: dict) -> list[str]:
    return ["| key | default | meaning |", "|---|---|---|", *_rows(obj, prefix, docs)]


def render() -> str:
    """The generated block (markers included) for docs/guide.md."""
    docs = field_docs()
    cfg = RunConfig()
    top = [f for f in dataclasses.fields(cfg) if not dataclasses.is_dataclass(getattr(cfg, f.name))]
    out = [BEGIN, "", inspect.getdoc(RunConfig), "", "| key | default | meaning |", "|---|---|---|"]
    out += [f"| `{f.name}` | {_default(getattr(cfg, f.name))} | {docs.get(('RunConfig', f.name), '')} |"
            for f in top]
    for f in dataclasses.fields(cfg):
        group = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(group):
            continue
        out += ["", inspect.getdoc(type(group)), "", *_table(group, f"{f.name}.", docs)]
    return "\n".join(out + ["", END])


def _split(text: str) -> tuple[str, str, str]:
    try:
        head, rest = text.split(BEGIN, 1)
        block, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"config_doc: the generated-reference markers are missing:\n{BEGIN}\n{END}") from None
    return head, BEGIN + block + END, tail


def is_current(guide: Path) -> bool:
    """Whether ``guide``'s generated block is what :func:`render` makes now."""
    return _split(guide.read_text())[1] == render()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pp_sarathi.cli.config_doc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="GUIDE", help="replace the generated block in GUIDE")
    parser.add_argument("--check", metavar="GUIDE", help="exit 1 when GUIDE's block is stale")
    args = parser.parse_args(argv)
    if args.write:
        path = Path(args.write)
        head, _, tail = _split(path.read_text())
        path.write_text(head + render() + tail)
        return 0
    if args.check:
        if is_current(Path(args.check)):
            return 0
        print(f"{args.check} is stale: run python -m pp_sarathi.cli.config_doc --write {args.check}", file=sys.stderr)
        return 1
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
