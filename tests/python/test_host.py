"""A good guest in a Python process: the GIL is free while mining, Ctrl-C stops the job and
leaves no output, logs go to `logging`."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import tripmine
from conftest import overlapping_table


def test_the_gil_is_released_while_mining():
    table = overlapping_table(rows=30_000, dim=64, labels=300)
    done = threading.Event()
    ticks = 0

    def job():
        tripmine.mine(table, threads=1, progress=False)
        done.set()

    worker = threading.Thread(target=job)
    worker.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    worker.join()
    # Held for the whole job, the GIL would have let this thread tick once or twice at most.
    assert ticks > 20


def test_log_lines_go_to_the_tripmine_logger(table, caplog):
    with caplog.at_level(logging.INFO, logger="tripmine"):
        tripmine.mine(table, progress=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "tripmine"]
    assert any(m.startswith("finished") for m in messages), messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tripmine"):
        tripmine.mine(table, progress=False)
    assert not [r for r in caplog.records if r.name == "tripmine" and r.levelno < logging.WARNING]


def test_ctrl_c_stops_the_job_and_replaces_no_output(tmp_path):
    out = tmp_path / "t.parquet"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from conftest import overlapping_table
        import tripmine
        table = overlapping_table(rows=200_000, dim=64, labels=2_000)
        print("mining", flush=True)
        try:
            tripmine.mine(table, out={str(out)!r}, threads=1, progress=False)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
        print("finished", flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "mining"
    time.sleep(3)
    started = time.monotonic()
    child.send_signal(signal.SIGINT)
    stdout, _ = child.communicate(timeout=120)
    assert child.returncode == 130, stdout
    assert "interrupted" in stdout
    assert time.monotonic() - started < 30
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
