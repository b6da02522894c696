"""AlignMixup (CVPR 2022): Sinkhorn-aligned feature mixing, networks, data and a plain PyTorch trainer."""

__version__ = "0.1.0"
