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
# # Lab 1: the attention heatmap
#
# Chapter 1 computed self-attention weights for four word vectors, "She ate the apple".
# Sixteen numbers are easy to print but hard to *see*. Here they are as a heatmap: row
# *i* is the word doing the looking, column *j* is the word being looked at, and the
# colour is the weight. Each row sums to 1.
#
# Run it top to bottom in Jupyter (download it with the button above; it needs `torch`
# and `attnbook`, see "Running the code yourself" on the home page), or change the
# vectors and watch the picture change.

# %%
import matplotlib.pyplot as plt
import torch

from attnbook import self_attention

words = ["She", "ate", "the", "apple"]
x = torch.tensor(
    [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
)
output, weights = self_attention(x)
print(weights.sum(dim=-1))  # every row sums to 1

# %%
fig, ax = plt.subplots(figsize=(4.8, 4.2))
image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0)
ax.set_xticks(range(len(words)), labels=words)
ax.set_yticks(range(len(words)), labels=words)
ax.set_xlabel("word looked at (column j)")
ax.set_ylabel("word doing the looking (row i)")
for i in range(len(words)):
    for j in range(len(words)):
        value = weights[i, j].item()
        ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            color="black" if value > 0.5 else "white",
        )
fig.colorbar(image, ax=ax, label="attention weight")
ax.set_title("softmax(x @ x.T), row by row")
fig.tight_layout()
plt.show()

# %% [markdown]
# The bright diagonal is chapter 1's "honest limit": with raw dot products, every word
# attends to itself most. *She* and *ate* share nothing (0.07), while *the* and *apple*
# each overlap *She* in one coordinate (0.20).
#
# **Try it.** Double the vectors (`2 * x`) and re-run: the diagonal gets brighter and the
# rest darker: every gap between two scores grows fourfold, and a softmax of more
# spread-out scores is more peaked.
