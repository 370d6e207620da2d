"""Class conditioning for transformer GANs: the generator's conditioning vector and AdaNorm-T
placement, and the discriminator's projection head.

Generator ("AdaNorm-T", Xu et al. 2021, arXiv 2110.13107, conditional-generator figure): a class
embedding and the latent give one conditioning vector ``c``; conditional norms predict a scale and
shift from ``c``. The figure compares three placements, selected here by name:

* ``"branch"`` (a): conditional norms replace the pre-norms inside the residual branch;
* ``"trunk"``  (b): plain pre-norms, plus a conditional norm on the trunk after each residual add;
* ``"both"``   (c): both of the above.

The paper's argument for the trunk: most of the signal flows through the shortcut, so a class
signal injected only into the branch is largely ignored.

Discriminator: the projection discriminator of Miyato & Koyama 2018 ("cGANs with Projection
Discriminator", eq. 3): ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>``; optionally also an
auxiliary classifier on the same features (Odena et al. 2017, "Conditional Image Synthesis with
Auxiliary Classifier GANs", sec. 3), whose loss lives in :mod:`imgtx.gan.auxiliary`.

Shapes: B batch, L latent width, E class-embedding width, C conditioning width, F features.
"""

from __future__ import annotations

import torch
from torch import nn

from imgtx.errors import UserError

__all__ = ["ADANORM_PLACEMENTS", "ClassCondition", "ProjectionHead", "adanorm_layer_kwargs",
           "check_labels"]

ADANORM_PLACEMENTS = ("branch", "trunk", "both")


def check_labels(labels: torch.Tensor | None, num_classes: int, batch: int,
                 who: str = "model") -> torch.Tensor | None:
    """Validate class labels for a model with ``num_classes`` classes (0: unconditional).

    Returns ``labels`` as a long ``(B,)`` tensor (or None for an unconditional model). Raises a
    :class:`UserError` when labels are missing, given to an unconditional model, of the wrong
    length, or out of range.
    """
    if num_classes == 0:
        if labels is not None:
            raise UserError(f"this {who} is unconditional (num_classes=0) but class labels were "
                            "given; drop the labels or use a class-conditional config")
        return None
    if labels is None:
        raise UserError(f"this {who} is class-conditional ({num_classes} classes): pass labels, "
                        "a (B,) tensor of class ids")
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() != batch:
        raise UserError(f"got {labels.numel()} labels for a batch of {batch}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise UserError(f"class labels must be in [0, {num_classes}), got values in "
                        f"[{int(labels.min())}, {int(labels.max())}]")
    return labels


def adanorm_layer_kwargs(placement: str, cond_dim: int | None) -> dict:
    """Keyword arguments for :class:`imgtx.transformer.TransformerLayer` (pre-norm) that place
    AdaNorm-T as ``placement`` says; an unconditional layer (``cond_dim=None``) gets plain
    LayerNorms whatever the placement.
    """
    if placement not in ADANORM_PLACEMENTS:
        raise UserError(f"AdaNorm-T placement {placement!r} is unknown; expected one of "
                        f"{ADANORM_PLACEMENTS} (paper figure: (a) branch, (b) trunk, (c) both)")
    if cond_dim is None:
        return {"norm_type": "layer", "trunk_norm": "none"}
    return {
        "norm_type": "conditional" if placement in ("branch", "both") else "layer",
        "trunk_norm": "conditional" if placement in ("trunk", "both") else "none",
        "cond_dim": cond_dim,
    }


class ClassCondition(nn.Module):
    """Class embedding and latent -> conditioning vector ``c`` for conditional norms.

    ``c = concat(embed(y), z)`` (``hidden=0``), or an MLP of it: ``Linear -> LeakyReLU(0.2) ->
    Linear`` to ``hidden`` channels. The concatenation follows the paper's wording ("scale and
    shift predicted from the class embedding and the latent"); the MLP is our option.

    Args:
        num_classes: number of classes (> 0).
        embed_dim: class-embedding width E.
        latent_dim: latent width L.
        hidden: MLP width, or 0 for plain concatenation.
    """

    def __init__(self, num_classes: int, embed_dim: int, latent_dim: int, hidden: int = 0) -> None:
        super().__init__()
        if num_classes < 1:
            raise UserError(f"ClassCondition needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, embed_dim)
        nn.init.normal_(self.embed.weight, std=1.0)  # on the scale of the N(0, 1) latent
        self.mlp = None
        if hidden:
            self.mlp = nn.Sequential(nn.Linear(embed_dim + latent_dim, hidden),
                                     nn.LeakyReLU(0.2), nn.Linear(hidden, hidden))
        self.cond_dim = hidden or embed_dim + latent_dim

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``z`` ``(B, L)``, ``labels`` ``(B,)`` long -> ``c`` ``(B, C)``."""
        labels = check_labels(labels, self.num_classes, z.shape[0], "generator")
        c = torch.cat([self.embed(labels), z], dim=1)  # (B, E + L)
        return c if self.mlp is None else self.mlp(c)


class ProjectionHead(nn.Module):
    """Critic head with an optional class projection (Miyato & Koyama 2018, eq. 3) and an
    optional auxiliary classifier (Odena et al. 2017).

    ``out = linear(h) + <embed(y), h>``; with ``num_classes=0`` only ``linear(h)``. With
    ``aux_classifier`` the head also has ``classifier = Linear(F, num_classes)``, whose logits
    ``forward(..., return_class_logits=True)`` returns beside the critic value.

    Args:
        features_dim: width F of the pooled discriminator features ``h``.
        num_classes: number of classes, or 0 for an unconditional critic.
        aux_classifier: add the auxiliary classifier (needs ``num_classes > 0``).
    """

    def __init__(self, features_dim: int, num_classes: int = 0,
                 aux_classifier: bool = False) -> None:
        super().__init__()
        if aux_classifier and not num_classes:
            raise UserError("an auxiliary classifier needs a class-conditional discriminator "
                            "(num_classes > 0)")
        self.num_classes = num_classes
        self.linear = nn.Linear(features_dim, 1)
        self.embed = nn.Embedding(num_classes, features_dim) if num_classes else None
        if self.embed is not None:
            nn.init.xavier_uniform_(self.embed.weight)
        self.classifier = nn.Linear(features_dim, num_classes) if aux_classifier else None

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None = None,
                return_class_logits: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``h`` ``(B, F)`` -> critic value ``(B,)``; with ``return_class_logits`` also the
        auxiliary classifier's logits ``(B, num_classes)``."""
        labels = check_labels(labels, self.num_classes, h.shape[0], "discriminator")
        out = self.linear(h).squeeze(1)  # (B,)
        if self.embed is not None:
            out = out + (self.embed(labels) * h).sum(dim=1)
        if not return_class_logits:
            return out
        if self.classifier is None:
            raise UserError("this discriminator has no auxiliary classifier "
                            "(config aux_classifier=false)")
        return out, self.classifier(h)
