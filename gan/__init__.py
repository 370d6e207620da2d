"""Transformer GANs on the imgtx attention core (imported as ``imgtx.gan``).

* :mod:`imgtx.gan.transgan` - TransGAN (Jiang, Chang, Wang, NeurIPS 2021): ``TransGANGenerator``
  and the multi-scale ``TransGANDiscriminator``; :mod:`imgtx.gan.blocks` holds their pieces.
* :mod:`imgtx.gan.strans` - STrans-G / STrans-D (Xu et al. 2021).
* :mod:`imgtx.gan.configs` - the named configurations of both families (``GAN_CONFIGS``).
* :mod:`imgtx.gan.conditioning` - class conditioning (AdaNorm-T, projection head).
* :mod:`imgtx.gan.diffaugment` - DiffAugment, applied inside the discriminators' ``forward``.
* :mod:`imgtx.gan.losses` - WGAN-GP with drift, hinge, non-saturating logistic with R1.
* :mod:`imgtx.gan.cli` - the ``imgtx gan`` command group.

Nothing is imported here, so ``import imgtx.gan`` stays cheap; import the submodules.
"""
