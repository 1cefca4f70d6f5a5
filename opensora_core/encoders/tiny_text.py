"""The tiny preset's text encoder: a frozen, randomly initialised 2-layer T5 with an offline word tokenizer.

Why random: the tiny STDiT only needs captions that map to distinct, stable embeddings; a frozen random
encoder gives that (as a random projection) without any download. Why a word-level tokenizer: every word of the
synthetic captions ("a red circle moves left on a blue background") is one token with its own embedding, so
captions that differ in one word differ in one whole token, and captions fit in 48 tokens. Words outside the
list fall back to WordPiece character pieces (still distinct sequences, never a lossy <unk>).

Heavy or optional imports (tokenizers, transformers) happen inside the functions that need them, so importing this
module (the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from opensora_core.encoders.weights import write_atomically

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # T5's ids: pad 0, eos 1, unk 2
CAPTION_WORDS = """
a an the one two three four five six several many some of on in at to from with and or over under across
around along through into onto toward towards near behind front beside between while then slowly quickly
is are moves move moving bounce bounces bouncing rotate rotates rotating spin spins spinning grow grows growing
shrink shrinks shrinking slide fall rise stay zoom jump float drift fade turn turns turning day night out off
slides sliding drifts drifting falls falling rises rising stays staying still static stationary zooms zooming
jumps jumping floats floating appears disappears fades
left right up down upward upwards downward downwards diagonally horizontally vertically clockwise
counterclockwise top bottom center centre middle corner edge side frame scene image video
red green blue yellow orange purple violet pink cyan magenta white black gray grey brown teal navy gold
silver dark light bright pale colored coloured colorful
circle circles square squares triangle triangles rectangle rectangles star stars ellipse ellipses oval ovals
diamond diamonds hexagon hexagons pentagon cross ring rings dot dots disk disc ball balls box boxes line lines
shape shapes object objects small large big tiny medium
background backgrounds gradient gradients solid plain striped stripes checkerboard checkered noise noisy
textured texture sky water grass
""".split()


def build_tokenizer(model_max_length: int = 48):
    """A `PreTrainedTokenizerFast` (WordPiece, lower-cased) over the caption words, ASCII characters as fallback
    pieces, and T5's special tokens; appends `</s>` like T5."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS + sorted(set(CAPTION_WORDS)) + chars + ["##" + c for c in chars]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length, padding_side="right")


def build_tiny_t5(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2, seed: int = 0):
    """A randomly initialised T5 v1.1-style encoder (gated-GELU FFN, d_ff = 2 * d_model), seeded."""
    from transformers import T5Config, T5EncoderModel

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    config = T5Config(vocab_size=vocab_size, d_model=hidden_size, d_kv=hidden_size // num_heads, d_ff=2 * hidden_size,
                      num_layers=num_layers, num_heads=num_heads, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval().requires_grad_(False)


def create_tiny_text_encoder(out_dir: str | Path, hidden_size: int = 64, model_max_length: int = 48,
                             seed: int = 0) -> Path:
    """Write the tiny T5 (model + tokenizer, `save_pretrained`) to `out_dir` atomically; same seed, same weights."""
    tokenizer = build_tokenizer(model_max_length)
    model = build_tiny_t5(len(tokenizer), hidden_size, seed=seed)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return write_atomically(out_dir, write)
