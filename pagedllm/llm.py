"""The offline API: LLM(model=...).generate(prompts, SamplingParams(...)), as in vLLM."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from pagedllm.config import EngineArgs
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.gc_utils import frozen_heap
from pagedllm.outputs import (
    PoolingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from pagedllm.sampling_params import PoolingParams, RequestOutputKind, SamplingParams
from pagedllm.scoring import cosine_similarity, score_pairs

logger = logging.getLogger(__name__)

# apply_chat_template's own arguments, which chat_template_kwargs may not set.
_CHAT_CALL_ARGUMENTS = frozenset(
    {
        "conversation",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tools",
        "tokenize",
        "return_dict",
        "return_tensors",
    }
)


class LLM:
    """An LLM for offline inference. Keyword arguments are EngineArgs fields."""

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(EngineArgs.field_names())
        if unknown:
            raise TypeError(f"LLM() got unexpected keyword arguments: {sorted(unknown)}")
        self.engine_args = EngineArgs(model=model, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(self.engine_args)

    def shutdown(self) -> None:
        """Release the workers, the model and the KV cache (device memory included)."""
        import gc

        import torch

        self.llm_engine.shutdown()
        del self.llm_engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """vLLM's default: the model's generation_config.json sampling values (or
        --generation-config's, with --override-generation-config over them)."""
        defaults = dict(self.llm_engine.model_config.default_sampling)  # None-free
        max_new_tokens = defaults.pop("max_new_tokens", None)
        if max_new_tokens:
            defaults["max_tokens"] = max_new_tokens
        return SamplingParams(**defaults)

    # ---- generation -----------------------------------------------------------
    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """`priority`: one per prompt, with scheduling_policy="priority" (lower first)."""
        prompt_list = _as_prompt_list(prompts)
        params = self._params_list(sampling_params, len(prompt_list))
        final = [p.clone() for p in params]
        for p in final:
            p.output_kind = RequestOutputKind.FINAL_ONLY
        priorities = _priority_list(priority, len(prompt_list))
        return self._run_all(prompt_list, final, use_tqdm, priorities)  # type: ignore[return-value]

    def stream(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> Iterator[RequestOutput]:
        """Yield RequestOutput deltas as tokens are produced, for one or many prompts.
        Each delta's `outputs[i].text` is the new text of sample i; concatenating the
        deltas of a request gives its final text."""
        prompt_list = _as_prompt_list(prompts)
        params = [p.clone() for p in self._params_list(sampling_params, len(prompt_list))]
        for p in params:
            p.output_kind = RequestOutputKind.DELTA
        ids = set(self._add_requests(prompt_list, params))
        try:
            while ids:
                for out in self.llm_engine.step():
                    if out.request_id in ids:
                        if out.finished:
                            ids.discard(out.request_id)
                        yield out  # type: ignore[misc]
        finally:
            if ids:
                self.llm_engine.abort_request(list(ids))

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """One conversation or a list of them, rendered with the model's chat template
        (or `chat_template`) as in vLLM: `continue_final_message` continues the last
        (assistant) message instead of starting a new turn, `tools` and
        `chat_template_kwargs` are variables of the template."""
        if add_generation_prompt and continue_final_message:
            raise ValueError(
                "continue_final_message and add_generation_prompt cannot both be true; "
                "set add_generation_prompt=False to continue the final message"
            )
        clashes = sorted(set(chat_template_kwargs or {}) & _CHAT_CALL_ARGUMENTS)
        if clashes:
            raise ValueError(
                f"chat_template_kwargs may not set {', '.join(clashes)}: "
                "they are arguments of LLM.chat itself"
            )
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = []
        for conversation in conversations:
            ids = self.get_tokenizer().apply_chat_template(
                conversation,
                chat_template=chat_template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tools=tools,
                tokenize=True,
                **(chat_template_kwargs or {}),
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            prompts.append({"prompt_token_ids": list(ids)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    # ---- embeddings -------------------------------------------------------------
    def embed(
        self, prompts: Any, pooling_params: PoolingParams | None = None, use_tqdm: bool = True
    ) -> list[PoolingRequestOutput]:
        prompt_list = _as_prompt_list(prompts)
        params = [pooling_params or PoolingParams()] * len(prompt_list)
        return self._run_all(prompt_list, params, use_tqdm)  # type: ignore[return-value]

    encode = embed

    def score(
        self,
        data_1: Any,
        data_2: Any,
        /,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[ScoringRequestOutput]:
        """vLLM's LLM.score on an embedding model: the cosine similarity of each pair's
        embeddings, pairs 1:1, 1:N (data_1 one text) or N:N. Each text is embedded once."""
        firsts, seconds = _as_prompt_list(data_1), _as_prompt_list(data_2)
        pairs = score_pairs(len(firsts), len(seconds), ("data_1", "data_2"))
        params = PoolingParams(truncate_prompt_tokens=truncate_prompt_tokens)
        embedded = self.embed([*firsts, *seconds], params, use_tqdm=use_tqdm)
        ones, twos = embedded[: len(firsts)], embedded[len(firsts) :]
        return [
            ScoringRequestOutput(
                request_id=str(k),
                outputs=ScoringOutput(
                    cosine_similarity(ones[i].outputs.embedding, twos[j].outputs.embedding)
                ),
                prompt_token_ids=ones[i].prompt_token_ids + twos[j].prompt_token_ids,
            )
            for k, (i, j) in enumerate(pairs)
        ]

    # ---- helpers ------------------------------------------------------------------
    def _params_list(
        self, sampling_params: SamplingParams | Sequence[SamplingParams] | None, n: int
    ) -> list[SamplingParams]:
        if sampling_params is None:
            return [self.get_default_sampling_params()] * n
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * n
        params = list(sampling_params)
        if len(params) != n:
            raise ValueError(
                f"sampling_params has {len(params)} entries but there are {n} prompts; "
                "pass one SamplingParams or one per prompt"
            )
        return params

    def _add_requests(
        self,
        prompts: list[Any],
        params: Sequence[SamplingParams | PoolingParams],
        priorities: Sequence[int] | None = None,
    ) -> list[str]:
        engine = self.llm_engine
        ids: list[str] = []
        try:
            for i, (prompt, p) in enumerate(zip(prompts, params)):
                request_id = engine.new_request_id()
                priority = priorities[i] if priorities is not None else 0
                engine.add_request(request_id, prompt, p, priority=priority)
                ids.append(request_id)
        except Exception:
            engine.abort_request(ids)
            raise
        return ids

    def _run_all(
        self,
        prompts: list[Any],
        params: Sequence[SamplingParams | PoolingParams],
        use_tqdm: bool,
        priorities: Sequence[int] | None = None,
    ) -> list[RequestOutput | PoolingRequestOutput]:
        """Add every request and run them to the end, the heap frozen meanwhile (the full
        collections of a long call then skip the model, torch and the user's objects)."""
        with frozen_heap():
            ids = self._add_requests(prompts, params, priorities)
            return self._run_to_completion(ids, use_tqdm)

    def _run_to_completion(
        self, ids: list[str], use_tqdm: bool
    ) -> list[RequestOutput | PoolingRequestOutput]:
        engine = self.llm_engine
        results: dict[str, RequestOutput | PoolingRequestOutput] = {}
        wanted = set(ids)
        bar = tqdm(total=len(ids), desc="Processed prompts", disable=not use_tqdm)
        try:
            while len(results) < len(ids):
                for out in engine.step():
                    if out.finished and out.request_id in wanted:
                        results[out.request_id] = out
                        bar.update(1)
        except BaseException:
            engine.abort_request([i for i in ids if i not in results])
            raise
        finally:
            bar.close()
        return [results[i] for i in ids]


def _priority_list(priority: Sequence[int] | None, n: int) -> list[int] | None:
    if priority is None:
        return None
    priorities = list(priority)
    if len(priorities) != n:
        raise ValueError(
            f"priority has {len(priorities)} entries but there are {n} prompts; "
            "pass one priority per prompt"
        )
    return priorities


def _as_prompt_list(prompts: Any) -> list[Any]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts):
        return [{"prompt_token_ids": prompts}]
    return list(prompts)
