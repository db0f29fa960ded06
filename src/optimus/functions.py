r"""Benchmark test functions and the problem / task family used for meta-training.

Canonical functions
-------------------
Every canonical function has the signature ``f(x, n=None) -> scalar`` where ``x`` has shape
``(N,)`` and ``n`` (a Python int or a traced int32 scalar) is the number of *valid*
coordinates: only ``x[:n]`` is the problem, ``x[n:]`` is padding. Padding never influences the
value and the gradient with respect to padding coordinates is exactly ``0``. ``n=None`` means
``n = N``. All masking is done with :func:`jax.numpy.where`, never with Python control flow on
``n``, so a batch of problems of different dimensions padded to one size can be vmapped
without recompiling. The dtype of ``x`` is preserved (float32 in, float32 out; float64 under
``jax.enable_x64(True)``).

The definitions follow the Virtual Library of Simulation Experiments (Surjanovic & Bingham);
below ``d = n`` and indices are 1-based as in that library:

==============  ======================================================  =================
name            f(x)                                                    usual domain
==============  ======================================================  =================
sphere          Σ x_i²                                                  [-5.12, 5.12]
quadratic       ½ Σ λ_i x_i²,  λ_i = κ^{(i-1)/(d-1)}, κ = 1e4            [-5, 5]
rosenbrock      Σ_{i<d} 100 (x_{i+1} − x_i²)² + (x_i − 1)²               [-5, 10]
dixon_price     (x_1 − 1)² + Σ_{i≥2} i (2 x_i² − x_{i−1})²                [-10, 10]
powell          Σ_{k=1}^{d/4} (x_{4k−3} + 10 x_{4k−2})² + 5 (x_{4k−1} − x_{4k})²
                + (x_{4k−2} − 2 x_{4k−1})⁴ + 10 (x_{4k−3} − x_{4k})⁴      [-4, 5]
rastrigin       10 d + Σ x_i² − 10 cos(2π x_i)                          [-5.12, 5.12]
levy            sin²(π w_1) + Σ_{i<d} (w_i − 1)² [1 + 10 sin²(π w_i + 1)]
                + (w_d − 1)² [1 + sin²(2π w_d)],  w_i = 1 + (x_i − 1)/4  [-10, 10]
ackley          −a exp(−b √(Σ x_i²/d)) − exp(Σ cos(c x_i)/d) + a + e,
                a = 20, b = 0.2, c = 2π                                [-32.768, 32.768]
griewank        Σ x_i²/4000 − Π cos(x_i/√i) + 1                         [-600, 600]
perm            Σ_{i=1}^d ( Σ_{j=1}^d (j + β)(x_j^i − j^{−i}) )²,  β = 10  [-d, d]
==============  ======================================================  =================

Perm overflows (returns +inf, never NaN) from random starts in its domain for n ≳ 16 in
float32 and n ≳ 80 in float64; see :func:`perm`.

All have minimum value 0. Minimizers: 0 for sphere, quadratic, powell, rastrigin, ackley,
griewank; 1 for rosenbrock and levy; x_i = 2^{−(2^i − 2)/2^i} for dixon_price; x_i = 1/i for
perm.

Problems
--------
:class:`Problem` is one problem instance as a pytree of arrays padded to a common size ``N``,
so batches of problems stack and vmap. ``problem(x) = f_scale · (f_c(x*_c + R (x − x_opt), n)
− f_min)`` has minimum value exactly 0 at ``x_opt``. :func:`make_problem` builds one problem
(canonical / transformed / off-centre), :func:`sample_problem` draws one from the
meta-training task distribution and is fully traceable (jit / vmap over keys).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
IntLike = int | Array

__all__ = [
    "ACKLEY_A",
    "ACKLEY_B",
    "ACKLEY_C",
    "FUNCTIONS",
    "NAMES",
    "PERM_BETA",
    "PERM_MAX_TRAIN_DIM",
    "QUADRATIC_KAPPA",
    "VARIANTS",
    "Problem",
    "TestFunction",
    "ackley",
    "dixon_price",
    "evaluate",
    "get",
    "griewank",
    "haar_rotation",
    "levy",
    "make_problem",
    "perm",
    "powell",
    "quadratic",
    "rastrigin",
    "rosenbrock",
    "sample_problem",
    "sphere",
]

ACKLEY_A = 20.0
ACKLEY_B = 0.2
ACKLEY_C = 2.0 * math.pi
PERM_BETA = 10.0
QUADRATIC_KAPPA = 1e4
#: Perm's dimension is clamped to at most this inside :func:`sample_problem` (overflow).
PERM_MAX_TRAIN_DIM = 8

VARIANTS: tuple[str, ...] = ("canonical", "transformed", "offcentre")
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def _prep(x: Array, n: Array) -> tuple[Array, Array, Array, Array, Array]:
    """Return ``(xm, n, idx, mask, nf)``: masked x (padding set to 0), n as int32, indices,
    validity mask and n as a float of x's dtype. A traced n outside [1, N] is clipped."""
    size = x.shape[0]
    n = jnp.clip(jnp.asarray(n, dtype=jnp.int32), 1, size)
    idx = jnp.arange(size, dtype=jnp.int32)
    mask = idx < n
    xm = jnp.where(mask, x, jnp.zeros((), x.dtype))
    return xm, n, idx, mask, n.astype(x.dtype)


def _canonical(impl: Callable[[Array, Array], Array]) -> Callable[..., Array]:
    """Wrap a canonical function: validate ``x`` / ``n`` eagerly, then call a jitted body with
    ``n`` as an int32 array (one compilation per shape and dtype, also when called eagerly;
    inside an outer trace the inner jit is simply inlined)."""
    jitted = jax.jit(impl)

    @functools.wraps(impl)
    def wrapper(x: Array, n: IntLike | None = None) -> Array:
        x = jnp.asarray(x)
        if x.ndim != 1:
            raise ValueError(f"x must have shape (N,), got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        size = x.shape[0]
        if n is None:
            n = size
        if isinstance(n, (int, np.integer)) and not 1 <= int(n) <= size:
            raise ValueError(f"n must satisfy 1 <= n <= {size}, got {n}")
        return jitted(x, jnp.asarray(n, dtype=jnp.int32))

    return wrapper


def _zero(x: Array) -> Array:
    return jnp.zeros((), x.dtype)


def _safe_sqrt(s: Array) -> Array:
    """sqrt with a finite (zero) gradient at 0."""
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, jnp.ones_like(s))), jnp.zeros_like(s))


# ----------------------------------------------------------------------------------------
# canonical functions
# ----------------------------------------------------------------------------------------


@_canonical
def sphere(x: Array, n: IntLike | None = None) -> Array:
    r"""Sphere: :math:`f(x) = \sum_{i=1}^n x_i^2`. Minimum 0 at 0. Domain [-5.12, 5.12]."""
    xm, *_ = _prep(x, n)
    return jnp.sum(xm * xm)


@_canonical
def quadratic(x: Array, n: IntLike | None = None) -> Array:
    r"""Ill-conditioned axis-aligned quadratic :math:`f(x) = \tfrac12 \sum_{i=1}^n \lambda_i
    x_i^2` with :math:`\lambda_i = \kappa^{(i-1)/(n-1)}` log-spaced from 1 to
    :math:`\kappa = 10^4` over the n valid coordinates (:math:`\lambda_1 = 1` when n = 1).

    The rotation comes from the transformed problem variant. Minimum 0 at 0; domain [-5, 5].
    """
    xm, _, idx, mask, nf = _prep(x, n)
    t = idx.astype(xm.dtype) / jnp.maximum(nf - 1, 1)
    lam = jnp.exp(math.log(QUADRATIC_KAPPA) * t)
    return 0.5 * jnp.sum(jnp.where(mask, lam * xm * xm, _zero(xm)))


@_canonical
def rosenbrock(x: Array, n: IntLike | None = None) -> Array:
    r"""Rosenbrock: :math:`f(x) = \sum_{i=1}^{n-1} [100 (x_{i+1} - x_i^2)^2 + (x_i - 1)^2]`.

    Minimum 0 at (1, ..., 1). Domain [-5, 10]. For n = 1 the sum is empty (f = 0).
    """
    xm, n, idx, _, _ = _prep(x, n)
    xi, xn = xm[:-1], xm[1:]
    terms = 100.0 * (xn - xi * xi) ** 2 + (xi - 1.0) ** 2
    return jnp.sum(jnp.where(idx[:-1] < n - 1, terms, _zero(xm)))


@_canonical
def dixon_price(x: Array, n: IntLike | None = None) -> Array:
    r"""Dixon-Price: :math:`f(x) = (x_1 - 1)^2 + \sum_{i=2}^n i (2 x_i^2 - x_{i-1})^2`.

    Minimum 0 at :math:`x_i = 2^{-(2^i - 2)/2^i}`. Domain [-10, 10].
    """
    xm, n, idx, _, _ = _prep(x, n)
    i = (idx[1:] + 1).astype(xm.dtype)
    terms = i * (2.0 * xm[1:] * xm[1:] - xm[:-1]) ** 2
    return (xm[0] - 1.0) ** 2 + jnp.sum(jnp.where(idx[1:] < n, terms, _zero(xm)))


@_canonical
def powell(x: Array, n: IntLike | None = None) -> Array:
    r"""Powell (singular) function, for n a multiple of 4:

    .. math::
        f(x) = \sum_{k=1}^{n/4} (x_{4k-3} + 10 x_{4k-2})^2 + 5 (x_{4k-1} - x_{4k})^2
               + (x_{4k-2} - 2 x_{4k-1})^4 + 10 (x_{4k-3} - x_{4k})^4.

    Minimum 0 at 0. Domain [-4, 5]. With padding (and in general) only *complete* groups of 4
    coordinates inside the first n count: if n is not a multiple of 4, the trailing n mod 4
    valid coordinates are ignored (zero gradient). N itself need not be a multiple of 4.
    """
    xm, n, _, _, _ = _prep(x, n)
    size = xm.shape[0]
    groups = -(-size // 4)
    xp = jnp.concatenate([xm, jnp.zeros((4 * groups - size,), xm.dtype)]).reshape(groups, 4)
    a, b, c, d = xp[:, 0], xp[:, 1], xp[:, 2], xp[:, 3]
    terms = (a + 10.0 * b) ** 2 + 5.0 * (c - d) ** 2 + (b - 2.0 * c) ** 4 + 10.0 * (a - d) ** 4
    valid = 4 * (jnp.arange(groups, dtype=jnp.int32) + 1) <= n
    return jnp.sum(jnp.where(valid, terms, _zero(xm)))


@_canonical
def rastrigin(x: Array, n: IntLike | None = None) -> Array:
    r"""Rastrigin: :math:`f(x) = 10 n + \sum_{i=1}^n [x_i^2 - 10 \cos(2\pi x_i)]`.

    Evaluated as :math:`\sum [x_i^2 + 20 \sin^2(\pi x_i)]`, the same function without the
    cancellation of :math:`1 - \cos` (in float32 that loses all digits of a term below
    about :math:`10^{-7}`). Minimum 0 at 0. Domain [-5.12, 5.12].
    """
    xm, _, _, mask, _ = _prep(x, n)
    terms = xm * xm + 20.0 * jnp.sin(math.pi * xm) ** 2
    return jnp.sum(jnp.where(mask, terms, _zero(xm)))


@_canonical
def levy(x: Array, n: IntLike | None = None) -> Array:
    r"""Levy: with :math:`w_i = 1 + (x_i - 1)/4`,

    .. math::
        f(x) = \sin^2(\pi w_1) + \sum_{i=1}^{n-1} (w_i - 1)^2 [1 + 10 \sin^2(\pi w_i + 1)]
               + (w_n - 1)^2 [1 + \sin^2(2 \pi w_n)].

    The first term is evaluated as :math:`\sin^2(\pi (w_1 - 1))` (equal, since
    :math:`\sin^2` has period π), so it is exactly 0 at the minimizer instead of the
    rounding of :math:`\sin(\pi)`. Minimum 0 at (1, ..., 1). Domain [-10, 10].
    """
    xm, n, idx, _, _ = _prep(x, n)
    w = 1.0 + (xm - 1.0) / 4.0
    first = jnp.sin(math.pi * (xm[0] - 1.0) / 4.0) ** 2
    mid = (w - 1.0) ** 2 * (1.0 + 10.0 * jnp.sin(math.pi * w + 1.0) ** 2)
    mid = jnp.sum(jnp.where(idx < n - 1, mid, _zero(xm)))
    wd = jnp.sum(jnp.where(idx == n - 1, w, _zero(xm)))
    last = (wd - 1.0) ** 2 * (1.0 + jnp.sin(2.0 * math.pi * wd) ** 2)
    return first + mid + last


@_canonical
def ackley(x: Array, n: IntLike | None = None) -> Array:
    r"""Ackley: with a = 20, b = 0.2, c = 2π,

    .. math::
        f(x) = -a \exp\Big(-b \sqrt{\tfrac1n \textstyle\sum x_i^2}\Big)
               - \exp\Big(\tfrac1n \textstyle\sum \cos(c x_i)\Big) + a + e.

    Evaluated as ``-a·expm1(-b r) - e·expm1(-2 mean sin²(c x / 2))`` (``mean cos - 1``
    written without cancellation), which is the same function but exactly 0 at the
    minimizer 0 and accurate near it. The square root is a safe sqrt: the gradient at
    exactly 0 is 0 (not NaN). Domain [-32.768, 32.768].
    """
    xm, _, _, mask, nf = _prep(x, n)
    r = _safe_sqrt(jnp.sum(xm * xm) / nf)
    half = jnp.sin(0.5 * ACKLEY_C * xm)
    mc1 = -2.0 * jnp.sum(jnp.where(mask, half * half, _zero(xm))) / nf  # mean cos - 1
    return -ACKLEY_A * jnp.expm1(-ACKLEY_B * r) - math.e * jnp.expm1(mc1)


@_canonical
def griewank(x: Array, n: IntLike | None = None) -> Array:
    r"""Griewank: :math:`f(x) = \sum_{i=1}^n x_i^2/4000 - \prod_{i=1}^n \cos(x_i/\sqrt i) + 1`.

    Where every cosine is positive (near the minimizer), :math:`1 - \prod \cos a_i` is
    evaluated as :math:`-\mathrm{expm1}(\sum \log1p(-2 \sin^2(a_i/2)))`, without
    cancellation: in float32 the plain form rounds the product to exactly 1 once all
    :math:`|x_i| \lesssim 3 \cdot 10^{-4}`, so that below :math:`f \approx 10^{-7}` it
    returned only the quadratic term (at :math:`x_i = 10^{-4}`, n = 30: 7.5e-11 instead of
    2.0e-8) and near the minimum its curvature fell by orders of magnitude. Minimum 0 at 0.
    Domain [-600, 600].
    """
    xm, _, idx, mask, _ = _prep(x, n)
    i = (idx + 1).astype(xm.dtype)
    a = xm / jnp.sqrt(i)
    cosines = jnp.where(mask, jnp.cos(a), jnp.ones((), xm.dtype))
    pos = cosines > 0
    half = jnp.sin(0.5 * a)
    # log cos a = log1p(-2 sin^2(a/2)), only where cos a > 0 (safe value 0 elsewhere)
    log_cos = jnp.where(mask & pos, jnp.log1p(jnp.where(pos, -2.0 * half * half, 0.0)), 0.0)
    stable = -jnp.expm1(jnp.sum(log_cos))
    one_minus_prod = jnp.where(jnp.all(pos), stable, 1.0 - jnp.prod(cosines))
    return jnp.sum(xm * xm) / 4000.0 + one_minus_prod


@functools.lru_cache(maxsize=64)
def _inv_index(size: int) -> np.ndarray:
    """1/j for j = 1..size in float64 (cast to the working dtype by the caller, so the perm
    function and its minimizer use bit-identical values)."""
    return 1.0 / np.arange(1, size + 1, dtype=np.float64)


def _int_powers(base: Array, exps: Array, max_exp: Array) -> Array:
    """``out[r, j] = base[j] ** exps[r]`` for int exponents 1 <= exps <= max_exp, by
    square-and-multiply (exact signs for negative bases, a small graph, and only the squares
    ``base^(2^b)`` with ``2^b <= max_exp`` are formed, so nothing beyond ``base^max_exp`` can
    overflow)."""
    dt = base.dtype
    one = jnp.ones((), dt)
    out = jnp.ones((exps.shape[0], base.shape[0]), dt)
    square = base
    for b in range(max(1, int(base.shape[0]).bit_length())):
        if b > 0:
            square = jnp.where((1 << b) <= max_exp, square * square, one)
        bit = ((exps >> b) & 1).astype(bool)
        out = out * jnp.where(bit[:, None], square[None, :], one)
    return out


def _perm_inner(xm: Array, n: Array, mask: Array) -> tuple[Array, Array]:
    """Inner sums ``S_i = Σ_j (j+β)(x_j^i − j^{−i})`` (zero on rows i > n) and the power
    matrix ``P[i-1, j] = x_j^i`` (rows i > n repeat the power n; padded columns are 1)."""
    size = xm.shape[0]
    dt = xm.dtype
    idx = jnp.arange(size, dtype=jnp.int32)
    j = (idx + 1).astype(dt)
    valid2 = mask[:, None] & mask[None, :]  # row i-1 -> power i, column j-1 -> coordinate j
    one = jnp.ones((), dt)
    exps = jnp.minimum(idx + 1, n)
    powers = _int_powers(jnp.where(mask, xm, one), exps, n)
    inv_j = jnp.asarray(_inv_index(size), dtype=dt)
    # j^-i by the same operations, so the value at x_j = 1/j is exactly 0
    targets = _int_powers(jnp.where(mask, inv_j, one), exps, n)
    coef = jnp.where(mask, j + PERM_BETA, jnp.zeros((), dt))
    inner = jnp.sum(jnp.where(valid2, coef[None, :] * (powers - targets), _zero(xm)), axis=1)
    return inner, powers


def _perm_value(xm: Array, n: Array) -> Array:
    """The faithful value; non-finite inner sums give +inf (never NaN)."""
    mask = jnp.arange(xm.shape[0], dtype=jnp.int32) < n
    inner, _ = _perm_inner(xm, n, mask)
    finite = jnp.isfinite(inner)
    safe = jnp.where(finite, inner, _zero(xm))
    terms = jnp.where(finite, safe * safe, jnp.full((), jnp.inf, xm.dtype))
    return jnp.sum(jnp.where(mask, terms, _zero(xm)))


def _perm_safe_scale(xm: Array, n: Array) -> Array:
    """1 where a conservative bound says value and gradient cannot overflow, else the factor
    in (0, 1) that shrinks x until the bound holds."""
    dt = xm.dtype
    nf = n.astype(dt)
    log_max = float(np.log(np.finfo(dt).max)) - 2.0
    logn, lognb = jnp.log(nf), jnp.log(nf + PERM_BETA)
    # log of a bound on f, n (2 n (n+β) A^n)^2, plus a bound on |grad| / f, 2 n^2 (n+β)
    const = logn + 2.0 * (math.log(2.0) + logn + lognb) + math.log(2.0) + 2.0 * logn + lognb
    amax = jnp.maximum(jnp.max(jnp.abs(xm)), jnp.ones((), dt))
    unsafe = const + 2.0 * nf * jnp.log(amax) > log_max
    radius = jnp.exp((log_max - const) / (2.0 * nf))
    return jnp.where(unsafe, jnp.minimum(radius / amax, jnp.ones((), dt)), jnp.ones((), dt))


@jax.custom_jvp
def _perm_core(xm: Array, n: Array) -> Array:
    return _perm_value(xm, n)


@_perm_core.defjvp
def _perm_core_jvp(primals: tuple[Array, Array], tangents: tuple[Array, Array]):
    xm, n = primals
    dx = tangents[0]
    size = xm.shape[0]
    dt = xm.dtype
    idx = jnp.arange(size, dtype=jnp.int32)
    mask = idx < n
    value = _perm_value(xm, n)
    # analytic gradient  ∂f/∂x_k = (k+β) Σ_i 2 S_i i x_k^{i-1}, taken at the point shrunk
    # into the overflow-safe region (scale = 1 almost always) and scaled by the chain rule
    scale = _perm_safe_scale(xm, n)
    inner, powers = _perm_inner(xm * scale, n, mask)
    prev = jnp.concatenate([jnp.ones((1, size), dt), powers[:-1]], axis=0)  # x_k^{i-1}
    weights = jnp.where(mask, 2.0 * inner * (idx + 1).astype(dt), _zero(xm))
    coef = jnp.where(mask, (idx + 1).astype(dt) + PERM_BETA, _zero(xm))
    grad = scale * coef * jnp.matmul(weights, prev, precision=_HIGHEST)
    return value, jnp.sum(jnp.where(mask, grad * dx, _zero(xm)))


@_canonical
def perm(x: Array, n: IntLike | None = None) -> Array:
    r"""Perm(0,d,β) with β = 10:

    .. math::
        f(x) = \sum_{i=1}^{n} \Big( \sum_{j=1}^{n} (j + \beta) (x_j^i - j^{-i}) \Big)^2.

    Minimum 0 at :math:`x_j = 1/j`. Domain [-n, n]. Powers are formed by square-and-multiply
    (exact signs for negative x); the cost is O(N² log N) time and O(N²) memory.

    **Overflow.** The definition is kept faithful, but the terms grow like ``(n·n^n)^2`` on
    the domain: from a uniform random start in [-n, n] the value overflows in float32 for
    n ≳ 16 and in float64 for n ≳ 80–100 (measured). Where it overflows, ``perm`` returns
    ``+inf``, never NaN.
    The gradient (a custom JVP with the analytic formula) is always finite: when a
    conservative bound says the value or its gradient might overflow (roughly
    ``n² (n+β)³ max|x|^{2n}`` near the dtype's max), the gradient is that of the function at
    the point shrunk towards 0 until the bound holds (a finite surrogate pointing uphill),
    while the value stays the faithful one (possibly ``+inf``). This also keeps
    ``jax.lax.switch`` under ``vmap`` (which evaluates every branch) free of NaN gradients
    when perm's branch sees another problem's large coordinates.
    """
    xm, n, _, _, _ = _prep(x, n)
    return _perm_core(xm, n)


# ----------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------


def _const_domain(lo: float, hi: float) -> Callable[[int], tuple[float, float]]:
    def domain(n: int) -> tuple[float, float]:
        return (lo, hi)

    return domain


def _perm_domain(n: int) -> tuple[float, float]:
    return (-float(n), float(n))


def _const_minimizer(value: float) -> Callable[[int], np.ndarray]:
    def minimizer(n: int) -> np.ndarray:
        return np.full((int(n),), value, dtype=np.float64)

    return minimizer


def _dixon_price_minimizer(n: int) -> np.ndarray:
    i = np.arange(1, int(n) + 1, dtype=np.float64)
    # 2^{-(2^i - 2)/2^i} = 2^{-(1 - 2^{1-i})}, written to avoid overflowing 2^i
    return np.exp2(-(1.0 - np.exp2(1.0 - i)))


def _perm_minimizer(n: int) -> np.ndarray:
    return _inv_index(int(n)).copy()


@dataclasses.dataclass(frozen=True)
class TestFunction:
    """A registered benchmark function.

    Attributes:
        name: registry name.
        fn: canonical ``f(x, n=None)`` (see the module docstring).
        domain: ``domain(n) -> (lo, hi)``, the usual box ``[lo, hi]^n``.
        minimizer: ``minimizer(n) -> np.ndarray`` of shape (n,), float64, the canonical argmin.
        f_min: the minimum value (0.0 for all registered functions).
        multimodal: many local minima.
        smooth: member of the benchmark's "smooth" group.
        dim_multiple: n must be a multiple of this (4 for powell, else 1).
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    name: str
    fn: Callable[..., Array]
    domain: Callable[[int], tuple[float, float]]
    minimizer: Callable[[int], np.ndarray]
    f_min: float = 0.0
    multimodal: bool = False
    smooth: bool = False
    dim_multiple: int = 1

    def __call__(self, x: Array, n: IntLike | None = None) -> Array:
        return self.fn(x, n)


_C = _const_domain
_M = _const_minimizer
_ALL = (
    TestFunction("sphere", sphere, _C(-5.12, 5.12), _M(0.0), smooth=True),
    TestFunction("quadratic", quadratic, _C(-5.0, 5.0), _M(0.0), smooth=True),
    TestFunction("rosenbrock", rosenbrock, _C(-5.0, 10.0), _M(1.0), smooth=True),
    TestFunction("dixon_price", dixon_price, _C(-10.0, 10.0), _dixon_price_minimizer, smooth=True),
    TestFunction("powell", powell, _C(-4.0, 5.0), _M(0.0), smooth=True, dim_multiple=4),
    TestFunction("rastrigin", rastrigin, _C(-5.12, 5.12), _M(0.0), multimodal=True),
    TestFunction("levy", levy, _C(-10.0, 10.0), _M(1.0), multimodal=True),
    TestFunction("ackley", ackley, _C(-32.768, 32.768), _M(0.0), multimodal=True),
    TestFunction("griewank", griewank, _C(-600.0, 600.0), _M(0.0), multimodal=True),
    TestFunction("perm", perm, _perm_domain, _perm_minimizer),
)
del _C, _M

#: name -> TestFunction, in a fixed order (the order defines the integer function ids).
FUNCTIONS: dict[str, TestFunction] = {tf.name: tf for tf in _ALL}
NAMES: tuple[str, ...] = tuple(FUNCTIONS)
_PERM_ID = NAMES.index("perm")
_POWELL_ID = NAMES.index("powell")
# domain table: [lo, hi] per id; perm's entry is multiplied by n
_DOMAIN_TABLE = np.array([tf.domain(1) for tf in _ALL], dtype=np.float64)  # perm: (-1, 1) * n
_DOMAIN_SCALES_WITH_N = np.array([tf.name == "perm" for tf in _ALL])
_F_MIN_TABLE = np.array([tf.f_min for tf in _ALL], dtype=np.float64)


def get(name: str) -> TestFunction:
    """The registered :class:`TestFunction` called ``name`` (ValueError listing the names)."""
    try:
        return FUNCTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown test function {name!r}; valid names: {', '.join(NAMES)}"
        ) from None


def _concrete_int(v: Any) -> int | None:
    """``int(v)`` if v is a concrete integer scalar, else None (a tracer)."""
    if isinstance(v, jax.core.Tracer):
        return None
    try:
        return int(v)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def evaluate(func_id: IntLike, x: Array, n: IntLike | None = None) -> Array:
    """Evaluate the canonical function with integer id ``func_id`` (index in :data:`NAMES`).

    Traceable: with a traced ``func_id`` it dispatches with :func:`jax.lax.switch`, so batches
    of different functions can be vmapped (under vmap every branch is evaluated and the result
    selected). A concrete ``func_id`` calls the function directly (no switch compiled).
    """
    fid = _concrete_int(func_id)
    if fid is not None:
        if not 0 <= fid < len(NAMES):
            raise ValueError(f"func_id must be in [0, {len(NAMES)}), got {fid}")
        return _ALL[fid].fn(x, n)
    x = jnp.asarray(x)
    if n is None:
        n = x.shape[0]
    n = jnp.asarray(n, dtype=jnp.int32)
    branches = [tf.fn for tf in _ALL]
    return jax.lax.switch(jnp.asarray(func_id, dtype=jnp.int32), branches, x, n)


# ----------------------------------------------------------------------------------------
# problems
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _minimizer_table(size: int) -> np.ndarray:
    """(num_functions, size) float64: canonical minimizer coordinates i = 1..size (they do not
    depend on n for any registered function)."""
    return np.stack([tf.minimizer(size) for tf in _ALL])


def _canonical_minimizer(func_id: Array, size: int, mask: Array, dtype: Any) -> Array:
    table = jnp.asarray(_minimizer_table(size), dtype=dtype)
    return jnp.where(mask, table[func_id], jnp.zeros((), dtype))


def _domain_of(func_id: Array, n: Array, dtype: Any) -> tuple[Array, Array]:
    table = jnp.asarray(_DOMAIN_TABLE, dtype=dtype)[func_id]
    factor = jnp.where(jnp.asarray(_DOMAIN_SCALES_WITH_N)[func_id], n.astype(dtype), 1.0)
    return table[0] * factor, table[1] * factor


def haar_rotation(key: Array, n: IntLike, size: int, dtype: Any = jnp.float32) -> Array:
    """A Haar-random orthogonal matrix on the leading n×n block of a size×size identity.

    QR of a Gaussian matrix (masked to the valid block, identity elsewhere) with the columns
    multiplied by sign(diag(R)); the off-block entries are exactly 0 and the padded block is
    exactly the identity. Traceable in ``n``.
    """
    mask = jnp.arange(size, dtype=jnp.int32) < jnp.asarray(n, dtype=jnp.int32)
    valid2 = mask[:, None] & mask[None, :]
    eye = jnp.eye(size, dtype=dtype)
    g = jnp.where(valid2, jax.random.normal(key, (size, size), dtype), eye)
    q, r = jnp.linalg.qr(g)
    signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(dtype)
    return jnp.where(valid2, q * signs[None, :], eye)


_VARIANT_CODE = {v: i for i, v in enumerate(VARIANTS)}


def _build(
    key: Array,
    func_id: Array,
    n: Array,
    size: int,
    variant_code: Array,
    f_scale: Array,
    dtype: Any,
) -> Problem:
    """Traceable construction shared by :func:`make_problem` and :func:`sample_problem`."""
    func_id = jnp.asarray(func_id, dtype=jnp.int32)
    n = jnp.asarray(n, dtype=jnp.int32)
    mask = jnp.arange(size, dtype=jnp.int32) < n
    lo, hi = _domain_of(func_id, n, dtype)
    k_opt, k_rot, k_side, k_edge = jax.random.split(key, 4)
    zero = jnp.zeros((), dtype)
    # transformed: uniform anywhere in the box
    x_any = jax.random.uniform(k_opt, (size,), dtype, lo, hi)
    # offcentre: within the outer 10% of the box, random side per coordinate
    depth = jax.random.uniform(k_edge, (size,), dtype, zero, 0.1 * (hi - lo))
    x_edge = jnp.where(jax.random.bernoulli(k_side, 0.5, (size,)), hi - depth, lo + depth)
    x_can = _canonical_minimizer(func_id, size, mask, dtype)
    code = jnp.asarray(variant_code, dtype=jnp.int32)
    x_opt = jnp.where(code == _VARIANT_CODE["canonical"], x_can, x_any)
    x_opt = jnp.where(code == _VARIANT_CODE["offcentre"], x_edge, x_opt)
    x_opt = jnp.where(mask, x_opt, zero)
    rot = haar_rotation(k_rot, n, size, dtype)
    rot = jnp.where(code == _VARIANT_CODE["canonical"], jnp.eye(size, dtype=dtype), rot)
    return Problem(
        func_id=func_id,
        n=n,
        lo=jnp.asarray(lo, dtype),
        hi=jnp.asarray(hi, dtype),
        x_opt=x_opt,
        rotation=rot,
        f_scale=jnp.asarray(f_scale, dtype),
    )


_build_jit = jax.jit(_build, static_argnames=("size", "dtype"))


class Problem(eqx.Module):
    r"""One problem instance, a pytree of arrays padded to size N (stack + vmap for batches).

    ``problem(x) = f_scale · (f_c(x*_c + R (x − x_opt), n) − f_min)`` where ``f_c`` is the
    canonical function ``func_id`` and ``x*_c`` its canonical minimizer: the minimum value is
    exactly 0 at ``x_opt``. Padding coordinates (``>= n``) do not influence the value and get
    exactly zero gradient. The box is ``[lo, hi]^n``.

    Attributes:
        func_id: int32 scalar, index into :data:`NAMES`.
        n: int32 scalar, number of valid coordinates.
        lo, hi: scalars, the box.
        x_opt: (N,) location of the optimum (padding 0).
        rotation: (N, N) orthogonal, identity on the padded block.
        f_scale: positive scalar.

    Methods act on one (unbatched) problem; use ``jax.vmap`` for a stacked batch.
    """

    func_id: Array
    n: Array
    lo: Array
    hi: Array
    x_opt: Array
    rotation: Array
    f_scale: Array

    @property
    def size(self) -> int:
        """N, the padded size."""
        return self.x_opt.shape[-1]

    @property
    def dtype(self) -> Any:
        return self.x_opt.dtype

    @property
    def f_star(self) -> Array:
        """The minimum value of the problem: 0."""
        return jnp.zeros_like(self.f_scale)

    @property
    def mask(self) -> Array:
        """Bool (N,), True on the valid coordinates."""
        return jnp.arange(self.size, dtype=jnp.int32) < self.n

    def __call__(self, x: Array) -> Array:
        """The objective at ``x`` (shape (N,)); see the class docstring."""
        # a concrete func_id dispatches statically (no switch); a traced one uses lax.switch
        return _problem_value(self, jnp.asarray(x), _concrete_int(self.func_id))

    def to_unit(self, x: Array) -> Array:
        """Map the box [lo, hi]^n to [-1, 1]^n (padding -> 0)."""
        z = 2.0 * (x - self.lo) / (self.hi - self.lo) - 1.0
        return jnp.where(self.mask, z, jnp.zeros((), z.dtype))

    def from_unit(self, z: Array) -> Array:
        """Map [-1, 1]^n to the box [lo, hi]^n (padding -> 0)."""
        x = self.lo + 0.5 * (z + 1.0) * (self.hi - self.lo)
        return jnp.where(self.mask, x, jnp.zeros((), x.dtype))

    def unit_objective(self, z: Array) -> Array:
        """``problem(from_unit(z))``: the problem in unit-box coordinates."""
        return self(self.from_unit(z))

    def sample_x0(self, key: Array) -> Array:
        """A starting point uniform in the box (padding zeros)."""
        x = jax.random.uniform(key, (self.size,), self.dtype, self.lo, self.hi)
        return jnp.where(self.mask, x, jnp.zeros((), self.dtype))


@functools.partial(jax.jit, static_argnums=2)
def _problem_value(problem: Problem, x: Array, static_id: int | None) -> Array:
    func_id = problem.func_id if static_id is None else static_id
    x_c = _canonical_minimizer(problem.func_id, problem.size, problem.mask, problem.dtype)
    # HIGHEST: no TF32 on GPUs, the rotated problems must stay accurate to ~1 ulp
    # padding is zeroed first so that even non-finite junk there cannot leak through R
    d = jnp.where(problem.mask, x - problem.x_opt, jnp.zeros((), x.dtype))
    z = x_c + jnp.matmul(problem.rotation, d, precision=_HIGHEST)
    f_min = jnp.asarray(_F_MIN_TABLE, dtype=z.dtype)[problem.func_id]
    return problem.f_scale * (evaluate(func_id, z, problem.n) - f_min)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")


def make_problem(
    name: str,
    n: int,
    *,
    variant: str = "canonical",
    key: Array | None = None,
    pad_to: int | None = None,
    f_scale: float = 1.0,
    dtype: Any = jnp.float32,
) -> Problem:
    """Build one problem instance.

    Args:
        name: a name in :data:`NAMES`.
        n: dimension (a multiple of ``dim_multiple``; 4 for powell).
        variant: ``"canonical"`` (x_opt = canonical minimizer, R = I), ``"transformed"``
            (x_opt uniform in the box, R Haar-random from ``key``) or ``"offcentre"``
            (transformed, but every coordinate of x_opt within the outer 10% of the box, on a
            random side).
        key: PRNG key, required for the non-canonical variants.
        pad_to: padded size N >= n (default n).
        f_scale: positive value scale.
        dtype: floating dtype of the arrays.
    """
    tf = get(name)
    _check_variant(variant)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n must be a Python int, got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n % tf.dim_multiple:
        raise ValueError(f"{name} needs n to be a multiple of {tf.dim_multiple}, got {n}")
    size = n if pad_to is None else int(pad_to)
    if size < n:
        raise ValueError(f"pad_to must be >= n = {n}, got {pad_to}")
    if not (math.isfinite(f_scale) and f_scale > 0):
        raise ValueError(f"f_scale must be positive and finite, got {f_scale}")
    if variant != "canonical" and key is None:
        raise ValueError(f"variant {variant!r} needs a PRNG key")
    if key is None:
        key = jax.random.key(0)  # unused by the canonical variant
    return _build_jit(
        key,
        jnp.int32(NAMES.index(name)),
        jnp.int32(n),
        size,
        jnp.int32(_VARIANT_CODE[variant]),
        jnp.asarray(f_scale, dtype),
        dtype,
    )


def sample_problem(
    key: Array,
    *,
    names: Sequence[str] = NAMES,
    n_min: int = 2,
    n_max: int = 32,
    pad_to: int | None = None,
    variants: Sequence[str] = ("transformed",),
    log_scale_range: tuple[float, float] = (-3.0, 3.0),
    dtype: Any = jnp.float32,
) -> Problem:
    """Draw one problem from the meta-training task distribution (fully traceable in ``key``;
    all keyword arguments are static).

    - function: uniform over ``names``;
    - dimension: log-uniform in [n_min, n_max], rounded; for powell rounded down to a multiple
      of 4 (at least 4, at least the smallest multiple of 4 >= n_min); for perm clamped to at
      most ``max(PERM_MAX_TRAIN_DIM, n_min)`` = 8 by default, because Perm's values explode
      with n (+inf in float32 from n ≈ 16) and would swamp or poison the meta-loss;
    - variant: uniform over ``variants`` (optimum anywhere in the box and a Haar rotation of
      the valid block for "transformed");
    - f_scale = 10^U(log_scale_range).

    Padded to ``pad_to`` (default ``n_max``; must be >= n_max).
    """
    names = tuple(names)
    if not names:
        raise ValueError("names must not be empty")
    for nm in names:
        get(nm)
    variants = tuple(variants)
    if not variants:
        raise ValueError("variants must not be empty")
    for v in variants:
        _check_variant(v)
    n_min, n_max = int(n_min), int(n_max)
    if not 1 <= n_min <= n_max:
        raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    if "powell" in names and 4 * -(-n_min // 4) > n_max:
        raise ValueError(f"powell needs a multiple of 4 in [n_min, n_max] = [{n_min}, {n_max}]")
    size = n_max if pad_to is None else int(pad_to)
    if size < n_max:
        raise ValueError(f"pad_to must be >= n_max = {n_max}, got {pad_to}")
    s_lo, s_hi = (float(v) for v in log_scale_range)
    if not s_lo <= s_hi:
        raise ValueError(
            f"log_scale_range must be (low, high) with low <= high, got {log_scale_range}"
        )

    return _sample_jit(key, names, n_min, n_max, size, variants, s_lo, s_hi, dtype)


@functools.partial(jax.jit, static_argnums=tuple(range(1, 9)))
def _sample_jit(
    key: Array,
    names: tuple[str, ...],
    n_min: int,
    n_max: int,
    size: int,
    variants: tuple[str, ...],
    s_lo: float,
    s_hi: float,
    dtype: Any,
) -> Problem:
    k_f, k_n, k_v, k_s, k_b = jax.random.split(key, 5)
    ids = jnp.asarray([NAMES.index(nm) for nm in names], dtype=jnp.int32)
    func_id = ids[jax.random.randint(k_f, (), 0, len(names))]
    log_n = jax.random.uniform(k_n, (), jnp.float32, math.log(n_min), math.log(n_max))
    n = jnp.clip(jnp.round(jnp.exp(log_n)).astype(jnp.int32), n_min, n_max)
    n_powell = (n // 4) * 4
    n_powell = jnp.where(n_powell < n_min, 4 * -(-n_min // 4), n_powell)
    n = jnp.where(func_id == _POWELL_ID, n_powell, n)
    n = jnp.where(func_id == _PERM_ID, jnp.minimum(n, max(PERM_MAX_TRAIN_DIM, n_min)), n)
    codes = jnp.asarray([_VARIANT_CODE[v] for v in variants], dtype=jnp.int32)
    code = codes[jax.random.randint(k_v, (), 0, len(variants))]
    f_scale = 10.0 ** jax.random.uniform(k_s, (), jnp.float32, s_lo, s_hi)
    return _build(k_b, func_id, n, size, code, f_scale.astype(dtype), dtype)
