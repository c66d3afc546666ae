"""Run book blocks, each in a fresh interpreter state, without paying for ``import torch``.

This file runs as its own process (``python -I zygote.py``). It imports torch once,
draws nothing from it, then reads one JSON request per line on stdin. For each
request it forks a child that:

* gets a brand-new ``__main__`` module, ``sys.argv == ['']``, an empty working
  directory of its own, stdin from ``/dev/null``, and freshly seeded ``random``;
* sees torch exactly as a fresh ``python`` would after ``import torch``: a new
  random seed (as a fresh import draws one), and the parent never changes its
  default dtype or print options or runs an op, so no thread pool exists yet
  when the child is forked. A block that forgets to seed prints different
  numbers on every run, and so fails its Output check;
* runs the block as a script, with stdout and stderr line-buffered into one pipe
  (the order a reader sees in a terminal), tracebacks pointing at the Markdown
  file and line;
* watches every expression statement that the interactive prompt would echo (at
  the top level and inside loops, ``if``, ``with`` and ``try``, not inside
  functions): a block pasted at ``>>>`` would also print the value of, say,
  ``torch.manual_seed(0)``. Such a value fails the block (exit status 3), so the
  page holds for a reader who pastes as well as for one who runs a file.

The parent answers with one JSON line: ``{"output", "status", "timed_out"}``.
Nothing a block does can reach the next one: each child exits with ``os._exit``.
"""

from __future__ import annotations

import ast
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time

import torch  # noqa: F401  (imported once here, so each child's ``import torch`` is free)

_ECHO = "__attnbook_echo__"


class _WatchEchoes(ast.NodeTransformer):
    """Wrap each expression statement the REPL would echo in a call to ``_ECHO``."""

    def visit_Expr(self, node: ast.Expr) -> ast.Expr:
        call = ast.Call(ast.Name(_ECHO, ast.Load()), [node.value, ast.Constant(node.lineno)], [])
        return ast.copy_location(ast.Expr(ast.copy_location(call, node.value)), node)

    def _leave_alone(self, node):  # the REPL does not echo inside these
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _leave_alone


def _child(request: dict, write_fd: int, workdir: str) -> None:
    import builtins
    import io
    import random
    import traceback
    import types

    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    random.seed()  # a fresh interpreter seeds from the OS; forked children must not share
    torch.seed()  # likewise: a fresh ``import torch`` starts from a random seed
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    os.chdir(workdir)
    sys.argv = [""]
    sys.path.insert(0, workdir)  # a script's own folder comes first, as for ``python block.py``
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    import atexit
    import linecache
    import threading

    echoed: list[tuple[int, str]] = []

    def echo(value, line):
        if value is not None:
            echoed.append((line, repr(value)))

    setattr(builtins, _ECHO, echo)
    status = 0
    # Tracebacks name the page by its path in the repository, and show its lines.
    source = "\n" * (request["line"] - 1) + request["code"]
    linecache.cache[request["filename"]] = (
        len(source),
        None,
        source.splitlines(True),
        request["filename"],
    )
    try:
        tree = ast.fix_missing_locations(
            _WatchEchoes().visit(ast.parse(source, request["filename"]))
        )
        code = compile(tree, request["filename"], "exec")
        exec(code, main.__dict__)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException as err:  # noqa: BLE001 - report everything, as python would
        tb = err.__traceback__.tb_next if err.__traceback__ else None
        traceback.print_exception(type(err), err, tb)
        status = 1
    try:  # shut down as an interpreter does: join threads, run atexit, clear __main__
        threading._shutdown()
        atexit._run_exitfuncs()
        main.__dict__.clear()
        import gc

        gc.collect()
    except BaseException as err:  # noqa: BLE001
        traceback.print_exception(type(err), err, err.__traceback__)
        status = status or 1
    if echoed and not status:
        line, shown = echoed[0]
        if len(shown) > 60:
            shown = shown[:57] + "..."
        print(
            f"{request['filename']}:{line}: pasted at the >>> prompt, this line would also print "
            f"its value, {shown}, which a script does not; assign it (`_ = ...`) so that both "
            f"show the same output",
            file=sys.stderr,
        )
        status = 3
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def _run(request: dict) -> dict:
    read_fd, write_fd = os.pipe()
    workdir = tempfile.mkdtemp(prefix="attnbook-block-")
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        _child(request, write_fd, workdir)
    os.close(write_fd)
    chunks, timed_out = [], False
    deadline = time.monotonic() + request.get("timeout", 120)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if ready:
            data = os.read(read_fd, 65536)
            if not data:
                break
            chunks.append(data)
    os.close(read_fd)
    _, wait_status = os.waitpid(pid, 0)
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "output": b"".join(chunks).decode("utf-8", errors="backslashreplace"),
        "status": os.waitstatus_to_exitcode(wait_status),
        "timed_out": timed_out,
    }


def main() -> None:
    out = sys.stdout
    print(json.dumps({"ready": True, "pid": os.getpid()}), file=out, flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_run(json.loads(line))), file=out, flush=True)


if __name__ == "__main__":
    main()
