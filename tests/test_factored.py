"""FactoredMatrix: every operation equals its dense version on small shapes (docs/methods.md §10.5 item 4)."""

import pytest
import torch
from torch.testing import assert_close

from minitx.factored import FactoredMatrix, composition_scores

TOL = dict(atol=1e-5, rtol=1e-5)


def factors(lead=(), m=7, r=3, n=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*lead, m, r, generator=g, dtype=dtype), torch.randn(*lead, r, n, generator=g, dtype=dtype))


@pytest.mark.parametrize("shape", [dict(m=7, r=3, n=5), dict(m=3, r=6, n=4), dict(lead=(2, 3), m=6, r=2, n=6)])
def test_norm_svd_and_dense_forms(shape):
    A, B = factors(**shape)
    M, dense = FactoredMatrix(A, B), A @ B
    assert M.shape == dense.shape and M.ndim == dense.dim()
    assert_close(M.AB, dense, **TOL)
    assert_close(M.T.AB, dense.transpose(-2, -1), **TOL)
    assert_close(M.norm(), torch.linalg.matrix_norm(dense), **TOL)
    U, S, Vh = M.svd()
    k = min(dense.shape[-2:] + (A.shape[-1],))
    assert U.shape[-1] == S.shape[-1] == Vh.shape[-2] == k
    assert_close(S, torch.linalg.svdvals(dense)[..., :k], **TOL)
    assert_close(U @ torch.diag_embed(S) @ Vh, dense, **TOL)
    assert_close(M.U @ torch.diag_embed(M.S) @ M.V.transpose(-2, -1), dense, **TOL)
    left, right = M.collapse_left(), M.collapse_right()  # AB = Q left = right Qᵀ, Q orthonormal
    assert_close(left.transpose(-2, -1) @ left, dense.transpose(-2, -1) @ dense, **TOL)
    assert_close(right @ right.transpose(-2, -1), dense @ dense.transpose(-2, -1), **TOL)
    eye = torch.eye(k, dtype=A.dtype)
    assert_close(U.transpose(-2, -1) @ U, eye.expand_as(U.transpose(-2, -1) @ U), **TOL)
    assert_close(Vh @ Vh.transpose(-2, -1), eye.expand_as(Vh @ Vh.transpose(-2, -1)), **TOL)


def test_eigenvalues_are_the_nonzero_eigenvalues_of_the_product():
    A, B = factors(m=8, r=3, n=8)
    M = FactoredMatrix(A, B)
    assert_close(M.BA, B @ A, **TOL)
    ours = sorted(M.eigenvalues.tolist(), key=lambda z: (z.real, z.imag))
    dense = [z for z in torch.linalg.eigvals(A @ B).tolist() if abs(z) > 1e-8]
    assert len(dense) == 3
    assert_close(torch.tensor(ours), torch.tensor(sorted(dense, key=lambda z: (z.real, z.imag))), **TOL)
    with pytest.raises(ValueError, match="square"):
        FactoredMatrix(*factors(m=4, n=5)).BA


def test_products_with_tensors_vectors_and_factored_matrices():
    A, B = factors(m=6, r=2, n=5)
    M, dense = FactoredMatrix(A, B), A @ B
    X, Y = torch.randn(5, 4, dtype=A.dtype), torch.randn(3, 6, dtype=A.dtype)
    v, w = torch.randn(5, dtype=A.dtype), torch.randn(6, dtype=A.dtype)
    assert isinstance(M @ X, FactoredMatrix) and isinstance(Y @ M, FactoredMatrix)
    assert_close((M @ X).AB, dense @ X, **TOL)
    assert_close((Y @ M).AB, Y @ dense, **TOL)
    assert_close(M @ v, dense @ v, **TOL)
    assert_close(w @ M, w @ dense, **TOL)
    for inner in (1, 4):  # the narrower inner size is kept, on either side
        N = FactoredMatrix(*factors(m=5, r=inner, n=3, seed=1))
        product = M @ N
        assert isinstance(product, FactoredMatrix) and product.mdim == min(2, inner)
        assert_close(product.AB, dense @ N.AB, **TOL)
    with pytest.raises(ValueError, match="needs 5 rows"):
        M @ torch.randn(6, 2, dtype=A.dtype)
    with pytest.raises(ValueError, match="needs 6 columns"):
        torch.randn(2, 5, dtype=A.dtype) @ M
    assert_close((2.5 * M).AB, 2.5 * dense, **TOL)
    assert_close((-M).AB, -dense, **TOL)


def test_leading_axes_broadcast_and_index():
    A, B = factors(lead=(3, 4), m=6, r=2, n=5)
    M, dense = FactoredMatrix(A, B), A @ B
    assert_close(M[1].AB, dense[1], **TOL)
    assert_close(M[2, 3].AB, dense[2, 3], **TOL)
    assert_close(M[:, torch.tensor([0, 2])].AB, dense[:, [0, 2]], **TOL)
    assert_close(M[..., 1:4, :].AB, dense[..., 1:4, :], **TOL)
    assert_close(M[0, 1, 2].AB, dense[0, 1, 2:3], **TOL)  # an int row keeps its axis
    assert_close(M[0, 1, :, -1].AB, dense[0, 1, :, -1:], **TOL)
    assert_close(M.unsqueeze(1).AB, dense.unsqueeze(1), **TOL)
    with pytest.raises(IndexError):
        M[0, 0, 0, 0, 0]
    shared = FactoredMatrix(A[:, :1], B[0])  # [3, 1, 6, 2] with [4, 2, 5] -> [3, 4, 6, 5]
    assert shared.shape == (3, 4, 6, 5)
    assert_close(shared.AB, A[:, :1] @ B[0], **TOL)
    with pytest.raises(ValueError, match="share r"):
        FactoredMatrix(torch.randn(3, 2), torch.randn(3, 2))


def test_float32_and_float16_factors():
    A, B = factors(m=40, r=4, n=30, dtype=torch.float32)
    M = FactoredMatrix(A, B)
    assert_close(M.norm(), torch.linalg.matrix_norm(A @ B), **TOL)
    half = FactoredMatrix(A.half(), B.half())
    assert_close(half.norm(), torch.linalg.matrix_norm(A.half().float() @ B.half().float()), atol=1e-3, rtol=1e-3)


def test_composition_scores_equal_the_dense_formula():
    g = torch.Generator().manual_seed(3)
    left = FactoredMatrix(torch.randn(2, 3, 10, 4, generator=g, dtype=torch.float64),
                          torch.randn(2, 3, 4, 10, generator=g, dtype=torch.float64))
    right = FactoredMatrix(torch.randn(5, 10, 2, generator=g, dtype=torch.float64),
                           torch.randn(5, 2, 10, generator=g, dtype=torch.float64))
    scores = composition_scores(left, right)
    assert scores.shape == (2, 3, 5)
    L, R = left.AB, right.AB
    for i, j, k in [(0, 0, 0), (1, 2, 4), (0, 1, 3)]:
        dense = torch.linalg.matrix_norm(L[i, j] @ R[k]) / (torch.linalg.matrix_norm(L[i, j]) * torch.linalg.matrix_norm(R[k]))
        assert_close(scores[i, j, k], dense, **TOL)
    paired = composition_scores(left[0], FactoredMatrix(right.A[:3], right.B[:3]), broadcast_dims=False)
    assert paired.shape == (3,)
    assert_close(paired, scores[0, torch.arange(3), torch.arange(3)], **TOL)
    # A product of orthogonal subspaces scores exactly 0 (no rounding floor, unlike a Gram-matrix trace).
    e = torch.eye(6, dtype=torch.float64)
    assert composition_scores(FactoredMatrix(e[:, :2], e[:2]), FactoredMatrix(e[:, 3:], e[3:])) == 0
