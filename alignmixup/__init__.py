"""AlignMixup (CVPR 2022): Sinkhorn-aligned feature mixing, networks, data and a plain PyTorch trainer."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`alignmixup.load_model` without importing torch for every `import alignmixup` (the CLIs stay quick)."""
    if name == "load_model":
        from alignmixup.weights import load_model

        return load_model
    raise AttributeError(f"module 'alignmixup' has no attribute {name!r}")


__all__ = ["load_model"]
