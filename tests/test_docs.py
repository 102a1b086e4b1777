"""The commands in README.md and docs/*.md, so the documentation cannot rot.

Every shell block (```sh) carries a marker on the line before it (docs/index.md, "How
these pages are tested"):

    <!-- docs-test: run -->                 run here, in a scratch folder
    <!-- docs-test: run; needs onnx; expect "TEXT" -->
    <!-- docs-test: parse (why) -->         too long, or needs a GPU: checked to parse
    <!-- docs-test: user-data (what) -->    needs files the user has: checked to parse

Checking a command to parse: ``pyfacelayers ...`` through the real command-line parser;
``python script.py --flag`` and ``python -m module --flag`` against the options the
script declares (add_argument); ``python -c CODE`` compiles; ``bash script.sh`` exists.
Python blocks must compile, inline ``pyfacelayers WORD`` must name a command, and
relative links must point to files that exist.
"""

import ast
import contextlib
import glob
import io
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, child_env

PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs",
                                                                         "*.md")))
SHELL = {"sh", "bash", "shell", "console"}
MARKER = re.compile(r"<!--\s*docs-test:\s*(run|parse|user-data)\b(.*?)-->", re.S)
FENCE = re.compile(r"^(\s*)```+\s*([\w+-]*)\s*$")
# Programs whose commands are not checked beyond being named (installers, shell tools).
UNCHECKED = {"pip", "cd", "export", "git", "find", "sort", "ls", "cat", "mkdir", "sed",
             "nice", "cp", "rm", "echo"}
EXTERNAL_MODULES = {"pytest", "pip"}  # python -m of other projects


class Block:
    def __init__(self, page, line, lang, text, marker):
        self.page, self.line, self.lang, self.text = page, line, lang, text
        self.kind = marker.group(1) if marker else None
        options = marker.group(2) if marker else ""
        self.expect = re.findall(r'expect\s+"([^"]*)"', options)
        needs = re.search(r"needs\s+([\w .-]+?)(?:;|$|\()", options)
        self.needs = needs.group(1).split() if needs else []

    @property
    def where(self):
        return "%s:%d" % (os.path.relpath(self.page, ROOT), self.line)


def blocks_of(page):
    """Every fenced block of a page, with the marker on the line before it."""
    with open(page, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        marker = None
        # The marker may span lines: look back to the line where it starts.
        k = start - 1
        if k >= 0 and lines[k].rstrip().endswith("-->"):
            while k > 0 and "<!--" not in lines[k]:
                k -= 1
            marker = MARKER.search("\n".join(lines[k:start]))
        out.append(Block(page, start + 1, lang, "\n".join(lines[start + 1:j]), marker))
        i = j + 1
    return out


ALL_BLOCKS = [b for page in PAGES for b in blocks_of(page)]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELL]


def test_pages_exist_and_shell_blocks_are_marked():
    assert len(PAGES) > 5, "README.md and docs/*.md"
    unmarked = [b.where for b in SHELL_BLOCKS if b.kind is None]
    assert not unmarked, (
        "shell blocks without a <!-- docs-test: run | parse (why) | user-data (what) --> "
        "marker on the line before them: %s (see docs/index.md)" % ", ".join(unmarked))
    looks_like_commands = [
        b.where for b in ALL_BLOCKS if not b.lang and re.match(
            r"\s*(\$ )?(pyfacelayers|python|pip|bash) ", b.text)]
    assert not looks_like_commands, (
        "blocks of commands without a language: %s (```sh for commands, ```text for "
        "output)" % ", ".join(looks_like_commands))


# -- parsing commands ------------------------------------------------------------------
def logical_lines(text):
    """Lines of a shell block with continuations joined and quoted newlines kept."""
    text = text.replace("\\\n", " ")
    out, pending = [], ""
    for line in text.split("\n"):
        pending = pending + "\n" + line if pending else line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if words:  # not blank, not only a comment
            out.append(pending)
        pending = ""
    assert not pending, "unclosed quote in %r" % pending
    return out


def commands_of(line):
    """The simple commands of a line (split at && || ; |), redirections dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current, skip = [], [], False
    for token in lexer:
        if skip:
            skip = False
        elif token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        elif token in (">", ">>", "<", ">&", "2>"):
            skip = True
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def declared_options(path):
    """The option strings a script declares with add_argument (None: no argparse)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    options = set()
    found = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            found = True
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                        and arg.value.startswith("-"):
                    options.add(arg.value)
    return options | {"-h", "--help"} if found else None


def check_script(path, argv, what):
    assert os.path.isfile(path), "%s: no such file" % what
    options = declared_options(path)
    if options is None:
        return  # not an argparse script (e.g. setup.py): its existence is checked
    for word in argv:
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag not in options:
            raise AssertionError("%s: option %s is not declared by %s (it has %s)" % (
                what, flag, os.path.relpath(path, ROOT), ", ".join(sorted(options))))


def check_pyfacelayers(argv, what):
    from pyfacelayers import cli
    parser = cli.build_parser()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(cli.gflags_style(argv))
        except SystemExit as exc:
            assert exc.code == 0, "%s: %s" % (what, err.getvalue().strip())


def check_command(words, what):
    while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]  # VAR=value prefixes
    if not words:
        return
    program, argv = words[0], words[1:]
    if program == "pyfacelayers":
        check_pyfacelayers(argv, what)
    elif program in ("python", "python3"):
        if argv[:1] == ["-c"]:
            compile(argv[1], what, "exec")
        elif argv[:1] == ["-m"]:
            module = argv[1]
            if module == "pyfacelayers":
                check_pyfacelayers(argv[2:], what)
            elif module.split(".")[0] not in EXTERNAL_MODULES:
                base = os.path.join(ROOT, *module.split("."))
                path = base + ".py" if os.path.isfile(base + ".py") else \
                    os.path.join(base, "__main__.py")
                check_script(path, argv[2:], what)
        else:
            check_script(os.path.join(ROOT, argv[0]), argv[1:], what)
    elif program == "bash":
        assert os.path.isfile(os.path.join(ROOT, argv[0])), "%s: no %s" % (what, argv[0])
    else:
        assert program in UNCHECKED, (
            "%s: a command of %r: the docs test knows pyfacelayers, python, bash and %s"
            % (what, program, ", ".join(sorted(UNCHECKED))))


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=lambda b: b.where)
def test_shell_commands_parse(block):
    if block.kind == "run":
        return  # run below
    for line in logical_lines(block.text):
        for words in commands_of(line):
            check_command(words, "%s: %s" % (block.where, " ".join(words)))


# -- running the cheap ones --------------------------------------------------------------
def scratch_folder(tmp_path):
    """A folder with the repository's examples, tools, bench and fuzz (not the package:
    the one the tests import is used) and `python` / `pyfacelayers` on PATH."""
    for name in ("examples", "tools", "bench", "fuzz"):
        if os.path.isdir(os.path.join(ROOT, name)):
            os.symlink(os.path.join(ROOT, name), str(tmp_path / name))
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text('#!/bin/sh\nexec "%s" "$@"\n' % sys.executable)
    (bin_dir / "pyfacelayers").write_text(
        '#!/bin/sh\nexec "%s" -m pyfacelayers "$@"\n' % sys.executable)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = child_env()
    env["PATH"] = str(bin_dir) + os.pathsep + env.get("PATH", "")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    return env


RUN_BLOCKS = [b for b in SHELL_BLOCKS if b.kind == "run"]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.where)
def test_run_blocks(block, tmp_path):
    for name in block.needs:
        pytest.importorskip(name, reason="%s needs %s" % (block.where, name))
    env = scratch_folder(tmp_path)
    done = subprocess.run(["bash", "-c", "set -eo pipefail\n" + block.text], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, "%s exited %d:\n%s" % (block.where, done.returncode,
                                                        output[-3000:])
    for text in block.expect:
        assert text in output, "%s: %r not in the output:\n%s" % (block.where, text,
                                                                  output[-3000:])


# -- the rest --------------------------------------------------------------------------
@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "python"],
                         ids=lambda b: b.where)
def test_python_blocks_compile(block):
    compile(block.text, block.where, "exec")


def _prose(page):
    """The page without its fenced blocks and HTML comments."""
    with open(page, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_inline_commands_and_links(page):
    from pyfacelayers import cli
    commands = set(cli.build_parser()._subparsers._group_actions[0].choices)
    text = _prose(page)
    for word in re.findall(r"`pyfacelayers ([a-z_]+)", text):  # COMMAND: a placeholder
        assert word in commands, "%s: `pyfacelayers %s`: no such command (%s)" % (
            os.path.relpath(page, ROOT), word, ", ".join(sorted(commands)))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
        assert os.path.exists(path), "%s: link to %s: no such file" % (
            os.path.relpath(page, ROOT), target)


def test_every_docs_page_is_listed_in_the_index():
    with open(os.path.join(ROOT, "docs", "index.md"), encoding="utf-8") as f:
        index = f.read()
    missing = [os.path.basename(p) for p in PAGES[1:]
               if os.path.basename(p) != "index.md"
               and "(%s)" % os.path.basename(p) not in index]
    assert not missing, "docs/index.md does not link %s" % ", ".join(missing)


def test_the_checks_catch_rot():
    """The parse checks fail on a renamed option or command (so they can fail)."""
    with pytest.raises(AssertionError, match="unrecognized arguments"):
        check_command(["pyfacelayers", "compare", "--model", "m", "--reference", "r",
                       "--no-such-option"], "x")
    with pytest.raises(AssertionError, match="invalid choice"):
        check_command(["pyfacelayers", "demo", "--dim", "4"], "x")
    with pytest.raises(AssertionError, match="--no-such-flag is not declared"):
        check_command(["python", "tools/dump_caffe_blobs.py", "--no-such-flag"], "x")
    with pytest.raises(SyntaxError):
        check_command(["python", "-c", "print("], "x")
    with pytest.raises(AssertionError, match="a command of 'caffe'"):
        check_command(["caffe", "train"], "x")
    assert commands_of("a b && c > out.txt | d") == [["a", "b"], ["c"], ["d"]]
    assert logical_lines('x \\\n  y\npython -c "a\nb"\n# only a comment\n') == \
        ["x    y", 'python -c "a\nb"']
