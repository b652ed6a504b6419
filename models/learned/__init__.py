"""Learned MR -> sCT models: a conditional diffusion model (the default) and the baselines.

Contracts shared by the modules of this package (every tensor is float32, NCHW):

* **Slices, 2.5D.** A model sees one axial slice at a time with ``context``
  neighbouring MR slices on each side as extra channels (``2 * context + 1``
  MR channels; edge slices repeat the border slice). Default ``context = 1``.
* **Normalisation** (:mod:`models.learned.normalisation`). MR: divided by the
  99.5th percentile of the MR inside the body mask, clipped to [0, 2], minus 1
  (so [-1, 1], the body's bright tissue near 0.3-1, outside the body -1).
  CT: HU clipped to [-1024, 3071] and mapped linearly to [-1, 1].
* **Networks** (:mod:`models.learned.networks`). ``UNet(in_channels,
  out_channels, base_channels, channel_mults, attention_levels,
  time_embedding, space_to_depth)``: fully convolutional, any H and W divisible by
  ``space_to_depth * 2 ** (len(channel_mults) - 1)`` (inference pads), ``forward(x, t=None)``
  with ``t`` a (N,) float tensor of timesteps in [0, 1] when time_embedding.
  ``PatchDiscriminator(in_channels)`` for pix2pix.
* **Diffusion** (:mod:`models.learned.diffusion`). Cosine schedule over
  continuous time t in [0, 1] (alpha_bar(t) = cos^2((t + s)/(1 + s) * pi/2) /
  cos^2(s/(1+s) * pi/2), s = 0.008, clipped), v-prediction, deterministic DDIM
  sampling with any number of steps.
* **Architectures**: ``diffusion`` (denoiser input = noisy CT (1) + MR context
  channels; corrective, :mod:`models.learned.corrective`: noisy residual (1) +
  MR context + the frozen regression U-Net's CT (1)), ``unet`` (MR context -> CT, L1), ``pix2pix`` (same generator,
  PatchGAN, L1 + adversarial), ``contourdiff`` (denoiser input = noisy CT (1) +
  edge map (1) + body outline (1); trained on CT alone, edges from the MR at
  inference).
* **Checkpoints** (:mod:`models.learned.checkpoint`): one folder with
  ``model.pt`` (EMA weights, config), ``card.json`` (the model card, content
  hash of weights + config), ``train_state.pt`` (optimizer, step, RNG) for resume.
* **Training** (:mod:`models.learned.train`) runs in one process or, under
  ``torchrun``, data-parallel over several (:mod:`models.learned.distributed`):
  every process draws the whole global batch and trains its rows, rank 0 writes.
"""
