"""An example user project: custom parts for ``lightning-diffusion``, kept outside the library.

Each part subclasses a public extension point and is named by ``class_path`` in ``../recipe.yaml``:

- :class:`~my_diffusion.denoisers.GatedSkipDenoiser`: the library's encoder-decoder denoiser plus a gated skip
  connection from the noisy input, with the gate conditioned on the step and on the source.
- :class:`~my_diffusion.losses.TokenContrastiveLoss`: an InfoNCE term that makes each position's prediction
  closer to its own target embedding than to the other target embeddings of the same sentence.
- :class:`~my_diffusion.schedules.LaplaceSchedule`: the Laplace noise schedule (log-SNR with a Laplace density).

Nothing here is registered anywhere: the package only has to be importable (``PYTHONPATH=examples/custom_parts``).
"""

from my_diffusion.denoisers import GatedSkipDenoiser
from my_diffusion.losses import TokenContrastiveLoss
from my_diffusion.schedules import LaplaceSchedule

__all__ = ["GatedSkipDenoiser", "LaplaceSchedule", "TokenContrastiveLoss"]
