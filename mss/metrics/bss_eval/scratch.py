"""Working memory and the other machine-specific choices of the BSS Eval v4 passes, in one place.

None of them changes a number; they are what makes the passes fast on a small (virtual) CPU machine:

* **One reservation for all buffers** (:class:`Scratch`): each pass takes its buffers from the start of one
  allocation and reuses them chunk after chunk, so it touches pages that earlier passes (and chunks) already touched
  instead of page-faulting fresh ones (a first touch costs 2-5 µs per 4 KiB page on a virtual machine: 10-30 % of a
  30 s track's time when every pass and chunk had buffers of its own). The reservation is virtual: only touched pages
  become resident, so it is sized for the largest pass (the Gram matrix's factor) at no cost to the others. Big
  host arrays for numpy/LAPACK are allocated by torch (:func:`host_array`): numpy madvises big arrays for transparent
  huge pages, whose first touch can stall in memory compaction (~0.3 s for a 4096² factor).
* **Chunk budgets** (:func:`chunk_size`): the correlation pass takes blocks :data:`CHUNK_BYTES` at a time; the
  frame-wise passes :data:`STREAM_BYTES` at a time, small enough that their temporaries stay in cache.
* **Threads** (:func:`single_threaded_blas`): the block Schur recursion is ``lags`` steps of small products, for which
  BLAS threads cost more in wake-ups than they save (and stall badly when other processes share the cores).
  How many threads the passes get in all (torch's pool and BLAS, from the cores free at the call) and the OpenMP
  wait policy are :mod:`mss.platform.threads`' (``bss_eval_v4`` runs under its ``thread_budget``).
* **FFTs into their destination** (:func:`rfft_into`): on CPU the float64 real FFTs go through numpy's pocketfft,
  whose ``out=`` takes any strided view: the spectra land directly in the layout of the products that follow, and a
  frame is transformed straight from a view of the signal (the zero padding is the FFT's). torch's CPU FFT into a
  contiguous buffer plus the transposing copy took 5-7x as long (the correlation pass's chunks on a 2-core VM).
  numpy's FFT is single-threaded but releases the GIL: the batch is split over torch's thread budget's count of
  Python threads.
* **LAPACK directly**: on CPU the dense Cholesky factor is computed in the Gram matrix's own storage by ``potrf`` on
  its column-major view (:func:`cholesky_in_place`; torch's ``cholesky_ex(out=)`` allocates a second matrix), and
  LU solves go through numpy's ``gesv``, what museval calls (:func:`lu_solve`; torch 2.13's CPU batched LU fails after
  ``torch.set_num_threads``). Elsewhere (CUDA) both are plain torch.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import threadpool_limits

__all__ = [
    "CHUNK_BYTES",
    "STREAM_BYTES",
    "Scratch",
    "cholesky_in_place",
    "chunk_size",
    "host_array",
    "lu_solve",
    "rfft_into",
    "single_threaded_blas",
]

CHUNK_BYTES = 32 * 2**20  # working-memory budget of one chunk of correlation blocks
STREAM_BYTES = 8 * 2**20  # chunk budget of the frame-wise passes


def chunk_size(per_item_bytes: float, total: int, chunk: int | None, budget: int = CHUNK_BYTES) -> int:
    """How many of ``total`` items to process at once: ``chunk`` when given, else as many as fit in ``budget``
    bytes at ``per_item_bytes`` each (at least 1, at most ``total``)."""
    if chunk is not None:
        return max(1, min(total, int(chunk)))
    return max(1, min(total, int(budget // max(per_item_bytes, 1))))


class Scratch:
    """Working memory shared by the passes of one evaluation (see the module docstring).

    Each pass takes its buffers from the start of the reservation (:meth:`take` after :meth:`reset`). A buffer that
    does not fit is allocated on its own.
    """

    def __init__(self, nbytes: int, device: torch.device | str):
        self.memory = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self.offset = 0

    def reset(self) -> Scratch:
        """Start a new pass: the previous passes' buffers are dead."""
        self.offset = 0
        return self

    def take(self, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """An uninitialised contiguous ``shape`` buffer."""
        nbytes = math.prod(shape) * dtype.itemsize
        start = -(-self.offset // 64) * 64
        if start + nbytes > self.memory.numel():
            return torch.empty(shape, dtype=dtype, device=self.memory.device)
        self.offset = start + nbytes
        return self.memory[start:start + nbytes].view(dtype).view(shape)


def host_array(*shape: int) -> np.ndarray:
    """An uninitialised float64 numpy array in host memory allocated by torch (no transparent huge pages)."""
    return torch.empty(*shape, dtype=torch.float64).numpy()


def single_threaded_blas():
    """Context manager: BLAS runs on one thread inside it."""
    return threadpool_limits(1, user_api="blas")


def cholesky_in_place(gram: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Lower Cholesky factor of the symmetric ``gram`` in its own storage (it is overwritten) and whether the matrix
    was positive definite."""
    if gram.device.type == "cpu" and gram.dtype == torch.float64 and gram.is_contiguous():
        from scipy.linalg import lapack

        _, info = lapack.dpotrf(gram.numpy().T, lower=1, clean=0, overwrite_a=1)
        return gram.mT, info == 0
    chol, info = torch.linalg.cholesky_ex(gram, out=(gram, torch.empty((), dtype=torch.int32, device=gram.device)))
    return chol, int(info) == 0


def lu_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``solve(a, b)`` by LU; on CPU, when ``a`` is singular, by museval's least-squares fallback (matrix by matrix)."""
    if a.device.type == "cpu":
        an, bn = a.numpy(), b.numpy()
        try:
            return torch.from_numpy(np.linalg.solve(an, bn))
        except np.linalg.LinAlgError:
            return torch.from_numpy(np.stack([np.linalg.lstsq(m, r, rcond=None)[0] for m, r in
                                              zip(an.reshape(-1, *an.shape[-2:]), bn.reshape(-1, *bn.shape[-2:]))
                                              ]).reshape(bn.shape))
    return torch.linalg.solve(a, b)


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` threads (created on first use; per process id: a forked child has none of
    its parent's threads, so a pool inherited from the parent would never run a task)."""
    key = (os.getpid(), threads)
    if key not in _pools:
        _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix="mss-fft")
    return _pools[key]


def _split(n: int, parts: int, task) -> None:
    """``task(start, stop)`` over ``parts`` slices of ``range(n)`` on the pool (in this thread when one part)."""
    parts = max(1, min(parts, n))
    if parts == 1:
        task(0, n)
        return
    bounds = np.linspace(0, n, parts + 1).astype(int)
    list(_pool(parts).map(lambda i: task(bounds[i], bounds[i + 1]), range(parts)))


def rfft_into(x: torch.Tensor, out: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """``out[...] = rfft(x, n)`` along the last axis (``x`` zero-padded or cut to ``n`` points), computed in the
    precision of ``out``; ``x`` and ``out`` may be any strided views. Returns ``out``."""
    if out.device.type == "cpu" and out.dtype == torch.complex128 and x.dtype in (torch.float64, torch.float32):
        xs, outs = x.numpy(), out.numpy()
        if xs.ndim == 1:
            xs, outs = xs[None], outs[None]
        # float32 input: cast exactly, float64 transform; numpy's FFT is single-threaded but releases the GIL
        _split(len(xs), torch.get_num_threads(), lambda i, j: np.fft.rfft(xs[i:j], n=n, axis=-1, out=outs[i:j]))
        return out
    return out.copy_(torch.fft.rfft(x.to(torch.float64) if out.dtype == torch.complex128 else x, n=n))
