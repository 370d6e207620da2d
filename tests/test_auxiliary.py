"""The AC-GAN auxiliary classifier (imgtx.gan.auxiliary) and STrans-G's label input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from imgtx.errors import UserError
from imgtx.gan.auxiliary import AuxiliaryClassifierLoss
from imgtx.gan.conditioning import ProjectionHead
from imgtx.gan.losses import make_loss
from imgtx.gan.strans import STransDiscriminator, STransGenerator
from imgtx.gan.strans_configs import STransDiscriminatorConfig, STransGeneratorConfig

CLASSES = 3


def tiny_pair(aux: bool = True, label_input: bool = True):
    g = STransGeneratorConfig(image_size=8, latent_dim=8, bottom=2, dims=(16, 8, 8),
                              depths=(1, 1, 1), heads=(2, 1, 1), window=4, swin_from=8,
                              mlp_ratio=1.0, num_classes=CLASSES, class_embed_dim=4,
                              label_input=label_input)
    d = STransDiscriminatorConfig(image_size=8, num_classes=CLASSES, aux_classifier=aux,
                                  stem_stride=1, dims=(8, 16), depths=(1,), heads=(1,), window=4,
                                  diffaug="")
    torch.manual_seed(0)
    return STransGenerator(g), STransDiscriminator(d)


def test_head_returns_classifier_logits_beside_the_unchanged_critic():
    torch.manual_seed(0)
    head = ProjectionHead(6, num_classes=CLASSES, aux_classifier=True)
    h, labels = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    out, logits = head(h, labels, return_class_logits=True)
    torch.testing.assert_close(out, head(h, labels))
    torch.testing.assert_close(logits, h @ head.classifier.weight.T + head.classifier.bias)
    assert logits.shape == (4, CLASSES)


def test_head_without_classifier_refuses_logits_and_unconditional_refuses_classifier():
    with pytest.raises(UserError, match="auxiliary classifier"):
        ProjectionHead(6, num_classes=CLASSES)(torch.randn(2, 6), torch.tensor([0, 1]),
                                               return_class_logits=True)
    with pytest.raises(UserError, match="num_classes > 0"):
        ProjectionHead(6, num_classes=0, aux_classifier=True)


@pytest.mark.parametrize("loss_name", ["hinge", "wgan-gp", "logistic-r1"])
def test_loss_adds_cross_entropy_of_real_logits_without_extra_forward(loss_name):
    G, D = tiny_pair()
    D.eval()  # no augmentation, so the reference forward sees the same input
    real = torch.rand(4, 3, 8, 8) * 2 - 1
    labels = torch.tensor([0, 1, 2, 1])
    fake = G(torch.randn(4, 8), labels)
    base = make_loss(loss_name)
    calls = []
    D.register_forward_hook(lambda *args: calls.append(1))

    torch.manual_seed(1)
    plain, _ = base.discriminator(D, real, fake, labels)
    plain_calls = len(calls)
    torch.manual_seed(1)  # the same penalty interpolation draw
    wrapped, parts = AuxiliaryClassifierLoss(base, weight=0.5).discriminator(D, real, fake, labels)
    assert len(calls) == 2 * plain_calls  # the logits come from the real batch's own forward

    expected_ce = F.cross_entropy(D(real, labels, return_class_logits=True)[1], labels)
    torch.testing.assert_close(wrapped, plain + 0.5 * expected_ce, rtol=1e-5, atol=1e-6)
    assert parts["d_class"] == pytest.approx(float(expected_ce.detach()), rel=1e-5)
    assert 0.0 <= parts["d_class_acc"] <= 1.0


def test_generator_term_pushes_fakes_towards_their_label():
    G, D = tiny_pair()
    D.eval()
    labels = torch.tensor([0, 1, 2, 2])
    fake = G(torch.randn(4, 8), labels)
    loss = AuxiliaryClassifierLoss(make_loss("hinge"), weight=2.0)
    expected = -D(fake, labels).mean() + 2.0 * F.cross_entropy(
        D(fake, labels, return_class_logits=True)[1], labels)
    g_loss = loss.generator(D, fake, labels)
    torch.testing.assert_close(g_loss, expected)
    g_loss.backward()
    assert G.to_tokens.weight.grad.abs().sum() > 0


def test_fade_lowers_only_the_generator_weight_linearly_to_zero():
    G, D = tiny_pair()
    D.eval()
    labels = torch.tensor([0, 1, 2, 2])
    real = torch.rand(4, 3, 8, 8) * 2 - 1
    fake = G(torch.randn(4, 8), labels).detach()
    seen = {"images": 0}
    loss = AuxiliaryClassifierLoss(make_loss("hinge"), weight=2.0, fade_kimg=4.0,
                                   images_seen=lambda: seen["images"])
    adversarial = -D(fake, labels).mean()
    ce = F.cross_entropy(D(fake, labels, return_class_logits=True)[1], labels)
    d_full = AuxiliaryClassifierLoss(make_loss("hinge"), weight=2.0).discriminator(
        D, real, fake, labels)[0]
    for images, weight in [(0, 2.0), (1000, 1.5), (3000, 0.5), (4000, 0.0), (9000, 0.0)]:
        seen["images"] = images
        assert loss.generator_weight() == pytest.approx(weight)
        torch.testing.assert_close(loss.generator(D, fake, labels), adversarial + weight * ce)
        # D's classifier keeps its full weight on real images
        torch.testing.assert_close(loss.discriminator(D, real, fake, labels)[0], d_full)


def test_fade_reaches_the_loss_through_the_training_settings(tmp_path):
    from imgtx.gan.train import settings_from_registry

    with pytest.raises(UserError, match="aux_fade_kimg"):
        settings_from_registry({}, aux_fade_kimg=0.0, out=str(tmp_path), max_steps=1)
    with pytest.raises(UserError, match="aux_fade_kimg"):
        AuxiliaryClassifierLoss(make_loss("hinge"), fade_kimg=2.0)  # no image count
    assert settings_from_registry({"aux_fade_kimg": 30}, out=str(tmp_path),
                                  max_steps=1).aux_fade_kimg == 30


def test_auxiliary_loss_needs_labels_and_positive_weight():
    with pytest.raises(UserError, match="aux_weight"):
        AuxiliaryClassifierLoss(make_loss("hinge"), weight=0.0)
    G, D = tiny_pair()
    with pytest.raises(UserError, match="labels"):
        AuxiliaryClassifierLoss(make_loss("hinge")).generator(D, torch.zeros(2, 3, 8, 8))


def test_label_input_lets_the_label_change_a_fresh_generator():
    """With label_input the input MLP reads the class embedding: a fresh G's output already
    depends on the label (AdaNorm-T alone starts label-blind: its scales start at zero)."""
    z = torch.randn(2, 8)
    for label_input, should_differ in [(True, True), (False, False)]:
        G, _ = tiny_pair(label_input=label_input)
        G.eval()
        a, b = G(z, torch.tensor([0, 0])), G(z, torch.tensor([1, 1]))
        assert bool((a - b).abs().max() > 1e-4) is should_differ
    G, _ = tiny_pair(label_input=True)
    assert G.to_tokens.in_features == G.condition.cond_dim


def test_saved_pair_round_trips_with_the_classifier(tmp_path):
    G, D = tiny_pair()
    D.save_pretrained(tmp_path / "d")
    G.save_pretrained(tmp_path / "g")
    D2 = STransDiscriminator.from_pretrained(tmp_path / "d")
    G2 = STransGenerator.from_pretrained(tmp_path / "g")
    assert D2.config.aux_classifier and G2.config.label_input
    x, labels = torch.rand(2, 3, 8, 8), torch.tensor([0, 2])
    D.eval(), D2.eval()
    torch.testing.assert_close(D2(x, labels, return_class_logits=True)[1],
                               D(x, labels, return_class_logits=True)[1])
    bad = copy.deepcopy(D.config)
    bad.aux_classifier = False
    with pytest.raises(Exception, match="classifier"):
        STransDiscriminator(bad).load_state_dict(D.state_dict())


def test_transgan_discriminator_gets_the_same_classifier():
    from imgtx.gan.configs import gan_entry
    from imgtx.gan.transgan import TransGANDiscriminator

    config = copy.deepcopy(gan_entry("transgan-tiny").discriminator)
    config.num_classes, config.aux_classifier = CLASSES, True
    config.__post_init__()
    torch.manual_seed(0)
    D = TransGANDiscriminator(config).eval()
    size = config.image_size
    images, labels = torch.rand(2, 3, size, size) * 2 - 1, torch.tensor([0, 2])
    out, logits = D(images, labels, return_class_logits=True)
    torch.testing.assert_close(out, D(images, labels))
    assert logits.shape == (2, CLASSES)
