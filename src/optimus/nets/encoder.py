r"""Transformer encoder over coordinate tokens (one token per coordinate of the problem).

No positional encoding: every layer is permutation-equivariant in the tokens, so permuting
the coordinates of the problem permutes the outputs the same way. Pre-LayerNorm layers:

.. math::
    h \leftarrow h + \mathrm{MHA}(\mathrm{LN}(h)), \qquad
    h \leftarrow h + W_2\,\mathrm{gelu}(W_1\,\mathrm{LN}(h))

where :math:`\mathrm{MHA}` is multi-head scaled dot-product self-attention across the tokens
and every linear map is applied per token (weights shared across coordinates). A boolean
``mask`` marks the valid tokens; padded tokens are never attended to, so a problem padded to a
size bucket gives the same outputs on its valid tokens as the unpadded problem.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


class Dense(eqx.Module):
    """A per-token affine map ``x @ W + b`` applied to ``(N, d_in)`` arrays."""

    weight: jax.Array
    bias: jax.Array

    def __init__(self, d_in: int, d_out: int, *, key: jax.Array, scale: float = 1.0):
        lim = scale / jnp.sqrt(d_in)
        self.weight = jax.random.uniform(key, (d_in, d_out), minval=-lim, maxval=lim)
        self.bias = jnp.zeros((d_out,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight.astype(x.dtype) + self.bias.astype(x.dtype)


class LayerNorm(eqx.Module):
    """LayerNorm over the feature axis of each token."""

    gamma: jax.Array
    beta: jax.Array

    def __init__(self, d: int):
        self.gamma = jnp.ones((d,))
        self.beta = jnp.zeros((d,))

    def __call__(self, x: jax.Array) -> jax.Array:
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean((x - mu) ** 2, axis=-1, keepdims=True)
        xn = (x - mu) * jax.lax.rsqrt(var + 1e-5)
        return xn * self.gamma.astype(x.dtype) + self.beta.astype(x.dtype)


class EncoderLayer(eqx.Module):
    """One pre-LN Transformer encoder layer (masked multi-head self-attention + MLP)."""

    ln1: LayerNorm
    qkv: Dense
    out: Dense
    ln2: LayerNorm
    fc1: Dense
    fc2: Dense
    num_heads: int = eqx.field(static=True)

    def __init__(self, width: int, num_heads: int, mlp_ratio: int, *, key: jax.Array):
        if width % num_heads:
            raise ValueError(f"width {width} must be divisible by num_heads {num_heads}")
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.ln1 = LayerNorm(width)
        self.qkv = Dense(width, 3 * width, key=k1)
        self.out = Dense(width, width, key=k2, scale=0.5)
        self.ln2 = LayerNorm(width)
        self.fc1 = Dense(width, mlp_ratio * width, key=k3)
        self.fc2 = Dense(mlp_ratio * width, width, key=k4, scale=0.5)
        self.num_heads = num_heads

    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        n, width = h.shape
        dh = width // self.num_heads
        q, k, v = jnp.split(self.qkv(self.ln1(h)), 3, axis=-1)
        q, k, v = (a.reshape(n, self.num_heads, dh) for a in (q, k, v))
        logits = jnp.einsum("qhd,khd->hqk", q, k) / jnp.sqrt(jnp.asarray(dh, h.dtype))
        logits = jnp.where(mask[None, None, :], logits, jnp.finfo(h.dtype).min)
        att = jax.nn.softmax(logits, axis=-1)
        ctx = jnp.einsum("hqk,khd->qhd", att, v).reshape(n, width)
        h = h + self.out(ctx)
        h = h + self.fc2(jax.nn.gelu(self.fc1(self.ln2(h))))
        return jnp.where(mask[:, None], h, 0)


class Encoder(eqx.Module):
    """``depth`` stacked :class:`EncoderLayer` s with a final LayerNorm."""

    layers: tuple[EncoderLayer, ...]
    ln_f: LayerNorm

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: int, *, key):
        keys = jax.random.split(key, max(depth, 1))
        self.layers = tuple(EncoderLayer(width, num_heads, mlp_ratio, key=k) for k in keys[:depth])
        self.ln_f = LayerNorm(width)

    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        for layer in self.layers:
            h = layer(h, mask)
        return jnp.where(mask[:, None], self.ln_f(h), 0)
