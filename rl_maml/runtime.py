"""Process-wide settings that keep a CPU run fast alone and fair when the machine is shared.

Importing :mod:`rl_maml` sets the first; the second is an opt-in:

* **OpenMP's wait policy.** PyTorch's CPU threads (OpenMP, GNU libgomp in the PyPI wheels)
  spin for a long time at the end of every parallel region before they sleep. Alone, that saves
  a wake-up; beside other busy processes the spinning thread burns the time slice its partner
  needs to reach the barrier, and every small operation waits for a descheduled thread. With one
  busy process beside it, a HalfCheetahVel iteration took 2.68x its time alone with libgomp's
  default; ``GOMP_SPINCOUNT=10000`` (spin briefly, then sleep) brings that to 1.93x and costs
  little alone (2D navigation: sampling 0.17 -> 0.21 s, meta-step 1.49 -> 1.55 s)
  (docs/performance.md has both). Set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` yourself to
  choose otherwise (``OMP_WAIT_POLICY=PASSIVE`` is fairer still, and slower alone for small
  operations). OpenMP reads these once, when torch is loaded: import :mod:`rl_maml` before
  ``torch``, or set the variable in the shell.
* **glibc's allocator.** Tensors above glibc's mmap threshold (128 kB at first) are mapped
  fresh and returned to the system when freed, so each new one page-faults on first touch; the
  autograd Fisher-vector product spent about a third of its time in the kernel that way (154,000
  faults per product on HalfCheetahVel, 0.96 s a product against 0.60 s without them).
  :func:`tune_allocator` raises the threshold to its maximum (32 MiB) and keeps freed memory for
  reuse (trim threshold 1 GiB). It is off unless ``RL_MAML_TUNE_MALLOC=1``: the closed-form
  products that the meta-step uses by default allocate little and gained about 4% from it, and
  it keeps up to 1 GiB of freed memory in the process. Glibc only; glibc's own ``MALLOC_*_``
  variables, when set, are respected instead.

Neither setting changes a single number a run computes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

SPINCOUNT = "10000"
"""``GOMP_SPINCOUNT`` set when the user set no wait policy."""

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit systems
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 * 1024 * 1024

_applied: dict[str, object] = {}


def configure_openmp_wait(environ: dict | None = None) -> str | None:
    """Set ``GOMP_SPINCOUNT`` unless a wait policy is already chosen; returns the value set, or
    ``None`` if the user chose (or torch was loaded before, when it has no effect)."""
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return None
    if environ is os.environ and "torch" in sys.modules:
        return None  # OpenMP has read its settings already; setting it now would only mislead
    environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return SPINCOUNT


def tune_allocator() -> bool:
    """Keep large freed blocks for reuse instead of unmapping them (glibc only; see the module
    docstring). Returns whether the settings were applied."""
    if os.environ.get("RL_MAML_TUNE_MALLOC", "0") != "1" or not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")):
        return False  # the user tuned glibc already
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                               (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))


def apply() -> dict[str, object]:
    """Both settings, once per process; returns what was done (recorded in a run's config header)."""
    if not _applied:
        _applied["GOMP_SPINCOUNT"] = configure_openmp_wait() or os.environ.get("GOMP_SPINCOUNT")
        _applied["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
        _applied["malloc_tuned"] = tune_allocator()
    return dict(_applied)
