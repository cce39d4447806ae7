"""Induced hierarchies for Neural-Backed Decision Trees, named with WordNet.

Wan, Dunlap, Ho, Yin, Lee, Jin, Petryk, Bargal, Gonzalez, "NBDT: Neural-Backed Decision
Trees", ICLR 2021 (arXiv:2004.00221), Sec. 3.2 "Induced hierarchy": the rows of the final
linear layer (one vector per class) are clustered agglomeratively (Ward linkage, Euclidean
distance) into a binary tree, single-child nodes are pruned, and every inner node is named by
WordNet: the deepest common hypernym of its children that no other node uses yet.

The nbdt package (0.0.4) implements this, but on current libraries it breaks in two places:
scikit-learn renamed `affinity=` to `metric=`, and when every common hypernym of two children
is already taken it makes a placeholder synset ("(generated)") that the next merge above
cannot use (AttributeError). `induce_graph` below is the same algorithm with two departures:
(1) a placeholder node keeps the common hypernyms of its children, so the merges above it
can still be named, and it is labelled as the paper names nodes, by the deepest common
hypernym of all its leaves, with a `*` mark ("whole*": "a group of wholes; that name is
already taken by another node"); (2) ties between equally deep hypernyms
are broken by name, so the tree is the same in every process (nbdt's pick depends on set
order). `nbdt_induced_graph` runs the nbdt package's own code (with the `metric=` shim) for
the cross-check on the class sets where it works.

WordNet 3.0 is read from data/generated/nltk_data (installed by `make setup`); without it
every function here raises `WordNetMissing` instead of naming nodes "(generated)".
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import networkx as nx
import torch

from xai_utils.data.paths import DATA_DIR

NLTK_DATA = DATA_DIR / "generated" / "nltk_data"
INSTALL_HINT = "run `make setup` (or `python scripts/install_wordnet.py`)"


class WordNetMissing(RuntimeError):
    """WordNet 3.0 for NLTK is not installed: inner nodes cannot be named."""


@functools.lru_cache(maxsize=1)
def wordnet():
    """NLTK's WordNet reader over the project's copy; a clear error when it is missing."""
    import nltk

    if str(NLTK_DATA) not in nltk.data.path:
        nltk.data.path.insert(0, str(NLTK_DATA))
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError as err:
        raise WordNetMissing(
            f"WordNet 3.0 for NLTK was not found (looked in {NLTK_DATA}/corpora/wordnet and "
            f"NLTK's default folders). Without it every inner node of an NBDT would be "
            f"named '(generated)'. To install it, {INSTALL_HINT}.") from err
    from nltk.corpus import wordnet as wn

    with warnings.catch_warnings():  # "multilingual functions are not available": expected
        warnings.simplefilter("ignore", UserWarning)
        wn.ensure_loaded()
    return wn


def synset(wnid: str):
    """The WordNet synset of a WordNet id such as 'n02123159'."""
    return wordnet().synset_from_pos_and_offset(wnid[0], int(wnid[1:]))


def wnid_of(syn) -> str:
    return f"{syn.pos()}{syn.offset():08d}"


def short_name(syn) -> str:
    """nbdt's node name: the synset's first lemma ('tiger_cat.n.02' -> 'tiger_cat')."""
    return syn.name().split(".")[0]


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (shipped by the nbdt package)."""
    text = resources.files("nbdt").joinpath("wnids/Imagenet1000.txt").read_text()
    return [w.strip() for w in text.splitlines() if w.strip()]


def wnids_for(names: Sequence[str]) -> list[str]:
    """WordNet ids for plain class names ('square', 'circle'): each name's first noun sense."""
    out = []
    for name in names:
        found = wordnet().synsets(name.replace(" ", "_"), pos="n")
        if not found:
            raise ValueError(f"no WordNet noun for class name {name!r}")
        out.append(wnid_of(found[0]))
    return out


def classifier_weights(model: torch.nn.Module) -> torch.Tensor:
    """The class vectors: the weight rows of the model's last nn.Linear (C x D)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier; an induced "
                         "hierarchy needs the class vectors of a final linear layer")
    return linears[-1].weight.detach().float().cpu()


def ward_merges(weights: torch.Tensor, branching_factor: int = 2, linkage: str = "ward",
                metric: str = "euclidean") -> list[tuple[int, int]]:
    """scikit-learn's agglomerative merge list (`children_`), as nbdt computes it."""
    from sklearn.cluster import AgglomerativeClustering

    clustering = AgglomerativeClustering(n_clusters=branching_factor, linkage=linkage,
                                         metric=metric, compute_full_tree=True)
    clustering.fit(weights.double().numpy())
    return [(int(a), int(b)) for a, b in clustering.children_]


def _deepest(candidates) -> object:
    return max(candidates, key=lambda s: (s.max_depth(), s.name()))


def _hypernyms(syn) -> set:
    """The synset and all its hypernyms (NLTK's `common_hypernyms` works on these sets)."""
    return {s for path in syn._iter_hypernym_lists() for s in path}


def induce_graph(weights: torch.Tensor, wnids: Sequence[str], linkage: str = "ward",
                 metric: str = "euclidean") -> nx.DiGraph:
    """The induced hierarchy (Wan et al. 2021, Sec. 3.2), nodes named by WordNet.

    Leaves are the `wnids` (class order = row order of `weights`); each merge of the Ward
    tree becomes a parent named by the deepest unused common hypernym of its two children.
    """
    wordnet()
    if weights.shape[0] != len(wnids):
        raise ValueError(f"{weights.shape[0]} class vectors but {len(wnids)} wnids")
    G = nx.DiGraph()
    hyper: dict[str, set] = {}  # node -> the hypernym set its parent may choose from
    shared: dict[str, set] = {}  # node -> the hypernyms common to all its leaves
    for wnid in wnids:
        syn = synset(wnid)
        G.add_node(wnid, label=short_name(syn))
        hyper[wnid] = shared[wnid] = _hypernyms(syn)
    index = list(wnids)
    n = len(wnids)
    for k, (a, b) in enumerate(ward_merges(weights, linkage=linkage, metric=metric)):
        left, right = index[a], index[b]
        common = hyper[left] & hyper[right]
        if not common:
            raise RuntimeError(f"{left} and {right} share no WordNet hypernym")
        unused = {s for s in common if wnid_of(s) not in G}
        if unused:
            parent_syn = _deepest(unused)
            parent = wnid_of(parent_syn)
            G.add_node(parent, label=short_name(parent_syn))
            hyper[parent] = _hypernyms(parent_syn)
        else:  # every common hypernym is taken: nbdt makes a placeholder here (departure 1)
            parent = f"f{n + k:08d}"
            G.add_node(parent, label=short_name(_deepest(shared[left] & shared[right])) + "*")
            hyper[parent] = common
        shared[parent] = shared[left] & shared[right]
        G.add_edge(parent, left)
        G.add_edge(parent, right)
        index.append(parent)
    return prune_single_child(G)


def prune_single_child(G: nx.DiGraph) -> nx.DiGraph:
    """Remove inner nodes with exactly one child, linking that child to the grandparent."""
    G = G.copy()
    for node in [v for v in G.nodes if G.out_degree(v) == 1]:
        (child,) = G.successors(node)
        for parent in list(G.predecessors(node)):
            G.add_edge(parent, child)
        G.remove_node(node)
    return G


def root_of(G: nx.DiGraph) -> str:
    roots = [v for v in G.nodes if G.in_degree(v) == 0]
    if len(roots) != 1:
        raise ValueError(f"a tree needs exactly one root, found {len(roots)}")
    return roots[0]


def write_graph(G: nx.DiGraph, path: str | Path) -> Path:
    """Save in nbdt's graph format (networkx node-link JSON with 'links', as nbdt reads it)."""
    data = {"directed": True, "multigraph": False, "graph": {},
            "nodes": [{"id": v, "label": G.nodes[v].get("label", v)} for v in G.nodes],
            "links": [{"source": u, "target": v} for u, v in G.edges]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def read_graph(path: str | Path) -> nx.DiGraph:
    data = json.loads(Path(path).read_text())
    G = nx.DiGraph()
    for node in data["nodes"]:
        G.add_node(node["id"], label=node.get("label", node["id"]))
    G.add_edges_from((e["source"], e["target"]) for e in data["links"])
    return G


def _import_nbdt_quietly() -> None:
    """Import nbdt without its import-time noise: `nbdt.utils` runs `stty size` and prints
    the failure when there is no terminal (notebooks, CI)."""
    if "nbdt.utils" in sys.modules:
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        saved = os.dup(2)
        os.dup2(null.fileno(), 2)
        try:
            import nbdt.utils  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def nbdt_patched() -> Iterator[None]:
    """Run nbdt 0.0.4 on current libraries: `affinity=` -> `metric=`, graph reads cached.

    nbdt re-reads the graph JSON and the wnid list once per inner node when it builds its
    decision rules (42 s for ImageNet); the cache makes that about 4 s. WordNet must exist:
    nbdt would silently name every node "(generated)" without it.
    """
    wordnet()
    _import_nbdt_quietly()
    import nbdt.data.custom as custom
    import nbdt.graph as graph
    from sklearn.cluster import AgglomerativeClustering

    def clustering(*args, affinity="euclidean", **kwargs):
        return AgglomerativeClustering(*args, metric=affinity, **kwargs)

    saved = (graph.AgglomerativeClustering, custom.read_graph, custom.get_wnids)
    graph.AgglomerativeClustering = clustering
    custom.read_graph = functools.lru_cache(maxsize=8)(graph.read_graph)
    custom.get_wnids = functools.lru_cache(maxsize=8)(graph.get_wnids)
    try:
        with warnings.catch_warnings():  # networkx 3.5 warns on nbdt's node_link_graph call
            warnings.filterwarnings("ignore", category=FutureWarning, module="networkx")
            yield
    finally:
        graph.AgglomerativeClustering, custom.read_graph, custom.get_wnids = saved


def nbdt_induced_graph(weights: torch.Tensor, wnids: Sequence[str]) -> nx.DiGraph:
    """The nbdt package's own induced hierarchy (pruned), for cross-checks."""
    import nbdt.graph as graph

    with nbdt_patched():
        G = graph.build_induced_graph(list(wnids), None, state_dict={"fc.weight": weights})
        return graph.prune_single_successor_nodes(G)
