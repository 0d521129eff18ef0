"""Every command in README.md and docs/*.md runs as written, as far as it can without a server (issue 18).

From the docs' fenced blocks, code spans and links:
- `make X VAR=...`: the Makefile reads VAR and `make -n` of the line succeeds; the tool commands it prints are
  checked like those below;
- `.venv/bin/python scripts/x.py ...`, `python -m tskit ...`, `tsctl ...`: the line as written, `--help` appended,
  exits 0, and every `--option` on it is one the program lists;
- `python -c` and ```python blocks compile; what they import exists (from tskit: the names, and the methods
  called on an object of an imported class); `curl` URLs use the server's ports, routes and declared models;
- no `<placeholder>` (the shell reads a redirection); every repo path named, relative link and #anchor exists.
The scripts run in ONE venv interpreter (runpy), so torch is imported once: the module takes a few seconds.
"""
import ast
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tskit.kserve_server import HTTP_PORT as KSERVE_HTTP_PORT

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
TSCTL = REPO / ".venv" / "bin" / "tsctl"
SHELL_LANGS = {"bash", "sh", "shell", "console"}
REPO_PATH = re.compile(r"(?<![\w./$-])((?:deploy|docs|scripts|handlers|tests|models|\.ci)/[\w./-]*)")
TOP_FILES = {"Makefile", "config.properties", "metrics.yaml", "log4j2.xml", "pyproject.toml", "pytest.ini",
             "requirements.txt", "requirements-weights.txt"}
GENERATED = ("scripts/ts_grpc",)  # written by make (the gRPC stubs)
ARGPARSE_MODULES = {"tskit"}      # `python -m` modules whose command line is argparse (others: importable only)
EXTERNAL = {"curl", "kubectl", "aws", "echo", "base64", "date", "nc", "source", "cd", "export", "pip", "promtool",
            "helm", "wrk", "apt-get", "java", "cat", "ls"}
PORT_ROUTES = {8080: ("/ping", "/predictions/", "/v1/models/", "/v2/"), 8081: ("/models", "/token"),
               8082: ("/metrics",),
               KSERVE_HTTP_PORT: ("/ping", "/predictions/", "/v1/models/", "/v2/", "/metrics")}  # docs/engines.md
SPLIT = {"&&", "||", ";", "|", "&", "(", ")"}
REDIRECT = {">", ">>", "<", ">&", "&>", "2>"}
SUBSTITUTION = re.compile(r"""\$\(((?:[^()'"]|'[^']*'|"[^"]*")*)\)""")


# ---- reading the docs --------------------------------------------------------------------------------
def fenced_blocks(doc: Path):
    """(language, line number of the fence, text) of each fenced block, its indentation removed."""
    text = doc.read_text()
    return [(m.group(2).lower(), text.count("\n", 0, m.start()) + 1,
             "\n".join(line[len(m.group(1)):] for line in m.group(3).splitlines()))
            for m in re.finditer(r"^( *)```(\S*)\n(.*?)^ *```\s*$", text, flags=re.M | re.S)]


def prose(doc: Path) -> str:
    """The doc without its fenced blocks."""
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", doc.read_text(), flags=re.M | re.S)


def anchors(doc: Path) -> set:
    """GitHub's heading slugs: lower case, punctuation but - and _ dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.*?)\s*$", prose(doc), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def shell_lines(text: str):
    """(line offset, logical line) of a shell block: continuations joined, `$ ` prompts, blanks, comments dropped."""
    pending, first = "", 0
    for offset, raw in enumerate(text.splitlines()):
        first = first if pending else offset
        pending += raw[:-1] + " " if raw.endswith("\\") else raw
        if raw.endswith("\\"):
            continue
        line, pending = re.sub(r"^\$ ", "", pending.strip()), ""
        if line and not line.startswith("#"):
            yield first, line


def substitutions(line: str):
    """The line with each `$(...)` replaced by a word, and the commands inside them (quotes inside respected)."""
    return SUBSTITUTION.sub("SUBST", line), SUBSTITUTION.findall(line)


def simple_commands(line: str):
    """argv lists of the line's simple commands (pipes, &&, ;), substitutions included; placeholders raise."""
    outer, inner = substitutions(line)
    lexer = shlex.shlex(outer, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    tokens, commands, argv, skip = list(lexer), [], [], False
    for k, token in enumerate(tokens):
        if token == "<" and k + 2 < len(tokens) and tokens[k + 2] == ">":
            raise ValueError(f"placeholder <{tokens[k + 1]}> (the shell reads it as a redirection)")
        if token in SPLIT:
            commands.append(argv)
            argv = []
        elif not skip and token not in REDIRECT:
            argv.append(token)
        skip = token in REDIRECT  # the redirection's file is no argument
    commands.append(argv)
    for text in inner:
        commands.extend(simple_commands(text))
    return [c for c in commands if c]


# ---- what each command needs ---------------------------------------------------------------------------
class Checks:
    """Problems found, and the jobs for make and for the venv interpreter."""
    def __init__(self):
        self.problems, self.make, self.runs, self.imports = [], [], [], []

    def problem(self, where, text):
        self.problems.append(f"{where}: {text}")


def makefile_reads(var: str) -> bool:
    return bool(re.search(r"\$[({]%s[)}]|^%s\s*[?:+]?=" % (var, var), (REPO / "Makefile").read_text(), flags=re.M))


def check_command(argv, where, checks: Checks, known_models: set):
    while argv and re.match(r"^\w+=", argv[0]):
        argv = argv[1:]  # VAR=value before a command
    for token in argv:
        if token.split("::")[0].rstrip("/") in TOP_FILES or REPO_PATH.fullmatch(token.split("::")[0]):
            check_repo_path(token, where, checks)
    if not argv:
        return
    program, args = argv[0], argv[1:]
    if program == "make":
        for arg in args:
            if "=" in arg and not makefile_reads(arg.split("=")[0]):
                checks.problem(where, f"the Makefile does not read {arg.split('=')[0]} ({' '.join(argv)})")
        checks.make.append((where, args))
    elif program in ("tsctl", ".venv/bin/tsctl"):
        checks.runs.append((where, "script", str(TSCTL) if TSCTL.exists() else "scripts/tsctl.py", args))
    elif os.path.basename(program) in ("python", "python3"):
        check_python(program, args, where, checks)
    elif program == "curl":
        check_curl(args, where, checks, known_models)
    elif program not in EXTERNAL:
        checks.problem(where, f"unknown program {program!r} ({' '.join(argv)})")


def check_python(program, args, where, checks: Checks):
    if args[:1] == ["-c"]:
        try:
            compile(args[1], where, "exec")
        except SyntaxError as error:
            checks.problem(where, f"python -c does not compile: {error}")
    elif args[:1] == ["-m"]:
        module = args[1]
        checks.runs.append((where, "module", module, args[2:] if module in ARGPARSE_MODULES else None))
    elif args and args[0].endswith(".py"):
        if program != ".venv/bin/python" and not args[0].startswith("/"):
            checks.problem(where, f"{program} {args[0]}: run the repo's tools with .venv/bin/python")
        if (REPO / args[0]).is_file():
            checks.runs.append((where, "script", args[0], args[1:]))
        elif not REPO_PATH.fullmatch(args[0]):  # a repo path is reported as such already
            checks.problem(where, f"{args[0]} does not exist")
    else:
        checks.problem(where, f"a python command this test cannot check: {' '.join([program, *args])}")


def check_curl(args, where, checks: Checks, known_models: set):
    for url in (a for a in args if re.match(r"https?://", a)):
        parts = urlsplit(url)
        if parts.hostname in ("127.0.0.1", "localhost"):
            routes = PORT_ROUTES.get(parts.port, ())
            if not any(parts.path.startswith(r) for r in routes):
                checks.problem(where, f"{url}: not a route of port {parts.port} ({', '.join(routes) or 'no such port'})")
        model = re.match(r"/(?:predictions|v1/models|v2/models|models)/([\w.-]+?)(?::predict)?(?:/|$)", parts.path)
        if model and model.group(1) not in known_models:
            checks.problem(where, f"{url}: model {model.group(1)!r} is neither declared nor made in the docs")


def check_repo_path(reference, where, checks: Checks):
    path, _, test_name = reference.partition("::")
    path = path.rstrip("/.")
    if not path or path.startswith(GENERATED) or path in ("models", "tests", "docs", "scripts"):
        return
    if not (REPO / path).exists():
        checks.problem(where, f"{path} does not exist")
    elif test_name and not re.search(r"def %s\b" % re.escape(test_name), (REPO / path).read_text()):
        checks.problem(where, f"{path} has no {test_name}")


def check_python_block(text, where, checks: Checks):
    try:
        tree = ast.parse(text)
    except SyntaxError as error:
        checks.problem(where, f"does not compile: {error}")
        return
    classes = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            checks.imports.append((where, node.module, [a.name for a in node.names], {}))
            if node.module.startswith("tskit"):
                classes.update({a.asname or a.name: node.module for a in node.names})
        elif isinstance(node, ast.Import):
            checks.imports.extend((where, a.name, [], {}) for a in node.names)
    for node in ast.walk(tree):  # obj = ImportedClass(...); obj.method(...)
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                and node.value.func.id in classes and isinstance(node.targets[0], ast.Name)):
            used = {a.attr for a in ast.walk(tree) if isinstance(a, ast.Attribute)
                    and isinstance(a.value, ast.Name) and a.value.id == node.targets[0].id}
            checks.imports.append((where, classes[node.value.func.id], [], {node.value.func.id: sorted(used)}))


def check_layout_block(text, where, checks: Checks):
    """A tree like `handlers/  what` / `  module.py other.py  what`: every named file exists."""
    folder = ""
    for line in text.splitlines():
        names = re.split(r"\s{2,}", line.strip())[0]
        if not names or "<" in names:
            continue
        if not line.startswith(" "):
            paths = [n.strip() for n in names.split(",")]
            folder = paths[0] if paths[0].endswith("/") else os.path.dirname(paths[0]) + "/"
            for p in paths:
                check_repo_path(p if "/" in p else folder.lstrip("/") + p, where, checks)
        else:
            for name in names.split():
                check_repo_path(folder + name, where, checks)


def known_models(docs) -> set:
    declared = {p.parent.name for p in (REPO / "models").glob("*/model.yaml")}
    made = {m for doc in docs for m in re.findall(r"make model NAME=([\w.-]+)", doc.read_text())}
    return declared | made


def collect(doc: Path, checks: Checks, models: set):
    name = doc.relative_to(REPO)
    for lang, line, text in fenced_blocks(doc):
        where = f"{name}:{line}"
        if lang in SHELL_LANGS:
            for offset, command_line in shell_lines(text):
                where = f"{name}:{line + 1 + offset}"
                try:
                    commands = simple_commands(command_line)
                except ValueError as error:
                    checks.problem(where, f"{error}: {command_line}")
                    continue
                for argv in commands:
                    check_command(argv, where, checks, models)
        elif lang in ("python", "py"):
            check_python_block(text, where, checks)
        elif lang in ("", "text") and re.match(r"^\S+/\s", text):
            check_layout_block(text, where, checks)
    for span in re.findall(r"`([^`\n]+)`", prose(doc)):
        for match in REPO_PATH.finditer(span):
            following = span[match.end():match.end() + 1]
            if following not in ("<", "{", "*", "$") and not match.group(1).endswith("-"):
                check_repo_path(span[match.start():].split()[0].rstrip(",;:)"), f"{name} `{span}`", checks)
    check_links(doc, name, checks)


def check_links(doc: Path, name, checks: Checks):
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", re.sub(r"`[^`\n]*`", "", prose(doc))):
        if re.match(r"(https?|mailto):", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            checks.problem(name, f"link to {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            checks.problem(name, f"link to {target}: {linked.name} has no heading #{anchor}")


# ---- running what needs a process ----------------------------------------------------------------------
HELPER = r'''import contextlib, importlib, importlib.util, io, json, runpy, sys, traceback
jobs_file, out_file = sys.argv[1:3]
jobs, out = json.load(open(jobs_file)), []
def run(kind, target, argv):
    sys.argv, buffer, code = [target, *argv], io.StringIO(), "finished without exiting at --help"
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            if kind == "script":
                sys.path.insert(0, target.rsplit("/", 1)[0] if "/" in target else ".")
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code or 0
        except BaseException:
            code = traceback.format_exc()
    return {"rc": code, "out": buffer.getvalue()}
for job in jobs:
    if job["kind"] in ("script", "module") and job["argv"] is not None:
        out.append([run(job["kind"], job["target"], job["argv"] + ["--help"]), run(job["kind"], job["target"], ["--help"])])
    elif job["kind"] == "module":
        out.append({"rc": 0 if importlib.util.find_spec(job["target"]) else "not importable", "out": ""})
    else:
        try:
            module = importlib.import_module(job["target"]) if job["target"].startswith("tskit") else None
            found = module is not None or importlib.util.find_spec(job["target"].split(".")[0]) is not None
            missing = [n for n in job["names"] if module is not None and not hasattr(module, n)]
            missing += [f"{c}.{a}" for c, attrs in job["attrs"].items() for a in attrs if not hasattr(getattr(module, c), a)]
            out.append({"rc": 0 if found and not missing else f"missing: {missing or job['target']}", "out": ""})
        except BaseException:
            out.append({"rc": traceback.format_exc(), "out": ""})
json.dump(out, open(out_file, "w"))
'''


def run_in_venv(jobs):
    with tempfile.TemporaryDirectory() as folder:
        jobs_file, out_file = os.path.join(folder, "jobs.json"), os.path.join(folder, "out.json")
        with open(jobs_file, "w") as f:
            json.dump(jobs, f)
        done = subprocess.run([PYTHON, "-c", HELPER, jobs_file, out_file], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(
                                  [str(REPO / "scripts"), str(REPO), os.environ.get("PYTHONPATH", "")])})
        assert done.returncode == 0, done.stderr[-3000:]
        with open(out_file) as f:
            return json.load(f)


def make_dry_run(args):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)


def tool_lines(make_output: str):
    """The tool commands a `make -n` printed: `.venv/bin/python scripts/x.py ...` / `-m tskit ...`."""
    for line in re.sub(r"\\\n", " ", make_output).splitlines():
        if re.match(r"^(\.venv/bin/python|\S*/\.venv/bin/python)\s+(-m\s+\w|\S+\.py)", line):
            yield shlex.split(line)


@pytest.fixture(scope="module")
def checked():
    checks, models = Checks(), known_models(DOCS)
    for doc in DOCS:
        collect(doc, checks, models)
    with ThreadPoolExecutor(8) as pool:
        dry_runs = list(pool.map(lambda job: make_dry_run(job[1]), checks.make))
    for (where, args), done in zip(checks.make, dry_runs):
        if done.returncode != 0:
            checks.problem(where, f"make -n {' '.join(args)}: {done.stderr.strip()[-500:]}")
        for argv in tool_lines(done.stdout):
            check_python(".venv/bin/python", argv[1:], f"{where} (via make {' '.join(args)})", checks)
    jobs = [{"kind": kind, "target": target, "argv": argv} for _, kind, target, argv in checks.runs]
    jobs += [{"kind": "import", "target": m, "names": n, "attrs": a} for _, m, n, a in checks.imports]
    results = run_in_venv(jobs)
    wheres = [w for w, *_ in checks.runs] + [w for w, *_ in checks.imports]
    for where, job, result in zip(wheres, jobs, results):
        judge(where, job, result, checks)
    return checks


def judge(where, job, result, checks: Checks):
    if isinstance(result, dict):  # an import or a module's presence
        if result["rc"] != 0:
            checks.problem(where, f"{job['target']}: {result['rc']}")
        return
    full, alone = result
    shown = " ".join([job["target"], *job["argv"]])
    if full["rc"] != 0:
        checks.problem(where, f"`{shown} --help` exits {full['rc']!r}: {full['out'].strip()[-400:]}")
    for option in (a.split("=")[0] for a in job["argv"] if re.match(r"^--[\w-]+", a)):
        if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(option), full["out"] + alone["out"]):
            checks.problem(where, f"`{shown}`: {option} is not an option of it")


# ---- the tests -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_every_command_path_and_link_of_the_doc_checks_out(checked, doc):
    name = str(doc.relative_to(REPO))
    mine = [p for p in checked.problems if re.match(r"%s\b" % re.escape(name), p)]
    assert not mine, "\n".join(mine)


def test_the_docs_have_commands_to_check(checked):
    """The extraction itself works: a doc set without make, script, tsctl and curl commands would pass vacuously."""
    kinds = {kind for _, kind, *_ in checked.runs}
    assert {"script", "module"} <= kinds and len(checked.make) >= 10 and len(checked.runs) >= 20


def test_the_readme_is_a_newcomers_page():
    text = README.read_text()
    assert len(text.splitlines()) < 300, "README.md is the newcomer's page: reference goes to docs/"
    lang, _, first = fenced_blocks(README)[0]
    commands = [simple_commands(line)[0] for _, line in shell_lines(first)]
    assert lang == "bash" and commands == [["make", "serve"], ["make", "test"]]
    assert text.index("```") < text.index("\n## "), "the two commands come before any section"


def test_the_extraction_reads_shell_as_the_shell_does():
    line = """KEY=$(python3 -c 'import json; print(json.load(open("k"))["i"]["key"])') && make stop && make serve"""
    assert simple_commands(line) == [["KEY=SUBST"], ["make", "stop"], ["make", "serve"],
                                     ["python3", "-c", 'import json; print(json.load(open("k"))["i"]["key"])']]
    assert simple_commands("echo hi > notes.txt   # a comment") == [["echo", "hi"]]
    assert simple_commands("nc 127.0.0.1 8080 < req.http") == [["nc", "127.0.0.1", "8080"]]
    with pytest.raises(ValueError, match="placeholder"):
        simple_commands("tsctl register <name>.mar")
