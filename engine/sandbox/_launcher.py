"""The sandbox launcher: isolates itself, sets the limits, forks the code's process, reports.

Run by :mod:`engine.sandbox.runner` as ``python -I -S _launcher.py SPEC`` in a new session,
never imported: it uses the standard library only. ``SPEC`` is a JSON object (see
``runner._spec``). Steps, each reported as one JSON line on the status pipe (``status_fd``),
which the code never sees (it is closed on exec):

1. join the run's pids cgroup when one is given (before leaving the root user namespace);
2. ``unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID)``: a network namespace with only a
   downed loopback (no route anywhere), and a PID namespace whose first process is the code;
3. resource limits (inherited by everything the code starts);
4. fork: the child asks for SIGKILL when the launcher dies (so killing the launcher's
   process group takes the whole PID namespace down, even a process that left the group),
   closes the status pipe, adds the site directories if asked, and runs the script in itself (with
   ``exec`` set: execs a fresh ``python -I`` on it instead, an interpreter start more); the
   launcher waits and reports its exit status and CPU time.

With ``probe`` set it stops after step 2 and reports whether it could isolate.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import time

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1


def run_here(args: list, with_site: bool) -> None:
    """Run ``args[0]`` (a script, then its arguments) as ``python -I`` would, in this
    process: no second interpreter start. The launcher started with ``-I -S``; with
    ``with_site`` the site directories are added now, before the code runs."""
    if with_site:
        import site

        site.main()
    sys.argv = list(args)
    main_module = type(sys)("__main__")
    main_module.__file__ = args[0]
    sys.modules["__main__"] = main_module
    try:
        with open(args[0], "rb") as fh:
            source = fh.read()
        exec(compile(source, args[0], "exec"), main_module.__dict__)
    except SystemExit:
        raise
    except BaseException:  # what the interpreter does with an uncaught exception
        import traceback

        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)


def main() -> int:
    spec = json.loads(sys.argv[1])
    status = spec["status_fd"]
    os.set_inheritable(status, False)  # pass_fds made it inheritable: never to the code

    def report(event: str, **fields: object) -> None:
        line = json.dumps({"e": event, "t": time.monotonic(), **fields}) + "\n"
        os.write(status, line.encode())

    report("start")
    if spec.get("cgroup"):
        with open(os.path.join(spec["cgroup"], "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        report("error", stage="unshare", errno=err, message=os.strerror(err))
        return 125
    report("isolated")
    if spec.get("probe"):
        return 0
    limits = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, spec["cpu"]),
        (resource.RLIMIT_AS, spec["memory"]),
        (resource.RLIMIT_FSIZE, spec["fsize"]),
        (resource.RLIMIT_NOFILE, spec["nofile"]),
        (resource.RLIMIT_NPROC, spec["nproc"]),
    ]
    for which, value in limits:
        resource.setrlimit(which, (value, value))
    pid = os.fork()
    if pid == 0:  # PID 1 of the new namespace
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if spec["exec"]:
            for fd in spec["keep_fds"]:
                os.set_inheritable(fd, True)
            report("exec")
            try:
                os.execve(spec["argv"][0], spec["argv"], spec["env"])
            except OSError as exc:
                report("error", stage="exec", errno=exc.errno, message=str(exc))
            os._exit(127)
        report("exec")
        os.close(status)  # the code must not be able to write the launcher's reports
        run_here(spec["argv"][spec["argv"].index("-I") + 1 :], spec["site"])
    for fd in spec["keep_fds"]:
        os.close(fd)
    _, wstatus, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(wstatus)
    report(
        "exit",
        code=code if code >= 0 else None,
        signal=-code if code < 0 else None,
        cpu=usage.ru_utime + usage.ru_stime,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
