"""The sandbox: limits, no network, nothing left behind, and a refusal where it cannot isolate."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from engine.config.sections import SandboxConfig
from engine.errors import SandboxError, SandboxUnavailable
from engine.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[2]


def sandbox(**limits: object) -> Sandbox:
    return Sandbox(SandboxConfig(**{"wall_seconds": 20.0, **limits}))  # type: ignore[arg-type]


def processes_with(token: str) -> list[int]:
    """Pids of live processes whose command line holds ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def run_dirs_with(token: str) -> list[Path]:
    """The sandbox run directories whose main.py holds ``token``."""
    found = []
    for main in Path(tempfile.gettempdir()).glob("grpo-sandbox-*/main.py"):
        try:
            if token in main.read_text():
                found.append(main.parent)
        except OSError:
            continue
    return found


def exists(path: str | Path) -> bool:
    return Path(path).exists()


@pytest.mark.parametrize("fresh", [False, True])
async def test_runs_code_with_a_minimal_environment(
    monkeypatch: pytest.MonkeyPatch, fresh: bool
) -> None:
    """The code's output comes back; none of the engine's environment reaches it; the
    launcher's status pipe is closed to it."""
    monkeypatch.setenv("GRPO_TEST_SECRET", "hunter2")
    code = (
        "import os, sys\nprint(sorted(os.environ))\nprint(sys.flags.isolated)\n"
        "print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))"
    )
    result = await sandbox(fresh_interpreter=fresh).run(code)
    assert result.ok and result.exit_code == 0 and result.limit is None
    names, isolated, fds = result.stdout.splitlines()
    assert "GRPO_TEST_SECRET" not in names and "hunter2" not in result.stdout
    assert isolated == "1"  # python -I
    # stdio, and 3: the listing's own descriptor; nothing of the launcher's is inherited
    assert {int(fd) for fd in fds.strip("[]").split(", ")} <= {0, 1, 2, 3}
    assert set(result.timings) == {"spawn", "launcher", "isolate", "setup", "code"}


async def test_an_infinite_loop_stops_at_the_cpu_limit() -> None:
    """A busy loop is killed at its CPU time, long before the wall-clock limit."""
    result = await sandbox(cpu_seconds=1.0, wall_seconds=30.0).run("while True:\n    pass")
    assert result.limit == "cpu" and not result.ok
    assert result.duration < 20.0


async def test_a_sleeping_run_stops_at_the_wall_limit() -> None:
    """Code that waits without using CPU is killed at the wall-clock limit."""
    result = await sandbox(wall_seconds=1.0).run("import time\ntime.sleep(60)")
    assert result.limit == "wall" and result.signal is not None
    assert result.duration < 15.0
    assert result.describe() == "killed: wall limit"


async def test_memory_is_capped() -> None:
    """An allocation past memory_mb fails inside the code (RLIMIT_AS)."""
    result = await sandbox(memory_mb=256).run("x = bytearray(1024 * 1024 * 1024)\nprint('got it')")
    assert result.limit == "memory" and "MemoryError" in result.stderr
    assert "got it" not in result.stdout


async def test_output_is_capped_and_marked() -> None:
    """Past max_output_bytes the run is killed and its output cut, with a marker."""
    result = await sandbox(max_output_bytes=4096).run("while True:\n    print('x' * 1000)")
    assert result.limit == "output" and result.truncated
    assert result.stdout.endswith("[... output truncated at 4096 bytes]")
    assert len(result.stdout) < 4096 + 100


async def test_a_fork_bomb_is_contained_and_nothing_outlives_the_run() -> None:
    """Forks beyond max_processes fail; the children that started, even one that left the
    process group, are gone when the run ends."""
    token = secrets.token_hex(8)
    code = f"""
import os, sys
started = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            os.setsid()  # leave the process group: the PID namespace still holds it
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)",
                                      "{token}"])
        started += 1
except OSError as exc:
    print("fork refused after", started, type(exc).__name__)
"""
    result = await sandbox(max_processes=8).run(code)
    assert "fork refused after" in result.stdout, result.stderr
    assert int(result.stdout.split()[3]) <= 8
    assert result.limit == "processes"
    for _ in range(100):  # the kernel tears the namespace down as the run ends
        if not processes_with(token):
            break
        await asyncio.sleep(0.05)
    assert processes_with(token) == []


async def test_no_network_connection_is_possible() -> None:
    """The code cannot reach a server the test runs on loopback (the test itself can)."""
    connections = 0

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)  # reachable from here
        writer.close()
        await asyncio.sleep(0.05)
        assert connections == 1
        code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3)
    print("connected")
except OSError as exc:
    print("refused", exc.errno)
"""
        result = await sandbox().run(code)
    assert result.stdout.startswith("refused"), result.stdout + result.stderr
    assert connections == 1


async def test_no_file_is_left_behind() -> None:
    """The run's directory (its cwd and HOME) and what the code wrote there are removed."""
    code = """
import os
os.makedirs("a/b", exist_ok=True)
open("a/b/data.txt", "w").write("x" * 1000)
os.chmod("a/b", 0o500)  # even a directory it made unwritable
print(os.getcwd())
print(os.environ["HOME"])
"""
    result = await sandbox().run(code, files={"input.txt": "hello"})
    cwd, home = result.stdout.splitlines()
    assert cwd == home and Path(cwd).name.startswith("grpo-sandbox-")
    assert not exists(cwd)


async def test_a_cancelled_run_kills_its_process_and_cleans_up() -> None:
    """Cancelling a run (an episode's deadline) kills the code and removes its directory."""
    token = secrets.token_hex(8)
    code = (
        "import os, sys\n"
        "os.execv(sys.executable,"
        f" [sys.executable, '-c', 'import time; time.sleep(600)', '{token}'])"
    )
    task = asyncio.create_task(sandbox().run(code))
    for _ in range(400):
        if (dirs := run_dirs_with(token)) and processes_with(token):
            break
        await asyncio.sleep(0.05)
    assert dirs and processes_with(token)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not exists(dirs[0]) and not processes_with(token):
            break
        await asyncio.sleep(0.05)
    assert not exists(dirs[0])
    assert processes_with(token) == []


async def test_concurrency_is_bounded() -> None:
    """No more than max_concurrency runs are in flight at once."""
    box = sandbox(max_concurrency=2)
    code = "import os, time\nprint(len(os.listdir('/tmp')))\ntime.sleep(0.3)"
    slot = box._slot()
    results = asyncio.gather(*(box.run(code) for _ in range(5)))
    peak = 0
    while not results.done():
        peak = max(peak, 2 - slot._value)
        await asyncio.sleep(0.01)
    assert all(r.ok for r in await results)
    assert peak == 2


async def test_a_missing_interpreter_is_refused() -> None:
    """A sandbox that cannot start its interpreter refuses and says why."""
    box = Sandbox(SandboxConfig(python="/nonexistent/python3"))
    with pytest.raises(SandboxUnavailable, match="cannot start the sandbox interpreter"):
        await box.run("print(1)")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
async def test_refuses_where_user_namespaces_are_unavailable(tmp_path: Path) -> None:
    """Where the kernel refuses a user namespace (here: user.max_user_namespaces = 0 in the
    namespace the engine runs in), the sandbox runs nothing and says why."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import asyncio\n"
        "from engine.sandbox import Sandbox\n"
        "from engine.errors import SandboxUnavailable\n"
        "try:\n"
        "    asyncio.run(Sandbox().run('print(\"ran\")'))\n"
        "    print('RAN UNSANDBOXED')\n"
        "except SandboxUnavailable as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    shell = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} {script}"
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "-r",
        "sh",
        "-c",
        shell,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert text.startswith("REFUSED"), text + err.decode()
    assert "unshare" in text and "user namespace" in text


async def test_root_without_a_pids_cgroup_is_refused(tmp_path: Path) -> None:
    """As root, where RLIMIT_NPROC does not apply, no pids cgroup under cgroup_fs means a
    refusal; an unprivileged engine caps processes with RLIMIT_NPROC and runs."""
    box = Sandbox(cgroup_fs=tmp_path)
    if os.geteuid() == 0:
        with pytest.raises(SandboxUnavailable, match="pids cgroup"):
            await box.run("print(1)")
    else:
        assert (await box.run("print(1)")).stdout == "1\n"


async def test_a_failed_exec_is_a_sandbox_error() -> None:
    """The launcher failing to exec the code's interpreter is a SandboxError, not a result."""
    box = sandbox()
    await box.check()
    box.python = "/nonexistent/python3"  # after the probe: the exec itself fails
    with pytest.raises(SandboxError):
        await box.run("print(1)")


@pytest.mark.parametrize("fresh", [False, True])
async def test_site_packages_only_when_asked(fresh: bool) -> None:
    """The code sees the standard library; the interpreter's site-packages (here orjson, an
    engine dependency) only with site_packages."""
    code = "try:\n    import orjson\n    print('site')\nexcept ImportError:\n    print('stdlib')"
    plain = await sandbox(fresh_interpreter=fresh).run(code)
    with_site = await sandbox(fresh_interpreter=fresh, site_packages=True).run(code)
    assert (plain.stdout, with_site.stdout) == ("stdlib\n", "site\n")
