"""OAMN occluded person ReID (Chen et al., "Occlude Them All", ICCV 2021): occlusion augmentation,
attention-guided mask network, occlusion grader, losses, sampler, gallery and metrics.

Import the submodules you need (``models.reid.gallery``, ``models.reid.oamn`` ...); this package
file stays free of imports so importing one piece never pulls in the others.
"""
