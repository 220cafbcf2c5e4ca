"""A process forked while another thread holds the console's lock (a progress bar redrawing) starts with
a lock it can take: the pool download forks its workers inside run_stage's progress bar."""
import os
import threading
import time

import pytest

from curate.log import console


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_a_thread_draws_gives_the_child_a_free_console_lock():
    held = threading.Event()

    def draw():
        with console._lock:
            held.set()
            time.sleep(0.3)

    t = threading.Thread(target=draw)
    t.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # child: only this thread exists; the lock must be free
        os._exit(0 if console._lock.acquire(timeout=5) else 1)
    _, status = os.waitpid(pid, 0)
    t.join()
    assert os.waitstatus_to_exitcode(status) == 0
