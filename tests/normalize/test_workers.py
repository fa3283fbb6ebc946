"""Normalize's worker processes must not re-run the parent's ``__main__`` (under Airflow: the ``airflow`` CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, sys
    if __name__ != "__main__":
        raise SystemExit("worker processes re-imported the parent's main script")
    import pyarrow as pa
    from dctp_tasks.config import load_config
    from dctp_tasks.normalize import normalize_day
    from dctp_tasks.records import CORE_SCHEMA, empty_lineage
    from dctp_tasks.staging import ROWS, stage_output, stage_rows
    from dctp_tasks.storage import Storage

    storage = Storage(sys.argv[1])
    n = 60
    columns = {f.name: pa.nulls(n, f.type) for f in CORE_SCHEMA}
    text = "Document number {} is long enough to pass the length filter, caf\\u00c3\\u00a9."
    columns.update(doc_id=pa.array([f"t/{i}" for i in range(n)]), source=pa.array(["t"] * n),
                   text=pa.array([text.format(i) for i in range(n)]),
                   dt=pa.array(["2026-01-01"] * n), lineage=empty_lineage(n))
    with stage_output(storage, "dag", "2026-01-01", "ingest") as out, \\
            out.writer(ROWS, schema=CORE_SCHEMA) as writer:
        writer.write(pa.table(columns, schema=CORE_SCHEMA))
    config = load_config(overrides={"batch_size": 10, "normalize.workers": 2})
    result = normalize_day(storage, config, "dag", "2026-01-01")
    texts = storage.read_table(stage_rows(storage, "dag", "2026-01-01", "normalize")).column("text").to_pylist()
    print(json.dumps({"kept": result.kept, "workers": result.extra["workers"], "fixed": "café" in texts[0]}))
''')


def test_worker_processes_do_not_rerun_the_main_script(tmp_path):
    script = tmp_path / "main_that_must_not_rerun.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), tmp_path.as_uri()], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"kept": 60, "workers": 2, "fixed": True}


def test_a_pool_starts_inside_a_daemonic_process_with_billiards_authkey():
    """An Airflow task on a Celery worker runs in a process forked from a daemonic billiard prefork child."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_pool_in_child, args=(queue,), daemon=True)
    child.start()
    child.join(120)
    assert queue.get(timeout=5) == [4, 9]


def _pool_in_child(queue) -> None:
    import multiprocessing

    from billiard.process import AuthenticationString

    from dctp_tasks.workers import process_pool

    # as in a billiard child: its authkey, and multiprocessing making more of that kind
    multiprocessing.process.AuthenticationString = AuthenticationString
    me = multiprocessing.current_process()
    me._config["authkey"] = AuthenticationString(me.authkey)

    try:
        with process_pool(2) as pool:
            queue.put(list(pool.map(pow, [2, 3], [2, 2])))
    except Exception as exc:  # the parent asserts on what it receives
        queue.put(repr(exc))
