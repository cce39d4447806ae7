"""Neural-Backed Decision Trees (`xu.nbdt`): the induced hierarchy named by WordNet
(`hierarchy`), inference along the tree (`tree`), saliency maps of its decisions
(`saliency`), path plots (`plot`), the six-figure teaching task (`six_shapes`) and nbdt's
CIFAR-10 checkpoint (`cifar`)."""

from xai_utils.nbdt import cifar, six_shapes
from xai_utils.nbdt.cifar import load_cifar10_nbdt
from xai_utils.nbdt.hierarchy import (
    WordNetMissing,
    classifier_weights,
    imagenet_wnids,
    induce_graph,
    nbdt_induced_graph,
    read_graph,
    root_of,
    wnids_for,
    wordnet,
    write_graph,
)
from xai_utils.nbdt.plot import path_names, plot_path
from xai_utils.nbdt.saliency import (
    EdgeHead,
    decision_saliency,
    margin_matrix,
    node_saliency,
    successive_similarity,
)
from xai_utils.nbdt.tree import (
    RULES,
    Inference,
    Tree,
    agreement,
    edge_log_probs,
    edge_logits,
    explanation_lines,
    flat_tree,
    hard,
    induce,
    infer,
    last_steps,
    log_soft,
    soft,
    soft_path,
    tree_supervision_loss,
)

__all__ = [
    "RULES", "EdgeHead", "Inference", "Tree", "WordNetMissing", "agreement", "cifar",
    "classifier_weights", "decision_saliency", "edge_log_probs", "edge_logits",
    "explanation_lines", "flat_tree", "hard", "imagenet_wnids", "induce",
    "induce_graph", "infer", "last_steps", "load_cifar10_nbdt", "log_soft", "margin_matrix",
    "nbdt_induced_graph", "node_saliency", "path_names", "plot_path", "read_graph", "root_of",
    "six_shapes", "soft", "soft_path", "successive_similarity", "tree_supervision_loss",
    "wnids_for", "wordnet", "write_graph",
]
