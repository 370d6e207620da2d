"""Super-resolution with the Image Transformer's encoder-decoder (Parmar et al. 2018, Sec. 5.2;
tensor2tensor ``image_transformer_2d.Img2imgTransformer``).

* :class:`SuperResolutionTransformer` - full self-attention encoder over the low-resolution
  subpixels, local 1D/2D self-attention decoder with cross-attention, categorical (or DMOL)
  output; ``forward(low, high, with_loss=True)`` also gives bits/dim, ``generate(low)``
  upscales (KV-cached, tiled for any size).
* :class:`SuperResolutionConfig` (the decoder's settings nested as an Image Transformer config)
  and the named configurations in :mod:`imgtx.sr.configs`.
* :mod:`imgtx.sr.upscale` - the tiling, and upscaling of image files.
* :mod:`imgtx.sr.anchor`, :mod:`imgtx.sr.blockmean` - the anchored decoders and exact
  block-mean conditioning (imgtx extensions), with their decoding policies.
* :mod:`imgtx.sr.train`, :mod:`imgtx.sr.evaluate`, :mod:`imgtx.sr.cli`
  (``imgtx sr train|upscale|eval``).
"""

from imgtx.sr.configs import CONFIGS, SuperResolutionConfig, get_config
from imgtx.sr.model import SuperResolutionTransformer

__all__ = ["CONFIGS", "SuperResolutionConfig", "SuperResolutionTransformer", "get_config"]
