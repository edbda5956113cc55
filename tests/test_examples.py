"""The documents' examples stay true: each example output in README.md and docs/reference.md
(a fenced block under `<!-- example: NAME -->`) has the shape of what lognet writes now, as
tests/examples.py makes it; each `lognet` command shown parses; the man page renders
without a warning.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
from examples import examples

import lognet
from conftest import ROOT, require_root, require_tool

DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "reference.md"]
EXAMPLE = re.compile(r"^<!-- example: (.+?) -->\n```\w*\n(.*?)^```", re.S | re.M)


def shown_examples() -> list[tuple[str, str, str]]:
    """(document, name, text) of every example the documents show."""
    return [(path.name, name, text) for path in DOCUMENTS for name, text in EXAMPLE.findall(path.read_text())]


@pytest.fixture(scope="module")
def fresh():
    require_root("unshare -n: the examples' workload runs in a network namespace of its own")
    return examples()


def upid_names(text: str) -> set[str]:
    return set(re.findall(r"(?:^| |\")(demo-[a-z]+)\|", text))


def w3c_shape(text: str) -> tuple:
    """A W3C block's shape: its #Fields lines, whether each line has as many fields as its
    header says (three for processes.log), and the processes it names."""
    fields, whole = None, True
    headers = []
    for line in text.splitlines():
        if line.startswith("#Fields:"):
            fields = line.split()[1:]
            headers.append(line)
        elif line and not line.startswith("#"):
            count = len(line.split(" ", 2)) if fields and fields[1] == "upid" else len(line.split(" "))
            whole &= fields is None or count == (3 if fields[1] == "upid" else len(fields))
    return tuple(headers), whole, upid_names(text)


def table_shape(text: str) -> tuple:
    lines = text.strip("\n").splitlines()
    return " ".join(lines[0].split()), len(lines)


def jsonl_shape(text: str) -> list:
    return sorted(tuple(sorted(json.loads(line))) for line in text.splitlines() if line.strip())


SHAPES = {"eight": w3c_shape, "lifecycle": w3c_shape, "processes": w3c_shape, "lifecycle line": w3c_shape,
          "processes line": w3c_shape, "report raddr": table_shape, "report by": table_shape,
          "jsonl": jsonl_shape, "processes jsonl": jsonl_shape, "report jsonl": jsonl_shape}


def test_the_documents_show_examples_of_each_kind():
    names = {name for _, name, _ in shown_examples()}
    assert {"lifecycle line", "processes line", "report raddr", "report by", "report jsonl", "eight", "lifecycle",
            "jsonl"} <= names
    assert names <= SHAPES.keys()


@pytest.mark.parametrize("document,name,text", shown_examples(), ids=lambda value: str(value)[:30])
def test_each_example_has_the_shape_of_what_lognet_writes_now(fresh, document, name, text):
    shape = SHAPES[name]
    now = fresh[name]
    if name.endswith(" line"):  # one line, without its header: the header's count of fields
        header = fresh["processes" if name.startswith("processes") else "lifecycle"]
        assert w3c_shape(header.split("\n#Fields:")[0] + "\n" + header.split("\n", 3)[2] + "\n" + text)[1:] == (
            True, upid_names(now))
        return
    assert shape(text) == shape(now), (document, name)


def commands_shown() -> list[str]:
    """Every `lognet` command the documents show, in their blocks and in their text (but for
    synopses, with their [brackets] and ellipses), without redirections."""
    commands = []
    for path in DOCUMENTS:
        text = path.read_text()
        lines = [line for block in re.findall(r"^```\w*\n(.*?)^```", text, re.S | re.M) for line in block.splitlines()]
        lines += re.findall(r"`((?:lognet|/usr/local/bin/lognet) [^`]*)`", text)
        for line in lines:
            for part in re.split(r"&&|\|", line.split(" # ")[0]):
                words = part.split()
                if words and words[0] in ("lognet", "/usr/local/bin/lognet") and not re.search(r"\[|\.\.\.|…", part):
                    commands.append(" ".join(word for word in words if not re.match(r"\d?>", word)))
    return commands


def test_every_lognet_command_shown_parses(capsys):
    commands = commands_shown()
    assert len(commands) >= 15
    for command in commands:
        argv = shlex.split(command)[1:]
        try:
            if argv[:1] == ["report"]:
                lognet.build_report_parser().parse_args(argv[1:])
            else:
                lognet.parse_args(argv)
        except SystemExit as exc:  # --help exits 0
            assert exc.code == 0, f"{command!r} does not parse: {capsys.readouterr().err}"


def test_the_man_page_renders_without_a_warning_and_names_every_option():
    require_tool("groff", "groff-base")
    require_tool("mandoc", "mandoc")
    page = ROOT / "docs" / "lognet.8"
    groff = subprocess.run(["groff", "-ww", "-man", "-z", str(page)], capture_output=True, text=True, timeout=60)
    assert (groff.returncode, groff.stderr) == (0, "")
    lint = subprocess.run(["mandoc", "-T", "lint", str(page)], capture_output=True, text=True, timeout=60)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")
    rendered = subprocess.run(["groff", "-man", "-Tutf8", str(page)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0 and "lognet report" in rendered.stdout
    text = page.read_text()
    for parser in (lognet.build_parser(), lognet.build_report_parser()):
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert any(option.replace("-", "\\-") in text for option in action.option_strings), (
                    action.option_strings)


def test_examples_script_prints_every_example(fresh):
    assert set(SHAPES) <= set(fresh) and all(fresh[name].strip() for name in SHAPES)
