"""captioner: image captioning with a CNN encoder and an LSTM/GRU decoder (Show and Tell; Show, Attend and Tell).

The public names are imported on first use (PEP 562), so `captioner --help` and `captioner --version` start
without importing torch.
"""
__version__ = "0.1.0"

__all__ = ["Captioner", "default_checkpoint", "load_checkpoint", "__version__"]
_WHERE = {"Captioner": "inference", "default_checkpoint": "defaults", "load_checkpoint": "checkpoint"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
