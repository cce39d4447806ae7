"""Drawing an NBDT decision path: the relevant subtree (the path and the children it passed
over at every node), with each decision's probability on its edge."""

from __future__ import annotations

from collections.abc import Sequence


def plot_path(tree, out, index: int = 0, mode: str = "hard", ax=None, title: str | None = None,
              highlight: int | None = None):
    """Draw image `index`'s root-to-leaf path of `out` (an `Inference`) on matplotlib axes.

    Path nodes run down the middle (blue); the children not taken hang to the side (grey),
    labelled with how many classes lie below them. `highlight`: a step to mark in red
    (the slider's current decision).
    """
    import matplotlib.pyplot as plt

    edges = (out.hard_edges if mode == "hard" else out.soft_edges)[index].tolist()
    edges = [e for e in edges if e >= 0]
    probs = out.edge_probs[index].detach().cpu()
    n_below = (tree.mean > 0).sum(1).tolist()
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 0.75 * len(edges) + 1.4))
    box = dict(boxstyle="round,pad=0.3", fc="#dbe9ff", ec="#1f5fbf")
    ax.text(0, 0, "root", ha="center", va="center", fontsize=9, bbox=box)
    for depth, edge in enumerate(edges, start=1):
        node = int(tree.parent[edge])
        options = [int(r) for r in tree.children[node].tolist() if r >= 0]
        others = sorted((r for r in options if r != edge), key=lambda r: -float(probs[r]))
        if len(others) > 2:  # wide nodes (a flat tree): the two likeliest alternatives only
            ax.text(2.6, -depth - 0.35, f"+{len(others) - 2} more", fontsize=8, ha="center")
        for j, r in enumerate(others[:2]):
            x = 2.6 if j == 0 else -2.6
            ax.plot([0, x], [1 - depth, -depth], color="#aaaaaa", lw=1, ls="--", zorder=0)
            count = f"{n_below[r]} class" + ("es" if n_below[r] > 1 else "")
            ax.text(x, -depth, f"{tree.edge_names[r]}\n({count})", ha="center", va="center",
                    fontsize=8, color="#555555",
                    bbox=dict(boxstyle="round,pad=0.25", fc="#f2f2f2", ec="#bbbbbb"))
            ax.text(x / 2 + 0.1, 0.5 - depth, f"{float(probs[r]):.1%}", fontsize=8,
                    color="#777777", ha="left", va="center")
        color = "#d62728" if highlight == depth - 1 else "#1f5fbf"
        ax.plot([0, 0], [1 - depth, -depth], color=color, lw=2.5, zorder=0)
        ax.text(0.08, 0.5 - depth, f"{float(probs[edge]):.1%}", fontsize=8, color=color,
                ha="left", va="center", fontweight="bold")
        leaf = int(tree.child_leaf[edge]) >= 0
        style = dict(box, fc="#ffe3a8" if leaf else box["fc"], ec=color)
        ax.text(0, -depth, tree.edge_names[edge], ha="center", va="center", fontsize=9,
                bbox=style, fontweight="bold" if leaf else "normal")
    ax.set_xlim(-4.2, 4.2)
    ax.set_ylim(-len(edges) - 0.6, 0.6)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def path_names(tree, out, index: int = 0, mode: str = "hard") -> Sequence[str]:
    """Names along image `index`'s path (root excluded)."""
    return [name for name, _ in out.decisions(tree, mode)[index]]
