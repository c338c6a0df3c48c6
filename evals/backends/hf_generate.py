"""Generation through transformers' `generate` for the fast backend (FastLM), and the helpers
greedy.py shares with it.

  * The fallback (_hf_generate_batch): sampling or generation kwargs beyond plain greedy
    decoding (_plain_greedy), models without a plain key/value cache (Mamba) and models that
    fail the row probe run `model.generate` exactly as HFLM calls it.
  * The static-cache path (`static_cache=True`, `--static-cache`, _static_greedy_batch):
    greedy batches through `generate` with a static KV cache, whose decoding step transformers
    compiles with torch.compile (CUDA graphs) on CUDA. Prompts are left padded to a multiple of
    STATIC_LEN_BUCKET and rows to a shape already run, so few graphs are compiled; rows stay in
    the batch until all are finished and few-shot prefixes are not shared. Same text as the
    default path on CPU (tested); its speed on a GPU is not measured yet.
"""

from __future__ import annotations

import copy

import torch
from lm_eval.models.utils import postprocess_generated_text
from lm_eval.models.utils_hf import stop_sequences_criteria

# generation kwargs that plain greedy decoding honours as it is (temperature 0, no sampling)
GREEDY_IGNORED_KWARGS = {"do_sample", "temperature", "top_p", "top_k"}
# static-cache generation: a benchmark's prompts are left padded to one width, a multiple of this
# many tokens (rows: see _static_greedy_batch), so a run compiles a few decoding graphs, not one per batch
STATIC_LEN_BUCKET = 256


class GenerateMixin:
    """FastLM's generation through transformers' `generate` (see the module docstring), and the
    EOS ids and left padding its greedy decoding shares; the model, tokenizer, device and stats
    are FastLM's."""

    def _eos_ids(self) -> set[int]:
        """The model's end-of-sequence token ids (its generation config's)."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            return set()
        return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}

    def _plain_greedy(self, kwargs: dict) -> bool:
        """Whether these generation kwargs and the model's generation config ask for plain greedy
        decoding (else `generate` runs them: _hf_generate_batch)."""
        if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0)) != 0.0:
            return False
        if set(kwargs) - GREEDY_IGNORED_KWARGS:
            return False
        gc = self.model.generation_config
        return (gc.repetition_penalty in (None, 1.0) and not gc.no_repeat_ngram_size and not gc.bad_words_ids
                and not gc.suppress_tokens and not gc.begin_suppress_tokens and not gc.min_new_tokens
                and not gc.min_length and (gc.num_beams or 1) == 1 and not gc.forced_bos_token_id
                and not gc.forced_eos_token_id)

    def _left_pad(self, prompts: list[list[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask) of `prompts` left padded to `width` (default: the longest)."""
        T = max([len(p) for p in prompts] + [width or 0])
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(prompts), T), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), T), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, T - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[b, T - len(p):] = 1
        return ids.to(self._device), mask.to(self._device)

    def _static_greedy_batch(self, prompts: list[list[int]], until: list[str], max_gen: int, width: int) -> list[str]:
        """Greedy decode one batch with transformers' generate and a static KV cache (on CUDA
        transformers compiles its decoding step), prompts left padded to `width` tokens. Rows
        are padded (copies of the last prompt) to the fewest rows of a shape already run at this
        width and length, else to a power of two, so a run compiles few graphs: a decoding step
        costs about the same for a few more rows. Each row's text ends at its first EOS token,
        as in _greedy_batch."""
        n = len(prompts)
        seen = [r for r, w, g in self._static_shapes if (w, g) == (width, max_gen) and r >= n]
        rows = min(seen) if seen else 1 << (n - 1).bit_length()
        self._static_shapes.add((rows, width, max_gen))
        batch = prompts + [prompts[-1]] * (rows - n)
        ids, mask = self._left_pad(batch, width)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_gen, do_sample=False,
            cache_implementation="static", pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=stop_sequences_criteria(self.tokenizer, until, width, rows),
        )
        self.stats["gen_prefill_tokens"] += ids.numel()
        self.stats["gen_tokens"] += rows * (out.shape[1] - width)
        eos = self._eos_ids()
        texts = []
        for row in out[:n, width:].tolist():
            cut = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
            texts.append(postprocess_generated_text(self.tok_decode(row[:cut]), until, None))
        return texts

    def _hf_generate_batch(self, prompts: list[list[int]], until: list[str], max_gen: int, kwargs: dict) -> list[str]:
        """Fallback for sampling / unusual kwargs: HFLM._model_generate on one batch."""
        kwargs = copy.deepcopy(kwargs)
        kwargs["temperature"] = kwargs.get("temperature", 0.0)
        if kwargs.get("do_sample") is False and kwargs["temperature"] == 0.0:
            kwargs.pop("temperature")
        ids, mask = self._left_pad(prompts)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_length=ids.shape[1] + max_gen,
            stopping_criteria=stop_sequences_criteria(self.tokenizer, until, ids.shape[1], ids.shape[0]),
            pad_token_id=self.tokenizer.pad_token_id, use_cache=True, **kwargs,
        )
        return [postprocess_generated_text(self.tok_decode(row[ids.shape[1]:]), until, None) for row in out.tolist()]
