"""nanosft.eval.sandbox: hostile programs are scored failed, contained, and leave the parent unharmed.

The hostile suite runs every program through each layer combination this machine provides (``MODES``:
the default, forced user namespaces, forced Landlock only, and the weak mode with its opt-in), as root
and as an unprivileged user (uid 65534: a helper process drops to it before it calls the sandbox, so the
non-root paths are really taken). Modes the machine cannot provide are skipped, naming what is missing.
"""

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from nanosft.eval.sandbox import (
    MODES,
    WeakSandboxError,
    execute_code,
    execute_many,
    isolation_report,
    require_isolation,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox tests target Linux")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534


def _sandbox_processes(marker: bytes = b"nanosft_sandbox_") -> list[int]:
    """PIDs whose command line contains ``marker`` (a leftover child would show up here)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _landlock_abi() -> int:
    """landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION), asked independently of nanosft."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))


def _kernel_allows_unprivileged_userns() -> bool:
    """The kernel's switches for unprivileged user namespaces (Debian/Ubuntu sysctls where present)."""

    def read(path, default):
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return default

    return (
        read("/proc/sys/user/max_user_namespaces", 1) > 0
        and read("/proc/sys/kernel/unprivileged_userns_clone", 1) == 1
        and read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", 0) == 0
    )


# ---------------------------------------------------------------- hostile programs, one per threat
# Placeholders: TARGET (a path in a world-writable host dir), PORT (a loopback server), SECRET (a value in
# the parent's environment), PARENT and VICTIM (PIDs of the sandbox's parent and of a sleeping process).
UNGUARD = (  # undo the Python guard on ctypes: only kernel layers can stop what follows
    "import sys\nfor m in ('ctypes', '_ctypes'):\n    sys.modules.pop(m, None)\n"
    "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
)
BENIGN = (
    "import os, tempfile, threading, json\n"
    "open('scratch.txt', 'w').write('ok')\n"
    "with tempfile.NamedTemporaryFile('w', delete=False) as f:\n    f.write('tmp')\n"
    "os.makedirs('a/b'); os.rename('scratch.txt', 'a/b/s.txt')\n"
    "out = []\nt = threading.Thread(target=lambda: out.append(sum(i * i for i in range(1000))))\nt.start(); t.join()\n"
    "print(open('a/b/s.txt').read(), open(f.name).read(), out[0], json.dumps({'x': 1}))\n"
)
BENIGN_STDOUT = "ok tmp 332833500 {\"x\": 1}\n"
CASES = {
    "benign": BENIGN,
    "write_open": "print('reached')\nopen(TARGET, 'w').write('x')",
    "write_os_open": "import os\nprint('reached')\nfd = os.open(TARGET, os.O_WRONLY | os.O_CREAT, 0o666)\n"
    "os.write(fd, b'x')",
    "write_io_fileio": "import io\nprint('reached')\nio.FileIO(TARGET, 'w').write(b'x')",
    "write_pathlib": "import pathlib\nprint('reached')\npathlib.Path(TARGET).write_text('x')",
    "write_shutil": "import shutil\nprint('reached')\nshutil.copyfile('program.py', TARGET)",
    "write_ctypes_libc": UNGUARD + "print('reached')\nfd = libc.open(TARGET.encode(), 0o101, 0o666)\n"
    "assert fd >= 0, ctypes.get_errno()\nassert libc.write(fd, b'x', 1) == 1",
    "connect_loopback": "import _socket\nprint('reached')\n"
    "s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\ns.settimeout(2)\ns.connect(('127.0.0.1', PORT))\n"
    "print('connected')",
    "read_parent_env": "import os\nprint('reached', SECRET in str(os.environ))\n"
    "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
    "    try:\n        data = open(f'/proc/{pid}/environ', 'rb').read()\n    except OSError:\n        continue\n"
    "    if SECRET.encode() in data:\n        print('LEAK', pid)\n",
    "signal_parent": UNGUARD + "import os\nprint('reached')\nfor pid in (PARENT, VICTIM):\n"
    "    print('kill', libc.kill(pid, 9))\n    fd = libc.syscall(434, pid, 0)\n"
    "    print('pidfd', fd, fd >= 0 and libc.syscall(424, fd, 9, None, 0))\n"
    "os.kill(PARENT, 9)",
    "fork_flood": UNGUARD + "import posix\nprint('reached')\nn = 0\ntry:\n    while n < 10000:\n"
    "        posix.fork()\n        n += 1\nexcept OSError as e:\n    print('stopped', n)\n"
    "m = 0\nwhile m < 10000 and libc.fork() >= 0:\n    m += 1\nprint('libc stopped', m)",
    "thread_flood": "import threading, time\nprint('reached')\nn = 0\ntry:\n    while n < 100000:\n"
    "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
    "except (RuntimeError, MemoryError):\n    print('stopped', n)",
    "memory": "print('reached', flush=True)\nchunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))",
    "cpu": "import threading\nprint('reached', flush=True)\ndef spin():\n    while True:\n        pass\n"
    "threading.Thread(target=spin, daemon=True).start()\nspin()",
    "disk": "print('reached', flush=True)\nn = 0\ntry:\n    while True:\n"
    "        with open(f'f{n}', 'wb') as f:\n            f.write(b'\\1' * (1 << 20))\n"
    "        n += 1\n        print('mb', n, flush=True)\nexcept OSError as e:\n    print('stopped', n)",
}
TIMEOUT = {"cpu": 1.0}  # the others: 10 s, never reached unless a limit fails
DISK_BYTES = 8 << 20  # small caps: the disk and memory programs hit them in a few ms
MEMORY_BYTES = 128 << 20
# the weak mode's known holes (why it is opt-in): ctypes writes; an ordinary user's /proc/<parent>/environ
# (root's is safe: the code runs without capabilities, so it may not read a process that has them)
WEAK_HOLES = {("root", "write_ctypes_libc"), ("nobody", "write_ctypes_libc"), ("nobody", "read_parent_env")}

# One helper process per (user, mode): it drops to ``uid`` (if given), keeps itself dumpable as an
# ordinary user's process is, starts a victim, runs every case through the sandbox and prints one
# JSON line per case, then whether it and the victim are still alive.
RUNNER = r"""
import ctypes, json, os, subprocess, sys, time
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["repo"])
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from nanosft.eval import sandbox
tempfile.tempdir = spec["workdir"]
if spec["uid"] is not None:
    os.setgroups([]); os.setgid(spec["uid"]); os.setuid(spec["uid"])
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: setuid cleared it
# an interpreter this user may execute (the venv's may sit under a private home)
spec["python"] = next((p for p in spec["python"] if p and os.access(p, os.X_OK)), None)
if spec["python"] is None:
    print(json.dumps({"skip": "no Python interpreter that this user may execute"})); sys.exit(0)
victim = subprocess.Popen([spec["python"], "-c", "import time; time.sleep(60)"])
print(json.dumps({"probe": asdict(sandbox.probe(spec["python"], spec["disable"]))}), flush=True)
def run(name):
    code = spec["cases"][name].replace("PARENT", str(os.getpid())).replace("VICTIM", str(victim.pid))
    try:
        r = asdict(sandbox.execute_code(code, timeout=spec["timeouts"].get(name, 10.0), python=spec["python"],
                                        allow_weak=spec["allow_weak"], disable=spec["disable"],
                                        disk_bytes=spec["disk_bytes"], memory_bytes=spec["memory_bytes"]))
    except sandbox.WeakSandboxError as e:
        r = {"refused": str(e)}
    print(json.dumps({"case": name, "result": r}), flush=True)
with ThreadPoolExecutor(4) as pool:
    list(pool.map(run, spec["cases"]))
alive = victim.poll() is None
victim.kill(); victim.wait()
print(json.dumps({"done": True, "victim_alive": alive}), flush=True)
"""


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def public_dir():
    """A world-writable host dir (so the unprivileged user could write there without the sandbox)."""
    path = tempfile.mkdtemp(prefix="nanosft_test_sandbox_")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def run_mode(public_dir, loopback_server):
    """``run_mode(user, mode)``: the helper's results for every case, run once and cached."""
    cache = {}

    def run(user, mode):
        if (user, mode) in cache:
            return cache[(user, mode)]
        uid = NOBODY if user == "nobody" else None
        if uid is not None and os.geteuid() != 0:
            pytest.skip("dropping to uid 65534 needs root")
        python = [sys.executable, os.path.realpath(sys.executable), shutil.which("python3"), "/usr/bin/python3"]
        base = os.path.join(public_dir, f"{user}-{mode}")
        workdir, target = os.path.join(base, "work"), os.path.join(base, "target")
        for d in (base, workdir, target):
            os.mkdir(d)
            os.chmod(d, 0o777)
        port, _ = loopback_server
        secret = "s" + secrets.token_hex(16)
        cases = {
            name: code.replace("TARGET", repr(os.path.join(target, name))).replace("PORT", str(port))
            .replace("SECRET", repr(secret))
            for name, code in CASES.items()
        }
        spec = {"repo": REPO, "uid": uid, "python": python, "workdir": workdir, "cases": cases,
                "timeouts": TIMEOUT, "disable": list(MODES[mode]), "allow_weak": mode == "weak",
                "disk_bytes": DISK_BYTES, "memory_bytes": MEMORY_BYTES}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NANOSFT_TEST_SECRET": secret}
        proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(spec)], env=env, capture_output=True,
                              check=False, text=True, timeout=300)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        out = {
            "returncode": proc.returncode, "stderr": proc.stderr[-2000:], "secret": secret, "target": target,
            "workdir": workdir, "probe": next((x["probe"] for x in lines if "probe" in x), None),
            "results": {x["case"]: x["result"] for x in lines if "case" in x},
            "skip": next((x["skip"] for x in lines if "skip" in x), None),
            "done": next((x for x in lines if x.get("done")), None),
            "leftover_processes": _sandbox_processes(base.encode()),
            "leftover_workdirs": os.listdir(workdir),
        }
        cache[(user, mode)] = out
        return out

    return run


REQUIRED = {"default": "mountns_ro", "user_ns": "userns", "landlock": "landlock", "weak": None}
USERS_MODES = [("root", m) for m in MODES] + [("nobody", m) for m in ("default", "landlock", "weak")]


def _provided(run, user, mode):
    """Skip when this machine cannot give the mode's defining layer."""
    if run["skip"]:
        pytest.skip(run["skip"])
    probe = run["probe"]
    assert probe is not None, run["stderr"]
    need = REQUIRED[mode]
    if need and need not in probe["layers"]:
        pytest.skip(f"this machine does not provide mode {mode!r} for {user}: {'; '.join(probe['missing'])}")
    return probe


def _params():
    for user, mode in USERS_MODES:
        for case in CASES:
            marks = [pytest.mark.xfail(strict=True, reason="a known hole of the opt-in weak mode")] if (
                mode == "weak" and (user, case) in WEAK_HOLES) else []
            yield pytest.param(user, mode, case, marks=marks, id=f"{user}-{mode}-{case}")


@pytest.mark.parametrize("user,mode,case", list(_params()))
def test_hostile_program_is_contained(run_mode, loopback_server, user, mode, case):
    run = run_mode(user, mode)
    probe = _provided(run, user, mode)
    if mode == "weak":
        assert probe["layers"] == ["seccomp"] or probe["layers"] == []
    # the parent and a bystander outlived every program; the sandbox left nothing behind
    assert run["returncode"] == 0 and run["done"] is not None, run["stderr"]
    assert run["done"]["victim_alive"]
    assert run["leftover_processes"] == [] and run["leftover_workdirs"] == []
    r = run["results"][case]
    assert "refused" not in r
    assert not os.path.exists(os.path.join(run["target"], case))
    out = r["stdout"]
    if case == "benign":
        assert r["success"] and out == BENIGN_STDOUT, r
        return
    assert out.startswith("reached"), r  # the hostile part really ran
    if case.startswith("write_"):
        assert not r["success"]
    elif case == "connect_loopback":
        assert "connected" not in out and loopback_server[1] == []
    elif case == "read_parent_env":
        assert "LEAK" not in out and run["secret"] not in out and "reached False" in out
    elif case == "signal_parent":
        assert not r["success"] and "pidfd -1 False" in out and "kill 0" not in out
    elif case == "fork_flood":
        assert "stopped 0" in out and "libc stopped 0" in out
    elif case == "thread_flood":
        assert "stopped" in out and int(out.split()[-1]) < 1000
    elif case == "memory":
        assert not r["success"] and r["memory_exceeded"]
    elif case == "cpu":
        assert not r["success"] and (r["timeout"] or r["returncode"] == -signal.SIGXCPU)
    elif case == "disk":
        written = [int(line.split()[1]) for line in out.splitlines() if line.startswith(("mb", "stopped"))]
        assert r["disk_exceeded"] or "stopped" in out, r
        assert max(written, default=0) <= 4 * (DISK_BYTES >> 20)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to uid 65534 needs root")
def test_unprivileged_user_really_gets_user_namespaces_or_landlock(run_mode):
    """Independent of nanosft: what the kernel allows an ordinary user, and that the sandbox takes it."""
    probe = run_mode("nobody", "default")["probe"]
    if _kernel_allows_unprivileged_userns():
        assert {"userns", "netns", "mountns_ro", "pidns"} <= set(probe["layers"]), probe
        assert any(m.startswith("privileged namespaces (unshare: EPERM") for m in probe["missing"])
    abi = _landlock_abi()
    assert ("landlock" in probe["layers"]) == (abi >= 1), (abi, probe)
    assert ("landlock_scope" in probe["layers"]) == (abi >= 6)


def test_weak_mode_refuses_without_opt_in(public_dir):
    target = os.path.join(public_dir, "refused_marker")
    code = UNGUARD + f"fd = libc.open({target!r}.encode(), 0o101, 0o666)"
    with pytest.raises(WeakSandboxError) as err:
        execute_code(code, timeout=5, disable=MODES["weak"])
    message = str(err.value)
    assert "\n" not in message and "allow_weak_sandbox" in message
    assert "user namespaces" in message and "Landlock" in message
    assert not os.path.exists(target)  # the code never ran
    with pytest.raises(WeakSandboxError):
        execute_many(["pass", "pass"], disable=MODES["weak"])
    assert execute_code("print(1)", disable=MODES["weak"], allow_weak=True).stdout == "1\n"


def test_require_isolation_logs_once_and_refuses_weak(caplog):
    from nanosft.eval import sandbox

    sandbox._checked.cache_clear()
    with caplog.at_level("INFO", logger="nanosft.eval.sandbox"):
        first = require_isolation()
        assert require_isolation() == first
    assert [r.message for r in caplog.records].count(f"code sandbox layers: {','.join(first)}") == 1
    with pytest.raises(WeakSandboxError):
        require_isolation(disable=MODES["weak"])
    assert require_isolation(allow_weak=True, disable=MODES["weak"]) in (("seccomp",), ())


def test_humaneval_and_eval_cli_refuse_a_weak_sandbox(monkeypatch, capsys):
    from nanosft.eval.chatcore import require_sandbox, score_humaneval
    from nanosft.training.config import validate_dict
    from nanosft.eval.__main__ import main, parse_args
    from nanosft.data.tasks.humaneval import load_problems

    monkeypatch.setenv("NANOSFT_SANDBOX_DISABLE", ",".join(MODES["weak"]))
    problems = load_problems(data_dir="unused")[:1]
    good = [f"```python\n{problems[0]['messages'][1]['content']}\n```"]
    with pytest.raises(WeakSandboxError):
        score_humaneval(problems, good)
    assert score_humaneval(problems, good, allow_weak_sandbox=True) == [True]
    assert require_sandbox(["ARC-Easy", "GSM8K"]) == ()  # no code runs: no refusal
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "/nonexistent", "--tasks", "GSM8K,HumanEval"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: code execution refused") and "\n" not in err
    assert parse_args(["--model", "x", "--allow-weak-sandbox"]).allow_weak_sandbox
    validate_dict({"allow_weak_sandbox": True})


# ---------------------------------------------------------------- the default mode, in this process
def test_clean_program_succeeds_and_returns_stdout():
    result = execute_code("print(sum(range(10)))", timeout=5)
    assert result.success and result.stdout == "45\n" and result.error is None


def test_failing_assertion_is_scored_failed():
    result = execute_code("assert 1 + 1 == 3, 'wrong'", timeout=5)
    assert not result.success and "AssertionError" in result.error


@pytest.mark.parametrize("call", ["os.system", "posix.system"])
def test_os_system_cannot_run_a_command(tmp_path, call):
    target = tmp_path / "from_shell"
    result = execute_code(f"import os, posix\nassert {call}('touch {target}') == 0", timeout=5)
    assert not result.success
    assert not target.exists()


def test_allocating_10_gb_is_a_memory_failure():
    result = execute_code("x = bytearray(10 * 1024 ** 3)", timeout=5)
    assert not result.success and result.memory_exceeded


def test_print_flood_is_truncated():
    result = execute_code("while True:\n    print('x' * 1000)\n", timeout=3)
    assert not result.success
    assert len(result.stdout) <= 64 * 1024


def test_unknown_disable_name_is_an_error():
    with pytest.raises(ValueError, match="unknown layer"):
        execute_code("pass", disable=["landlok"])


def test_isolation_report_lists_the_active_layers():
    layers = isolation_report()
    # seccomp needs no privilege on x86_64/aarch64 Linux
    import platform

    if platform.machine() in ("x86_64", "aarch64"):
        assert "seccomp" in layers
    assert ("landlock" in layers) == (_landlock_abi() >= 1)


def test_humaneval_canonical_solution_passes_and_wrong_one_fails():
    from nanosft.eval.chatcore import score_humaneval
    from nanosft.data.tasks.humaneval import load_problems

    problems = load_problems(data_dir="unused")[:2]
    good = [f"```python\n{p['messages'][1]['content']}\n```" for p in problems]
    bad = [p["messages"][0]["content"] + "    return None\n" for p in problems]
    assert score_humaneval(problems + problems, good + bad) == [True, True, False, False]
