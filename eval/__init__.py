"""Evaluation: exact bits/dim with lossless-codec baselines, image metrics, GAN metrics.

* :mod:`imgtx.eval.bits_per_dim` - ``imgtx eval-bpd``: exact bits/dim, 95% CI, PNG/WebP baselines.
* :mod:`imgtx.eval.compression` - PNG / lossless WebP bits/dim of the same images.
* :mod:`imgtx.eval.image_metrics` - PSNR/SSIM (scikit-image), bicubic/nearest/area resampling.
* :mod:`imgtx.eval.fid` - FID/KID/IS core with a pluggable feature extractor.
* :mod:`imgtx.eval.stats` - confidence intervals.
"""
