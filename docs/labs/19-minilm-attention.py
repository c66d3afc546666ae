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
# # Lab 19: where "it" looks, in all 72 heads
#
# Chapter 19 printed, for every layer and head of all-MiniLM-L6-v2, how much the word
# "it" attends to "mat" and to "cat". Here is the whole row of "it" for every head, in
# both sentences, and the difference between them.

# %%
import matplotlib.pyplot as plt

from attnbook.pretrained import attention_maps

soft_tokens, soft = attention_maps("The cat sat on the mat because it was soft.")
hungry_tokens, hungry = attention_maps("The cat sat on the mat because it was hungry.")
it = soft_tokens.index("it")
rows = {"soft": soft[:, :, it], "hungry": hungry[:, :, it]}  # (layers, heads, keys) each
print(soft_tokens)
print(hungry_tokens)

# %% [markdown]
# Each panel is one layer: a row per head, a column per token, the colour the weight
# that "it" gives that token. The bright columns at the edges are the `[CLS]` and
# `[SEP]` markers.

# %%
fig, axes = plt.subplots(2, 6, figsize=(15, 6.5), sharey=True)
for r, (name, row) in enumerate(rows.items()):
    tokens = soft_tokens if name == "soft" else hungry_tokens
    for layer in range(6):
        ax = axes[r, layer]
        ax.imshow(row[layer], cmap="viridis", vmin=0, vmax=0.8, aspect="auto")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_title(f'"{name}", layer {layer}', fontsize=9)
        if layer == 0:
            ax.set_ylabel("head")
fig.tight_layout()
plt.show()

# %% [markdown]
# The difference, hungry minus soft, for the two candidate words: red means more weight
# in the "hungry" sentence. Layer 3, head 1 is the one head that moves clearly from
# "mat" to "cat".

# %%
cat, mat = soft_tokens.index("cat"), soft_tokens.index("mat")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, (word, j) in zip(axes, (("cat", cat), ("mat", mat)), strict=True):
    delta = rows["hungry"][:, :, j] - rows["soft"][:, :, j]  # (layers, heads)
    image = ax.imshow(delta, cmap="RdBu_r", vmin=-0.45, vmax=0.45)
    ax.set_title(f'weight of "it" on "{word}": hungry minus soft')
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax)
fig.tight_layout()
plt.show()
print(f"layer 3 head 1: cat {rows['soft'][3, 1, cat]:.3f} -> {rows['hungry'][3, 1, cat]:.3f}")
