"""Build, cache and load the C selective-scan kernel (``csrc/selective_scan.c``).

The kernel is plain C without torch headers, so compiling it takes about a second and
needs only a C compiler; it is built on first use instead of at install time, which keeps
the package a pure-Python wheel.  Builds are cached per (source, flags, compiler, machine)
hash and published with an atomic rename, so concurrent processes never load a half-written
library and never need a lock: at worst two of them compile the same file once each.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_path

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan.c"
LIB_NAME = "libvideomap_selective_scan.so"
ABI_VERSION = 2

# Tried in order; later entries drop options the compiler or machine may not support.
# -ffast-math is deliberately absent: the kernel relies on IEEE inf/NaN behaviour.
_BASE_FLAGS = ["-O3", "-fPIC", "-shared", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math"]
_FLAG_SETS = [
    _BASE_FLAGS + ["-march=native", "-fopenmp"],
    _BASE_FLAGS + ["-fopenmp"],
    _BASE_FLAGS,
]


class KernelUnavailable(RuntimeError):
    """The C kernel could not be compiled or loaded (the caller falls back to PyTorch)."""


@dataclass
class KernelLib:
    """A loaded kernel library and how it was obtained."""

    lib: ctypes.CDLL
    path: Path
    flags: list[str]
    compiled: bool  # True when this load ran the compiler, False when it reused the cache
    chunk: int


_lock = threading.Lock()
_cached: KernelLib | None = None
_error: str | None = None


def kernel_disabled() -> bool:
    """``VIDEOMAP_DISABLE_KERNEL=1`` forces the pure-PyTorch path (read on every call)."""
    return os.environ.get("VIDEOMAP_DISABLE_KERNEL", "").strip().lower() not in ("", "0", "false", "no")


def find_compiler() -> str | None:
    """The C compiler to use: ``$CC`` if set, else gcc, else cc."""
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


def cache_root() -> Path:
    """``$VIDEOMAP_CACHE_DIR`` if set, else ``~/.cache/videomap/kernels``."""
    env = os.environ.get("VIDEOMAP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "videomap" / "kernels"


def _compiler_id(cc: str) -> str:
    try:
        res = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
        first = res.stdout.splitlines()[0] if res.stdout else ""
        res = subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True, timeout=60)
        return f"{cc}|{first}|{res.stdout.strip()}"
    except (OSError, subprocess.SubprocessError, IndexError):
        return cc


def _machine_id() -> str:
    # -march=native output depends on the CPU, so the CPU model and flags are part of the key.
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    parts.append(line.strip())
                if len(parts) >= 4:
                    break
    except OSError:
        pass
    return "|".join(parts)


def _build_key(source: bytes, flags: list[str], cc_id: str) -> str:
    h = hashlib.sha256()
    for item in (source, " ".join(flags).encode(), cc_id.encode(), _machine_id().encode()):
        h.update(item)
        h.update(b"\0")
    return h.hexdigest()[:24]


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.vm_scan_abi_version() != ABI_VERSION:
        raise OSError(f"kernel ABI mismatch in {path}")
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.vm_scan_fwd.restype = i32
    lib.vm_scan_fwd.argtypes = [p, p, p, p, p, p, p, p, i32, i64, i64, i64, i64, p, p, p, i32]
    lib.vm_scan_fwd_bf16.restype = i32
    lib.vm_scan_fwd_bf16.argtypes = lib.vm_scan_fwd.argtypes
    lib.vm_scan_bwd.restype = i32
    lib.vm_scan_bwd.argtypes = [p, p, p, p, p, p, p, p, i32, i64, i64, i64, i64, p, p, p,
                                p, p, p, p, p, p, p, p, i32]
    lib.vm_scan_chunk.restype = i32
    lib.vm_conv_silu.restype = i32
    lib.vm_conv_silu.argtypes = [p, p, p, i64, i64, i64, i32, p, i32, i32, i32]
    return lib


def _compile(cc: str, flags: list[str], src: Path, dest: Path) -> None:
    """Compile into a private temp file next to ``dest`` and publish it with an atomic rename."""
    with atomic_path(dest) as tmp:
        res = subprocess.run([cc, *flags, str(src), "-o", str(tmp), "-lm"],
                             capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise KernelUnavailable(f"{Path(cc).name} failed: {res.stderr.strip()[-2000:]}")


def _tmp_root() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"videomap-kernels-{uid}"


def _build_in(root: Path, cc: str, cc_id: str, source: Path, src_bytes: bytes, lib_name: str) -> KernelLib:
    """Reuse or build under one cache root; raises KernelUnavailable (compiler) or OSError (files)."""
    compile_errors: list[str] = []
    for flags in _FLAG_SETS:
        dest = root / _build_key(src_bytes, flags, cc_id) / lib_name
        # A cached file is reused as is; if it does not load (truncated by a crash, foreign ABI),
        # it is rebuilt under a fresh temp name and renamed over: no lock is needed because the
        # final name only ever points at a complete file.
        for attempt in range(2):
            try:
                compiled = False
                if attempt > 0 or not dest.exists():
                    _compile(cc, flags, source, dest)
                    compiled = True
                lib = _bind(dest)
            except KernelUnavailable as exc:  # these flags do not compile here: try simpler ones
                compile_errors.append(str(exc))
                break
            except OSError:
                if attempt > 0:
                    raise
                continue
            return KernelLib(lib=lib, path=dest, flags=flags, compiled=compiled, chunk=int(lib.vm_scan_chunk()))
    raise KernelUnavailable("; ".join(compile_errors[-2:]))


def build(cache_dir: str | os.PathLike | None = None, source: Path = SOURCE, lib_name: str = LIB_NAME) -> KernelLib:
    """Compile (or reuse from the cache) and load the kernel; raises KernelUnavailable.

    Without ``cache_dir`` the cache root is ``cache_root()``, with a per-user temp directory as
    a second choice when that one is not writable. ``source``/``lib_name``: another library
    built around the kernel (the onnxruntime operator includes ``selective_scan.c``, so every C
    file beside the kernel is part of the cache key).
    """
    cc = find_compiler()
    if cc is None:
        raise KernelUnavailable("no C compiler found (set $CC or install gcc)")
    src_bytes = source.read_bytes() + b"".join(p.read_bytes() for p in sorted(SOURCE.parent.glob("*.c"))
                                                if p != source)
    cc_id = _compiler_id(cc)
    roots = [Path(cache_dir)] if cache_dir is not None else [cache_root(), _tmp_root()]
    errors: list[str] = []
    for root in roots:
        try:
            return _build_in(root, cc, cc_id, source, src_bytes, lib_name)
        except OSError as exc:  # unwritable cache, unloadable library: try the next root
            errors.append(f"{root}: {exc}")
    raise KernelUnavailable("; ".join(errors))


def get_kernel() -> KernelLib | None:
    """The process-wide kernel, built on first call; None (after one warning) if unavailable."""
    global _cached, _error
    if _cached is not None or _error is not None:
        return _cached
    with _lock:
        if _cached is None and _error is None:
            try:
                _cached = build()
                logger.debug("selective_scan kernel %s (%s)", _cached.path,
                             "compiled" if _cached.compiled else "cached")
            except (KernelUnavailable, OSError) as exc:
                _error = str(exc)
                logger.warning("videomap.ops: C selective-scan kernel unavailable, using the PyTorch "
                               "path (slower): %s", _error)
    return _cached


def kernel_error() -> str | None:
    """Why the kernel is unavailable, if get_kernel() failed."""
    return _error
