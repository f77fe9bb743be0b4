"""The guide's package (examples/agentrl-sqlite-env, docs/custom_env.md) cannot go stale: the
guide's code blocks are the package's files, and the package installs, registers, passes
``agentrl envs check`` and trains with an existing config.

``AGENTRL_UPDATE_GUIDE=1 python -m pytest tests/test_example_package.py -k guide`` copies the
files into the guide after you change them."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentrl.model import cached_tiny_model

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "examples" / "agentrl-sqlite-env"
GUIDE = REPO / "docs" / "custom_env.md"
ENV_ID = "sqlite_env/ShopSQL-v0"
TASKS = PACKAGE / "agentrl_sqlite_env" / "tasks.jsonl"
# a marker line, then a fenced block: the block is the whole file / lines of the file / code to run
BLOCK = re.compile(r"<!-- (file|excerpt|test): (\S+) -->\n```(\w*)\n(.*?)```\n", re.S)


def _blocks():
    return BLOCK.finditer(GUIDE.read_text())


def test_guide_shows_the_package_files_as_they_are():
    text = GUIDE.read_text()
    if os.environ.get("AGENTRL_UPDATE_GUIDE"):
        def fill(m):
            kind, path, lang, body = m.groups()
            body = (REPO / path).read_text() if kind == "file" else body
            return f"<!-- {kind}: {path} -->\n```{lang}\n{body}```\n"
        text = BLOCK.sub(fill, text)
        GUIDE.write_text(text)
    shown = set()
    for m in _blocks():
        kind, path, _, body = m.groups()
        if kind == "test":
            continue
        actual = (REPO / path).read_text()
        if kind == "file":
            assert body == actual, f"docs/custom_env.md shows an old {path}: rerun with AGENTRL_UPDATE_GUIDE=1"
            shown.add(path)
        else:
            missing = [line for line in body.splitlines() if line not in actual.splitlines()]
            assert not missing, f"docs/custom_env.md quotes lines that {path} no longer has: {missing}"
    code = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*") if p.suffix in (".py", ".toml")}
    assert code <= shown, f"the guide does not show {sorted(code - shown)}"
    assert "(docs/custom_env.md)" in (REPO / "README.md").read_text(), "README.md must link the guide"


def _pip_install():
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"pip is not available in this environment ({probe.stderr.strip()[:200]}): cannot install the example")
    # --no-build-isolation: setuptools from the test venv, nothing downloaded; left installed (editable)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(PACKAGE)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed():
    _pip_install()


def agentrl(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("AGENTRL_NO_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "agentrl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_installed_package_is_listed_and_passes_the_checks(installed):
    listed = agentrl("envs", "list")
    assert listed.returncode == 0 and re.search(rf"^{re.escape(ENV_ID)}\s+agentrl_sqlite_env.env:ShopSQLEnv$", listed.stdout, re.M), \
        listed.stdout + listed.stderr
    checked = agentrl("envs", "check", ENV_ID)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1] == "all 4 checks passed"


def test_the_guides_episode_runs(installed):
    [code] = [m.group(4) for m in _blocks() if m.group(1) == "test"]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[:3] == ["How many orders were for more than two items?", "count(*)", "6"]


def test_training_on_it_with_an_existing_config(installed, tmp_path):
    out = tmp_path / "run"
    start = time.perf_counter()
    proc = agentrl("train", "configs/retool_tiny_cpu.yaml", f"env.id={ENV_ID}", f"env.dataset={TASKS}",
                   f"model.path={cached_tiny_model()}", "model.init_if_missing=null", f"run.output_dir={out}",
                   "run.steps=2", "run.save_every=2", "run.progress=false", "run.tensorboard=false",
                   "rollout.tasks_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens_per_turn=16",
                   "rollout.max_total_tokens=768", "env.kwargs.max_turns=2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["reward/mean"] <= 1.0 and "rollout/tool_calls_per_episode" in r for r in rows)
    config = (out / "config.yaml").read_text()
    assert f"id: {ENV_ID}" in config and "tasks.jsonl" in config
    assert time.perf_counter() - start < 120


@pytest.fixture()
def shop_db():
    sys.path.insert(0, str(PACKAGE))  # the package's code, installed or not
    try:
        from agentrl_sqlite_env.sql_tool import ShopDatabase

        db = ShopDatabase(max_rows=5, timeout_s=0.5)
        yield db
        db.close()
    finally:
        sys.path.remove(str(PACKAGE))


ENDLESS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "


@pytest.mark.parametrize("sql, expected", [
    (ENDLESS + "SELECT count(*) FROM n", "Error: the query ran longer than 0.5 s and was stopped"),
    ("SELECT count(*) FROM orders a, orders b, orders c, orders d, orders e, orders f, orders g",
     "Error: the query ran longer than 0.5 s and was stopped"),
    ("SELECT * FROM orders a, orders b, orders c, orders d, orders e ORDER BY random()",
     "Error: the query ran longer than 0.5 s and was stopped"),
    ("DELETE FROM orders", "Error: not authorized"),
    ("INSERT INTO customers VALUES (99, 'x', 'y')", "Error: not authorized"),
    ("CREATE TABLE t (x)", "Error: not authorized"),
    ("PRAGMA query_only = OFF", "Error: not authorized"),
    ("ATTACH DATABASE '/tmp/agentrl_sqlite_attack.db' AS x", "Error: not authorized"),
    ("VACUUM INTO '/tmp/agentrl_sqlite_attack.db'", "Error: authorization denied"),
    ("SELECT 1; DROP TABLE orders", "Error: You can only execute one statement at a time."),
    ("SELECT length(randomblob(1000000000))", "Error: string or blob too big"),
    ("WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r) SELECT max(length(s)) FROM r", "Error: string or blob too big"),
    ("SELECT printf('%.*c', 500000000, 'x')", "Error: not authorized to use function: printf"),
    ("SELEC 1", 'Error: near "SELEC": syntax error'),
])
def test_hostile_sql_is_an_error_message_quickly(shop_db, sql, expected):
    start = time.perf_counter()
    assert shop_db.query(sql) == expected
    assert time.perf_counter() - start < 2.0
    assert shop_db.query("SELECT count(*) FROM orders") == "count(*)\n18"  # nothing changed, still usable
    assert not Path("/tmp/agentrl_sqlite_attack.db").exists()


def test_rows_are_capped(shop_db):
    out = shop_db.query(ENDLESS + "SELECT x FROM n")  # endless, but only max_rows + 1 rows are fetched
    assert out.splitlines() == ["x", "1", "2", "3", "4", "5", "... (more than 5 rows; add a LIMIT or aggregate)"]
    assert shop_db.query("SELECT name FROM customers WHERE city = 'Nowhere'") == "name\n(no rows)"
