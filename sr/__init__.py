"""Super-resolution with the Image Transformer's encoder-decoder (Parmar et al. 2018, Sec. 5.2;
tensor2tensor ``image_transformer_2d.Img2imgTransformer``).

* :class:`SuperResolutionTransformer` - full self-attention encoder over the low-resolution
  subpixels, local 1D/2D self-attention decoder with cross-attention, categorical output.
* :class:`SuperResolutionConfig` and the named configurations in :mod:`imgtx.sr.configs`.
* :mod:`imgtx.sr.upscale` - tiled, KV-cached upscaling of images of any size.
* :mod:`imgtx.sr.anchor` - the anchored decoder (an imgtx extension).
* :mod:`imgtx.sr.train`, :mod:`imgtx.sr.evaluate`, :mod:`imgtx.sr.cli`
  (``imgtx sr train|upscale|eval``).
"""

from imgtx.sr.configs import CONFIGS, SuperResolutionConfig, get_config
from imgtx.sr.model import SuperResolutionTransformer

__all__ = ["CONFIGS", "SuperResolutionConfig", "SuperResolutionTransformer", "get_config"]
