"""Run model-written Python (HumanEval) in a contained child process.

nanochat/execution.py runs code in a forked process with a timeout, a 256 MB address-space limit, a
temp dir and Python-level guards; it says itself that it blocks neither the network nor writes
elsewhere. nanosft keeps those layers and adds kernel ones where the machine allows them:

1. Always: a fresh ``python -I -S`` (stdlib only, no site-packages, no user env) in its own session;
   ``RLIMIT_AS`` (256 MB), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (16 MB), ``RLIMIT_NPROC``, no core dumps;
   a wall-clock timeout that kills the whole process group; cwd = a fresh temp dir that is also
   ``HOME`` and ``TMPDIR``; a 4-variable environment; stdout/stderr go to files (the parent reads at
   most 64 KB of each, so a print loop cannot flood its memory); Python guards as in nanochat's
   ``reliability_guard`` but stricter (sockets, ``os.system``/``fork``/``exec*``/``kill``,
   ``subprocess``, ``open`` for writing outside the temp dir raise ``PermissionError``).
2. Linux x86_64/aarch64, no privilege needed: a seccomp filter (``PR_SET_NO_NEW_PRIVS`` first) that
   makes ``fork``/``vfork``/process-``clone``, ``execve``, ``socket``, ``ptrace``, ``mount``,
   ``unshare``, ``setns``, ``prctl`` and friends fail with EPERM. This is what stops fork bombs,
   ``os.system`` and the network even from ``ctypes``; threads are still allowed.
3. Where ``unshare(CLONE_NEWNS|CLONE_NEWNET|CLONE_NEWPID)`` is permitted (root, as in our
   containers): a private network namespace (no interface but a downed loopback), a mount namespace
   where every mount is remounted read-only and the working dir is a fresh 64 MB tmpfs (so nothing
   outside it can be written and a disk-filling loop is capped), and a PID namespace with its own
   ``/proc``: the code is PID 1 there, cannot see or signal host processes, and the kernel kills
   everything it started when it ends (``PR_SET_PDEATHSIG`` ties it to the bootstrap).

``isolation_report()`` says which layers are active on this machine (checked by running a probe);
here (root in a Docker-like container, x86_64) all three are. What it does NOT stop: CPU/memory
side channels, reading world-readable files (the filesystem is read-only, not hidden), kernel
exploits. Without namespaces (non-root, no user namespaces) writes to world-writable places such as
``/tmp`` are only stopped by the Python guards, which ``ctypes`` can bypass.

Cost: one sandboxed run takes about 70 ms of wall time here (130 ms with the 2 cores oversubscribed):
interpreter start, namespace setup and the seccomp filter; the 164 HumanEval problems take a few
seconds with ``execute_many(max_workers=4)``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0  # nanochat/execution.py
DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024  # nanochat/execution.py
OUTPUT_LIMIT_BYTES = 64 * 1024
EXIT_MEMORY = 97  # the bootstrap's exit code for MemoryError

# The child's bootstrap. argv: workdir, memory_bytes, cpu_seconds. It runs before any user code:
# status lines go to <workdir>/status (opened before the workdir is replaced by a tmpfs).
_BOOT = r"""
import ctypes, os, resource, signal, struct, sys
work, mem, cpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
status = open(os.path.join(work, "status"), "w", buffering=1)
src = open(os.path.join(work, "program.py"), encoding="utf-8").read()
layers = []
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
NS = 0x00020000 | 0x40000000 | 0x20000000  # CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
def mount(src_, tgt, fs, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    return libc.mount(enc(src_), enc(tgt), enc(fs), flags, enc(data)) == 0
namespaces = sys.platform.startswith("linux") and os.environ.get("NANOSFT_SANDBOX_NO_NS") != "1" and libc.unshare(NS) == 0
if namespaces:
    ok = mount(None, "/", None, REC | PRIVATE)
    points = [line.split()[4] for line in open("/proc/self/mountinfo")]
    for p in sorted(set(points), key=len):
        # remount read-only; failures on pseudo filesystems are fine as long as / and the tmpfs hold
        mount(None, p, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV) or mount(None, p, None, REMOUNT | BIND | RDONLY)
    ok = ok and mount("tmpfs", work, "tmpfs", NOSUID | NODEV, "size=64m,mode=0777")
    if not ok:
        status.write("ns_failed\n"); sys.exit(96)
    layers += ["netns", "mountns_ro", "pidns"]
    pid = os.fork()  # the child is PID 1 of the new PID namespace
    if pid:
        _, st = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(st)
        status.write(f"exit {code}\n")
        os._exit(code if code >= 0 else 128 - code)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the bootstrap
    mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC)
os.chdir(work)
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))  # not enforced for root: seccomp is
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing
import platform
machine = platform.machine()
DENY = {  # syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h
    "x86_64": (0xC000003E, 56, [57, 58, 59, 322, 41, 101, 165, 166, 272, 308, 155, 161, 157, 321, 298, 112, 62, 200, 234]),
    "aarch64": (0xC00000B7, 220, [221, 281, 198, 117, 40, 39, 97, 268, 41, 51, 167, 280, 241, 157, 129, 130, 131]),
}
# x86_64: fork vfork execve execveat socket ptrace mount umount2 unshare setns pivot_root chroot prctl
#         bpf perf_event_open setsid kill tkill tgkill; aarch64: execve execveat socket ptrace umount2 mount
#         unshare setns pivot_root chroot prctl bpf perf_event_open setsid kill tkill tgkill
if machine in DENY and sys.platform.startswith("linux"):
    arch, clone_nr, deny = DENY[machine]
    ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    # classic BPF over seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]} (linux/seccomp.h)
    LD_NR, LD_ARCH, LD_ARG0 = (0x20, 0, 0, 0), (0x20, 0, 0, 4), (0x20, 0, 0, 16)
    ins = [LD_ARCH, (0x15, 1, 0, arch), (0x06, 0, 0, ALLOW), LD_NR]
    ins += [(0x35, 0, 1, 0x40000000), (0x06, 0, 0, EPERM)]  # x32 ABI numbers: deny outright
    ins += [(0x15, 0, 1, 435), (0x06, 0, 0, ENOSYS)]  # clone3 -> ENOSYS: glibc falls back to clone
    # clone: allowed only with CLONE_THREAD (threads), a new process gets EPERM
    ins += [(0x15, 0, 4, clone_nr), LD_ARG0, (0x45, 0, 1, 0x10000), (0x06, 0, 0, ALLOW), (0x06, 0, 0, EPERM)]
    ins += [LD_NR]
    for nr in deny:
        ins += [(0x15, 0, 1, nr), (0x06, 0, 0, EPERM)]
    ins += [(0x06, 0, 0, ALLOW)]
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in ins))
    class FProg(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = FProg(len(ins), ctypes.addressof(buf))
    if libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) == 0:
        layers.append("seccomp")
status.write("layers " + ",".join(layers) + "\n")
status.close()
del libc, ctypes
# Python-level guards (nanochat/execution.py reliability_guard, stricter): they give clear errors.
import builtins, io, shutil, subprocess, socket
def _deny(*a, **k):
    raise PermissionError("blocked by the nanosft sandbox")
_open, _root = builtins.open, os.path.realpath(work)
def _guarded_open(file, mode="r", *a, **k):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        path = os.path.realpath(os.fsdecode(file))
        if path != _root and not path.startswith(_root + os.sep):
            raise PermissionError(f"writing outside the sandbox directory is blocked: {path}")
    return _open(file, mode, *a, **k)
builtins.open = io.open = _guarded_open
for name in ("system", "popen", "fork", "forkpty", "execv", "execve", "execvp", "execvpe", "execl", "execle",
             "execlp", "execlpe", "spawnv", "spawnve", "spawnl", "spawnle", "kill", "killpg", "setuid", "chroot",
             "putenv", "unsetenv", "chdir", "fchdir", "chmod", "chown", "lchown", "rmdir", "removedirs"):
    if hasattr(os, name):
        setattr(os, name, _deny)
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _deny
socket.socket = socket.create_connection = socket.socketpair = _deny
shutil.rmtree = shutil.move = shutil.chown = _deny
for mod in ("ctypes", "_ctypes", "resource", "multiprocessing", "_posixsubprocess"):
    sys.modules[mod] = None
builtins.exit = builtins.quit = None
del _deny
sys.argv = ["program.py"]
try:
    exec(compile(src, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
except MemoryError:
    sys.stderr.write("MemoryError\n"); sys.stderr.flush(); os._exit(97)
"""


@dataclass
class ExecutionResult:
    """Outcome of one sandboxed run (nanochat/execution.py ``ExecutionResult`` plus the active layers).

    Attributes:
        success: the program ran to the end (exit code 0) within the limits.
        stdout, stderr: the first 64 KB of each stream, decoded as UTF-8 (errors replaced).
        error: a one-line reason when not successful.
        timeout: killed by the wall-clock timeout.
        memory_exceeded: ``MemoryError`` under ``RLIMIT_AS``.
        returncode: the child's exit status (negative: killed by that signal).
        layers: isolation layers that were active, e.g. ``["netns", "mountns_ro", "pidns", "seccomp"]``.
    """

    success: bool
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    timeout: bool = False
    memory_exceeded: bool = False
    returncode: int | None = None
    layers: tuple = ()


def _read_head(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(OUTPUT_LIMIT_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


def execute_code(
    code: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    python: str | None = None,
) -> ExecutionResult:
    """Run ``code`` as ``__main__`` in a fresh sandboxed interpreter and report how it ended.

    Args:
        code: Python source; it may print, raise or loop forever.
        timeout: wall-clock seconds before the whole process group is killed (nanochat: 5 s).
        memory_bytes: ``RLIMIT_AS`` of the child (nanochat: 256 MB).
        python: interpreter to run (default ``sys.executable``); only its standard library is used.

    Returns:
        ``ExecutionResult``; never raises for anything the code does. The parent's state (files,
        processes, network) is untouched whatever the code does, within the layers listed in the
        module docstring.
    """
    workdir = tempfile.mkdtemp(prefix="nanosft_sandbox_")
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        out_path, err_path = os.path.join(workdir, "stdout"), os.path.join(workdir, "stderr")
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        if os.environ.get("NANOSFT_SANDBOX_NO_NS") == "1":
            env["NANOSFT_SANDBOX_NO_NS"] = "1"
        cpu = int(timeout) + 1
        argv = [python or sys.executable, "-I", "-S", "-c", _BOOT, workdir, str(memory_bytes), str(cpu)]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # the child leads its own session: kill the group even if the leader already exited
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        status = _read_head(os.path.join(workdir, "status")).split("\n")
        layers = next((tuple(x for x in s[7:].split(",") if x) for s in status if s.startswith("layers ")), ())
        rc = proc.returncode
        stdout, stderr = _read_head(out_path), _read_head(err_path)
        memory = rc == EXIT_MEMORY
        success = rc == 0 and not timed_out
        if success:
            error = None
        elif timed_out:
            error = f"timed out after {timeout:g} s"
        elif memory:
            error = f"memory limit of {memory_bytes >> 20} MB exceeded"
        else:
            last = [line for line in stderr.strip().splitlines() if line.strip()]
            error = last[-1] if last else f"exit status {rc}"
        return ExecutionResult(success, stdout, stderr, error, timed_out, memory, rc, layers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def isolation_report(python: str | None = None) -> tuple:
    """The isolation layers ``execute_code`` gets on this machine, e.g. ``("netns", ..., "seccomp")``."""
    return execute_code("pass", timeout=10.0, python=python).layers


def execute_many(programs: list[str], max_workers: int = 4, **kwargs) -> list[ExecutionResult]:
    """``execute_code`` over many programs with a thread pool (each run is its own process).

    Returns:
        results in the order of ``programs``.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not programs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(programs)))) as pool:
        return list(pool.map(lambda p: execute_code(p, **kwargs), programs))
