"""De-occlusion model family: U-Net generator, discriminator, losses, occlusion synthesis, metrics.

Papers: the U-Net GAN de-occlusion paper with attribute loss
(``../shared/papers/deocclusion-unet-gan-with-attributes.txt``) and, for the bottom-occlusion mode,
Fabbri et al., "Generative Adversarial Models for People Attribute Recognition in Surveillance"
(``gan-reconstruction-for-attribute-recognition.txt``, sec. 4). Images are RGB in [-1, 1].
"""

from models.deocclusion.checkpoint import build_generator, load_generator, save_generator
from models.deocclusion.discriminator import Discriminator
from models.deocclusion.generator import UNetGenerator
from models.deocclusion.image_metrics import batch_ssim_psnr, psnr, ssim

__all__ = [
    "UNetGenerator",
    "Discriminator",
    "build_generator",
    "load_generator",
    "save_generator",
    "ssim",
    "psnr",
    "batch_ssim_psnr",
]
