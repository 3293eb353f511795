"""The backend-agnostic DeepSeek-V3.2 model graph."""
from .config import ModelConfig, from_hf, load_config, tiny_config, to_hf
from .transformer import Model

__all__ = ["Model", "ModelConfig", "from_hf", "load_config", "tiny_config", "to_hf"]
