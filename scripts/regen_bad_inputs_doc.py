"""Rewrite the "What you see" column of docs/bad-inputs.md from what each row of tests/test_bad_inputs.py gives now.

    python scripts/regen_bad_inputs_doc.py [DOC]   # from the repository root, after changing an error message

DOC defaults to docs/bad-inputs.md. The CLI rows run in a fresh temporary folder, written <cwd> in the doc (its
parent <cwd>/..), so that a second run changes nothing (tests/test_bad_inputs.py::test_doc_regenerates_unchanged).
"""
import os, re, shutil, sys, tempfile, warnings
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.getcwd())
import tests.test_bad_inputs as T
from minitx import cli

DOC = sys.argv[1] if len(sys.argv) > 1 else "docs/bad-inputs.md"
TMP = os.path.realpath(tempfile.mkdtemp())  # the CLI rows' working folder

def mask_temporary(text):
    """The temporary working folder -> <cwd>, its parent -> <cwd>/..: the same text on every run and machine."""
    text = text.replace(TMP, "<cwd>")
    return re.sub(re.escape(os.path.dirname(TMP)) + r"(?![\w/.-])", "<cwd>/..", text)

def md(text):
    return text.replace("|", "\\|")

def one_line(text):
    text = re.sub(r" at 0x[0-9a-f]+>", ">", text)  # no memory addresses: the doc stays the same from run to run
    text = re.sub(r"\S*/minitx-bad-([A-Za-z0-9_.-]+?)-[a-z0-9_]{8}(?=/|\b)", r"<saved \1>", text)  # temp folders
    return " ⏎ ".join(l for l in text.strip().splitlines())

env = T.env.__wrapped__() if hasattr(T.env, "__wrapped__") else None
if env is None:
    import inspect
    env = inspect.unwrap(T.env)()

seen = {}
for p in T.CASES:
    call, exc, fragment = p.values
    unclear = next((m.kwargs.get("reason") for m in p.marks if m.name == "xfail"), None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(env)
        got = None
    except Exception as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        got = f"{type(e).__name__}: {one_line(str(msg))}"
    if unclear is None:
        assert got is not None, p.id
        seen[p.id] = f"`{md(got)}`"
    else:
        today = "no error" if got is None else f"`{md(got)}`"
        seen[p.id] = (f"**unclear** (today: {today}); expected a {exc.__name__} mentioning `{md(fragment)}`")

import io, contextlib, pathlib
tmp = pathlib.Path(TMP)
import minitx
from tests.conftest import random_model
model_dir = tmp / "model"
minitx.save_pretrained(random_model(n_layer=2, n_head=4, n_embd=32, n_positions=16, vocab_size=20, bos_token_id=19),
                       model_dir)
cwd = os.getcwd()
os.chdir(tmp)
cli_seen = {}
for p in T.CLI_CASES:
    argv, fragment = p.values
    unclear = next((m.kwargs.get("reason") for m in p.marks if m.name == "xfail"), None)
    extra = ["--model", str(model_dir)] if argv[0] != "nope" else []
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([argv[0], *extra, *argv[1:]])
        except Exception as e:
            code = f"uncaught {type(e).__name__}: {e}"
    text = mask_temporary(err.getvalue().strip())
    if unclear is None:
        cli_seen[p.id] = f"`{md(one_line(text))}` ({code})"
    else:
        cli_seen[p.id] = f"**unclear** (today: `{md(one_line(text))}` ({code})): {md(unclear)}"
os.chdir(cwd)
shutil.rmtree(tmp)
for folder in T._FILES.values():  # the bad checkpoints the rows loaded
    shutil.rmtree(folder, ignore_errors=True)

doc = open(DOC).read()
def repl(m):
    kind, tid = m.group(3), m.group(4)
    table = seen if kind == "test_bad_input" else cli_seen
    if tid not in table:
        print("not in tests:", tid)
        return m.group(0)
    return f"{m.group(1)}{table.pop(tid)}{m.group(2)}"
ROW = (r"^(\| `(?:[^`]|`(?!\s*\|))*`(?: \(with `--model M`\))? \| ).*?"
       r"( \| `tests/test_bad_inputs\.py::(test_bad_input|test_bad_cli_input)\[([^\]]+)\]` \|)$")
# Each test's row once: a later copy of a row (appended by an older version of this script) is dropped.
rows_seen, lines = set(), []
for line in doc.split("\n"):
    m = re.match(ROW, line)
    if m and (m.group(3), m.group(4)) in rows_seen:
        continue
    rows_seen.add((m.group(3), m.group(4)) if m else None)
    lines.append(line)
doc = re.sub(ROW, repl, "\n".join(lines), flags=re.M)
# Rows the doc does not have yet: appended to one section, with the input read off the test's source.
import ast, shlex
SHORT = [("e.m", "model"), ("e.T", "tokens"), ("e.C", "corrupted"), ("e.tok", "tok"), ("e.metric", "metric"),
         ("e.logits", "model(tokens)")]
source = {}
for node in ast.walk(ast.parse(open("tests/test_bad_inputs.py").read())):
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("case", "cli_case") and node.args:
        row, arg = node.args[0].value, node.args[1]
        if isinstance(arg, ast.Lambda):
            text = ast.unparse(arg.body)
            for a, b in SHORT:
                text = re.sub(rf"\b{re.escape(a)}\b", b, text)
            source[row] = text
for p in T.CLI_CASES:  # argv as the test gives it
    source[p.id] = "minitx " + " ".join(shlex.quote(a) for a in p.values[0])
ADDED = "## Added in the second reliability pass (issue 12)"
if seen or cli_seen:
    rows = [f"| `{md(source[t])}` | {seen[t]} | `tests/test_bad_inputs.py::test_bad_input[{t}]` |" for t in seen]
    rows += [f"| `{md(source[t])}` (with `--model M`) | {cli_seen[t]} | `tests/test_bad_inputs.py::test_bad_cli_input[{t}]` |"
             for t in cli_seen]
    if ADDED not in doc:
        intro = (f"{ADDED}\n\nRows added by the second adversarial pass. Helpers: `saved(name, config, tensors)` is a "
                 "1-layer checkpoint folder with config.json entries or tensors replaced, `with_bin(name, content)` the "
                 "same with a pytorch_model.bin, `weight(name, edit)` one edited tensor, `RESID` a float32 residual "
                 "[2, 5, 64], `cached(e)` a cache holding blocks.0.attn.hook_pattern.\n\n| Input | What you see | Test |\n"
                 "|---|---|---|\n")
        doc = doc.replace("## Covered by the other test files", intro + "\n## Covered by the other test files")
    at = doc.index("\n\n## Covered by the other test files")
    doc = doc[:at] + "\n" + "\n".join(rows) + doc[at:]
    seen, cli_seen = {}, {}
open(DOC, "w").write(doc)
print("rows not in the doc:", sorted(seen), sorted(cli_seen))
