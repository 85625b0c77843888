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
        forkrun.run(["-c", code], cwd=REPO, timeout=3, new_session=True)
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
