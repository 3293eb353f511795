"""The backend-agnostic DeepSeek-V3.2 model graph."""
from dsport.core.model.config import ModelConfig, from_hf, load_config, tiny_config
from dsport.core.model.transformer import Model

__all__ = ["Model", "ModelConfig", "from_hf", "load_config", "tiny_config"]
