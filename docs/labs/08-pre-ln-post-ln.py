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
# # Lab 8: gradients in pre-LN and post-LN stacks
#
# Chapter 8 printed a few gradient norms of 48-layer encoders at initialisation. Here is
# every layer, for both placements of the norm, and the top layer's gradient against
# depth, on log scales.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from attnbook import LayerNorm, TransformerEncoder, TransformerEncoderLayer

torch.set_num_threads(1)


def layer_gradients(norm_first, depth, E=64):
    _ = torch.manual_seed(0)
    layer = TransformerEncoderLayer(E, 4, dim_feedforward=4 * E, dropout=0.0, norm_first=norm_first)
    stack = TransformerEncoder(layer, depth, norm=LayerNorm(E) if norm_first else None)
    for p in stack.parameters():
        if p.ndim == 2:
            torch.nn.init.xavier_uniform_(p)
    head = torch.nn.Linear(E, 100)
    x, y = torch.randn(8, 16, E), torch.randint(100, (8, 16))
    F.cross_entropy(head(stack(x)).flatten(0, 1), y.flatten()).backward()
    return [layer.ff.w2.weight.grad.norm().item() for layer in stack.layers]


depths = [3, 6, 12, 24, 48]
kinds = {"post-LN": False, "pre-LN": True}
runs = {name: {d: layer_gradients(nf, d) for d in depths} for name, nf in kinds.items()}
profile = {name: by_depth[48] for name, by_depth in runs.items()}  # every layer of the 48
top = {name: [by_depth[d][-1] for d in depths] for name, by_depth in runs.items()}
for name, g in profile.items():
    print(f"{name}: top layer's gradient / bottom layer's, at 48 layers: {g[-1] / g[0]:.2f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for name, style in (("post-LN", "o-"), ("pre-LN", "s--")):
    axes[0].plot(range(1, 49), profile[name], style, markersize=3, label=name)
    axes[1].plot(depths, top[name], style, label=name)
pre = top["pre-LN"]
axes[1].plot(
    depths,
    [pre[0] * (depths[0] / d) ** 0.5 for d in depths],
    ":",
    color="gray",
    label="1/sqrt(depth)",
)
axes[0].set_xlabel("layer (1 = bottom)")
axes[0].set_ylabel("gradient norm of w2")
axes[0].set_title("48 layers at initialisation")
axes[1].set_xlabel("depth")
axes[1].set_ylabel("top layer's gradient norm")
axes[1].set_title("the top layer against depth")
for ax in axes:
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
axes[1].set_xscale("log", base=2)
fig.tight_layout()
plt.show()

# %% [markdown]
# Post-LN piles its gradients on the top layers, and the top layer's gradient does not
# shrink with depth. Pre-LN's top-layer gradient follows the 1/sqrt(depth) line that
# Xiong et al. (2020) derive, and its largest gradients are at the bottom instead.
