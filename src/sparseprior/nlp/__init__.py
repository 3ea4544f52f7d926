"""EarlyBERT on a real pre-trained transformer (Hugging Face BERT), with really smaller models.

::

    from sparseprior.nlp import EarlyBertConfig, run_earlybert, load_slim
    result = run_earlybert(EarlyBertConfig(max_train=2000, epochs=1), "runs/earlybert")
    model, header = load_slim("runs/earlybert/slim_model.safetensors")

Modules: :mod:`.data` (corpora, splits, tokenised datasets), :mod:`.model` (loading, classifier,
MLM model, gates), :mod:`.search` (coefficients + L1 + early-bird draw), :mod:`.slim` (remove
heads/neurons, save/load, ONNX), :mod:`.experiment` (the full comparison), :mod:`.pretrain`
(the MLM variant). ``transformers`` is imported only when a model is built or loaded.
"""

from sparseprior.nlp.data import CORPORA, TextCorpus, load_corpus, read_text_file, split_corpus
from sparseprior.nlp.experiment import EarlyBertConfig, run_earlybert
from sparseprior.nlp.model import (
    MaskedLM,
    TextClassifier,
    add_gates,
    coefficients,
    load_encoder,
    load_tokenizer,
    model_dir,
)
from sparseprior.nlp.search import (
    EarlyBertSearch,
    even_random_masks,
    random_masks,
    ticket_masks,
)
from sparseprior.nlp.slim import export_onnx, load_slim, masked_model, save_slim, slim_model

__all__ = [
    "CORPORA", "EarlyBertConfig", "EarlyBertSearch", "MaskedLM", "TextClassifier", "TextCorpus",
    "add_gates", "coefficients", "even_random_masks", "export_onnx", "load_corpus",
    "load_encoder", "load_slim", "load_tokenizer", "masked_model", "model_dir", "random_masks",
    "read_text_file",
    "run_earlybert", "save_slim", "slim_model", "split_corpus", "ticket_masks",
]
