"""Super-resolution model family for small person crops.

Paper: Fabbri et al., "Generative Adversarial Models for People Attribute Recognition in
Surveillance" (``../shared/papers/gan-reconstruction-for-attribute-recognition.txt``), sec. 3.3
(G^S from a 4x-downsampled crop, SSE content loss, optional D^S) and sec. 4-5 (lowRAP, Tab. 2).
The network here is a CPU-sized EDSR/ESPCN residual net with a global bicubic skip, one checkpoint
per scale factor. Images are RGB: uint8 at the interfaces, float in [0, 1] inside the network.
"""

from models.superres.checkpoint import build_network, load_superres, save_superres
from models.superres.network import SuperResolutionNet
from models.superres.predictor import SuperResolver, sr_passes
from models.superres.recipe import SuperResRecipe

__all__ = [
    "SuperResolutionNet",
    "SuperResRecipe",
    "SuperResolver",
    "build_network",
    "load_superres",
    "save_superres",
    "sr_passes",
]
