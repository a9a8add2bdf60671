"""Any local transformers image-text-to-text model (LLaVA and whatever else loads with
AutoModelForImageTextToText) run by transformers itself, with its own processor and chat
template: as a distillation teacher (it builds its own batch of the student's conversations,
aligned with the student's on the answer tokens) and as a model under `tinyvlm eval`
(through the inference engine, so batching, caching, stop strings and the official scorers
are the same as for tinyvlm models). transformers is imported here only: the `[hf]` extra.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinyvlm.data.collate import Batch, shift_targets
from tinyvlm.data.conversation import IMAGE, Conversation, Turn
from tinyvlm.errors import InputError
from tinyvlm.infer import Engine, Prompt, Sampling
from tinyvlm.models.vlm import VLMOutput

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise InputError("running a model with transformers needs the hf extra: "
                         "pip install -e '.[hf]'") from None
    return transformers


@dataclass
class ProcessorBatch(Batch):
    """A batch as the model's processor made it: its extra inputs (image sizes, grids, ...)
    travel beside the ids and pixel values."""

    inputs: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> ProcessorBatch:
        base = {k: None if (v := getattr(self, k)) is None else v.to(device)
                for k in Batch.__dataclass_fields__}
        return ProcessorBatch(**base, inputs={k: v.to(device) for k, v in self.inputs.items()})


class TransformersVLM:
    """A transformers VLM checkpoint directory, frozen, with its processor."""

    def __init__(self, directory: str | Path, dtype: str = "fp32",
                 device: torch.device | str = "cpu"):
        tf = _transformers()
        self.where = Path(directory)
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        try:
            self.model = tf.AutoModelForImageTextToText.from_pretrained(
                self.where, dtype=DTYPES[dtype]).to(device).eval().requires_grad_(False)
            self.processor = tf.AutoProcessor.from_pretrained(self.where)
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"transformers cannot load this model ({e})", self.where) from None
        self.hf_tokenizer = self.processor.tokenizer
        config = self.model.config
        self.image_token_id = getattr(config, "image_token_id",
                                      getattr(config, "image_token_index", -1))
        self.image_tokens = int(getattr(config, "image_seq_length", 0) or 0)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.end_id = self.hf_tokenizer.eos_token_id
        gen = getattr(self.model.generation_config, "eos_token_id", None)
        gen = gen if isinstance(gen, list) else [] if gen is None else [gen]
        self.end_ids = list(dict.fromkeys([self.end_id, *gen]))  # any of them ends an answer
        self.pad_id = (self.hf_tokenizer.pad_token_id if self.hf_tokenizer.pad_token_id
                       is not None else self.end_id)
        self.max_seq_len = int(getattr(config.get_text_config(), "max_position_embeddings",
                                       1 << 30))
        self.keep_vocab: int | None = None  # logits columns the student shares

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def eval(self) -> TransformersVLM:
        return self  # always frozen, in eval mode

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def fingerprint(self) -> str:
        """Hash of the checkpoint's files (weights, config, tokenizer, processor)."""
        h = hashlib.sha256()
        for f in sorted(self.where.iterdir()):
            if f.is_file() and f.suffix in (".json", ".safetensors", ".jinja", ".model"):
                h.update(f.name.encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()

    # ---------------------------------------------------------------- chat template

    def messages(self, turns: Sequence[Turn], question: str | None = None, system: str = ""
                 ) -> list[dict[str, Any]]:
        """Conversation turns as typed chat messages, images where `<image>` stood."""
        def parts(text: str) -> list[dict[str, str]]:
            out: list[dict[str, str]] = []
            for i, piece in enumerate(text.split(IMAGE)):
                if i:
                    out.append({"type": "image"})
                if piece.strip():
                    out.append({"type": "text", "text": piece.strip()})
            return out

        msgs = [m for u, a in turns for m in ({"role": "user", "content": parts(u)},
                                               {"role": "assistant", "content": parts(a)})]
        if question is not None:
            msgs.append({"role": "user", "content": parts(question)})
        if system:
            msgs.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        return msgs

    def render(self, turns: Sequence[Turn], question: str | None = None, system: str = ""
               ) -> str:
        return self.processor.apply_chat_template(self.messages(turns, question, system),
                                                  add_generation_prompt=question is not None,
                                                  tokenize=False)

    def special_tokens_for(self, text: str) -> bool:
        """Whether the tokenizer's own special tokens go around rendered text: not when the
        template wrote the bos itself (as transformers' processors decide)."""
        bos = self.hf_tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def _ids(self, text: str, images: Sequence[Any]) -> tuple[list[int], dict[str, Tensor]]:
        """The processor's ids (images expanded) and its other inputs for one text."""
        pil = [_pil(i) for i in images]
        out = self.processor(text=[text], images=pil or None, return_tensors="pt",
                             add_special_tokens=self.special_tokens_for(text))
        ids = out.pop("input_ids")[0].tolist()
        out.pop("attention_mask", None)
        return ids, dict(out)

    # ---------------------------------------------------------------- as a teacher

    def same_batches(self, student: Any) -> bool:
        return False

    def check_compatible(self, student: Any) -> None:
        """The student's vocabulary must be the teacher's, token for token (the logits are
        compared position by position), or one error naming both."""
        ours = student.tokenizer.backend.get_vocab() if student.tokenizer is not None else {}
        theirs = self.hf_tokenizer.get_vocab()
        if ours != theirs:
            diff = next((t for t in sorted(theirs, key=theirs.get)
                         if ours.get(t) != theirs[t]), None)
            detail = (f"token {diff!r} is id {theirs[diff]} in the teacher and "
                      f"{ours.get(diff, 'absent')} in the student" if diff is not None
                      else "the student has tokens the teacher lacks")
            raise InputError(f"teacher and student vocabularies differ: the teacher's "
                             f"tokenizer has {len(theirs)} tokens, the student's {len(ours)} "
                             f"({detail}); distil across tokenizers with mimic.kind: uld",
                             self.where)
        student_vocab = student.config.language.vocab_size
        if self.vocab_size < student_vocab:
            raise InputError(f"the teacher's output layer has {self.vocab_size} rows, fewer "
                             f"than the student's {student_vocab}", self.where)
        self.keep_vocab = student_vocab

    def collate(self, conversations: Sequence[Conversation]) -> ProcessorBatch:
        """Whole conversations as the teacher's processor reads them, targets on each answer
        and the end token after it (added where the template does not close answers, as the
        student's tokenizer does)."""
        rows, targets, extras = [], [], []
        end = self.end_id
        for conv in conversations:
            full, inputs = self._ids(self.render(conv.turns, system=conv.system), conv.images)
            ids: list[int] = []
            trainable: list[bool] = []
            seen = 0
            for i in range(len(conv.turns)):
                images = conv.images[: _count(conv.turns[: i + 1])]
                prompt, _ = self._ids(self.render(conv.turns[:i], conv.turns[i][0],
                                                  conv.system), images)
                whole, _ = self._ids(self.render(conv.turns[: i + 1], system=conv.system),
                                     images)
                if full[: len(prompt)] != prompt or full[: len(whole)] != whole:
                    raise InputError("the teacher's chat template or tokenizer does not keep "
                                     "a conversation's beginning when it goes on: its "
                                     "answers cannot be located", self.where)
                ids += full[seen: len(prompt)]
                trainable += [False] * (len(prompt) - seen)
                answer = full[len(prompt): len(whole)]
                stops = [answer.index(e) for e in self.end_ids if e in answer]
                if stops:
                    answer = answer[: min(stops) + 1]
                    rest = full[len(prompt) + len(answer): len(whole)]
                else:
                    rest = []
                    answer = [*answer, end]
                ids += answer + rest
                trainable += [True] * len(answer) + [False] * len(rest)
                seen = len(whole)
            ids += full[seen:]
            trainable += [False] * (len(full) - seen)
            rows.append(ids)
            targets.append(shift_targets(ids, trainable))
            extras.append(inputs)
        pixels = _cat([e.pop("pixel_values") for e in extras if "pixel_values" in e])
        counts = [len(c.images) for c in conversations]
        base = Batch.from_rows(rows, self.pad_id, targets, pixels, counts)
        keys = {k for e in extras for k in e}
        return ProcessorBatch(**{k: getattr(base, k) for k in Batch.__dataclass_fields__},
                              inputs={k: _cat([e[k] for e in extras if k in e]) for k in keys})

    @torch.no_grad()
    def __call__(self, batch: Batch) -> VLMOutput:
        batch = batch.to(self.device)
        inputs = dict(getattr(batch, "inputs", {}))
        if batch.pixel_values is not None:
            inputs["pixel_values"] = batch.pixel_values.to(self.model.dtype)
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         output_hidden_states=True, **inputs)
        logits = out.logits.float()
        if self.keep_vocab is not None:
            logits = logits[..., : self.keep_vocab]
        hidden = out.hidden_states[-1] if out.hidden_states is not None else logits
        return VLMOutput(logits, hidden)

    # ---------------------------------------------------------------- under evaluation

    def engine(self, batch_size: int = 16) -> TransformersEngine:
        return TransformersEngine(self, batch_size)


class TransformersEngine(Engine):
    """The inference engine over a transformers model: prompts are rendered by its chat
    template and tokenised by its processor; generation is transformers' own."""

    def __init__(self, model: TransformersVLM, batch_size: int = 16):
        if batch_size < 1:
            raise InputError(f"the batch size must be at least 1, got {batch_size}")
        self.model, self.batch_size = model, batch_size  # type: ignore[assignment]
        self.tokenizer = _Decoder(model)  # type: ignore[assignment]

    @property
    def max_seq_len(self) -> int:
        return self.model.max_seq_len

    @property
    def device(self) -> torch.device:
        return self.model.device

    def fingerprint(self) -> str:
        return self.model.fingerprint()  # type: ignore[attr-defined]

    def encode(self, history: Sequence[Turn], question: str, images: Sequence[Any],
               system: str = "") -> Prompt:
        m: TransformersVLM = self.model  # type: ignore[assignment]
        text = m.render(history, question, system)
        ids = m.hf_tokenizer(text, add_special_tokens=m.special_tokens_for(text))["input_ids"]
        return Prompt(ids, list(images), text)  # the processor expands the rendered text

    def prepare(self, prompts: Sequence[Prompt]) -> dict[str, Tensor]:
        m: TransformersVLM = self.model  # type: ignore[assignment]
        texts = [p.extra for p in prompts]
        images = [_pil(i) for p in prompts for i in p.images]
        tok = m.processor.tokenizer
        side, tok.padding_side = tok.padding_side, "left"
        try:
            inputs = m.processor(text=texts, images=images or None, padding=True,
                                 return_tensors="pt",
                                 add_special_tokens=m.special_tokens_for(texts[0]))
        finally:
            tok.padding_side = side
        inputs = {k: v.to(m.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(m.model.dtype)
        return inputs

    def tokens(self, inputs: Any, sampling: Sampling, generator: torch.Generator | None,
               on_step: Any) -> list[list[int]]:
        m: TransformersVLM = self.model  # type: ignore[assignment]
        stopping = None
        if on_step is not None:
            tf = _transformers()

            class Stop(tf.StoppingCriteria):  # type: ignore[misc, name-defined]
                def __call__(self, ids: Tensor, scores: Tensor, **kw: Any) -> Tensor:
                    return on_step(ids[:, -1].cpu()).to(ids.device)

            stopping = tf.StoppingCriteriaList([Stop()])
        sample = sampling.temperature > 0
        if sample and generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        out = m.model.generate(
            **inputs, max_new_tokens=sampling.max_new_tokens, do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None, top_k=None,
            eos_token_id=m.end_ids, pad_token_id=m.pad_id, stopping_criteria=stopping)
        return out[:, inputs["input_ids"].shape[1]:].tolist()


class _Decoder:
    """What the engine's streaming and decoding need of a tokenizer, from the HF one."""

    def __init__(self, model: TransformersVLM):
        self.hf, self.end_id, self.pad_id = model.hf_tokenizer, model.end_id, model.pad_id
        self.end_ids = model.end_ids

    def decode_answer(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        ends = [ids.index(e) for e in self.end_ids if e in ids]
        return self.hf.decode(ids[: min(ends)] if ends else ids,
                              skip_special_tokens=True).strip()


def _pil(source: Any) -> Any:
    """An RGB PIL image from a path, bytes or a PIL image (the processor resizes it)."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    where = "<image bytes>" if isinstance(source, bytes) else Path(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise InputError("image not found", where)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"cannot read image ({e})", where) from None


def _cat(tensors: list[Tensor]) -> Tensor | None:
    return torch.cat(tensors) if tensors else None


def _count(turns: Sequence[Turn]) -> int:
    return sum(u.count(IMAGE) for u, _ in turns)


__all__ = ["ProcessorBatch", "TransformersEngine", "TransformersVLM"]
