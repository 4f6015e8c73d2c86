"""Process-wide settings that keep a CPU run fast alone and fair when the machine is shared.

Importing :mod:`rl_maml` sets the first; the command line also sets the second:

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
  ``torch``, or set the variable in the shell. Training warns once when it could not be set
  (:func:`warn_if_openmp_spins`).
* **glibc's allocator.** Blocks above glibc's mmap threshold (128 kB at first, 32 MiB at most)
  are mapped fresh and returned to the system when freed, so every large tensor page-faults on
  first touch, every time. A meta-RL batch under a step budget is large (AntDir: 40 tasks x
  8,000 steps, tensors of 130 MB and more), and building the closed-form curvature's state for
  one meta-step took 4.4 s there, 3 s of it in the kernel (1.08 million faults), against 0.8 s
  with no fault. :func:`tune_allocator` serves every block from the heap (``M_MMAP_MAX`` 0), which
  is never trimmed: freed memory is reused, so after the first iteration nothing faults. The
  cost is memory: the process keeps its peak heap, with some fragmentation, until it exits
  (AntDir's training held a steady 7.1 GB where glibc's default peaked at 4.5 GB; set
  ``RL_MAML_TUNE_MALLOC=0`` where memory is short). The command line (``rl-maml``),
  whose runs are long and own the machine, turns it on; importing :mod:`rl_maml` does not.
  ``RL_MAML_TUNE_MALLOC=1`` turns it on anywhere, ``RL_MAML_TUNE_MALLOC=0`` off everywhere.
  Glibc only; glibc's own ``MALLOC_*_`` variables, when set, are respected instead.

Neither setting changes a single number a run computes.

:func:`torch_threads` sets torch's intra-op thread count for one block: the meta-RL training and
evaluation step MuJoCo with one torch thread (MuJoCo's own threads use the cores) and run the
batch computations (baseline fits, inner updates, the meta-step) on all cores.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from contextlib import contextmanager
from functools import cache

SPINCOUNT = "10000"
"""``GOMP_SPINCOUNT`` set when the user set no wait policy."""

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
NEVER_TRIM = -1  # mallopt(M_TRIM_THRESHOLD, -1) disables trimming (mallopt(3))
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


def tune_allocator(default: bool = False) -> bool:
    """Serve large blocks from a heap that is never trimmed, so freed tensors are reused instead of
    unmapped and faulted in again (glibc only; see the module docstring). ``RL_MAML_TUNE_MALLOC``
    (``1``/``0``) overrides ``default``. Returns whether the settings were applied."""
    choice = os.environ.get("RL_MAML_TUNE_MALLOC") or None
    if choice not in (None, "0", "1"):
        raise ValueError(f"RL_MAML_TUNE_MALLOC must be 0 or 1, got {choice!r}")
    if not (default if choice is None else choice == "1") or not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                                     "MALLOC_TOP_PAD_")):
        return False  # the user tuned glibc already
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, NEVER_TRIM),
                                               (_M_TOP_PAD, TOP_PAD)))


def apply(tune_malloc: bool = False) -> dict[str, object]:
    """Both settings, once per process (the allocator's when ``tune_malloc`` is first true, or
    ``RL_MAML_TUNE_MALLOC=1``); returns what was done (recorded in a run's config header)."""
    if not _applied:
        _applied["GOMP_SPINCOUNT"] = configure_openmp_wait() or os.environ.get("GOMP_SPINCOUNT")
        _applied["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    if not _applied.get("malloc_tuned"):
        _applied["malloc_tuned"] = tune_allocator(default=tune_malloc)
    return dict(_applied)


_warned_spin = False


def warn_if_openmp_spins() -> str | None:
    """Warn once per process when OpenMP's default spinning is in force because torch was loaded
    before :mod:`rl_maml` and no wait policy was chosen (Linux, GNU libgomp); returns the message.

    The trap is easy to fall into (``import torch`` first is the habit) and costly on a shared
    machine: the 2D navigation meta-step with bfloat16 products took 0.85 s alone, 2.5 s beside a
    running AntDir training with ``rl_maml`` imported first, and 17.9 s beside it with ``torch``
    imported first (one measurement each, on a 2-core CPU). Choosing a policy yourself, any
    policy, silences it."""
    global _warned_spin
    if _warned_spin or not sys.platform.startswith("linux"):
        return None
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return None
    try:  # GNU libgomp (PyPI's torch): other OpenMP runtimes ignore GOMP_SPINCOUNT
        with open("/proc/self/maps") as maps:
            if "libgomp" not in maps.read():
                return None
    except OSError:
        return None
    _warned_spin = True
    message = ("torch was imported before rl_maml, so OpenMP's threads keep its default long spinning: beside other "
               "busy processes this run can be several times slower (beside a running training, 2D navigation's "
               "meta-step took 17.9 s this way against 2.5 s with rl_maml's setting). Import rl_maml before torch, "
               "or export "
               f"GOMP_SPINCOUNT={SPINCOUNT} before starting Python; to keep libgomp's default and silence this, "
               "export GOMP_SPINCOUNT=300000.")
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=_caller_stacklevel())
    return message


@cache
def cpu_multiplies_bfloat16() -> bool | None:
    """Whether this CPU multiplies bfloat16 matrices in hardware (x86: AVX512-BF16 or AMX tiles);
    ``None`` where torch cannot tell (other architectures, or a torch without the probes). Probed
    once per process: every bfloat16 meta-step asks.

    Without such units torch's bfloat16 matrix products are emulated: on a 2-core AVX2-only CPU a
    ``bmm`` of a 2x100 policy's shapes for 40 tasks ([40, 2000, 100] x [40, 100, 100]) ran at
    1.9 GFLOP/s in bfloat16 against 27.7 in float32, where a CPU with AMX ran bfloat16 faster than
    float32."""
    import platform

    import torch

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(p is None for p in probes):
        return None
    return bool(probes[0]() or probes[1]())


_warned_bfloat16 = False


def warn_if_bfloat16_is_emulated(device) -> str | None:
    """Warn once per process when bfloat16 Fisher-vector products (``trpo.fvp_dtype=bfloat16``) are
    to run on a CPU without bfloat16 matrix units (:func:`cpu_multiplies_bfloat16`), where they are
    many times slower than float32; returns the message."""
    global _warned_bfloat16
    if _warned_bfloat16 or getattr(device, "type", device) != "cpu" or cpu_multiplies_bfloat16() is not False:
        return None
    _warned_bfloat16 = True
    message = ("trpo.fvp_dtype=bfloat16, but this CPU has no bfloat16 matrix units (neither AVX512-BF16 nor AMX), so "
               "torch emulates them: the Fisher-vector products run many times slower than in float32 (a bmm of a "
               "2x100 policy's shapes for 40 tasks ran 15x slower on an AVX2-only CPU). Set trpo.fvp_dtype=same; "
               "a run started with bfloat16 may switch on --resume (rl-maml train --run-dir RUN --resume "
               "trpo.fvp_dtype=same).")
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=_caller_stacklevel())
    return message


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised by this module's caller at the first frame
    outside the ``rl_maml`` package (the user's script), so that the warning names the line that
    started the work rather than a line of the library."""
    import inspect

    frame = inspect.currentframe().f_back  # the function that warns
    level = 1
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name != "rl_maml" and not name.startswith("rl_maml."):
            return level
        frame = frame.f_back
        level += 1
    return 2


@contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` torch intra-op threads, then restore the previous count
    (``None``: leave the count as it is)."""
    import torch  # after rl_maml has set OpenMP's wait policy

    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    if count < 1:
        raise ValueError(f"torch_threads needs a count >= 1, got {count}")
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
