"""The llava captioner's plumbing, with a tiny randomly initialised LLaVA built and saved offline."""

from __future__ import annotations

import pandas as pd
import pytest


def _tiny_llava(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, PreTrainedTokenizerFast)

    from opensora_core.data.caption_llava import PROMPT

    words = sorted(set(PROMPT.replace(",", " ").replace(".", " ").replace(":", " ").lower().split()) | {"user", "assistant"})
    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", "<s>", "</s>", "<image>", ":", ",", "."] + words + ["USER", "ASSISTANT"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("<image>", "isolated"), pre_tokenizers.Whitespace()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  additional_special_tokens=["<image>"])
    image_id = vocab["<image>"]
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", image_token="<image>",
                          num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, pad_token_id=1, bos_token_id=2, eos_token_id=3),
        image_token_index=image_id, vision_feature_select_strategy="default", vision_feature_layer=-1)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def test_llava_captions_each_clip_from_its_first_middle_and_last_frames(tmp_path, make_counter_video, monkeypatch):
    from opensora_core.data import caption_llava
    from opensora_core.data.caption import caption_manifest

    model_dir = _tiny_llava(tmp_path / "tiny-llava")
    videos = [make_counter_video(tmp_path / f"v{i}.mp4", num_frames=9 + 4 * i) for i in range(3)]
    df = pd.DataFrame({"path": [str(v) for v in videos], "text": "", "num_frames": [9, 13, 17], "fps": 8.0,
                       "height": 32, "width": 32})
    df.to_csv(tmp_path / "raw.csv", index=False)

    picked = []
    real_select = caption_llava.select_frames

    def spy(path, start=None, end=None):
        frames = real_select(path, start, end)
        picked.append([int(round((float(f.mean()) - 10) / 7)) for f in frames])
        return frames

    monkeypatch.setattr(caption_llava, "select_frames", spy)
    captioner = caption_llava.LlavaCaptioner(str(model_dir), max_new_tokens=5)
    prompt = caption_llava.build_prompt()
    assert prompt.count("<image>") == 3 and caption_llava.PROMPT in prompt
    out = caption_manifest(tmp_path / "raw.csv", tmp_path / "captioned.csv", captioner, batch_size=2, progress=False)
    assert picked == [[0, 4, 8], [0, 6, 12], [0, 8, 16]]
    captions = pd.read_csv(out, keep_default_na=False)["text"]
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)


def test_missing_llava_model_says_what_to_download(tmp_path):
    from opensora_core.data.caption_llava import LlavaCaptioner

    with pytest.raises(FileNotFoundError, match="data.llava_model"):
        LlavaCaptioner(str(tmp_path / "no-such-model"))
