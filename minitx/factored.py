"""A low-rank matrix kept as the product of its two factors, and the composition score built on it.

    M = FactoredMatrix(A, B)       # A [..., m, r] @ B [..., r, n], never multiplied out
    M.AB                           # the dense [..., m, n] product, only when asked for
    M.norm(), M.eigenvalues, M.svd()    # computed through r x r cores
    M[layer, head], M.T, M @ X, X @ M, M @ N

Every weight circuit of a transformer is such a product: W_Q W_Kᵀ and W_V W_O are [d_model, d_model]
of rank d_head, and E W_V W_O W_U is [d_vocab, d_vocab] of rank d_head. Kept factored, each question
about them costs O((m + n) r²) instead of O(m n r), and a d_vocab x d_vocab matrix is never built.

The names follow TransformerLens's `FactoredMatrix` (A, B, AB, BA, T, ldim, mdim, rdim, U, S, V,
eigenvalues, norm, pair), so code written for it ports. One difference: `svd()` returns (U, S, Vh)
as `torch.linalg.svd` does, with M = U diag(S) Vh; `V` is Vhᵀ (TransformerLens's `svd()` returns V,
and its deprecated `.Vh` also returns V).

The factored-product facts used here are those of docs/methods.md §10.1: with A = Q_A R_A and
Bᵀ = Q_B R_B (reduced QR), AB = Q_A (R_A R_Bᵀ) Q_Bᵀ, so the Frobenius norm, the singular values and
the singular vectors of AB come from the r x r core R_A R_Bᵀ; the non-zero eigenvalues of AB are
those of BA [r, r]. Reference: Elhage et al. 2021, "A Mathematical Framework for Transformer
Circuits"; TransformerLens `FactoredMatrix` and `utilities.matrix.composition_scores`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _for_linalg(x: Tensor) -> Tensor:
    # torch.linalg has no 16-bit QR, SVD or eig kernels.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _broadcast(a: tuple, b: tuple) -> torch.Size:
    """Broadcast two shapes (torch.broadcast_shapes costs a second of imports on first use)."""
    a, b = (1,) * (len(b) - len(a)) + tuple(a), (1,) * (len(a) - len(b)) + tuple(b)
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        raise ValueError(f"the leading axes of A {a} and B {b} do not broadcast")
    return torch.Size(max(x, y) if 1 in (x, y) else x for x, y in zip(a, b))


class FactoredMatrix:
    """The matrix A @ B [..., ldim, rdim] with inner size mdim, stored as A [..., ldim, mdim] and B [..., mdim, rdim].
    Leading axes of A and B broadcast against each other (as views: no copy)."""

    def __init__(self, A: Tensor, B: Tensor):
        if A.dim() < 2 or B.dim() < 2:
            raise ValueError(f"A and B must be matrices (or stacks of them), got shapes {tuple(A.shape)} and "
                             f"{tuple(B.shape)}")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"A [..., m, r] and B [..., r, n] must share r: got A {tuple(A.shape)}, B {tuple(B.shape)}")
        lead = _broadcast(A.shape[:-2], B.shape[:-2])
        self.A = A.broadcast_to(*lead, *A.shape[-2:])
        self.B = B.broadcast_to(*lead, *B.shape[-2:])
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        self.shape = torch.Size((*lead, self.ldim, self.rdim))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def pair(self) -> tuple[Tensor, Tensor]:
        return self.A, self.B

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, inner={self.mdim}, dtype={self.A.dtype})"

    # -- dense forms, on request -------------------------------------------------------------------
    @property
    def AB(self) -> Tensor:  # [..., ldim, rdim]: the product itself; large when ldim and rdim are
        return self.A @ self.B

    @property
    def BA(self) -> Tensor:  # [..., mdim, mdim]: same non-zero eigenvalues as AB (needs ldim == rdim)
        if self.ldim != self.rdim:
            raise ValueError(f"BA needs a square matrix; this one is {self.ldim} x {self.rdim}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    # -- products: the result stays factored, with the smaller inner size -------------------------
    def __matmul__(self, other):
        rows = other.ldim if isinstance(other, FactoredMatrix) else other.shape[0 if other.dim() == 1 else -2]
        if rows != self.rdim:
            raise ValueError(f"cannot multiply a FactoredMatrix of shape {tuple(self.shape)} by {tuple(other.shape)}: "
                             f"the right side needs {self.rdim} rows")
        if isinstance(other, FactoredMatrix):  # (A1 B1)(A2 B2): keep the narrower of the two inner sizes
            middle = self.B @ other.A  # [..., r1, r2]
            if self.mdim <= other.mdim:
                return FactoredMatrix(self.A, middle @ other.B)
            return FactoredMatrix(self.A @ middle, other.B)
        if other.dim() == 1:  # a vector: [..., rdim] -> [..., ldim]
            return self.A @ (self.B @ other)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other):  # other @ self, other a tensor [..., k, ldim] or a vector [ldim]
        if other.shape[-1] != self.ldim:
            raise ValueError(f"cannot multiply {tuple(other.shape)} by a FactoredMatrix of shape {tuple(self.shape)}: "
                             f"the left side needs {self.ldim} columns")
        if other.dim() == 1:
            return (other @ self.A) @ self.B
        return FactoredMatrix(other @ self.A, self.B)

    def __mul__(self, scalar) -> FactoredMatrix:
        if isinstance(scalar, Tensor) and scalar.numel() != 1:
            raise ValueError(f"* multiplies by a scalar; got a tensor of shape {tuple(scalar.shape)} "
                             "(use @ for products)")
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __neg__(self) -> FactoredMatrix:
        return self * -1

    # -- indexing ----------------------------------------------------------------------------------
    def __getitem__(self, index) -> FactoredMatrix:
        """Leading axes index as a tensor's would; up to two more entries select rows (of A) and columns
        (of B). An integer row or column keeps its axis (length 1), so the result is still a matrix."""
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            at = next(k for k, i in enumerate(index) if i is Ellipsis)
            fill = (slice(None),) * (self.ndim - len(index) + 1)
            index = index[:at] + fill + index[at + 1:]
        n_lead = self.ndim - 2
        if len(index) > self.ndim or any(i is None for i in index):
            raise IndexError(f"a FactoredMatrix of shape {tuple(self.shape)} takes at most {self.ndim} indices "
                             f"(no None), got {index!r:.80}")
        lead, (rows, cols) = index[:n_lead], (tuple(index[n_lead:]) + (slice(None),) * 2)[:2]
        A, B = self.A[lead], self.B[lead]  # the same leading index on both keeps them aligned
        as_axis = (lambda i: slice(i, i + 1 if i != -1 else None) if isinstance(i, int) else i)
        return FactoredMatrix(A[..., as_axis(rows), :], B[..., :, as_axis(cols)])

    # -- questions answered through the r x r cores ------------------------------------------------
    def _cores(self) -> tuple[Tensor, Tensor, Tensor]:
        """(Q_A [..., ldim, k1], core [..., k1, k2], Q_B [..., rdim, k2]) with AB = Q_A core Q_Bᵀ, Q orthonormal."""
        Q_A, R_A = torch.linalg.qr(_for_linalg(self.A))
        Q_B, R_B = torch.linalg.qr(_for_linalg(self.B).transpose(-2, -1))
        return Q_A, R_A @ R_B.transpose(-2, -1), Q_B

    def norm(self) -> Tensor:
        """Frobenius norm [...]: that of the r x r core, since the orthonormal factors preserve it."""
        return torch.linalg.matrix_norm(self._cores()[1])

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """(U [..., ldim, k], S [..., k], Vh [..., k, rdim]) with AB = U diag(S) Vh, k = min(ldim, mdim, rdim),
        singular values descending."""
        Q_A, core, Q_B = self._cores()
        U, S, Vh = torch.linalg.svd(core, full_matrices=False)
        return Q_A @ U, S, Vh @ Q_B.transpose(-2, -1)

    U = property(lambda self: self.svd()[0])
    S = property(lambda self: self.svd()[1])
    Vh = property(lambda self: self.svd()[2])
    V = property(lambda self: self.svd()[2].transpose(-2, -1))  # TransformerLens's name: AB = U diag(S) Vᵀ

    @property
    def eigenvalues(self) -> Tensor:
        """The mdim eigenvalues of BA [..., mdim] (complex): the non-zero eigenvalues of AB, padded with zeros
        of AB's when mdim exceeds its rank."""
        return torch.linalg.eigvals(_for_linalg(self.BA))

    def collapse_left(self) -> Tensor:
        """C [..., k, rdim] with AB = Q C, Q [..., ldim, k] orthonormal (k = min(ldim, mdim)): the rows of AB in a
        basis of its column space, so C has AB's norm, singular values and products from the right.
        TransformerLens's collapse_l (S Vᵀ, from an SVD) is this up to a rotation of the k axis."""
        _, R_A = torch.linalg.qr(_for_linalg(self.A))
        return R_A @ _for_linalg(self.B)

    def collapse_right(self) -> Tensor:
        """C [..., ldim, k] with AB = C Qᵀ, Q [..., rdim, k] orthonormal (TransformerLens: collapse_r, U S)."""
        _, R_B = torch.linalg.qr(_for_linalg(self.B).transpose(-2, -1))
        return _for_linalg(self.A) @ R_B.transpose(-2, -1)

    def unsqueeze(self, axis: int) -> FactoredMatrix:
        """A new leading axis at `axis` (counted among the leading axes; negative counts from the last of them)."""
        axis = axis if axis >= 0 else self.ndim - 1 + axis
        if not 0 <= axis <= self.ndim - 2:
            raise IndexError(f"unsqueeze adds a leading axis: axis must be in -{self.ndim - 1}..{self.ndim - 2}")
        return FactoredMatrix(self.A.unsqueeze(axis), self.B.unsqueeze(axis))


def composition_scores(left: FactoredMatrix, right: FactoredMatrix, broadcast_dims: bool = True) -> Tensor:
    """‖left @ right‖_F / (‖left‖_F ‖right‖_F), in [0, 1], docs/methods.md §10.2. With broadcast_dims, every
    left matrix meets every right one: left [*L, m, k] and right [*R, k, n] give scores [*L, *R] (as
    TransformerLens's `composition_scores`); otherwise their leading axes broadcast together.
    Only the orthonormal factors are dropped: left = Q_l C_l, right = C_r Q_rᵀ, and C_l C_r is r_l x r_r."""
    if left.rdim != right.ldim:
        raise ValueError(f"left [..., m, k] and right [..., k, n] must share k; got {tuple(left.shape)} and {tuple(right.shape)}")
    C_left, C_right = left.collapse_left(), right.collapse_right()  # [*L, r_l, k], [*R, k, r_r]
    norm_left, norm_right = torch.linalg.matrix_norm(C_left), torch.linalg.matrix_norm(C_right)
    if broadcast_dims:
        n_left, n_right = left.ndim - 2, right.ndim - 2
        C_left = C_left.reshape(C_left.shape[:-2] + (1,) * n_right + C_left.shape[-2:])
        norm_left = norm_left.reshape(norm_left.shape + (1,) * n_right)
        C_right = C_right.reshape((1,) * n_left + C_right.shape)
    return torch.linalg.matrix_norm(C_left @ C_right) / (norm_left * norm_right)
