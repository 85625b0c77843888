"""The suite's command runner (tests/forkrun.py) against the fact it stands in for: the same
command started as a fresh interpreter. Exit status, stdout, stderr (tracebacks included) must be
identical, or the command-line tests would check something a user's shell never sees."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import forkrun

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = forkrun._has_cuda

CASES = {
    "exit_status": ["-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
    "exit_message": ["-c", "import sys; sys.exit('error: no such file')"],
    "traceback": ["-c", "def f():\n    return 1 / 0\nprint('before')\nf()"],
    "ctrl_c": ["-c", "raise KeyboardInterrupt"],
    "killed": ["-c", "import os, signal; print('x', flush=True); os.kill(os.getpid(), signal.SIGKILL)"],
    "argv_and_path": ["-c", "import sys, os; print(sys.argv, sys.path[0] == '', os.getcwd())", "a b"],
    "module": ["-m", "json.tool", "--no-such-option"],
    "script_folder_first": ["{probe}", "--x", "1"],
    "atexit_and_threads": ["-c", "import atexit, threading, time\n"
                                 "atexit.register(lambda: print('atexit'))\n"
                                 "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))"
                                 ").start()\nprint('main')"],
    "empty_pythonpath_entry": ["-c", "import sys; print(sys.path[:3])"],
    "environment": ["-c", "import os; print(os.environ['FORKRUN_PROBE'], 'PYTHONPATH' in os.environ)"],
}
PROBE = "import sys, os\nprint(sys.argv, sys.path[0] == os.path.dirname(os.path.abspath(__file__)))\n"


@pytest.fixture(autouse=True)
def forked(monkeypatch):
    """The forked path, whatever the suite runs with ($METAHMR_TEST_FORK, a GPU): the commands
    here never touch CUDA. A test that wants otherwise sets it again."""
    monkeypatch.setenv("METAHMR_TEST_FORK", "1")
    monkeypatch.setattr(forkrun, "_has_cuda", lambda: False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_forked_command_is_what_a_fresh_interpreter_gives(name, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    argv = [a.format(probe=probe) for a in CASES[name]]
    env = {**os.environ, "FORKRUN_PROBE": "seen"}
    env.pop("PYTHONPATH", None)
    if name == "empty_pythonpath_entry":                # an empty entry is the working folder
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), ""])
    fresh = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=60)
    forked = forkrun.run(argv, cwd=REPO, env=env, timeout=60)
    assert (forked.returncode, forked.stdout, forked.stderr) == \
        (fresh.returncode, fresh.stdout, fresh.stderr)
    assert forked.returncode == {"exit_status": 3, "exit_message": 1, "traceback": 1,
                                 "ctrl_c": -signal.SIGINT, "killed": -signal.SIGKILL,
                                 "module": 2}.get(name, 0)


def test_pythonpath_comes_after_the_script_folder(tmp_path):
    (tmp_path / "extra_mod.py").write_text("NAME = 'extra'\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = forkrun.run(["-c", "import sys, extra_mod; print(extra_mod.NAME, sys.path[1])"],
                    cwd=REPO, env=env, timeout=60)
    assert (r.returncode, r.stdout) == (0, f"extra {tmp_path}\n"), r.stderr
    r = forkrun.run(["-c", "import extra_mod"], cwd=REPO, timeout=60)     # not on the path
    assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_command_past_its_timeout_is_killed(unbuffered):
    """... with what it wrote so far (an unflushed print only under $PYTHONUNBUFFERED)."""
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    with pytest.raises(subprocess.TimeoutExpired) as e:
        forkrun.run(["-c", "import time; print('started'); time.sleep(60)"], cwd=REPO,
                    timeout=1, env=env)
    assert e.value.output == ("started\n" if unbuffered else "")
    r = forkrun.run(["-c", "print('next')"], cwd=REPO, timeout=60)     # the server goes on
    assert (r.returncode, r.stdout) == (0, "next\n")


@pytest.mark.parametrize("fork", ["1", "0"])
def test_past_its_timeout_a_new_session_command_is_killed_with_its_children(fork, tmp_path,
                                                                            monkeypatch):
    """torchrun's case: the command's own children (its workers) must not outlive the timeout."""
    monkeypatch.setenv("METAHMR_TEST_FORK", fork)
    pid_file = tmp_path / "pid"
    code = ("import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(c.pid))\ntime.sleep(60)")
    with pytest.raises(subprocess.TimeoutExpired):
        forkrun.run(["-c", code], cwd=REPO, timeout=1.5, new_session=True)
    child = int(pid_file.read_text())
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:          # a zombie waiting for init is gone too
            if f.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.05)
    else:
        raise AssertionError("the command's child outlived the timeout")


@pytest.mark.parametrize("why", ["forked", "METAHMR_TEST_FORK=0", "cuda"])
def test_fresh_interpreters_without_fork_or_with_cuda(why, monkeypatch):
    """A forked command starts with torch imported (the server's); with METAHMR_TEST_FORK=0, and
    on a machine with CUDA (a driver touched before a fork is lost to the child), it does not."""
    if why == "METAHMR_TEST_FORK=0":
        monkeypatch.setenv("METAHMR_TEST_FORK", "0")
    if why == "cuda":
        monkeypatch.setattr(forkrun, "_has_cuda", HAS_CUDA)    # its own check, fooled below
        monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    r = forkrun.run(["-c", "import sys; print('torch' in sys.modules)"], cwd=REPO, timeout=60)
    assert (r.returncode, r.stdout) == (0, f"{why == 'forked'}\n"), r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_started_command_signalled_while_it_runs_is_what_a_fresh_interpreter_gives(sig,
                                                                                    tmp_path):
    """``start``: running (``poll`` None) until the signal, then the same exit status, stdout and
    stderr as a fresh interpreter signalled at the same point (Ctrl-C: KeyboardInterrupt's
    traceback and death by SIGINT; nothing when this process ignores SIGINT, as a background
    job of a script does, and its children inherit that)."""
    ignored = sig == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    results = []
    for fresh in (True, False):
        ready = tmp_path / f"ready{fresh}"
        code = (f"import time\nprint('started', flush=True)\nopen({str(ready)!r}, 'w')\n"
                f"time.sleep({1 if ignored else 60})")
        p = (subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) if fresh
             else forkrun.start(["-c", code], cwd=REPO))
        while not ready.exists():
            assert p.poll() is None
            time.sleep(0.02)
        assert p.poll() is None
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
        results.append((p.returncode, out, err))
    assert results[1] == results[0]
    assert results[1][:2] == (0 if ignored else -sig, "started\n")


def test_a_command_ignores_sigint_when_its_parent_did(monkeypatch):
    """The interpreter keeps an inherited SIG_IGN of SIGINT (no KeyboardInterrupt); so does a
    command forked from a server started with SIGINT ignored."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"
    warm = forkrun._SERVER[:]                       # the suite's server, kept for later tests
    monkeypatch.setenv("FORKRUN_PRELOAD", "")       # (servers that import nothing: quick)
    try:
        for ignore in (False, True):
            before = signal.signal(signal.SIGINT, signal.SIG_IGN if ignore else
                                   signal.default_int_handler)
            forkrun._SERVER.clear()                 # the next one starts with this disposition
            try:
                fresh = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                       text=True, timeout=60)
                forked = forkrun.run(["-c", probe], cwd=REPO, timeout=60)
            finally:
                signal.signal(signal.SIGINT, before)
                for server in forkrun._SERVER:
                    server.stdin.close()            # it ends at the end of its input
                    server.wait(timeout=60)
                    server.stdout.close()
            assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout) \
                == (0, f"{ignore}\n")
    finally:
        forkrun._SERVER[:] = warm


def test_a_started_command_left_running_is_killed_when_the_next_one_starts():
    """The server runs one command at a time: a test that left one running does not block the
    rest of the suite."""
    left = forkrun.start(["-c", "import time; time.sleep(60)"], cwd=REPO)
    with pytest.raises(subprocess.TimeoutExpired):
        left.wait(timeout=0.2)
    r = forkrun.run(["-c", "print('next')"], cwd=REPO, timeout=60)
    assert (r.returncode, r.stdout) == (0, "next\n")
    assert left.poll() == -signal.SIGKILL
