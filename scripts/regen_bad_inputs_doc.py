"""Rewrite the "What you see" column of docs/bad-inputs.md from what each row of tests/test_bad_inputs.py gives now.

    python scripts/regen_bad_inputs_doc.py     # from the repository root, after changing an error message
"""
import os, re, sys, warnings
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.getcwd())
import tests.test_bad_inputs as T
from minitx import cli

DOC = "docs/bad-inputs.md"

def md(text):
    return text.replace("|", "\\|")

def one_line(text):
    text = re.sub(r" at 0x[0-9a-f]+>", ">", text)  # no memory addresses: the doc stays the same from run to run
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

import tempfile, io, contextlib, pathlib
tmp = pathlib.Path(tempfile.mkdtemp())
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
    text = err.getvalue().strip()
    if unclear is None:
        cli_seen[p.id] = f"`{md(one_line(text))}` ({code})"
    else:
        cli_seen[p.id] = f"**unclear** (today: `{md(one_line(text))}` ({code})): {md(unclear)}"
os.chdir(cwd)

doc = open(DOC).read()
def repl(m):
    kind, tid = m.group(3), m.group(4)
    table = seen if kind == "test_bad_input" else cli_seen
    if tid not in table:
        print("not in tests:", tid)
        return m.group(0)
    return f"{m.group(1)}{table.pop(tid)}{m.group(2)}"
doc = re.sub(r"^(\| `(?:[^`]|`(?!\s*\|))*` \| ).*?( \| `tests/test_bad_inputs\.py::(test_bad_input|test_bad_cli_input)\[([^\]]+)\]` \|)$",
             repl, doc, flags=re.M)
open(DOC, "w").write(doc)
print("rows not in the doc:", sorted(seen), sorted(cli_seen))
