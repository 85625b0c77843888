"""Run a command line of the project (``python train.py ...``, ``-m datasets.prepare``, ``-c``)
as its own process, forked from a warm server instead of started from scratch.

A fresh interpreter spends about 4 s importing torch, torchvision, OpenCV and smplx before the
command does anything, and the suite runs dozens of commands. ``run`` hands the command to a
server process that imported those third-party libraries once (and nothing of the project, which
each child imports afresh). The child is still a separate process, so what the tests check is
what a user's shell sees: its exit status (``-N`` when killed by signal N), its own stdout and
stderr, its environment and working folder, and a traceback only when the command would print
one. It runs like the interpreter would: ``sys.argv``, ``sys.path[0]`` (the script's folder, or
the working folder for ``-m``/``-c``) and ``$PYTHONPATH`` as given, ``__main__``,
``$PYTHONUNBUFFERED``, atexit handlers and non-daemon threads at the end
(tests/test_forkrun.py compares each with a fresh interpreter). ``run`` waits for the command;
``start`` returns a handle to signal it while it runs (the ``subprocess.Popen`` calls it replaces).

``METAHMR_TEST_FORK=0`` starts every command as a fresh interpreter instead, and so does a machine
with CUDA: a process that has touched the CUDA driver cannot hand it on through fork, and nothing
proves the server's imports never do (a GPU is not there to check it on). Tests whose subject
is the interpreter's start itself (the GL/triton import order, a plain interpreter) start fresh
interpreters with ``subprocess``; torchrun's workers are its own fresh interpreters.
"""
from __future__ import annotations

import atexit
import io
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

# imported once by the server; slow to import and free of project state
PRELOAD = ["numpy", "scipy.optimize", "scipy.spatial", "cv2", "PIL.Image", "tqdm", "torch",
           "torch._dynamo", "torchvision", "torchvision.models", "smplx",
           "torch.utils.tensorboard"]
_SERVER: list[subprocess.Popen] = []
_PENDING: list[bytes] = [b""]                    # answer bytes read, not yet used
_LOCK = threading.Lock()


def _exit_code(exc: SystemExit) -> int:
    """The interpreter's exit status for ``exc`` (a non-int code is printed to stderr, status 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _uncaught(exc: BaseException) -> int:
    """Print ``exc``'s traceback from the command's own first frame on, as the interpreter does;
    its exit status (an uncaught KeyboardInterrupt ends the process by SIGINT, as there)."""
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename == __file__
                              or tb.tb_frame.f_code.co_filename.startswith("<frozen runpy")):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)
    if isinstance(exc, KeyboardInterrupt):
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return 1


def _child(argv: list[str], cwd: str, env: dict, out: str, err: str, base_path: list,
           new_session: bool) -> None:
    """In the forked child: become ``python *argv`` in ``cwd`` with ``env``, output to files
    (``new_session``: in a session and process group of its own, as ``start_new_session``)."""
    if new_session:
        os.setsid()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  write_through=unbuffered)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True,
                                  write_through=unbuffered)
    extra = env["PYTHONPATH"].split(os.pathsep) if env.get("PYTHONPATH") else []  # "" = cwd
    if argv[0] in ("-m", "-c"):
        first, sys.argv = ("" if argv[0] == "-c" else cwd), [argv[0], *argv[2:]]
    else:
        script = os.path.abspath(argv[0])
        first, sys.argv = os.path.dirname(script), [argv[0], *argv[1:]]
    sys.path[:] = [first, *[os.path.abspath(p) for p in extra], *base_path]
    try:
        if argv[0] == "-m":
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:                        # what the interpreter prints
        code = _uncaught(exc)
    for t in threading.enumerate():                     # the interpreter waits for these
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def serve() -> None:
    """The server: import PRELOAD, then for each request line on stdin fork a child, answer its
    pid, wait for it and answer its exit status. Ends when stdin closes."""
    import importlib
    own = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    base = [p for p in sys.path[1:] if os.path.abspath(p) not in own]
    preload = os.environ.get("FORKRUN_PRELOAD")        # (comma-separated; tests of forkrun)
    for name in PRELOAD if preload is None else filter(None, preload.split(",")):
        try:
            importlib.import_module(name)
        except ImportError:                             # the child's own import will say so
            pass
    # a Ctrl-C of pytest reaches the child, which starts as a fresh interpreter would: taking it
    # as KeyboardInterrupt, or ignoring it when it was ignored (a background job of a script)
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_IGN if inherited == signal.SIG_IGN
                          else signal.default_int_handler)
            _child(req["argv"], req["cwd"], req["env"], req["out"], req["err"], base,
                   req["new_session"])
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


def _server() -> subprocess.Popen:
    if not _SERVER or _SERVER[0].poll() is not None:
        _SERVER[:] = [subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, bufsize=0, cwd=os.getcwd())]
        _PENDING[:] = [b""]
    return _SERVER[0]


def _answer(server: subprocess.Popen, timeout: float | None) -> dict | None:
    """The server's next answer line, or None when ``timeout`` seconds pass first (read from the
    pipe itself: an answer already read stays in ``_PENDING``, never hidden in a buffer)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while b"\n" not in _PENDING[0]:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([server.stdout], [], [], left)[0]:
            return None
        chunk = os.read(server.stdout.fileno(), 65536)
        if not chunk:
            raise RuntimeError("the forkrun server ended; run with METAHMR_TEST_FORK=0 to see why")
        _PENDING[0] += chunk
    line, _PENDING[0] = _PENDING[0].split(b"\n", 1)
    return json.loads(line)


def _has_cuda() -> bool:
    import torch                                        # the suite's conftest has imported it
    return torch.cuda.is_available()


class Forked:
    """A command :func:`start` forked from the server: the part of ``subprocess.Popen`` the tests
    use (``pid``, ``args``, ``returncode``, ``poll``, ``wait``, ``send_signal``, ``kill``,
    ``communicate``; stdout and stderr as text, read when it has ended)."""

    def __init__(self, cmd: list, argv: list, cwd, env: dict, new_session: bool):
        self.args, self.returncode, self.new_session, self._output = cmd, None, new_session, None
        self._tmp = tempfile.TemporaryDirectory(prefix="forkrun_")
        self._out, self._err = Path(self._tmp.name, "stdout"), Path(self._tmp.name, "stderr")
        self._server = _server()
        self._server.stdin.write(json.dumps({
            "argv": argv, "cwd": str(Path(cwd).resolve()), "env": env, "out": str(self._out),
            "err": str(self._err), "new_session": new_session}).encode() + b"\n")
        self.pid = _answer(self._server, None)["pid"]

    def _ended(self, timeout: float | None) -> bool:
        if self.returncode is None:
            done = _answer(self._server, timeout)
            if done is None:
                return False
            self.returncode = done["returncode"]
        return True

    def poll(self) -> int | None:
        self._ended(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL to the command (to its whole process group when it has a session of its own)."""
        if self.poll() is None:
            (os.killpg if self.new_session else os.kill)(self.pid, signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """(stdout, stderr) once it has ended; past ``timeout`` TimeoutExpired with the output so
        far (the command keeps running, as with Popen)."""
        if self._output is None:
            ended = self._ended(timeout)
            out, err = (f.read_text(errors="replace") for f in (self._out, self._err))
            if not ended:
                raise subprocess.TimeoutExpired(self.args, timeout, output=out, stderr=err)
            self._output = out, err
            self._tmp.cleanup()
        return self._output


_RUNNING: list[Forked] = []                      # the server runs one command at a time


def start(argv: list, *, cwd, env: dict | None = None, new_session: bool = False):
    """``python *argv`` in ``cwd`` started, not waited for (``env``: the whole environment,
    ``os.environ`` by default): a :class:`Forked`, or with a fresh interpreter (see the module
    docstring) the ``subprocess.Popen(..., stdout=PIPE, stderr=PIPE, text=True,
    start_new_session=new_session)`` it stands in for. A forked command a test left running is
    killed when the next one starts."""
    argv = [str(a) for a in argv]
    env = dict(os.environ if env is None else env)
    cmd = [sys.executable, *argv]
    if os.environ.get("METAHMR_TEST_FORK", "1") == "0" or _has_cuda():
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=new_session)
    with _LOCK:
        for left in _RUNNING:
            left.kill()
            left.communicate()
        _RUNNING[:] = [Forked(cmd, argv, cwd, env, new_session)]
        return _RUNNING[0]


def run(argv: list, *, cwd, env: dict | None = None, timeout: float | None = None,
        new_session: bool = False) -> subprocess.CompletedProcess:
    """``python *argv`` in ``cwd`` (``env``: the whole environment, ``os.environ`` by default),
    as ``subprocess.run(..., capture_output=True, text=True, timeout=timeout,
    start_new_session=new_session)`` returns it. Past ``timeout`` the command is killed (with
    ``new_session``, its whole process group: e.g. torchrun's workers) and TimeoutExpired raised."""
    proc = start(argv, cwd=cwd, env=env, new_session=new_session)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        (os.killpg if new_session else os.kill)(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


if __name__ == "__main__":
    serve()
