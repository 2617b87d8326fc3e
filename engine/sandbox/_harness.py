"""The unit-test harness: runs a solution's code, then each test, inside the sandbox.

Run by :func:`engine.sandbox.unit_tests.run_unit_tests` as ``python -I _harness.py`` in the
run's directory (``solution.py``, ``tests.json``), never imported. It reads a nonce from stdin
(then closes it), and reports on the result channel (``$SANDBOX_CHANNEL_FD``), one line
each, prefixed by the nonce: ``ready N`` once it is ready to run the code, ``load fail
NAME`` when the code itself raised, ``test I pass`` or ``test I fail NAME`` per test, and
``done``. What the code prints goes to stdout and counts for nothing; a test with no report
(the code exited, or hit a limit) failed. Each test, and the code's own load, has
``test_seconds`` of wall-clock time (SIGALRM) before it fails.
"""

import json
import os
import signal
import sys


class TestTimeout(BaseException):
    """A test (or the code's load) ran past test_seconds."""


def _alarm(signum, frame):
    raise TestTimeout()


def main():
    channel = int(os.environ["SANDBOX_CHANNEL_FD"])
    nonce = sys.stdin.readline().strip()
    sys.stdin.close()
    with open("tests.json", encoding="utf-8") as fh:
        spec = json.load(fh)
    with open("solution.py", encoding="utf-8") as fh:
        source = fh.read()
    tests = spec["tests"]
    seconds = float(spec["test_seconds"])

    def report(*parts):
        os.write(channel, (" ".join([nonce, *map(str, parts)]) + "\n").encode())

    signal.signal(signal.SIGALRM, _alarm)
    report("ready", len(tests))
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        exec(compile(source, "solution.py", "exec"), namespace)
    except BaseException as exc:  # the code's own failure: every test fails
        signal.setitimer(signal.ITIMER_REAL, 0)
        report("load", "fail", type(exc).__name__)
        report("done")
        return
    signal.setitimer(signal.ITIMER_REAL, 0)
    for i, test in enumerate(tests):
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            exec(compile(test, f"test_{i}", "exec"), namespace)
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            report("test", i, "fail", type(exc).__name__)
            continue
        signal.setitimer(signal.ITIMER_REAL, 0)
        report("test", i, "pass")
    report("done")


if __name__ == "__main__":
    main()
