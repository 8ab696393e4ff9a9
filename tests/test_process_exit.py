"""library.process_exit.exit_now: the training script's fast exit keeps what a normal exit does."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_exit_now_runs_handlers_joins_threads_flushes_and_keeps_the_code(tmp_path):
    program = textwrap.dedent(f"""
        import atexit, sys, threading, time
        sys.path.insert(0, {str(REPO)!r})
        from library.process_exit import exit_now

        atexit.register(lambda: open({str(tmp_path / 'handler')!r}, 'w').write('ran'))
        def late_writer():
            time.sleep(0.3)
            open({str(tmp_path / 'thread')!r}, 'w').write('done')
        threading.Thread(target=late_writer).start()
        sys.stdout.write('unflushed line without newline')
        sys.stderr.write('on stderr')
        exit_now(3)
        print('never printed')
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "unflushed line without newline" and done.stderr == "on stderr"
    assert (tmp_path / "handler").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"
