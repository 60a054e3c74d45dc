"""Every command the documentation records still runs as written.

README.md, benchmarks/README.md and benchmarks/RESULTS.md record the commands behind each result
(the project's rule: anyone can rerun them); the benchmarks' shell scripts run more, and their
header comments and the Python scripts' docstrings give examples. A flag renamed or a script moved
leaves them broken without a sound, so this test parses each one, running nothing:
``localdisc X ...`` (also as ``python -m localdisc``, under ``torchrun``, or a reference such as
``benchmark transfer --cpu-scale``) against the CLI's commands and options;
``python benchmarks/NAME.py ...`` against that script's own parser (taken from its ``main()``,
stopped at ``parse_args``), choices included; ``NAME=VALUE bash benchmarks/NAME.sh MODE`` for the
script, the variables it reads and its modes. Doc notation is read as meant: ``[--seed 1]``
optional, ``a|b`` a choice, ``RUN...`` more of them, an indented line of options a continuation.

A command recorded at an older commit keeps its text: a note "today: `...`" after it (in the same
paragraph, or the one right after its code block) gives the current equivalent, which is checked
in its place (a note of flags alone, "today: `--new-flag`", as flags of that command); "today:
none" says there is none.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import itertools
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "benchmarks/README.md", "benchmarks/RESULTS.md")
# The benchmarks' scripts: a shell script's code and header comments, a Python one's docstring.
SCRIPTS = tuple(
    str(p.relative_to(ROOT))
    for p in sorted((ROOT / "benchmarks").iterdir())
    if p.suffix in {".sh", ".py"}
)
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
# Words that run the next word as the command (their own options are skipped).
WRAPPERS = {"time", "nice", "timeout", "env", "exec", "do", "then", "else", "!", "{", "nohup"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;", "|&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
TODAY = re.compile(r"today:\s*((?:`[^`]+`[\s,;]*(?:and|or)?\s*)+)", re.IGNORECASE)
TODAY_NONE = re.compile(r"today: none\b", re.IGNORECASE)
# A code span that is a command: localdisc, python, torchrun or bash, after NAME=VALUE words.
COMMAND_START = re.compile(
    r"^(?:[A-Za-z_]\w*=\S*\s+)*(?:cd \S+ && )?(?:[A-Za-z_]\w*=\S*\s+)*"
    r"(?:localdisc \w|python3? |torchrun |bash \S+\.sh)"
)


@dataclass(frozen=True)
class Snippet:
    """Shell text found in a file: a code block, a code span or a comment, with its first line.

    ``doc``: written for people (a doc, a comment), so ``a|b`` is a choice of values and an
    indented line of options continues the line before. ``today``: the current equivalents a
    "today:" note next to it gives (``("",)`` for "today: none"); empty for a current command.
    """

    path: str
    line: int
    text: str
    doc: bool = True
    today: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """One simple command of a snippet: the words the shell passes on, its environment."""

    path: str
    line: int
    words: tuple[str, ...]
    cwd: Path
    env: tuple[str, ...] = ()  # the NAME=VALUE words before it

    def where(self) -> str:
        return f"{self.path}:{self.line}: `{shlex.join(self.words)}`"


# --- finding the snippets -------------------------------------------------------------------
def _today_notes(text: str) -> tuple[str, ...]:
    """The code spans of every "today: `...`" note in ``text``; ``""`` for "today: none"."""
    notes = [
        span.replace("\n", " ")
        for note in TODAY.finditer(text)
        for span in re.findall(r"`([^`]+)`", note.group(1))
    ]
    return tuple(notes) + (("",) if TODAY_NONE.search(text) else ())


def _as_command(span: str) -> str | None:
    """A code span as a command: as written, or ``localdisc`` + a reference such as
    ``benchmark transfer --cpu-scale``; None for any other span."""
    span = span.replace("\n", " ").strip()
    if COMMAND_START.match(span):
        return span
    names = "|".join(map(re.escape, cli_command().commands))
    return f"localdisc {span}" if re.match(rf"(?:{names})(?: [a-z-]+)? -", span) else None


def _spans(relpath: str, lines: list[tuple[int, str]]) -> Iterator[Snippet]:
    """The command code spans of a paragraph, each with the "today:" notes that follow it."""
    text = "\n".join(line for _, line in lines)
    spans = [
        (m, command)
        for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", text, re.DOTALL)
        if (command := _as_command(m.group(2))) is not None
    ]
    notes = [m.span() for m in re.finditer(TODAY.pattern + "|" + TODAY_NONE.pattern, text, re.I)]
    # A span inside a note is the current command the note gives, not a record.
    noted = [any(a <= m.start() < b for a, b in notes) for m, _ in spans]
    for k, (m, command) in enumerate(spans):
        line = lines[0][0] + text[: m.start()].count("\n")
        if noted[k]:
            yield Snippet(relpath, line, command)
            continue
        # Its notes: those before the next record.
        later = [n.start() for (n, _), in_note in zip(spans, noted, strict=True) if not in_note]
        end = next((start for start in later if start > m.start()), len(text))
        yield Snippet(relpath, line, command, True, _today_notes(text[m.end() : end]))


def markdown_snippets(relpath: str) -> list[Snippet]:
    """The shell code blocks and command code spans of a markdown file."""
    lines = (ROOT / relpath).read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    paragraph: list[tuple[int, str]] = []
    block: Snippet | None = None  # the last code block: a note may follow it

    def flush() -> None:
        nonlocal block
        if paragraph:
            if block is not None:
                notes = _today_notes("\n".join(line for _, line in paragraph))
                snippets.append(Snippet(block.path, block.line, block.text, True, notes))
                block = None
            snippets.extend(_spans(relpath, paragraph))
            paragraph.clear()

    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        fence = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
        if fence:
            flush()
            if block is not None:
                snippets.append(block)
            start, language, body = i + 2, fence.group(2).lower(), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
                body.append(lines[i])
                i += 1
            text = "\n".join(body)
            block = Snippet(relpath, start, text) if language in SHELL_LANGUAGES else None
        elif stripped:
            paragraph.append((i + 1, lines[i]))
        else:
            flush()
        i += 1
    flush()
    if block is not None:
        snippets.append(block)
    return snippets


def comment_snippets(relpath: str, lines: list[tuple[int, str]]) -> list[Snippet]:
    """The commands of a script's header comments or docstring: whole lines and code spans."""
    snippets = []
    i = 0
    while i < len(lines):
        line, text = lines[i][0], lines[i][1].strip()
        i += 1
        if COMMAND_START.match(text):
            while text.endswith("\\") and i < len(lines):
                text = text.rstrip("\\") + " " + lines[i][1].strip()  # or "\\" in a docstring
                i += 1
            snippets.append(Snippet(relpath, line, text))
        else:
            snippets.extend(_spans(relpath, [(line, text)]))
    return snippets


def script_snippets(relpath: str) -> list[Snippet]:
    """A shell script's code and the commands of its comments; a Python script's docstring."""
    text = (ROOT / relpath).read_text(encoding="utf-8")
    if relpath.endswith(".sh"):
        comments = [
            (n, re.sub(r"^\s*#+", "", line))
            for n, line in enumerate(text.splitlines(), 1)
            if line.lstrip().startswith("#") and not line.startswith("#!")
        ]
        return [Snippet(relpath, 1, text, False), *comment_snippets(relpath, comments)]
    tree = ast.parse(text)
    first = tree.body[0] if tree.body else None
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)):
        return []
    # The docstring's source lines, as written: a "\\" ending a line is in the command.
    lines = text.splitlines()[first.lineno - 1 : first.end_lineno]
    lines[0] = re.sub(r'^[rRuU]?("""|\'\'\')', "", lines[0])
    return comment_snippets(relpath, [(first.lineno + k, line) for k, line in enumerate(lines)])


# --- splitting shell text into commands -----------------------------------------------------
def _logical_lines(text: str, first: int, doc: bool) -> Iterator[tuple[int, str]]:
    """Lines joined over ``\\`` continuations and open quotes; heredoc bodies left out.

    In a doc (``doc``), an indented line of options also continues the line before it.
    """
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start, current = i, lines[i]
        i += 1
        while True:
            if current.rstrip().endswith("\\") and i < len(lines):
                current = current.rstrip()[:-1] + " " + lines[i]
                i += 1
                continue
            if doc and i < len(lines) and re.match(r"\s+\[?-", lines[i]):
                current += " " + lines[i]
                i += 1
                continue
            try:
                shlex.split(current, comments=True)
            except ValueError:  # a quote open to a later line
                if i < len(lines):
                    current += "\n" + lines[i]
                    i += 1
                    continue
            break
        heredoc = HEREDOC.search(current)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
            current = current[: heredoc.start()]
        yield first + start, current


def _words(line: str, doc: bool) -> list[str]:
    """Shell words and separators; redirections dropped.

    In a doc (``doc``), ``a|b`` is a choice of values, kept in one word as ``a¦b``, and ``|``
    inside ``[...]`` separates optional alternatives.
    """
    if doc:
        line = re.sub(r"(?<=\S)\\?\|(?=\S)", "¦", line)
        line = re.sub(r"\[[^\[\]]*\]", lambda m: m.group().replace(" | ", " "), line)
    line = re.sub(r"\d?>&\d", " ", line)
    line = re.sub(r"(?<![\w$])\d(?=>)", " ", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    words = list(lexer)
    out: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in {">", ">>", "<", "&>", ">|"}:
            skip = True
        else:
            out.append(word)
    return out


def commands(snippet: Snippet) -> Iterator[Command]:
    """The simple commands of a snippet, with shell variables that hold a command expanded."""
    cwd = ROOT
    variables: dict[str, str] = {}
    for line, text in _logical_lines(snippet.text, snippet.line, snippet.doc):
        # ${NAME:+--flag "$NAME"} gives the flag when NAME is set: the flag is checked.
        text = re.sub(r"\$\{\w+:\+([^}]*)\}", r"\1", text)
        try:
            words = _words(text, snippet.doc)
        except ValueError:
            yield Command(snippet.path, line, ("<unparsable>", text), cwd)
            continue
        segment: list[str] = []
        for word in [*words, ";"]:
            if word not in SEPARATORS:
                segment.append(word)
                continue
            env = []
            while segment and ASSIGNMENT.match(segment[0]):
                if len(segment) == 1:
                    name, _, value = segment[0].partition("=")
                    variables[name] = value
                env.append(segment.pop(0))
            while segment and segment[0] in WRAPPERS:
                wrapper = segment.pop(0)
                while segment and (segment[0].startswith("-") or ASSIGNMENT.match(segment[0])):
                    flag = segment.pop(0)
                    if wrapper == "nice" and flag == "-n" and segment:
                        segment.pop(0)
                if wrapper == "timeout" and segment:
                    segment.pop(0)  # the duration
            if segment and re.fullmatch(r"\$\{?(\w+)\}?", segment[0]):
                name = segment[0].strip("${}")
                if name in variables:
                    segment[:1] = shlex.split(variables[name])
            if segment and segment[0] == "cd":
                # A folder the doc names but the checkout lacks (SNAPSHOT, a copy of the
                # repository): the commands run as from the repository root.
                if len(segment) > 1 and (cwd / segment[1]).is_dir():
                    cwd = (cwd / segment[1]).resolve()
            elif segment:
                yield Command(snippet.path, line, tuple(segment), cwd, tuple(env))
            segment = []


# --- checking one command ------------------------------------------------------------------
def _clean(words: tuple[str, ...]) -> list[str]:
    """The words with a doc's optional brackets taken off (``[--seed 1]``, ``[RUN ...]``)."""
    out, depth = [], 0
    for word in words:
        if word.startswith("[") and word != "[":
            word, depth = word[1:], depth + 1
        if depth and word.endswith("]"):
            word, depth = word[:-1], depth - 1
        if word.endswith("...") and word != "...":  # RUN...: more of them
            word = word[:-3]
        if word:
            out.append(word)
    return out


def _is_option(word: str) -> bool:
    return word.startswith("-") and word != "-" and not re.fullmatch(r"-[\d.e+-]+", word)


@functools.cache
def cli_command():
    import typer

    from localdisc.cli import app

    return typer.main.get_command(app)


def check_cli(args: list[str]) -> list[str]:
    """Problems of ``localdisc ARGS``: an unknown command, an unknown option, too many values."""
    command = cli_command()
    name = "localdisc"
    i = 0
    while hasattr(command, "commands"):
        if i >= len(args) or args[i] in {"--help", "-h"}:
            return []
        if args[i].startswith("-"):
            known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            if args[i] not in known:
                return [f"`{name}` has no option {args[i]}"]
            i += 1
            continue
        sub = command.commands.get(args[i])
        if sub is None:
            choices = ", ".join(sorted(command.commands))
            return [f"`{name}` has no command {args[i]!r} (it has {choices})"]
        command, name, i = sub, f"{name} {args[i]}", i + 1
    options: dict[str, int] = {"--help": 0}
    arguments = 0
    for param in command.params:
        if param.param_type_name == "option":
            count = 0 if (param.is_flag or param.count) else param.nargs
            options.update(dict.fromkeys((*param.opts, *param.secondary_opts), count))
        elif param.param_type_name == "argument":
            arguments = -1 if param.nargs < 0 or arguments < 0 else arguments + param.nargs
    problems, positional, variable = [], 0, False
    while i < len(args):
        word = args[i]
        i += 1
        if word == "--":
            positional += len(args) - i
            break
        if not _is_option(word):
            positional += 1
            variable |= "$" in word or word == "..."  # it may stand for options
            continue
        flag, equals, _ = word.partition("=")
        if flag not in options:
            problems.append(f"`{name}` has no option {flag}")
            variable = True  # its values, if any, are not arguments
        elif not equals:
            i += options[flag]
    if 0 <= arguments < positional and not variable:
        problems.append(f"`{name}` takes {arguments} argument(s), the command gives {positional}")
    return problems


class _Stop(Exception):
    """Raised in place of parsing: carries what the script would have parsed with."""


@functools.cache
def script_parser(path: Path) -> argparse.ArgumentParser | tuple[str, ...] | None:
    """The script's argument parser, or the ``localdisc`` words it passes its arguments on to."""
    spec = importlib.util.spec_from_file_location(f"_recorded_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    with mock.patch.object(sys, "path", [str(path.parent), *sys.path]):
        spec.loader.exec_module(module)

    def stop(parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Stop(parser)

    def forward(args: list[str]) -> None:  # a script handing its arguments to the CLI
        raise _Stop(tuple(args))

    if hasattr(module, "app"):
        module.app = forward
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", stop),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", stop),
        mock.patch.object(sys, "argv", [str(path)]),
    ):
        try:
            module.main()
        except _Stop as stopped:
            return stopped.args[0]
    return None


def check_argparse(parser: argparse.ArgumentParser, args: list[str], name: str) -> list[str]:
    """Problems of ``ARGS`` for an argparse parser: unknown options, values not among choices."""
    actions = parser._option_string_actions
    longs = [o for o in actions if o.startswith("--")]
    problems = []
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        if word == "--":
            break
        if not _is_option(word):
            continue
        flag, equals, value = word.partition("=")
        action = actions.get(flag)
        if action is None and parser.allow_abbrev and flag.startswith("--"):
            matches = [o for o in longs if o.startswith(flag)]
            action = actions[matches[0]] if len(matches) == 1 else None
        if action is None:
            problems.append(f"`{name}` has no option {flag}")
            continue
        if equals:
            values = [value]
        elif action.nargs in (None, "?") or isinstance(action.nargs, int):
            count = 1 if action.nargs in (None, "?") else action.nargs
            values = args[i : i + count]
            if action.nargs == "?" and values and _is_option(values[0]):
                values = []
            i += len(values)
        else:  # "*", "+", "..."
            values = []
            while i < len(args) and not _is_option(args[i]):
                values.append(args[i])
                i += 1
        literal = [v for v in values if re.fullmatch(r"[\w.,:+¦-]+", v) and not v.isupper()]
        for choice in [a for v in literal for a in v.split("¦")] if action.choices else ():
            try:
                value = action.type(choice) if action.type is not None else choice
            except (TypeError, ValueError):
                continue
            if value not in action.choices:
                choices = list(action.choices)
                problems.append(f"`{name} {flag}` takes one of {choices}, not {choice}")
    return problems


def check(command: Command) -> list[str]:
    """Problems of one command, each prefixed with where it is recorded."""
    words = _clean(command.words)
    if not words:
        return []
    program = Path(words[0]).name
    problems: list[str] = []
    if words[0] == "<unparsable>":
        problems = ["the shell line does not parse"]
    elif program == "localdisc":
        problems = check_cli(words[1:])
    elif program == "torchrun" or re.fullmatch(r"python(3(\.\d+)?)?", program):
        rest = words[1:]
        if program == "torchrun":  # its own options (some with values) up to the program
            start = next((k for k, w in enumerate(rest) if w == "-m" or w.endswith(".py")), 0)
            rest = rest[start:]
        while rest and rest[0].startswith("-") and rest[0] not in {"-m", "-", "-c"}:
            if rest.pop(0) in {"-X", "-W"}:
                rest = rest[1:]  # its value
        if rest[:1] == ["-m"] and len(rest) > 1:
            module, rest = rest[1], rest[2:]
            if module == "localdisc":
                problems = check_cli(rest)
            elif module.startswith("benchmarks."):
                problems = check_script(ROOT / (module.replace(".", "/") + ".py"), rest)
        elif rest and rest[0].endswith(".py") and "$" not in rest[0]:
            script = (command.cwd / rest[0]).resolve()
            if script.parent == ROOT / "benchmarks" or not script.exists():
                problems = check_script(script, rest[1:])
    elif program in {"bash", "sh"} and words[1:2] and re.fullmatch(r"[^$]+\.sh", words[1]):
        problems = check_shell_script(command.cwd / words[1], words[2:], command.env)
    return [f"{command.where()}: {p}" for p in problems]


# Variables read by the programs a script runs, not by the script itself.
ENVIRONMENT = {"PYTHONPATH", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "LC_ALL", "TMPDIR"}


def check_shell_script(script: Path, args: list[str], env: tuple[str, ...]) -> list[str]:
    """Problems of ``NAME=VALUE bash SCRIPT ARGS``: no script, a variable or a mode it ignores."""
    if not script.exists():
        return [f"no script {_relative(script)}"]
    text = script.read_text(encoding="utf-8")
    problems = []
    for assignment in env:
        name = assignment.partition("=")[0]
        if name not in ENVIRONMENT and not re.search(rf"\${{?{name}\b", text):
            problems.append(f"{_relative(script)} does not read {name}")
    # A script whose first argument picks a case runs only the case's labels.
    case = re.search(r'case "\$(?:1|what)" in\s*([\w|]+)\)', text)
    if case and args and "$" not in args[0]:
        labels = case.group(1).split("|")
        problems += [
            f"{_relative(script)} takes one of {labels}, not {mode}"
            for mode in args[0].split("¦")
            if mode not in labels
        ]
    return problems


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check_script(script: Path, args: list[str]) -> list[str]:
    """Problems of ``python SCRIPT ARGS``."""
    if not script.exists():
        return [f"no script {_relative(script)}"]
    parser = script_parser(script)
    if isinstance(parser, tuple):
        return check_cli([*parser, *args])
    if parser is None:
        return [f"{script.name} parses no arguments (its main() reached no parse_args)"]
    return check_argparse(parser, args, f"benchmarks/{script.name}")


# --- what is checked ------------------------------------------------------------------------
def recorded_commands(relpath: str) -> Iterator[tuple[Command, tuple[str, ...]]]:
    """Each command a file records, with the "today:" equivalents noted next to it."""
    snippets = markdown_snippets(relpath) if relpath.endswith(".md") else script_snippets(relpath)
    for snippet in snippets:
        for command in commands(snippet):
            yield command, snippet.today


def problems_of(relpath: str) -> list[str]:
    """Every problem of the commands a file records; an outdated one is fine if its note is."""
    problems = []
    for command, today in recorded_commands(relpath):
        found = check(command)
        if not found or not today:
            problems += found
            continue
        for note in filter(None, today):  # the current equivalent is checked in its place
            words = shlex.split(note)
            if words and _is_option(words[0]):  # flags alone: of the recorded command
                head = itertools.takewhile(lambda w: not w.startswith("--"), command.words)
                words = [*head, *words]
            problems += check(Command(command.path, command.line, tuple(words), command.cwd))
    return problems


def test_the_benchmark_scripts_the_docs_name_exist():
    text = "\n".join((ROOT / doc).read_text(encoding="utf-8") for doc in DOCS)
    names = set(re.findall(r"benchmarks/(\w+\.(?:py|sh))\b", text))
    table = (ROOT / "benchmarks/README.md").read_text(encoding="utf-8")
    names |= set(re.findall(r"`(\w+\.(?:py|sh))`", table))
    missing = sorted(n for n in names if not (ROOT / "benchmarks" / n).exists())
    assert not missing, f"the docs name benchmark scripts that are not there: {missing}"


@pytest.mark.parametrize("relpath", DOCS + SCRIPTS)
def test_recorded_commands_parse(relpath):
    problems = problems_of(relpath)
    if relpath.endswith(".sh"):  # and the script is bash
        syntax = subprocess.run(["bash", "-n", relpath], cwd=ROOT, capture_output=True, text=True)
        problems += [line for line in syntax.stderr.splitlines() if line]
    assert not problems, "commands that no longer run as written:\n" + "\n".join(problems)


# --- the checker itself ---------------------------------------------------------------------
def _problems(tmp_path: Path, text: str) -> list[str]:
    doc = tmp_path / "doc.md"
    doc.write_text(text, encoding="utf-8")
    return problems_of(str(doc))


def test_a_command_that_no_longer_parses_is_named_with_its_line_and_flag(tmp_path):
    text = (
        "Intro with `localdisc pretrain --data x --stage-1-steps 5` inline.\n"
        "\n"
        "```bash\n"
        "localdisc pretrain --data x \\\n"
        "    --out y --sizes 5\n"
        "python -m localdisc pretrian --data x\n"
        "python benchmarks/scaling.py --device cpu --sise 5\n"
        "python benchmarks/vesselness_selftrain.py --data-root d --task drive|retina\n"
        "python benchmarks/no_such_script.py\n"
        "TASK=drive PRIOR_WEIGTH=10 bash benchmarks/gpu_shape_guided.sh\n"
        "bash benchmarks/prepare_carry.sh sessions\n"
        "```\n"
    )
    problems = _problems(tmp_path, text)
    expected = [
        ":1: `localdisc pretrain --data x --stage-1-steps 5`: `localdisc pretrain` has no option "
        "--stage-1-steps",
        ":4: `localdisc pretrain --data x --out y --sizes 5`: `localdisc pretrain` has no option "
        "--sizes",
        ":6: `python -m localdisc pretrian --data x`: `localdisc` has no command 'pretrian'",
        ":7: `python benchmarks/scaling.py --device cpu --sise 5`: `benchmarks/scaling.py` has "
        "no option --sise",
        "`benchmarks/vesselness_selftrain.py --task` takes one of ['drive', 'stare'], not retina",
        ":9: `python benchmarks/no_such_script.py`: no script benchmarks/no_such_script.py",
        ":10: `bash benchmarks/gpu_shape_guided.sh`: benchmarks/gpu_shape_guided.sh does not "
        "read PRIOR_WEIGTH",
        ":11: `bash benchmarks/prepare_carry.sh sessions`: benchmarks/prepare_carry.sh takes one",
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for problem, part in zip(problems, expected, strict=True):
        assert part in problem and problem.startswith(str(tmp_path / "doc.md")), problem


def test_a_doc_s_notation_is_read_as_meant(tmp_path):
    text = (
        "```bash\n"
        "localdisc view --model runs/ld --images photos/ [--port 8765] [--size 512]\n"
        "    [--cache-mb 2048]   # an indented line of options goes on\n"
        "python benchmarks/vesselness_selftrain.py --data-root d --task stare|drive [--seed 1|2]\n"
        "python benchmarks/methods_table.py RUN... --metric auc\n"
        'V="python benchmarks/vessels_command.py --data drive:DRIVE"\n'
        "$V --split test --out /tmp/x 2>&1 | tee log.txt\n"
        "python - <<PY\nimport sys; print(sys.argv) --not-a-flag\nPY\n"
        "cd benchmarks && PYTHONPATH=../src python pretrain_throughput.py --compile [--profile]\n"
        "python scaling.py --device cpu  # still in benchmarks/\n"
        "OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m localdisc pretrain --out x\n"
        "```\n"
        "\n"
        "The reference `benchmark transfer --cpu-scale` is `localdisc benchmark transfer`'s.\n"
    )
    assert _problems(tmp_path, text) == []
    text = "```bash\n$V --split test --bogus\n```\n"  # V unknown here: not checked
    assert _problems(tmp_path, text) == []
    text = 'V="python benchmarks/vessels_command.py"\n\n```bash\n$V --bogus\n```\n'
    assert _problems(tmp_path, text) == []  # prose is no assignment
    text = "```bash\nV='python benchmarks/vessels_command.py'\n$V --bogus\n```\n"
    assert "has no option --bogus" in _problems(tmp_path, text)[0]
    assert "has no option --bogus" in _problems(tmp_path, "See `pretrain --bogus`.\n")[0]


def test_a_command_of_an_older_commit_is_checked_through_its_today_note(tmp_path):
    block = "```bash\nlocaldisc pretrain --data x --stage-1-steps 5\n```\n\n"
    assert _problems(tmp_path, block)  # no note: the old flag is a problem
    assert _problems(tmp_path, block + "(At abc1234; today: `--stage1-steps 5`.)\n") == []
    assert _problems(tmp_path, block + "(At abc1234; today: none, rerun there.)\n") == []
    note = "(At abc1234; today: `localdisc pretrain --data x --stage1-steps 5`.)\n"
    assert _problems(tmp_path, block + note) == []
    wrong = _problems(tmp_path, block + "(At abc1234; today: `--stage-one-steps 5`.)\n")
    assert len(wrong) == 1 and "has no option --stage-one-steps" in wrong[0]
    inline = (
        "Ran `localdisc pretrain --data x --stage-1-steps 5` (today: `--stage1-steps 5`), then\n"
        "`localdisc pretrain --data x --bogus`.\n"
    )
    problems = _problems(tmp_path, inline)  # the note is the first span's, not the second's
    assert len(problems) == 1 and ":2: `localdisc pretrain --data x --bogus`" in problems[0]
