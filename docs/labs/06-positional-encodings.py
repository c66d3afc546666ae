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
# # Lab 6: positional encodings
#
# Chapter 6 built the sinusoidal encoding and chapter 7 the rotary one. Here they are as
# pictures: the encoding itself, how similar two positions' codes are, and how a RoPE
# attention score falls off with distance.

# %%
import matplotlib.pyplot as plt
import torch

from attnbook import apply_rotary, sinusoidal_positions

length, dim = 128, 64
pe = sinusoidal_positions(length, dim)  # (length, dim)
print(pe.shape, f"values in [{pe.min().item():.2f}, {pe.max().item():.2f}]")

# %% [markdown]
# Each row is one position, each column one channel. Pair 0 (channels 0 and 1) turns
# one radian per position, so its stripes are a few positions wide; the last pairs turn
# so slowly that they barely change over 128 positions.

# %%
fig, ax = plt.subplots(figsize=(8, 4))
image = ax.imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
ax.set_xlabel("position p")
ax.set_ylabel("channel")
ax.set_title("sinusoidal encoding, sin on even channels, cos on odd")
fig.colorbar(image, ax=ax)
fig.tight_layout()
plt.show()

# %% [markdown]
# The dot product of two positions' codes depends only on their distance (chapter 6's
# exercise), so the similarity matrix is constant along every diagonal. It is largest on
# the diagonal, where it equals dim / 2, and falls off, unevenly, with distance.

# %%
similarity = pe @ pe.T  # (length, length)
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
image = axes[0].imshow(similarity, cmap="viridis")
axes[0].set_title("PE(p) . PE(q)")
axes[0].set_xlabel("q")
axes[0].set_ylabel("p")
fig.colorbar(image, ax=axes[0])
axes[1].plot(similarity[0].numpy())
axes[1].set_xlabel("distance k")
axes[1].set_title("PE(0) . PE(k)")
axes[1].grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# With RoPE, the score between a query and a key that are the same vector, rotated to
# positions m and n, depends only on m - n. Averaged over random vectors it is
# (2/D) sum_i cos(k theta_i) times the mean squared norm of a pair: it tends to fall as
# the distance k grows, with ripples. Su et al. (2021, section 3.4.3) prove a related
# upper bound that decays with distance.

# %%
g = torch.Generator().manual_seed(0)
head_dim, distances = 64, torch.arange(0, 512)
v = torch.randn(1000, 1, head_dim, generator=g)  # (N, 1, D)
q = apply_rotary(v, torch.tensor([0]))  # the query at position 0
k = apply_rotary(v.expand(-1, len(distances), -1), distances)  # (N, len, D): keys at each distance
scores = (q * k).sum(dim=-1).mean(dim=0) / head_dim  # (len,)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(distances.numpy(), scores.numpy())
ax.set_xlabel("distance |m - n|")
ax.set_ylabel("mean q_m . k_n / D")
ax.set_title("RoPE: a token's score with itself, moved away")
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()
print(f"distance 0: {scores[0].item():.3f}, distance 100: {scores[100].item():.3f}")
