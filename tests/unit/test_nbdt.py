"""NBDT: invariants of soft/hard inference, the induced WordNet tree, and cross-checks with
the nbdt package (its decision rules on our graph; its induced tree where it works)."""

from __future__ import annotations

import time

import networkx as nx
import pytest
import torch

import xai_utils as xu
from xai_utils import nbdt
from xai_utils.nbdt import six_shapes as nbdt_shapes
from xai_utils.nbdt.hierarchy import NLTK_DATA, WordNetMissing


@pytest.fixture(scope="module")
def wn():
    try:
        return nbdt.wordnet()
    except WordNetMissing as err:  # make setup installs it: missing data is a failure
        pytest.fail(f"WordNet missing: {err}")


def _toy_tree() -> nbdt.Tree:
    """root -> {A -> {c0, c1}, c2}; classes c0..c2 (hand-made, unequal depths)."""
    G = nx.DiGraph()
    G.add_edges_from([("root", "A"), ("root", "c2"), ("A", "c0"), ("A", "c1")])
    return nbdt.Tree.from_graph(G, ["c0", "c1", "c2"])


def test_toy_tree_hand_worked():
    tree = _toy_tree()
    logits = torch.tensor([[2.0, 0.0, 0.5]], dtype=torch.float64)
    out = nbdt.infer(tree, logits)
    # root: z_A = mean(2, 0) = 1, z_c2 = 0.5 -> p(A) = 1 / (1 + e^-0.5)
    p_a = 1 / (1 + torch.exp(torch.tensor(-0.5, dtype=torch.float64)))
    p_c0 = 1 / (1 + torch.exp(torch.tensor(-2.0, dtype=torch.float64)))
    expected = torch.stack([p_a * p_c0, p_a * (1 - p_c0), 1 - p_a])[None]
    torch.testing.assert_close(out.soft_probs, expected)
    assert out.hard_pred.tolist() == [0]
    assert [n for n, _ in out.decisions(tree)[0]] == ["A", "c0"]
    assert out.decisions(tree)[0][1][1] == pytest.approx(float(p_c0))
    line = nbdt.explanation_lines(tree, out, ["zero", "one", "two"])[0]
    assert line == f"Prediction: zero // Decisions: A ({float(p_a):.2%}), c0 ({float(p_c0):.2%})"


def test_soft_sums_to_one_and_hard_is_a_path():
    torch.manual_seed(0)
    G = nx.balanced_tree(3, 3, create_using=nx.DiGraph)  # 27 leaves, depth 3
    leaves = sorted(v for v in G if G.out_degree(v) == 0)
    tree = nbdt.Tree.from_graph(G, leaves)
    logits = torch.randn(16, 27, dtype=torch.float64) * 3
    out = nbdt.infer(tree, logits)
    torch.testing.assert_close(out.soft_probs.sum(1), torch.ones(16, dtype=torch.float64))
    assert out.hard_edges.shape == (16, 3)
    assert (tree.child_leaf[out.hard_edges[:, -1]] == out.hard_pred).all()


def test_flat_tree_is_the_network():
    torch.manual_seed(1)
    logits = torch.randn(32, 10, dtype=torch.float64) * 4
    out = nbdt.infer(nbdt.flat_tree(10), logits)
    torch.testing.assert_close(out.soft_probs, logits.softmax(1))
    assert torch.equal(out.hard_pred, logits.argmax(1))
    assert torch.equal(out.soft_pred, logits.argmax(1))


def test_marginal_rule_soft_tree_is_the_softmax():
    torch.manual_seed(2)
    G = nx.balanced_tree(2, 4, create_using=nx.DiGraph)
    leaves = sorted(v for v in G if G.out_degree(v) == 0)
    logits = torch.randn(8, 16, dtype=torch.float64) * 5
    out = nbdt.infer(nbdt.Tree.from_graph(G, leaves), logits, rule="marginal")
    torch.testing.assert_close(out.soft_probs, logits.softmax(1))


def test_tree_supervision_loss():
    torch.manual_seed(3)
    logits = (torch.randn(6, 3, dtype=torch.float64) * 2).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    # flat tree: the soft tree is the softmax, so the tree term is the cross entropy again
    flat = nbdt.tree_supervision_loss(nbdt.flat_tree(3), logits, labels, weight=0.5)
    torch.testing.assert_close(flat, 1.5 * ce)
    tree = _toy_tree()
    soft = nbdt.infer(tree, logits.detach()).soft_probs
    expected = ce + 2.0 * -soft[torch.arange(6), labels].log().mean()
    loss = nbdt.tree_supervision_loss(tree, logits, labels, weight=2.0)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_wordnet_missing_is_a_clear_error(tmp_path, monkeypatch):
    import nltk

    from xai_utils.nbdt import hierarchy as nbdt_tree

    monkeypatch.setattr(nbdt_tree, "NLTK_DATA", tmp_path / "none")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "none")])
    nbdt_tree.wordnet.cache_clear()
    try:
        with pytest.raises(WordNetMissing, match="install_wordnet.py"):
            nbdt_tree.wordnet()
    finally:
        nbdt_tree.wordnet.cache_clear()
    assert NLTK_DATA.name == "nltk_data"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_graph_file_is_nbdt_format(wn, tmp_path):
    from nbdt.graph import get_leaves, get_root, read_graph

    weights = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    G = nbdt.induce_graph(weights, nbdt_shapes.WNIDS)
    path = nbdt.write_graph(G, tmp_path / "g.json")
    H = read_graph(str(path))
    assert set(H.edges) == set(G.edges)
    assert sorted(get_leaves(H)) == sorted(nbdt_shapes.WNIDS)
    assert get_root(H) == nbdt.root_of(G)


def test_matches_nbdt_package_induced_tree(wn):
    """On class sets where nbdt's own code runs (no name runs out), same tree, same names."""
    wnids = list(nbdt_shapes.WNIDS)
    for seed in range(4):
        weights = torch.randn(6, 16, generator=torch.Generator().manual_seed(seed))
        ours = nbdt.induce_graph(weights, wnids)
        theirs = nbdt.nbdt_induced_graph(weights, wnids)
        assert set(ours.edges) == set(theirs.edges)
        assert {v: ours.nodes[v]["label"] for v in ours} == \
            {v: theirs.nodes[v]["label"] for v in theirs}


@pytest.fixture(scope="module")
def imagenet(wn):
    model = xu.load_model("efficientnet_lite0")
    start = time.perf_counter()
    tree = nbdt.induce(model)
    seconds = time.perf_counter() - start
    x = xu.preprocess([xu.load_sample(n) for n in ("chelsea", "coffee")], model)
    with torch.no_grad():
        logits = model(x)
    return model, tree, seconds, x, logits


def test_imagenet_tree_builds_in_seconds(imagenet):
    _, tree, seconds, _, _ = imagenet
    assert seconds < 20, f"building the ImageNet tree took {seconds:.1f} s"
    assert len(tree.nodes) == 999 and tree.num_classes == 1000
    below_root = (tree.mean[tree.parent == 0] > 0).sum(1)
    assert int(below_root.sum()) == 1000 and len(below_root) == 2  # binary, covers all


def test_chelsea_path_has_wordnet_names(imagenet):
    model, tree, _, _, logits = imagenet
    out = nbdt.infer(tree, logits)
    line = nbdt.explanation_lines(tree, out, model.xai.class_names)[0]
    print(line)
    assert "(generated)" not in line
    wn = nbdt.wordnet()
    for mode in ("hard", "soft"):
        for name, prob in out.decisions(tree, mode)[0]:
            assert wn.synsets(name.rstrip("*")), f"{name!r} is not a WordNet name"
            assert (0.5 if mode == "hard" else 0.0) <= prob <= 1.0  # binary: greedy >= 1/2
    # the path to the network's class ends with the WordNet names of the cat family
    path = nbdt.soft_path(tree, logits.argmax(1).cpu())
    names = [tree.edge_names[int(r)] for r in path[0] if r >= 0]
    assert names[-3:] == ["cat", "domestic_cat", "tiger_cat"]


def test_soft_probabilities_match_nbdt_rules(imagenet, tmp_path):
    from importlib import resources

    from nbdt.analysis import HardEmbeddedDecisionRules, SoftEmbeddedDecisionRules

    from xai_utils.nbdt.hierarchy import nbdt_patched

    model, tree, _, _, logits = imagenet
    path = nbdt.write_graph(tree.graph, tmp_path / "lite0.json")
    wnids = str(resources.files("nbdt") / "wnids/Imagenet1000.txt")
    start = time.perf_counter()
    with nbdt_patched():
        soft_rules = SoftEmbeddedDecisionRules("Imagenet1000", str(path), wnids)
        hard_rules = HardEmbeddedDecisionRules("Imagenet1000", str(path), wnids)
    assert time.perf_counter() - start < 20
    out = nbdt.infer(tree, logits)
    ref = soft_rules.forward(logits.cpu().float())
    torch.testing.assert_close(out.soft_probs.cpu().float(), ref, atol=1e-6, rtol=1e-4)
    hard_pred = hard_rules.forward(logits.cpu().float()).argmax(1)
    assert torch.equal(out.hard_pred.cpu(), hard_pred)


def test_node_gradcam_is_gradcam_of_the_mean_logit(imagenet):
    """The map for a decision = Grad-CAM of (mean of the leaves' logits) on the plain net."""
    model, tree, _, x, logits = imagenet
    path = nbdt.soft_path(tree, logits.argmax(1).cpu())
    depth = int((path[0] >= 0).sum()) - 1  # the last decision: the class itself
    maps = nbdt.node_saliency(model, tree, x[:1], path[:1, depth:depth + 1], layer="net.bn2")
    direct = xu.explain("gradcam", model, x[:1], target=int(logits[0].argmax()), layer="bn2")
    torch.testing.assert_close(maps[:, 0], direct.saliency, atol=1e-5, rtol=1e-4)


def test_tutorial_checkpoint_offline_is_a_clear_error(monkeypatch, tmp_path):
    from xai_utils.nbdt import cifar as nbdt_cifar

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ConnectionError, match="ckpt-CIFAR10-wrn28_10_cifar10"):
        nbdt_cifar.load_cifar10_nbdt()


def test_figures_generator_is_deterministic():
    a, b = nbdt_shapes.generate(6, seed=3), nbdt_shapes.generate(6, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    white = (a.images[:, 0] == 1).float().mean((1, 2))
    assert ((white > 0.03) & (white < 0.4)).all()  # one visible figure per image


def _two_pair_tree() -> nbdt.Tree:
    """root -> {L -> {c0, c1}, R -> {c2, c3}}."""
    G = nx.DiGraph()
    G.add_edges_from([("root", "L"), ("root", "R"), ("L", "c0"), ("L", "c1"), ("R", "c2"),
                      ("R", "c3")])
    return nbdt.Tree.from_graph(G, ["c0", "c1", "c2", "c3"])


def test_margin_matrix_is_child_minus_siblings():
    tree = _two_pair_tree()
    margin = nbdt.margin_matrix(tree)
    names = tree.edge_names
    left, right = names.index("L"), names.index("R")
    torch.testing.assert_close(margin[left], tree.mean[left] - tree.mean[right])
    torch.testing.assert_close(margin[right], -margin[left])
    # three children: the chosen child's logit minus the mean of the other two
    G = nx.DiGraph()
    G.add_edges_from([("root", "a"), ("root", "b"), ("root", "c")])
    flat = nbdt.Tree.from_graph(G, ["a", "b", "c"])
    torch.testing.assert_close(nbdt.margin_matrix(flat),
                               torch.tensor([[1.0, -0.5, -0.5], [-0.5, 1.0, -0.5],
                                             [-0.5, -0.5, 1.0]]))


def test_decision_map_has_the_known_support():
    """Classes below L weight feature channel 0, those below R channel 1, and all four share
    channels 2 and 3 (both copies of input channel 2). Channel 0 is on in the left half only,
    channel 1 in the right half, the shared ones everywhere: the decision L-vs-R is
    z_L - z_R = mean(ch 0) - mean(ch 1), so its Grad-CAM is the left half exactly, while the
    child logit z_L (with the shared channels) lights up the whole image."""
    tree = _two_pair_tree()
    features = torch.nn.Conv2d(3, 4, 1, bias=False)
    head = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        features.weight.copy_(torch.eye(3)[[0, 1, 2, 2], :, None, None])
        head.weight.copy_(torch.tensor([[1.0, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0],
                                        [0, 1, 0, 1]]))
    model = torch.nn.Sequential(features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                head).double()
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    x[:, 0, :, :4] = 1
    x[:, 1, :, 4:] = 1
    x[:, 2] = 1
    left, right = tree.edge_names.index("L"), tree.edge_names.index("R")
    edges = torch.tensor([[left, right]])
    decision = nbdt.decision_saliency(model, tree, x, edges, layer="net.0")[0]
    child = nbdt.node_saliency(model, tree, x, edges, layer="net.0")[0]
    half = torch.zeros(8, 8, dtype=torch.bool)
    half[:, :4] = True
    assert (decision[0][half] > 0).all() and (decision[0][~half] == 0).all()
    assert (decision[1][~half] > 0).all() and (decision[1][half] == 0).all()
    assert (child > 0).all()  # the shared channels: evidence for the parent, not the step
    # before the ReLU Grad-CAM is linear in the target: margin map = difference of the maps
    torch.testing.assert_close(decision[0].max(), (child[0] - child[1]).max().to(decision.dtype))


def test_successive_similarity_counts_pairs_and_constant_maps():
    a = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    a[0, 0, 0, 0] = a[0, 1, 0, 0] = 1.0  # maps 0 and 1 identical, map 2 all zero
    edges = torch.tensor([[0, 1, 2]])
    out = nbdt.successive_similarity(a, edges)
    assert out == {"mean": pytest.approx(1.0), "pairs": 1, "constant": 1}
    assert nbdt.successive_similarity(a, torch.tensor([[-1, 1, 2]]))["pairs"] == 0
