"""Saliency maps for the decisions of an NBDT (`tree.py`): where is the evidence for a step?

A node's decision is softmax_j(z_j) over its children's logits z_j (Wan et al., ICLR 2021,
arXiv:2004.00221, Sec. 3.1), and a softmax depends only on differences of its inputs: for
a binary node the decision is sigmoid(z_i - z_j). A child logit alone (z_i, the mean of its
leaves' logits) also carries everything its sibling shares with it, i.e. the evidence for
the parent, so the maps of successive steps along a path look alike. The *decision* map
explains the margin between the chosen child and its siblings,

    m_i = z_i - mean_{j sibling of i} z_j        (= z_i - z_j for a binary node),

which is again a fixed linear function of the class logits, so Grad-CAM (Selvaraju et al.
2017) or any other method applies to it exactly as to a class score. With more than two
children the margin against the siblings' mean is a linear stand-in for the softmax's own
log-odds (its gradient weights the siblings by their probabilities instead).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from xai_utils.core.inputs import model_info
from xai_utils.core.registry import explain
from xai_utils.nbdt.tree import Tree


def margin_matrix(tree: Tree) -> torch.Tensor:
    """R x C: row r maps class logits to edge r's margin, z_r minus the mean of its
    siblings' child logits (zeros for an only child, whose decision is certain)."""
    parent = tree.parent
    same = parent[:, None] == parent[None, :]
    siblings = same & ~torch.eye(len(parent), dtype=torch.bool)
    count = siblings.sum(1, keepdim=True)
    others = (siblings.to(tree.mean.dtype) / count.clamp_min(1)) @ tree.mean
    return torch.where(count > 0, tree.mean - others, torch.zeros_like(tree.mean))


class EdgeHead(nn.Module):
    """`model` followed by one output per edge of the tree (B x R), so saliency methods see
    decisions: the child logit z_r (`margin=False`, the mean of its leaves' logits) or the
    decision's margin against the siblings (`margin=True`, see `margin_matrix`). Both are
    fixed linear combinations of the class logits. The wrapped net is `self.net`: layer
    names gain a `net.` prefix."""

    def __init__(self, model: nn.Module, tree: Tree, margin: bool = False) -> None:
        super().__init__()
        self.net = model
        self.register_buffer("mean", (margin_matrix(tree) if margin else tree.mean).clone())
        self.xai = replace(model_info(model), class_names=tuple(tree.edge_names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) @ self.mean.to(x.dtype).T


def node_saliency(model: nn.Module, tree: Tree, x: torch.Tensor, edges: torch.Tensor,
                  method: str = "gradcam", margin: bool = False, **params) -> torch.Tensor:
    """B x D x H x W: one map per decision on each image's path (zeros past its end).

    Map d of image b explains edge `edges[b, d]` with `xu.explain(method, ...)` on
    `EdgeHead`: its child logit, or with `margin=True` the decision itself (the child's
    margin over its siblings); one batched call per depth.
    """
    head = EdgeHead(model, tree, margin=margin).to(x.device)
    maps = torch.zeros(x.shape[0], edges.shape[1], *x.shape[-2:], device=x.device, dtype=x.dtype)
    for d in range(edges.shape[1]):
        keep = (edges[:, d] >= 0).nonzero().flatten().to(x.device)
        if keep.numel():
            target = edges[keep.cpu(), d].to(x.device)
            maps[keep, d] = explain(method, head, x[keep], target=target, **params).saliency
    return maps


def decision_saliency(model: nn.Module, tree: Tree, x: torch.Tensor, edges: torch.Tensor,
                      method: str = "gradcam", **params) -> torch.Tensor:
    """B x D x H x W maps of the decisions themselves: `node_saliency(..., margin=True)`."""
    return node_saliency(model, tree, x, edges, method, margin=True, **params)


def successive_similarity(maps: torch.Tensor, edges: torch.Tensor) -> dict[str, float]:
    """How alike the maps of successive decisions on one path are: the Pearson correlation
    of maps d and d + 1 (B x D x H x W, as from `node_saliency`) wherever both edges exist
    and neither map is constant, averaged over those pairs. Returns mean, pairs (used) and
    constant (maps left out for having no variance, e.g. all zero after Grad-CAM's ReLU)."""
    valid = (edges >= 0).to(maps.device)
    flat = maps.flatten(2).double()
    centred = flat - flat.mean(2, keepdim=True)
    norm = centred.norm(dim=2)
    varied = norm > 1e-12 * flat.abs().amax(2).clamp_min(1e-30)
    r = (centred[:, :-1] * centred[:, 1:]).sum(2) / (norm[:, :-1] * norm[:, 1:]).clamp_min(1e-300)
    use = valid[:, :-1] & valid[:, 1:] & varied[:, :-1] & varied[:, 1:]
    mean = float(r[use].mean()) if bool(use.any()) else float("nan")
    return {"mean": mean, "pairs": int(use.sum()), "constant": int((valid & ~varied).sum())}
