"""Evaluation: exact bits/dim with lossless-codec baselines, image metrics, GAN metrics.

* :mod:`imgtx.eval.bits_per_dim` - ``imgtx eval-bpd``: exact bits/dim, 95% CI, PNG/WebP baselines.
* :mod:`imgtx.eval.compression` - PNG / lossless WebP bits/dim of the same images.
* :mod:`imgtx.eval.image_metrics` - PSNR/SSIM (scikit-image); re-exports the resamplers of
  :mod:`imgtx.resample`.
* :mod:`imgtx.eval.fid` - FID/KID/IS core and the reference-statistics cache.
* :mod:`imgtx.eval.features` - feature extractors by name (Inception, the shipped ``imgtx-small``,
  ``random``).
* :mod:`imgtx.eval.classifier` - class accuracy of conditional samples (shipped digit classifier).
* :mod:`imgtx.eval.stats` - confidence intervals.
"""
