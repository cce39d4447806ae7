"""Neural-Backed Decision Trees: a network's prediction read as a path of named decisions.

Wan et al., "NBDT: Neural-Backed Decision Trees", ICLR 2021 (arXiv:2004.00221), Sec. 3.1
"Embedded decision rules": inner node i with children j gets, for each child, the logit
z_ij = mean of the network's logits over the leaves (classes) below child j; the node's
decision is softmax_j(z_ij). Hard inference walks from the root taking the argmax child
(greedy); soft inference gives class c the product of the decision probabilities along the
root-to-c path (the paper's eq. for p(c)), so the soft tree is a proper distribution.

Everything is batched on the logits' device: the children of every inner node are rows of
one R x C averaging matrix (R = number of edges), per-node softmaxes are segment softmaxes,
and a class's soft log-probability is one matrix product with the R x C path indicator.
Builds a tree from a graph in nbdt's format (`hierarchy.py`), uses plain mean (nbdt's default,
not its `weighted_average` option), and returns decisions as (name, probability) lists like
nbdt's `forward_with_decisions`. The network is not fine-tuned with the tree-supervision
loss here (the paper's accuracy numbers need that); the tree explains the network as is.

    tree = xu.nbdt.induce(model)                 # efficientnet_lite0: WordNet-named, ~seconds
    out = xu.nbdt.infer(tree, model(x))          # soft/hard predictions, decisions per image
    print(xu.nbdt.explanation_lines(tree, out))  # "Prediction: tabby // Decisions: ..."
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import nn

from xai_utils.nbdt.hierarchy import (
    classifier_weights,
    imagenet_wnids,
    induce_graph,
    root_of,
    write_graph,
)


@dataclass
class Tree:
    """An NBDT over C classes, as tensors for batched inference."""

    graph: nx.DiGraph
    wnids: list[str]  # leaf ids in class order
    nodes: list[str]  # inner nodes, breadth first from the root
    labels: list[str]  # the name of every inner node
    parent: torch.Tensor  # R: inner-node index of each edge's parent
    child_node: torch.Tensor  # R: inner-node index of the edge's child, -1 for a leaf
    child_leaf: torch.Tensor  # R: class index of the edge's child, -1 for an inner node
    mean: torch.Tensor  # R x C: row r averages the logits of the leaves under edge r
    children: torch.Tensor  # N x K: edge indices of each inner node's children, -1 padded
    edge_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.wnids)

    @property
    def depth(self) -> int:
        return int(nx.dag_longest_path_length(self.graph))

    @classmethod
    def from_graph(cls, G: nx.DiGraph, wnids: Sequence[str]) -> Tree:
        missing = [w for w in wnids if w not in G or G.out_degree(w) != 0]
        if missing:
            raise ValueError(f"{len(missing)} classes are not leaves of the tree, e.g. "
                             f"{missing[:3]}")
        root = root_of(G)
        nodes = [v for v in nx.bfs_tree(G, root) if G.out_degree(v) > 0]
        node_index = {v: i for i, v in enumerate(nodes)}
        leaf_index = {w: c for c, w in enumerate(wnids)}
        parent, child_node, child_leaf, rows, names = [], [], [], [], []
        for i, v in enumerate(nodes):
            for child in sorted(G.successors(v), key=str):
                below = [leaf_index[w] for w in nx.descendants(G, child) | {child}
                         if w in leaf_index]
                parent.append(i)
                child_node.append(node_index.get(child, -1))
                child_leaf.append(leaf_index.get(child, -1))
                rows.append(below)
                names.append(G.nodes[child].get("label", child))
        mean = torch.zeros(len(rows), len(wnids))
        for r, below in enumerate(rows):
            mean[r, below] = 1.0 / len(below)
        width = max(G.out_degree(v) for v in nodes)
        children = torch.full((len(nodes), width), -1, dtype=torch.long)
        counts = [0] * len(nodes)
        for r, i in enumerate(parent):
            children[i, counts[i]] = r
            counts[i] += 1
        return cls(G, list(wnids), nodes, [G.nodes[v].get("label", v) for v in nodes],
                   torch.tensor(parent), torch.tensor(child_node), torch.tensor(child_leaf),
                   mean, children, names)


def flat_tree(num_classes: int) -> Tree:
    """Depth 1: one root whose children are all classes (soft = softmax, hard = argmax)."""
    G = nx.DiGraph()
    wnids = [f"c{c}" for c in range(num_classes)]
    G.add_node("root", label="root")
    for w in wnids:
        G.add_node(w, label=w)
        G.add_edge("root", w)
    return Tree.from_graph(G, wnids)


def induce(model: nn.Module, wnids: Sequence[str] | None = None, path=None) -> Tree:
    """The induced, WordNet-named hierarchy of `model`'s classifier (ImageNet wnids default).

    `path`: also save the graph there in nbdt's format (readable by `nbdt.model.SoftNBDT`).
    """
    weights = classifier_weights(model)
    wnids = list(wnids) if wnids is not None else imagenet_wnids()
    G = induce_graph(weights, wnids)
    if path is not None:
        write_graph(G, path)
    return Tree.from_graph(G, wnids)


RULES = ("mean", "marginal")


def edge_logits(tree: Tree, logits: torch.Tensor, rule: str = "mean") -> torch.Tensor:
    """B x R: each edge's child logit.

    `rule="mean"` (NBDT): the mean of the original logits of the child's leaves.
    `rule="marginal"` (not NBDT, a reference point): log of the summed softmax probabilities
    of its leaves, so each node's softmax is the exact conditional probability of the child
    and the soft tree reproduces the network's softmax.
    """
    if rule == "mean":
        return logits @ tree.mean.to(logits.device, logits.dtype).T
    if rule == "marginal":
        on_path = (tree.mean > 0).to(logits.device, torch.float64)
        return (logits.double().softmax(1) @ on_path.T).log().to(logits.dtype)
    raise ValueError(f"unknown rule {rule!r}; use one of {RULES}")


def edge_log_probs(tree: Tree, logits: torch.Tensor, rule: str = "mean") -> torch.Tensor:
    """B x R: log softmax of the child logits within each inner node (segment softmax)."""
    z = edge_logits(tree, logits, rule)
    parent = tree.parent.to(z.device).expand_as(z)
    top = torch.full((z.shape[0], len(tree.nodes)), -torch.inf, device=z.device, dtype=z.dtype)
    top = top.scatter_reduce(1, parent, z, reduce="amax")
    shifted = z - top.gather(1, parent)
    total = torch.zeros_like(top).scatter_add(1, parent, shifted.exp())
    return shifted - total.log().gather(1, parent)


def log_soft(tree: Tree, logits: torch.Tensor, rule: str = "mean") -> torch.Tensor:
    """B x C log soft-tree probabilities: the sum of log decisions along each root-leaf path."""
    on_path = (tree.mean > 0).to(logits.device, logits.dtype)  # R x C: edge r leads to c
    return edge_log_probs(tree, logits, rule) @ on_path


def soft(tree: Tree, logits: torch.Tensor, rule: str = "mean") -> torch.Tensor:
    """B x C soft-tree class probabilities: product of decisions along each root-leaf path."""
    return log_soft(tree, logits, rule).exp()


def tree_supervision_loss(tree: Tree, logits: torch.Tensor, labels: torch.Tensor,
                          weight: float = 1.0) -> torch.Tensor:
    """NBDT's soft tree-supervision loss (Wan et al. 2021, Sec. 3.2): the network's cross
    entropy plus `weight` times the soft tree's, -log p_tree(label).

    The paper's form: the `nbdt` package instead passes the tree's probabilities to
    `CrossEntropyLoss` as if they were logits (a softmax of probabilities), which caps the
    tree term's gradient; we take the log of the tree's distribution as the paper writes it.
    """
    return (nn.functional.cross_entropy(logits, labels)
            + weight * nn.functional.nll_loss(log_soft(tree, logits), labels))


def hard(tree: Tree, logits: torch.Tensor,
         rule: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy descent from the root: (B predicted classes, B x depth edges taken, -1 pad)."""
    logp = edge_log_probs(tree, logits, rule)
    b = torch.arange(logits.shape[0], device=logits.device)
    children = tree.children.to(logits.device)
    child_node, child_leaf = tree.child_node.to(logits.device), tree.child_leaf.to(logits.device)
    node = torch.zeros_like(b)  # everyone starts at the root (inner node 0)
    pred = torch.full_like(b, -1)
    edges = []
    while bool((pred < 0).any()):
        options = children[node]  # B x K
        scores = logp.gather(1, options.clamp_min(0)).masked_fill(options < 0, -torch.inf)
        edge = options[b, scores.argmax(1)]
        active = pred < 0
        edges.append(torch.where(active, edge, torch.full_like(edge, -1)))
        pred = torch.where(active & (child_leaf[edge] >= 0), child_leaf[edge], pred)
        node = torch.where(child_node[edge] >= 0, child_node[edge], node)
    return pred, torch.stack(edges, 1)


def soft_path(tree: Tree, classes: torch.Tensor) -> torch.Tensor:
    """B x depth edges from the root to each class (the path the soft prediction explains)."""
    leaf_edges = {int(c): r for r, c in enumerate(tree.child_leaf.tolist()) if c >= 0}
    paths = []
    for c in classes.tolist():
        path, r = [], leaf_edges[c]
        while True:
            path.insert(0, r)
            up = int(tree.parent[r])
            if up == 0:
                break
            r = int((tree.child_node == up).nonzero()[0])
        paths.append(path)
    width = max(len(p) for p in paths)
    return torch.tensor([p + [-1] * (width - len(p)) for p in paths])


def last_steps(edges: torch.Tensor, k: int) -> torch.Tensor:
    """B x k: the last k edges of each path (right-aligned, -1 padded on the left)."""
    out = torch.full((edges.shape[0], k), -1, dtype=edges.dtype)
    for b, row in enumerate(edges.tolist()):
        kept = [e for e in row if e >= 0][-k:]
        if kept:
            out[b, k - len(kept):] = torch.tensor(kept, dtype=edges.dtype)
    return out


@dataclass
class Inference:
    """Soft and hard NBDT outputs for a batch, with the decisions along each path."""

    logits: torch.Tensor  # B x C, the network's
    soft_probs: torch.Tensor  # B x C
    soft_pred: torch.Tensor  # B
    hard_pred: torch.Tensor  # B
    edge_probs: torch.Tensor  # B x R: each child's probability at its parent
    soft_edges: torch.Tensor  # B x D edge indices (-1 pad)
    hard_edges: torch.Tensor  # B x D

    def decisions(self, tree: Tree, mode: str = "hard") -> list[list[tuple[str, float]]]:
        """Per image, (child name, probability) along the path (root excluded, as nbdt)."""
        edges = self.hard_edges if mode == "hard" else self.soft_edges
        probs = self.edge_probs.gather(1, edges.clamp_min(0).to(self.edge_probs.device)).cpu()
        return [[(tree.edge_names[int(e)], float(p))
                 for e, p in zip(row, prow, strict=True) if e >= 0]
                for row, prow in zip(edges.tolist(), probs, strict=True)]


@torch.no_grad()
def infer(tree: Tree, logits: torch.Tensor, rule: str = "mean") -> Inference:
    """Soft and hard inference for a batch of logits (B x C); `rule`: see `edge_logits`."""
    if logits.dim() != 2 or logits.shape[1] != tree.num_classes:
        raise ValueError(f"logits must be B x {tree.num_classes}, got {tuple(logits.shape)}")
    logp = edge_log_probs(tree, logits, rule)
    probs = (logp @ (tree.mean > 0).to(logp.device, logp.dtype)).exp()
    soft_pred = probs.argmax(1)
    hard_pred, hard_edges = hard(tree, logits, rule)
    return Inference(logits, probs, soft_pred, hard_pred, logp.exp(),
                     soft_path(tree, soft_pred.cpu()), hard_edges.cpu())


def explanation_lines(tree: Tree, out: Inference, class_names: Sequence[str] | None = None,
                      mode: str = "hard") -> list[str]:
    """The tutorial's line per image: 'Prediction: tabby // Decisions: animal (99.34%), ...'."""
    pred = out.hard_pred if mode == "hard" else out.soft_pred
    lines = []
    for c, dec in zip(pred.tolist(), out.decisions(tree, mode), strict=True):
        name = class_names[c] if class_names else tree.graph.nodes[tree.wnids[c]]["label"]
        steps = ", ".join(f"{n} ({p:.2%})" for n, p in dec)
        lines.append(f"Prediction: {name} // Decisions: {steps}")
    return lines


def agreement(tree: Tree, logits: torch.Tensor, rule: str = "mean") -> dict[str, float]:
    """Top-1 agreement of the soft and hard trees with the network itself."""
    out = infer(tree, logits, rule)
    net = logits.argmax(1)
    return {"soft": float((out.soft_pred == net).float().mean()),
            "hard": float((out.hard_pred.to(net.device) == net).float().mean())}
