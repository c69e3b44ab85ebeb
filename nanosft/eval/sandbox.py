"""Run model-written Python (HumanEval) in a contained child process, for root and ordinary users alike.

nanochat/execution.py runs code in a forked process with a timeout, a 256 MB address-space limit, a
temp dir and Python-level guards; it says itself that it blocks neither the network nor writes
elsewhere. nanosft keeps those layers and adds kernel ones, choosing the strongest the machine allows:

1. Always: a fresh ``python -I -S`` (stdlib only, no site-packages, no user env) in its own session;
   ``RLIMIT_AS`` (256 MB), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (16 MB), ``RLIMIT_NPROC``, no core dumps;
   a wall-clock timeout that kills the whole process group; cwd = a fresh temp dir that is also
   ``HOME`` and ``TMPDIR``, capped at 64 MB / 10,000 entries (tmpfs size under namespaces, else the
   parent, at a higher priority than the code (nice 10), measures it every 2 ms and kills the run past the
   cap); a 4-variable environment;
   stdout/stderr go to files (the parent reads at most 64 KB of each); Python guards as in nanochat's
   ``reliability_guard`` but stricter (sockets, ``os.system``/``fork``/``exec*``/``kill``,
   ``subprocess``, and ``open``/``os.open``/``io.FileIO``/``os.rename``... on paths outside the temp dir
   raise ``PermissionError``). ``ctypes`` can bypass these guards; the kernel layers below cannot be.
2. Namespaces (``netns``, ``mountns_ro``, ``pidns``). As root ``unshare(CLONE_NEWNS|CLONE_NEWNET|
   CLONE_NEWPID)`` works directly; an ordinary user first enters a user namespace (``userns``:
   ``unshare(CLONE_NEWUSER)``, ``setgroups`` deny, ``uid_map``/``gid_map`` mapping the user to itself,
   user_namespaces(7)) and then gets the same three: a network namespace with only a downed loopback, a
   mount namespace where every mount is remounted read-only (each mount's locked flags kept, as
   mount_namespaces(7) requires) and the work dir is a fresh tmpfs, and a PID namespace with its own
   ``/proc`` where the code is PID 1, cannot see or signal host processes, and everything it started
   dies with it. Capabilities are dropped before the code runs.
3. Landlock (``landlock``, Linux >= 5.13, no privilege, Documentation/userspace-api/landlock.rst):
   the filesystem stays readable but every write, create, remove, rename or truncate outside the work
   dir fails with EACCES; it also forbids ptrace-like access to processes outside the sandbox, which
   hides the parent's ``/proc/<pid>/environ``. ABI >= 4 adds ``landlock_net`` (no TCP bind/connect),
   ABI >= 6 ``landlock_scope`` (no signals or abstract unix sockets out of the sandbox). Applied in
   every mode where the kernel has it, namespaces or not.
4. seccomp (``seccomp``, x86_64/aarch64, no privilege, ``PR_SET_NO_NEW_PRIVS`` first): ``fork``/
   ``vfork``/process-``clone``, ``execve``, ``socket``, ``ptrace``, ``mount``, ``unshare``, ``setns``,
   ``prctl``, ``kill``/``tgkill``/``pidfd_send_signal``, ``io_uring``, ``chmod``/``chown``/``setxattr``
   (metadata writes Landlock does not cover), ``truncate`` by path and friends fail with EPERM. This stops
   fork bombs, ``os.system``, the network and signals even from ``ctypes``.

``isolation_report()`` lists the layers one run actually obtained. A sandbox with neither
``mountns_ro`` nor ``landlock`` holds writes only by the Python guards: ``execute_code`` refuses to run
code there (``WeakSandboxError``, one line naming what is missing) unless ``allow_weak=True``
(``allow_weak_sandbox: true`` in a config, ``--allow-weak-sandbox`` for ``nanosft.eval``). Tests and
benchmarks force the weaker paths with ``disable=`` or ``NANOSFT_SANDBOX_DISABLE=privileged_ns,user_ns``.
What no mode stops: CPU/memory side channels, reading world-readable files (read-only, not hidden),
kernel exploits; with Landlock alone (no mount namespace), changing the timestamps of the user's own files.

Cost: one sandboxed run is an interpreter start plus namespace setup, Landlock and seccomp (tens of
milliseconds); ``bench/sandbox.py`` prints each mode against the pre-Landlock sandbox.
The 164 HumanEval problems take a few seconds with ``execute_many(max_workers=4)``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0  # nanochat/execution.py
DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024  # nanochat/execution.py
DEFAULT_DISK_BYTES = 64 * 1024 * 1024  # work dir cap (tmpfs size, or the parent's watchdog)
MAX_FILES = 10_000  # work dir entries (tmpfs nr_inodes, or the watchdog)
OUTPUT_LIMIT_BYTES = 64 * 1024
EXIT_MEMORY = 97  # the bootstrap's exit code for MemoryError
EXIT_REFUSED = 95  # the bootstrap's exit code when it refuses to run code in a weak sandbox
STRONG_LAYERS = ("mountns_ro", "landlock")  # either one confines writes to the work dir in the kernel
DISABLE_CHOICES = ("privileged_ns", "user_ns", "landlock")
# forced layer combinations for tests and benchmarks: mode name -> ``disable``
MODES = {
    "default": (),
    "user_ns": ("privileged_ns",),
    "landlock": ("privileged_ns", "user_ns"),
    "weak": DISABLE_CHOICES,
}

# The child's bootstrap. argv: workdir, memory_bytes, cpu_seconds, disk_bytes, disabled (comma list),
# allow_weak (0/1). It runs before any user code: status lines go to <workdir>/status, opened before the
# work dir may be covered by a tmpfs.
_BOOT = r"""
import ctypes, errno, os, re, resource, signal, struct, sys
work, mem, cpu, disk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
disabled, allow_weak = set(filter(None, sys.argv[5].split(","))), sys.argv[6] == "1"
status = open(os.path.join(work, "status"), "w", buffering=1)
src = open(os.path.join(work, "program.py"), encoding="utf-8").read()
layers, missing = [], []
linux = sys.platform.startswith("linux")
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
libc.syscall.restype = ctypes.c_long
def sysc(nr, *args):
    return libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
def why(call):
    e = ctypes.get_errno()
    return f"{call}: {errno.errorcode.get(e, e)}"
NEWUSER, NS = 0x10000000, 0x00020000 | 0x40000000 | 0x20000000  # CLONE_NEWUSER; CLONE_NEWNS|NEWNET|NEWPID
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MNT_FLAGS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
             "relatime": 1 << 21, "strictatime": 1 << 24}  # include/uapi/linux/mount.h
def mount(src_, tgt, fs, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    return libc.mount(enc(src_), enc(tgt), enc(fs), flags, enc(data)) == 0
ns = False
if not linux:
    missing.append("namespaces (not Linux)")
elif "privileged_ns" in disabled:
    missing.append("privileged namespaces (disabled)")
elif libc.unshare(NS) == 0:
    ns = True
else:
    missing.append("privileged namespaces (" + why("unshare") + ")")
if linux and not ns:
    uid, gid = os.geteuid(), os.getegid()
    if "user_ns" in disabled:
        missing.append("user namespaces (disabled)")
    elif libc.unshare(NEWUSER) != 0:
        missing.append("user namespaces (" + why("unshare(CLONE_NEWUSER)") + ")")
    else:
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open("/proc/self/" + name, "w") as f:
                    f.write(text)
            ns = libc.unshare(NS) == 0
            if not ns:
                missing.append("user namespaces (" + why("unshare") + ")")
        except OSError as e:
            missing.append(f"user namespaces (uid_map: {e.strerror})")
        if ns:
            layers.append("userns")
if ns:
    layers.append("netns")
    ok = mount(None, "/", None, REC | PRIVATE)
    unesc = lambda s: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)
    points = {}
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        points[unesc(f[4])] = sum(MNT_FLAGS.get(o, 0) for o in f[5].split(","))
    for p in sorted(points, key=len):  # parents first; locked flags must be repeated in a user namespace
        mount(None, p, None, REMOUNT | BIND | RDONLY | points[p])
    ok = ok and mount("tmpfs", work, "tmpfs", NOSUID | NODEV, f"size={disk},nr_inodes={10000},mode=0777")
    for p in points:  # /proc is replaced below; everything else must have become read-only
        if ok and p != "/proc" and not p.startswith("/proc/"):
            try:
                ok = bool(os.statvfs(p).f_flag & 1)
            except OSError:
                pass
    if ok:
        layers.append("mountns_ro")
    else:
        missing.append("read-only mount namespace (remount failed)")
    pid = os.fork()  # the child is PID 1 of the new PID namespace
    if pid:
        _, st = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(st)
        status.write(f"exit {code}\n")
        os._exit(code if code >= 0 else 128 - code)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the bootstrap
    # a fresh /proc shows only this namespace; where the kernel refuses it, an empty tmpfs hides the host's
    if mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC) or mount("tmpfs", "/proc", "tmpfs", RDONLY, "size=4k"):
        layers.append("pidns")
    else:
        missing.append("PID namespace (" + why("mount /proc") + ")")
os.chdir(work)
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_FSIZE, (min(16 << 20, disk), min(16 << 20, disk)))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))  # not enforced for root: seccomp is
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing
os.nice(10)  # on a busy CPU the parent's disk watchdog (normal priority) must get ahead of the code it watches
nnp = linux and libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS: needed by Landlock and seccomp
# Landlock (include/uapi/linux/landlock.h): syscalls 444-446 on every architecture
if "landlock" in disabled:
    missing.append("Landlock (disabled)")
elif linux:
    abi = sysc(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        missing.append("Landlock (" + why("landlock_create_ruleset") + "; needs Linux >= 5.13 with landlock in lsm=)")
    else:
        fs = sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # WRITE_FILE, REMOVE_*, MAKE_*
        fs |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)  # REFER, TRUNCATE
        net = 3 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, no port allowed
        scoped = 3 if abi >= 6 else 0  # SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24 if abi >= 6 else 16 if abi >= 4 else 8
        attr = struct.pack("=QQQ", fs, net, scoped)[:size]
        rfd = sysc(444, attr, size, 0)
        ok = rfd >= 0
        if ok:
            dfd = os.open(work, os.O_PATH | os.O_CLOEXEC)
            rule = struct.pack("=Qi", fs, dfd)  # struct landlock_path_beneath_attr (packed)
            ok = sysc(445, rfd, 1, rule, 0) == 0 and nnp and sysc(446, rfd, 0) == 0
            os.close(dfd)
            os.close(rfd)
        if ok:
            layers += ["landlock"] + ["landlock_net"] * bool(net) + ["landlock_scope"] * bool(scoped)
        else:
            missing.append("Landlock (" + why("landlock_restrict_self") + ")")
import platform
machine = platform.machine()
DENY = {  # syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h
    "x86_64": (0xC000003E, 56, 126, [57, 58, 59, 322, 41, 101, 165, 166, 272, 308, 155, 161, 157, 321, 298, 112,
                                     62, 200, 234, 129, 297, 424, 434, 438, 310, 311, 425, 426, 427,
                                     90, 91, 268, 452, 92, 93, 94, 260, 188, 189, 190, 197, 198, 199, 76]),
    "aarch64": (0xC00000B7, 220, 91, [221, 281, 198, 117, 40, 39, 97, 268, 41, 51, 167, 280, 241, 157, 129, 130,
                                      131, 138, 240, 424, 434, 438, 270, 271, 425, 426, 427,
                                      52, 53, 452, 54, 55, 5, 6, 7, 14, 15, 16, 45]),
}
# x86_64: fork vfork execve execveat socket ptrace mount umount2 unshare setns pivot_root chroot prctl
#         bpf perf_event_open setsid kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_send_signal
#         pidfd_open pidfd_getfd process_vm_readv process_vm_writev io_uring_setup/enter/register;
#         then metadata writes Landlock does not cover: chmod fchmod fchmodat fchmodat2 chown fchown lchown
#         fchownat setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr, and truncate (by path:
#         Landlock ABI < 3 cannot stop it)
# aarch64: execve execveat socket ptrace mount umount2 unshare setns pivot_root chroot prctl bpf
#         perf_event_open setsid kill tkill tgkill, then as x86_64 (no legacy chmod/chown/lchown there)
if machine in DENY and linux:
    arch, clone_nr, capset_nr, deny = DENY[machine]
    # no capabilities left for the code (root, or the creator of a user namespace): capset(2), v3 header
    sysc(capset_nr, struct.pack("=Ii", 0x20080522, 0), bytes(24))
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
    if nnp and libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) == 0:
        layers.append("seccomp")
status.write("layers " + ",".join(layers) + "\n")
for m in missing:
    status.write("missing " + m + "\n")
if not set(layers) & {"mountns_ro", "landlock"} and not allow_weak:
    status.write("refused\n")
    os._exit(95)
status.close()
del libc, ctypes
# Python-level guards (nanochat/execution.py reliability_guard, stricter): they give clear errors.
import builtins, io, _io, shutil, subprocess, socket
def _deny(*a, **k):
    raise PermissionError("blocked by the nanosft sandbox")
_root = os.path.realpath(work)
def _check(path):
    if isinstance(path, (str, bytes, os.PathLike)):
        p = os.path.realpath(os.fsdecode(path))
        if p != _root and not p.startswith(_root + os.sep):
            raise PermissionError(f"writing outside the sandbox directory is blocked: {p}")
_open, _os_open, _FileIO = builtins.open, os.open, _io.FileIO
def _guarded_open(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+"):
        _check(file)
    return _open(file, mode, *a, **k)
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
def _guarded_os_open(path, flags, *a, **k):
    if flags & _WRITE:
        _check(path)
    return _os_open(path, flags, *a, **k)
class _GuardedFileIO(_FileIO):
    def __init__(self, file, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            _check(file)
        super().__init__(file, mode, *a, **k)
def _paths_guard(fn, n):
    def guarded(*a, **k):
        for p in a[:n]:
            _check(p)
        return fn(*a, **k)
    return guarded
builtins.open = io.open = _io.open = _guarded_open
io.FileIO = _io.FileIO = _GuardedFileIO
os.open = _guarded_os_open
for name, n in (("mkdir", 1), ("remove", 1), ("unlink", 1), ("truncate", 1), ("utime", 1), ("mkfifo", 1),
                ("mknod", 1), ("rename", 2), ("replace", 2), ("link", 2), ("symlink", 2)):
    if hasattr(os, name):
        setattr(os, name, _paths_guard(getattr(os, name), n))
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


class WeakSandboxError(RuntimeError):
    """Code execution refused: the kernel gives neither namespaces nor Landlock and ``allow_weak`` is off.

    The message is one line naming the missing layers and the option that accepts the weak sandbox.
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
        layers: isolation layers that were active, e.g. ``("userns", "netns", "mountns_ro", "pidns",
            "landlock", "landlock_net", "landlock_scope", "seccomp")``.
        missing: the layers not obtained and why, e.g. ``("privileged namespaces (unshare: EPERM)",)``.
        disk_exceeded: killed for writing more than ``disk_bytes`` (or ``MAX_FILES`` entries) into
            the work dir.
    """

    success: bool
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    timeout: bool = False
    memory_exceeded: bool = False
    returncode: int | None = None
    layers: tuple = ()
    missing: tuple = ()
    disk_exceeded: bool = False


def _read_head(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(OUTPUT_LIMIT_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _over_disk_cap(path: str, disk_bytes: int) -> bool:
    """Whether the tree under ``path`` holds more than ``disk_bytes`` (allocated blocks) or ``MAX_FILES``
    entries; a directory the parent cannot list counts as over (it could hide anything)."""
    used, entries, stack = 0, 0, [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    st = entry.stat(follow_symlinks=False)
                    used += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except FileNotFoundError:
            continue
        except OSError:
            return True
        if used > disk_bytes or entries > MAX_FILES:
            return True
    return False


def _remove_tree(path: str) -> None:
    """``shutil.rmtree`` after making every directory writable (the code may have chmod-ed some)."""
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o700, follow_symlinks=False)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


def _disabled(disable) -> tuple:
    if disable is None:
        disable = os.environ.get("NANOSFT_SANDBOX_DISABLE", "").split(",")
    out = tuple(sorted({d.strip() for d in disable if d.strip()}))
    unknown = [d for d in out if d not in DISABLE_CHOICES]
    if unknown:
        raise ValueError(f"sandbox disable: unknown layer(s) {unknown}; choose from {list(DISABLE_CHOICES)}")
    return out


def _refusal(missing) -> str:
    return (
        "code execution refused: the sandbox has neither namespaces nor Landlock here (missing: "
        + "; ".join(missing)
        + "), so only seccomp, rlimits and Python guards would hold; set allow_weak_sandbox: true "
        "(nanosft.eval: --allow-weak-sandbox) to run anyway"
    )


def execute_code(
    code: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    python: str | None = None,
    allow_weak: bool = False,
    disable=None,
    disk_bytes: int = DEFAULT_DISK_BYTES,
) -> ExecutionResult:
    """Run ``code`` as ``__main__`` in a fresh sandboxed interpreter and report how it ended.

    Args:
        code: Python source; it may print, raise or loop forever.
        timeout: wall-clock seconds before the whole process group is killed (nanochat: 5 s).
        memory_bytes: ``RLIMIT_AS`` of the child (nanochat: 256 MB).
        python: interpreter to run (default ``sys.executable``); only its standard library is used.
        allow_weak: run even where neither ``mountns_ro`` nor ``landlock`` is obtained.
        disable: layers not to try, from ``DISABLE_CHOICES`` (``MODES`` names the useful combinations);
            None reads the comma-separated ``NANOSFT_SANDBOX_DISABLE`` environment variable.
        disk_bytes: cap on what the code may write into its work dir (bytes).

    Returns:
        ``ExecutionResult``; never raises for anything the code does. The parent's state (files,
        processes, network) is untouched whatever the code does, within the layers listed in the
        module docstring.

    Raises:
        WeakSandboxError: the sandbox would be weak and ``allow_weak`` is False (the code did not run).
        ValueError: an unknown name in ``disable``.
    """
    disabled = _disabled(disable)
    workdir = tempfile.mkdtemp(prefix="nanosft_sandbox_")
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        out_path, err_path = os.path.join(workdir, "stdout"), os.path.join(workdir, "stderr")
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        cpu = int(timeout) + 1
        argv = [python or sys.executable, "-I", "-S", "-c", _BOOT, workdir, str(memory_bytes), str(cpu),
                str(disk_bytes), ",".join(disabled), "1" if allow_weak else "0"]
        timed_out = disk = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
            try:
                deadline, delay = time.monotonic() + timeout, 0.0005
                while proc.poll() is None:
                    now = time.monotonic()
                    if now >= deadline:
                        timed_out = True
                        break
                    if _over_disk_cap(workdir, disk_bytes + (1 << 20)):  # + program.py, stdout, stderr
                        disk = True
                        break
                    time.sleep(min(delay, deadline - now))
                    delay = min(2 * delay, 0.002)  # a writer fills ~1 MB/ms: poll often to stop it near the cap
            finally:
                # the child leads its own session: kill the group even if the leader already exited
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        status = _read_head(os.path.join(workdir, "status")).split("\n")
        layers = next((tuple(x for x in s[7:].split(",") if x) for s in status if s.startswith("layers ")), ())
        missing = tuple(s[8:] for s in status if s.startswith("missing "))
        if "refused" in status:
            raise WeakSandboxError(_refusal(missing))
        rc = proc.returncode
        stdout, stderr = _read_head(out_path), _read_head(err_path)
        memory = rc == EXIT_MEMORY
        success = rc == 0 and not timed_out and not disk
        if success:
            error = None
        elif timed_out:
            error = f"timed out after {timeout:g} s"
        elif disk:
            error = f"disk limit of {disk_bytes >> 20} MB or {MAX_FILES} files in the work dir exceeded"
        elif memory:
            error = f"memory limit of {memory_bytes >> 20} MB exceeded"
        else:
            last = [line for line in stderr.strip().splitlines() if line.strip()]
            error = last[-1] if last else f"exit status {rc}"
        return ExecutionResult(success, stdout, stderr, error, timed_out, memory, rc, layers, missing, disk)
    finally:
        _remove_tree(workdir)


def probe(python: str | None = None, disable=None) -> ExecutionResult:
    """One sandboxed run of ``pass`` (weak sandbox allowed): what ``execute_code`` gets on this host."""
    return execute_code("pass", timeout=10.0, python=python, allow_weak=True, disable=disable)


def isolation_report(python: str | None = None, disable=None) -> tuple:
    """The isolation layers ``execute_code`` obtains on this host, e.g. ``("netns", ..., "seccomp")``."""
    return probe(python, disable).layers


def is_weak(layers) -> bool:
    """Whether ``layers`` lack every kernel layer that confines writes (``STRONG_LAYERS``)."""
    return not set(layers) & set(STRONG_LAYERS)


@functools.cache
def _checked(python, disabled: tuple, allow_weak: bool) -> tuple:
    result = probe(python, disabled)
    logger.info(
        "code sandbox layers: %s%s", ",".join(result.layers) or "none",
        f" (not obtained: {'; '.join(result.missing)})" if result.missing else "",
    )
    if is_weak(result.layers) and not allow_weak:
        raise WeakSandboxError(_refusal(result.missing))
    if is_weak(result.layers):
        logger.warning("running model-written code in a weak sandbox (allow_weak_sandbox is set)")
    return result.layers


def require_isolation(allow_weak: bool = False, python: str | None = None, disable=None) -> tuple:
    """Probe the sandbox once per process (and arguments), log its layers, refuse a weak one.

    Evaluation calls this before generating anything, so a refusal costs seconds, not a whole run.

    Returns:
        the layers obtained (see ``ExecutionResult.layers``).

    Raises:
        WeakSandboxError: neither ``mountns_ro`` nor ``landlock`` and ``allow_weak`` is False.
    """
    return _checked(python, _disabled(disable), bool(allow_weak))


def execute_many(programs: list[str], max_workers: int = 4, **kwargs) -> list[ExecutionResult]:
    """``execute_code`` over many programs with a thread pool (each run is its own process).

    Returns:
        results in the order of ``programs``.

    Raises:
        WeakSandboxError: as ``execute_code``.
    """
    if not programs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(programs)))) as pool:
        return list(pool.map(lambda p: execute_code(p, **kwargs), programs))
