"""nanosft.sandbox: hostile programs are scored failed, contained, and leave the parent unharmed."""

import os
import socket
import sys
import threading

import pytest

from nanosft.sandbox import execute_code, execute_many, isolation_report

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox tests target Linux")


def _sandbox_processes() -> list[int]:
    """PIDs whose command line names a sandbox work dir (a leftover child would show up here)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"nanosft_sandbox_" in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.fixture
def loopback_server():
    """A TCP server on 127.0.0.1 that records every accepted connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(2)
    server.close()


def test_clean_program_succeeds_and_returns_stdout():
    result = execute_code("print(sum(range(10)))", timeout=5)
    assert result.success and result.stdout == "45\n" and result.error is None


def test_failing_assertion_is_scored_failed():
    result = execute_code("assert 1 + 1 == 3, 'wrong'", timeout=5)
    assert not result.success and "AssertionError" in result.error


def test_program_can_use_its_own_temp_dir_and_threads():
    code = (
        "import threading\nopen('scratch.txt', 'w').write('ok')\nt = threading.Thread(target=lambda: None)\n"
        "t.start(); t.join()\nprint(open('scratch.txt').read())"
    )
    result = execute_code(code, timeout=5)
    assert result.success, result.error
    assert result.stdout == "ok\n"


@pytest.mark.parametrize("opener", ["open", "_io.open"])
def test_write_into_home_directory_is_blocked(tmp_path, opener):
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o777)
    target = home / "pwned.txt"
    result = execute_code(f"import _io\n{opener}({str(target)!r}, 'w').write('x')", timeout=5)
    assert not result.success
    assert not target.exists()


@pytest.mark.parametrize("module", ["socket", "_socket"])
def test_socket_cannot_reach_a_loopback_server(loopback_server, module):
    port, accepted = loopback_server
    code = f"import {module}\ns = {module}.socket({module}.AF_INET, {module}.SOCK_STREAM)\ns.connect(('127.0.0.1', {port}))"
    result = execute_code(code, timeout=5)
    assert not result.success
    assert accepted == []


@pytest.mark.parametrize("fork", ["os.fork", "posix.fork"])
def test_fork_bomb_is_contained(fork):
    result = execute_code(f"import os, posix\nwhile True:\n    {fork}()\n", timeout=3)
    assert not result.success
    assert _sandbox_processes() == []


@pytest.mark.parametrize("call", ["os.system", "posix.system"])
def test_os_system_cannot_run_a_command(tmp_path, call):
    target = tmp_path / "from_shell"
    result = execute_code(f"import os, posix\nassert {call}('touch {target}') == 0", timeout=5)
    assert not result.success
    assert not target.exists()


def test_allocating_10_gb_is_a_memory_failure():
    result = execute_code("x = bytearray(10 * 1024 ** 3)", timeout=5)
    assert not result.success and result.memory_exceeded


def test_infinite_loop_times_out_and_leaves_no_process():
    result = execute_code("while True:\n    pass\n", timeout=1.5)
    assert not result.success and result.timeout
    assert _sandbox_processes() == []


def test_print_flood_is_truncated():
    result = execute_code("while True:\n    print('x' * 1000)\n", timeout=3)
    assert not result.success
    assert len(result.stdout) <= 64 * 1024


def test_guards_hold_without_namespaces(monkeypatch, tmp_path, loopback_server):
    monkeypatch.setenv("NANOSFT_SANDBOX_NO_NS", "1")
    port, accepted = loopback_server
    target = tmp_path / "x"
    results = execute_many(
        [
            f"open({str(target)!r}, 'w')",
            f"import socket; socket.create_connection(('127.0.0.1', {port}))",
            "import os\nwhile True: os.fork()",
        ],
        timeout=3,
    )
    assert [r.success for r in results] == [False, False, False]
    assert not target.exists() and accepted == []
    assert not {"netns", "mountns_ro", "pidns"} & set(results[0].layers)


def test_isolation_report_lists_the_active_layers():
    layers = isolation_report()
    # seccomp needs no privilege on x86_64/aarch64 Linux; namespaces need root or user namespaces
    import platform

    if platform.machine() in ("x86_64", "aarch64"):
        assert "seccomp" in layers


def test_humaneval_canonical_solution_passes_and_wrong_one_fails():
    from nanosft.chatcore import score_humaneval
    from nanosft.tasks.humaneval import load_problems

    problems = load_problems(data_dir="unused")[:2]
    good = [f"```python\n{p['messages'][1]['content']}\n```" for p in problems]
    bad = [p["messages"][0]["content"] + "    return None\n" for p in problems]
    assert score_humaneval(problems + problems, good + bad) == [True, True, False, False]
