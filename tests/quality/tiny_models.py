"""Tiny random models built offline for tests: a Llama-style causal LM and a Detoxify checkpoint on a tiny BERT.

Each builder writes into the folder it is given and returns what a scorer's config points at; tests cache them per
session (``tmp_path_factory``). Tokenizers are trained here with ``tokenizers`` on a few sentences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Data curation turns raw text into training data a person can trust.",
    "Perplexity measures how surprised a language model is by a document.",
    "Toxic comments insult, threaten or attack people for who they are.",
    "Rivers carry water from the mountains to the sea through valleys and plains.",
    "Numbers like 42, 3.14 and 2026 appear in many documents, as do dates.",
]
ORIGINAL_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
"""Class names as Detoxify's released "original" checkpoint stores them (Detoxify renames three on load)."""


def _corpus(repeat: int = 20) -> list[str]:
    return [line for _ in range(repeat) for line in CORPUS]


def build_tiny_causal_lm(folder: Path, seed: int = 0) -> Path:
    """Save a 2-layer random Llama with a 300-token byte-level BPE tokenizer (BOS/EOS/PAD) into ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_bert_base(folder: Path) -> Path:
    """Save a tiny BERT config and a WordPiece ``BertTokenizer`` (trained here) into ``folder``; no weights."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertTokenizer

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(_corpus(), vocab_size=400, min_frequency=1)
    folder.mkdir(parents=True, exist_ok=True)
    wordpiece.save_model(str(folder))
    tokenizer = BertTokenizer(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(folder)
    BertConfig(vocab_size=wordpiece.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(folder)
    return folder


def build_tiny_detoxify_checkpoint(path: Path, base: Path, classes: Sequence[str] = ORIGINAL_CLASSES,
                                   constant: Mapping[str, float] | None = None, seed: int = 0) -> Path:
    """Save a Detoxify checkpoint (``config`` + ``state_dict``) of a random tiny BERT classifier to ``path``.

    ``config.arch.args.model_type`` is the local ``base`` folder (from ``build_tiny_bert_base``), so loading never
    touches the Hub. With ``constant`` (Detoxify's *renamed* class -> probability) the classifier's weights are zero
    and its biases the logits of those probabilities: every text then scores exactly those values.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    renamed = {"toxic": "toxicity", "severe_toxic": "severe_toxicity", "identity_hate": "identity_attack"}
    torch.manual_seed(seed)
    config = BertConfig.from_pretrained(base, num_labels=len(classes))
    model = BertForSequenceClassification(config).eval()
    if constant is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            for i, name in enumerate(classes):
                p = constant[renamed.get(name, name)]
                model.classifier.bias[i] = math.log(p / (1 - p))
    checkpoint = {
        "config": {
            "arch": {"args": {"model_type": str(base), "model_name": "BertForSequenceClassification",
                              "tokenizer_name": "BertTokenizer", "num_classes": len(classes)}},
            "dataset": {"args": {"classes": list(classes)}},
        },
        "state_dict": model.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
