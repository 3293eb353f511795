"""The op specs of DeepSeek-V3.2, one module per family. Importing this
package registers every spec; read them through :func:`dsport.core.spec.specs`."""
from . import quant, norm, rotary, indexer, topk, attention, cache, moe, dispatch  # noqa: F401
