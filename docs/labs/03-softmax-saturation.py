# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lab 3: softmax saturation
#
# Chapter 3 measured, for a query against 16 random keys, how the largest attention
# weight and the softmax's sensitivity change with the key width d_k, with and without
# dividing the scores by sqrt(d_k). Here are the same measurements as curves, over more
# widths.

# %%
import matplotlib.pyplot as plt
import torch

g = torch.Generator().manual_seed(0)
S, N = 16, 1000
widths = [2**p for p in range(1, 12)]
largest = {"raw": [], "scaled": []}
sensitivity = {"raw": [], "scaled": []}
for d_k in widths:
    q = torch.randn(N, 1, d_k, generator=g)
    k = torch.randn(N, S, d_k, generator=g)
    raw = (q @ k.transpose(-2, -1)).squeeze(1)  # (N, S)
    for name, scores in (("raw", raw), ("scaled", raw / d_k**0.5)):
        w = torch.softmax(scores, dim=-1)
        largest[name].append(w.max(dim=-1).values.mean().item())
        sensitivity[name].append((w * (1 - w)).sum(dim=-1).mean().item())
print(
    f"d_k={widths[-1]}: largest raw weight {largest['raw'][-1]:.3f}, scaled {largest['scaled'][-1]:.3f}"
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
for name, style in (("raw", "o-"), ("scaled", "s--")):
    axes[0].plot(widths, largest[name], style, label=f"{name} scores")
    axes[1].plot(widths, sensitivity[name], style, label=f"{name} scores")
axes[0].set_ylabel("mean largest weight")
axes[1].set_ylabel(r"mean $\sum_i w_i(1-w_i)$")
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("key width d_k")
    ax.grid(alpha=0.3)
    ax.legend()
axes[0].set_title("softmax becomes one-hot")
axes[1].set_title("and stops responding")
fig.tight_layout()
plt.show()

# %% [markdown]
# Unscaled, the largest weight climbs towards 1 and the sensitivity falls towards 0 as
# d_k grows: gradients through the softmax vanish. Scaled by 1/sqrt(d_k), both curves are
# flat: the softmax behaves the same at every width.
