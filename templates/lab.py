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
# # Lab NN: what this lab shows
#
# One paragraph: which chapter it belongs to, and what the plot adds.

# %%
import matplotlib.pyplot as plt
import torch

_ = torch.manual_seed(0)
x = torch.linspace(-3, 3, 100)

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(x, torch.tanh(x))
ax.set_xlabel("x")
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# What the reader should notice in the plot.
