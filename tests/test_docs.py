"""The docs name what exists: every repository path, ``opendisco.*`` name, CLI command and
option, API route and metric that README.md and docs/*.md put in backticks (or in a shell
block) is checked against the code. No servers; docs/settings.md is test_settings.py's.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import click
import pytest

from opendisco.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: the import package's subpackages, as the docs abbreviate them (``signals.UserStateStore``)
SUBPACKAGES = ("api", "eval", "experiments", "ingest", "queries", "rerank", "serving", "signals")
#: ``./dev`` commands of its own (everything else runs ``opendisco <command>``)
DEV_ONLY = {"test", "lint", "env"}


def _text(path: Path) -> tuple[list[str], list[str]]:
    """(backticked spans, lines of fenced blocks) of one markdown file."""
    text = path.read_text()
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]
    return spans, [line.strip() for block in blocks for line in block.splitlines()]


SPANS = {p.relative_to(ROOT).as_posix(): _text(p) for p in DOCS}


def _spans() -> list[tuple[str, str]]:
    return [(doc, s) for doc, (spans, _) in SPANS.items() for s in spans]


def test_repository_paths_exist() -> None:
    tops = {p.name for p in ROOT.iterdir()}
    missing = []
    for doc, span in _spans():
        word = span.split()[0]
        if "/" not in word or any(c in word for c in "<>*…$"):
            continue
        if word.split("/")[0] in tops and not (ROOT / word).exists():
            missing.append(f"{doc}: {word}")
    assert not missing, missing


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    obj: Any = None
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        break
    for name in parts[i:]:
        fields = {
            *getattr(obj, "model_fields", {}),
            *getattr(obj, "__dataclass_fields__", {}),
            *getattr(obj, "__annotations__", {}),
        }
        if hasattr(obj, name):
            obj = getattr(obj, name)
        elif name in fields:
            obj = None
        else:
            return False
    return True


def test_python_names_exist() -> None:
    prefix = re.compile(r"^(opendisco|" + "|".join(SUBPACKAGES) + r")(\.\w+)+")
    missing = []
    for doc, span in _spans():
        m = prefix.match(span)
        if m is None or span.startswith("opendisco_"):
            continue
        dotted = m.group(0)
        if not dotted.startswith("opendisco."):
            dotted = f"opendisco.{dotted}"
        if not _resolve(dotted):
            missing.append(f"{doc}: {m.group(0)}")
    assert not missing, missing


def _command_lines() -> list[tuple[str, list[str]]]:
    out = []
    for doc, (spans, lines) in SPANS.items():
        for line in [*spans, *lines]:
            words = line.split()
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
                words = words[1:]
            if words[:1] == ["./dev"] and words[1:2] and words[1] in DEV_ONLY:
                continue
            if words[:1] in (["./dev"], ["opendisco"]) and len(words) > 1:
                out.append((doc, words[1:]))
    return out


def _options(cmd: click.Command, ctx: click.Context) -> set[str]:
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None
            opts |= _options(sub, click.Context(sub, info_name=name, parent=ctx))
    return opts


def _check_command(words: list[str]) -> list[str]:
    """Problems of one command line: ``a|b`` and `` | `` separate alternatives, uppercase
    words are placeholders."""
    ctx = click.Context(cli, info_name="opendisco")
    cmd: click.Command = cli
    parent = (cmd, ctx)
    problems = []
    rest = words
    while isinstance(cmd, click.Group) and rest:
        names = [w.strip("[]") for w in rest[0].split("|")]
        if not all(re.fullmatch(r"[a-z][a-z-]*", n) for n in names if not n.isupper()):
            break  # an option or an argument: the group's default command takes it
        problems += [
            f"no command {n!r}" for n in names if not n.isupper() and not cmd.get_command(ctx, n)
        ]
        sub = cmd.get_command(ctx, names[0])
        if sub is None:
            return problems
        parent = (cmd, ctx)
        ctx, cmd, rest = click.Context(sub, info_name=names[0], parent=ctx), sub, rest[1:]
    known = _options(cmd, ctx)
    for i, word in enumerate(rest):
        group, gctx = parent
        if word == "|" and i + 1 < len(rest) and isinstance(group, click.Group):
            alt = group.get_command(gctx, rest[i + 1])
            if alt is not None:  # `` | other-subcommand [--its-options]``
                known = _options(alt, click.Context(alt, info_name=rest[i + 1], parent=gctx))
        for opt in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", word):
            if opt not in known:
                problems.append(f"no option {opt}")
    return problems


def test_cli_commands_and_options_exist() -> None:
    problems = [
        f"{doc}: {' '.join(words)}: {problem}"
        for doc, words in _command_lines()
        for problem in _check_command(words)
    ]
    assert not problems, problems


def _routes() -> list[re.Pattern[str]]:
    found = []
    for path in (ROOT / "api" / "routes").glob("*.py"):
        for method, route in re.findall(
            r"@router\.(get|post|put|delete|patch)\(\s*\"([^\"]+)\"", path.read_text()
        ):
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(route))
            found.append(re.compile(f"{method.upper()} {pattern}"))
    return found


def test_api_routes_exist() -> None:
    routes = _routes()
    missing = []
    for doc, span in _spans():
        for method, path in re.findall(r"\b(GET|POST|PUT|DELETE|PATCH) (/[^\s?`]*)", span):
            if not any(r.fullmatch(f"{method} {path}") for r in routes):
                missing.append(f"{doc}: {method} {path}")
    assert not missing, missing


@pytest.mark.parametrize("doc", [p.relative_to(ROOT).as_posix() for p in DOCS])
def test_metric_names_exist(doc: str) -> None:
    code = (ROOT / "api" / "_metrics.py").read_text()
    text = (ROOT / doc).read_text()
    names = {re.sub(r"_(count|sum|bucket)$", "", n) for n in re.findall(r"opendisco_api_\w+", text)}
    missing = sorted(n for n in names if f'"{n}"' not in code)
    assert not missing, missing


@pytest.mark.parametrize("doc", [p.relative_to(ROOT).as_posix() for p in DOCS])
def test_metric_labels_exist(doc: str) -> None:
    """A documented series (``opendisco_api_rejected_total{reason="saturated"}``, as an alert
    would select it) has that label, and the value is one the API writes (a literal of its
    code): an alert on a label or value no series has never fires."""
    from opendisco.api._metrics import Metrics

    labels = {
        m._name + ("_total" if m._type == "counter" else ""): set(m._labelnames)
        for m in vars(Metrics()).values()
        if hasattr(m, "_labelnames")
    }
    code = "".join(p.read_text() for p in (ROOT / "api").rglob("*.py"))
    wrong = []
    for name, selector in re.findall(r"(opendisco_api_\w+)\{([^}]*)\}", (ROOT / doc).read_text()):
        base = re.sub(r"_(count|sum|bucket)$", "", name)
        for label, value in re.findall(r'(\w+)="([^"]*)"', selector):
            if label not in labels.get(base, set()) or f'"{value}"' not in code:
                wrong.append(f"{name}{{{label}={value!r}}}")
    assert not wrong, wrong
