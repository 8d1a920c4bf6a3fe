"""captioner: image captioning with a CNN encoder and an LSTM/GRU decoder (Show and Tell; Show, Attend and Tell)."""
__version__ = "0.1.0"

from .checkpoint import load_checkpoint  # noqa: E402
from .defaults import default_checkpoint  # noqa: E402
from .inference import Captioner  # noqa: E402

__all__ = ["Captioner", "default_checkpoint", "load_checkpoint", "__version__"]
