"""Compiled (numba) kernels that serve sparse integer codes; used by :mod:`.serve`.

* :func:`jit_kernels`: the generic kernels (any batch size), compiled once and cached on disk:
  per-layer ``csr_vec``/``csr_mat``/``csc``/``cols`` and the fused chains ``chain``
  (feature-major ``(in, B)`` -> ``(out, B)``) and ``chain_vec`` (one example).
* :func:`batch_chain`: the fused chain specialised to ONE batch size (batch-major
  ``(B, in)`` -> ``(B, out)``, transposes inside): with the batch loop's trip count a
  compile-time constant the loops unroll fully, and CSR rows add four non-zeros per pass over
  the batch. Compiled on first use per batch size (~2-3 s, not cached on disk: numba does not
  cache closures).

Layouts: CSR/CSC as ``(ptr, idx, val)`` concatenated over layers, ``meta`` rows per layer
(``kind, relu, out, in, ptr_offset, nz_offset, row_offset, dense_offset``; kinds 0 = CSR
rows, 1 = CSC columns, 2 = dense code columns), ``shift`` the background value skipped by the
column kinds, ``scale``/``bias`` per output row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # optional: compiled sparse kernels
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

_NO_NUMBA = ("the 'csr'/'csc'/'cols' serve kernels need the optional package numba "
             "(pip install numba)")


_GENERIC: dict[str, Any] = {}


def jit_kernels() -> dict[str, Any]:
    """Compile (once, cached on disk by numba) the numba kernels."""
    if numba is None:
        raise RuntimeError(_NO_NUMBA)
    if _GENERIC:
        return _GENERIC
    jit = numba.njit(cache=True, boundscheck=False, nogil=True)
    jit_fma = numba.njit(cache=True, boundscheck=False, nogil=True, fastmath={"contract"})

    @jit
    def _row_dot(k, end, idx, val, h):  # pragma: no cover - compiled
        """``sum_k val[k] * h[idx[k]]`` for 1-D ``h``, four partial sums (no add-latency
        chain)."""
        a0 = a1 = a2 = a3 = np.float32(0.0)
        while k + 4 <= end:
            a0 += np.float32(val[k]) * h[idx[k]]
            a1 += np.float32(val[k + 1]) * h[idx[k + 1]]
            a2 += np.float32(val[k + 2]) * h[idx[k + 2]]
            a3 += np.float32(val[k + 3]) * h[idx[k + 3]]
            k += 4
        while k < end:
            a0 += np.float32(val[k]) * h[idx[k]]
            k += 1
        return (a0 + a1) + (a2 + a3)

    @jit
    def _live(row, c):  # pragma: no cover - compiled
        """Whether some entry of the 1-D ``row`` differs from ``c`` (the column is visited)."""
        for b in range(row.shape[0]):  # noqa: SIM110 - a loop numba compiles, not a generator
            if row[b] != c:
                return True
        return False

    @jit
    def _csr_rows(y, ptr, idx, val, x, p0, z0):  # pragma: no cover - compiled
        """``y[r, :] += sum_k val[k] * x[idx[k], :]`` for every row (the batch loop
        vectorises; unrolling over two or four non-zeros gained only 5-11% in interleaved
        timing). ``p0``/``z0``: offsets of this layer in ``ptr`` and ``idx``/``val``."""
        for r in range(y.shape[0]):
            for k in range(z0 + ptr[p0 + r], z0 + ptr[p0 + r + 1]):
                w, j = np.float32(val[k]), idx[k]
                for b in range(x.shape[1]):
                    y[r, b] += w * x[j, b]

    @jit
    def _csc_cols(y, ptr, idx, val, x, c, p0, z0):  # pragma: no cover - compiled
        """``y[r, :] += val[k] * (x[j, :] - c)`` column by column, skipping the columns where
        every example equals ``c`` (zeros after a ReLU, or the background value)."""
        for j in range(x.shape[0]):
            if not _live(x[j], c):
                continue
            for k in range(z0 + ptr[p0 + j], z0 + ptr[p0 + j + 1]):
                w, r = np.float32(val[k]), idx[k]
                for b in range(x.shape[1]):
                    y[r, b] += w * (x[j, b] - c)

    @jit_fma
    def _cols_vec(n_out, dense, h, c, d0):  # pragma: no cover - compiled
        """1-D ``D (h - c)`` over the columns with ``h[j] != c``; ``D (n_out, in)`` is the
        dense code matrix stored column after column at ``dense[d0:]``. Allocates its
        output, so the compiler knows it aliases nothing and vectorises the row loop."""
        y = np.zeros(n_out, np.float32)
        for j in range(h.shape[0]):
            v = h[j] - c
            if v == 0:
                continue
            col = dense[d0 + j * n_out:d0 + (j + 1) * n_out]  # a slice: no index wraparound
            for r in range(n_out):                            # checks, so this vectorises
                y[r] += np.float32(col[r]) * v
        return y

    @jit_fma
    def _cols_mat(n_out, dense, x, c, d0):  # pragma: no cover - compiled
        """:func:`_cols_vec` for a batch ``x (in, B)`` -> ``(n_out, B)``: columns where every
        example equals ``c`` are skipped, and zero codes."""
        y = np.zeros((n_out, x.shape[1]), np.float32)
        for j in range(x.shape[0]):
            if not _live(x[j], c):
                continue
            col = dense[d0 + j * n_out:d0 + (j + 1) * n_out]
            for r in range(n_out):
                w = np.float32(col[r])
                if w != 0:
                    for b in range(x.shape[1]):
                        y[r, b] += w * (x[j, b] - c)
        return y

    @jit
    def _finish(y, scale, bias, r0, relu):  # pragma: no cover - compiled
        """In place: ``y[r, :] = y[r, :] * scale[r0 + r] + bias[r0 + r]``, then the ReLU."""
        for r in range(y.shape[0]):
            s, c = scale[r0 + r], bias[r0 + r]
            for b in range(y.shape[1]):
                v = y[r, b] * s + c
                y[r, b] = v if (v > 0 or not relu) else np.float32(0.0)
        return y

    @jit
    def csr_vec(ptr, idx, val, scale, bias, x, relu):  # pragma: no cover - compiled
        y = np.empty((ptr.size - 1, 1), np.float32)
        h = x[:, 0]
        for r in range(y.shape[0]):
            y[r, 0] = _row_dot(ptr[r], ptr[r + 1], idx, val, h)
        return _finish(y, scale, bias, 0, relu)

    @jit
    def csr_mat(ptr, idx, val, scale, bias, x, relu):  # pragma: no cover - compiled
        y = np.zeros((ptr.size - 1, x.shape[1]), np.float32)
        _csr_rows(y, ptr, idx, val, x, 0, 0)
        return _finish(y, scale, bias, 0, relu)

    @jit
    def csc_any(ptr, idx, val, scale, bias, x, relu):  # pragma: no cover - compiled
        y = np.zeros((bias.size, x.shape[1]), np.float32)
        _csc_cols(y, ptr, idx, val, x, np.float32(0.0), 0, 0)
        return _finish(y, scale, bias, 0, relu)

    @jit
    def cols_any(dense, scale, bias, x, relu):  # pragma: no cover - compiled
        if x.shape[1] == 1:
            y = _cols_vec(bias.size, dense, x[:, 0], np.float32(0.0), 0)
            return _finish(y.reshape((bias.size, 1)), scale, bias, 0, relu)
        return _finish(_cols_mat(bias.size, dense, x, np.float32(0.0), 0), scale, bias, 0,
                       relu)

    @jit
    def chain(meta, shift, ptr, idx, val, dense, scale, bias, x):  # pragma: no cover
        """Every layer in one call, feature-major ``x (in, B)``; ``meta`` rows (one per
        layer) hold :data:`_META` fields; kinds: 0 = CSR rows, 1 = CSC columns, 2 = dense
        code columns (both column kinds skip inputs equal to ``shift``)."""
        h = x
        for layer in range(meta.shape[0]):
            kind, relu, n_out = meta[layer, 0], meta[layer, 1] != 0, meta[layer, 2]
            p0, z0 = meta[layer, 4], meta[layer, 5]
            if kind == 2:
                y = _cols_mat(n_out, dense, h, shift[layer], meta[layer, 7])
            else:
                y = np.zeros((n_out, x.shape[1]), np.float32)
                if kind == 0:
                    _csr_rows(y, ptr, idx, val, h, p0, z0)
                else:
                    _csc_cols(y, ptr, idx, val, h, shift[layer], p0, z0)
            h = _finish(y, scale, bias, meta[layer, 6], relu)
        return h

    @jit
    def chain_vec(meta, shift, ptr, idx, val, dense, scale, bias, x):  # pragma: no cover
        """:func:`chain` for one example ``x (in,)``, returning ``(1, out)``: every
        activation is 1-D, CSR rows use four partial sums (no per-batch loops)."""
        h = x
        for layer in range(meta.shape[0]):
            kind, relu, n_out = meta[layer, 0], meta[layer, 1] != 0, meta[layer, 2]
            p0, z0 = meta[layer, 4], meta[layer, 5]
            if kind == 2:
                y = _cols_vec(n_out, dense, h, shift[layer], meta[layer, 7])
            else:
                y = np.zeros(n_out, np.float32)
            if kind == 0:
                for r in range(n_out):
                    y[r] = _row_dot(z0 + ptr[p0 + r], z0 + ptr[p0 + r + 1], idx, val, h)
            elif kind == 1:
                c = shift[layer]
                for j in range(meta[layer, 3]):
                    v = h[j] - c
                    if v == 0:
                        continue
                    for k in range(z0 + ptr[p0 + j], z0 + ptr[p0 + j + 1]):
                        y[idx[k]] += np.float32(val[k]) * v
            _finish(y.reshape((n_out, 1)), scale, bias, meta[layer, 6], relu)
            h = y
        return h.reshape((1, h.size))

    _GENERIC.update(csr_vec=csr_vec, csr_mat=csr_mat, csc=csc_any, cols=cols_any, chain=chain,
                    chain_vec=chain_vec, cols_mat=_cols_mat, finish=_finish, live=_live)
    return _GENERIC


_BATCH: dict[int, Any] = {}


def batch_chain(batch: int) -> Any:
    """The fused chain for exactly ``batch`` examples: ``f(meta, shift, ptr, idx, val, dense,
    scale, bias, x)`` with batch-major ``x (batch, in)`` float32 -> ``(batch, out)``.
    Same arithmetic as ``jit_kernels()["chain"]`` except that CSR rows sum four products
    before adding them (float32 rounding order differs, ~1e-7 relative)."""
    if numba is None:
        raise RuntimeError(_NO_NUMBA)
    if batch in _BATCH:
        return _BATCH[batch]
    generic = jit_kernels()
    jit = numba.njit(boundscheck=False, nogil=True)
    n = int(batch)

    @jit
    def rows4(y, ptr, idx, val, x, p0, z0):  # pragma: no cover - compiled
        for r in range(y.shape[0]):
            yr = y[r]
            k, end = z0 + ptr[p0 + r], z0 + ptr[p0 + r + 1]
            while k + 4 <= end:
                w0, w1 = np.float32(val[k]), np.float32(val[k + 1])
                w2, w3 = np.float32(val[k + 2]), np.float32(val[k + 3])
                x0, x1, x2, x3 = x[idx[k]], x[idx[k + 1]], x[idx[k + 2]], x[idx[k + 3]]
                for b in range(n):
                    yr[b] += (w0 * x0[b] + w1 * x1[b]) + (w2 * x2[b] + w3 * x3[b])
                k += 4
            while k < end:
                w, xj = np.float32(val[k]), x[idx[k]]
                for b in range(n):
                    yr[b] += w * xj[b]
                k += 1

    @jit
    def columns(y, ptr, idx, val, x, c, p0, z0):  # pragma: no cover - compiled
        for j in range(x.shape[0]):
            xj = x[j]
            if not live(xj, c):
                continue
            for k in range(z0 + ptr[p0 + j], z0 + ptr[p0 + j + 1]):
                w, yr = np.float32(val[k]), y[idx[k]]
                for b in range(n):
                    yr[b] += w * (xj[b] - c)

    cols_mat, finish, live = generic["cols_mat"], generic["finish"], generic["live"]

    @jit
    def chain(meta, shift, ptr, idx, val, dense, scale, bias, x):  # pragma: no cover
        h = np.ascontiguousarray(x.T)
        for layer in range(meta.shape[0]):
            kind, relu, n_out = meta[layer, 0], meta[layer, 1] != 0, meta[layer, 2]
            p0, z0 = meta[layer, 4], meta[layer, 5]
            if kind == 2:
                y = cols_mat(n_out, dense, h, shift[layer], meta[layer, 7])
            else:
                y = np.zeros((n_out, n), np.float32)
                if kind == 0:
                    rows4(y, ptr, idx, val, h, p0, z0)
                else:
                    columns(y, ptr, idx, val, h, shift[layer], p0, z0)
            h = finish(y, scale, bias, meta[layer, 6], relu)
        return np.ascontiguousarray(h.T)

    _BATCH[batch] = chain
    return chain
