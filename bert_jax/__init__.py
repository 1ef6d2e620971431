"""bert-jax: multitask BERT (SST-5 sentiment, Quora paraphrase, STS similarity) in JAX/Flax."""
from bert_jax.config import BertConfig
from bert_jax.model import BertModel, BertOutput, mean_pool, init_params
from bert_jax.tokenizer import Tokenizer
from bert_jax.pretrained import DEFAULT_MODEL, load_pretrained

__all__ = ["BertConfig", "BertModel", "BertOutput", "mean_pool", "init_params", "Tokenizer",
           "DEFAULT_MODEL", "load_pretrained"]
__version__ = "0.1.0"
