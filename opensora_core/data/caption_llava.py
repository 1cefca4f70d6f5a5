"""LLaVA captioner: a LLaVA-family VLM (transformers) describes each clip from 3 frames (first, middle, last),
as Open-Sora 1.0 captioned its data. Batched; on the GPU when there is one.

Heavy or optional imports (PIL, pandas, torch, transformers) happen inside the functions that need them, so
importing this module (the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# Our own wording of Open-Sora 1.0's caption instruction: detailed, about every object, usable to regenerate.
PROMPT = ("These are three frames of one video: the first, the middle and the last. Describe the video in detail: "
          "the main objects, their colours and shapes, how they move from the first frame to the last, the "
          "background and the visual style. Write it so that the video could be re-created from the text alone, "
          "in no more than six sentences.")
FRAMES_PER_CLIP = 3


def select_frames(path: str, start: float | None = None, end: float | None = None) -> list[np.ndarray]:
    """The first, middle and last decoded frames of a clip: 3 x uint8 [H, W, 3]."""
    from opensora_core.data.dataset import decode_frames

    return list(decode_frames(path, start, end, select=lambda n: (0, n // 2, n - 1)))


def build_prompt(num_images: int = FRAMES_PER_CLIP, instruction: str = PROMPT, image_token: str = "<image>") -> str:
    """LLaVA-1.5 conversation format, one image token per frame (the processor expands each to its patches)."""
    return "USER: " + "\n".join([image_token] * num_images) + f"\n{instruction} ASSISTANT:"


class LlavaCaptioner:
    name = "llava"

    def __init__(self, model: str, device: str | None = None, max_new_tokens: int = 120, instruction: str = PROMPT):
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = LlavaForConditionalGeneration.from_pretrained(model, dtype=dtype).to(self.device).eval()
        except OSError as e:
            raise FileNotFoundError(
                f"cannot load the LLaVA captioner {model!r} ({e}). Download it (e.g. `huggingface-cli download "
                f"{model} --local-dir pretrained_models/llava`) and set data.llava_model to that folder."
            ) from None
        self.processor.tokenizer.padding_side = "left"  # batched generation continues every prompt at its end
        self.max_new_tokens, self.instruction = max_new_tokens, instruction
        self.image_token = getattr(self.processor, "image_token", "<image>")

    def caption(self, rows: list[dict]) -> list[str]:
        import torch
        from PIL import Image

        images, prompts = [], []
        for r in rows:
            start = r.get("start") if r.get("start") == r.get("start") else None  # NaN -> None
            end = r.get("end") if r.get("end") == r.get("end") else None
            images += [Image.fromarray(f) for f in select_frames(r["path"], start, end)]
            prompts.append(build_prompt(FRAMES_PER_CLIP, self.instruction, self.image_token))
        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
