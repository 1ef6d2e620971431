"""bert-jax: multitask BERT (SST-5 sentiment, Quora paraphrase, STS similarity) in JAX/Flax."""
from bert_jax.config import BertConfig
from bert_jax.model import BertModel, BertOutput, mean_pool, init_params
from bert_jax.tokenizer import Tokenizer
from bert_jax.embedded import DEFAULT_MODEL

__all__ = ["BertConfig", "BertModel", "BertOutput", "mean_pool", "init_params", "Tokenizer",
           "DEFAULT_MODEL", "load_pretrained", "MultitaskModel"]
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy (PEP 562), to keep `import bert_jax` light, not to break a cycle: loading weights
    # pulls in orbax and safetensors, which plain model use does not need.
    if name == "load_pretrained":
        from bert_jax.pretrained import load_pretrained
        return load_pretrained
    if name == "MultitaskModel":  # pulls in the data pipeline (datasets) and checkpoints
        from bert_jax.api import MultitaskModel
        return MultitaskModel
    raise AttributeError(f"module 'bert_jax' has no attribute {name!r}")
