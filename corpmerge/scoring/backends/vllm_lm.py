"""An lm-eval model around one long-lived ``vllm.LLM``, tokenizing and post-processing as lm-eval's HFLM does.

Prompts go to the engine as token ids encoded with corpmerge's own tokenizer by HFLM's rules (the
same special-token handling, context/continuation split and left truncation), and completions are
decoded with it and cut at the stop sequences like HFLM's, so both backends see the same tokens and
differ only in the arithmetic of the forward pass. Log-likelihoods come from the engine's prompt
log-probabilities (a continuation token is greedy when its vocabulary rank is 1).
"""

from __future__ import annotations

from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

from corpmerge.errors import CorpmergeError

DEFAULT_MAX_GEN_TOKS = 256  # HFLM's default


def scoring_params() -> SamplingParams:
    """One generated token and the log-probability of each of the prompt's own tokens (a fresh object: vLLM annotates it)."""
    return SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)


def continuation_score(out: Any, ids: list[int], n: int) -> tuple[float, bool]:
    """(Σ log p, every token greedy) of the last ``n`` tokens of the prompt ``ids`` from the engine's output ``out``."""
    scored = [entry[token] for entry, token in zip(out.prompt_logprobs[-n:], ids[-n:])]
    return float(sum(lp.logprob for lp in scored)), all(lp.rank == 1 for lp in scored)


class VllmLM(TemplateLM):
    """lm-eval requests (generate_until, loglikelihood, loglikelihood_rolling) evaluated by ``engine``.

    Every call submits all its requests at once; vLLM's scheduler batches them (``max_num_seqs``
    in ``scoring.model_args`` bounds the batch). ``max_length`` plays HFLM's part (the longest
    input the model reads): the engine's ``max_model_len`` − 2, because a scored sequence of
    max_length + 1 tokens and the engine's one generated token must fit; so an engine with
    ``max_model_len`` = HFLM's max_length + 2 truncates exactly as HFLM does.
    """

    def __init__(self, engine: LLM, tokenizer: Any):
        super().__init__()
        self.engine, self.tokenizer = engine, tokenizer
        self.max_length = int(engine.llm_engine.model_config.max_model_len) - 2

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """HFLM.tok_encode: the tokenizer's special tokens unless the string already starts with BOS."""
        special = _add_special_kwargs(add_special_tokens, None)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        return self.tokenizer.encode(string, **special)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=True)

    def _context_ids(self, context: str) -> list[int]:
        """A generation prompt encoded as HFLM's tok_batch_encode encodes it."""
        special = {"add_special_tokens": False} if has_bos_prefix(context, getattr(self.tokenizer, "bos_token", None)) else {}
        return self.tokenizer(context, **special)["input_ids"]

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """HFLM.apply_chat_template: the tokenizer's template; a template that refuses a system turn gets none."""
        import jinja2

        def render(history: list[dict[str, str]]) -> str:
            return self.tokenizer.apply_chat_template(
                history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )

        try:
            return render(chat_history)
        except jinja2.exceptions.TemplateError:
            return render([message for message in chat_history if message["role"] != "system"])

    def _run(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Any]:
        if not prompts:
            return []
        return self.engine.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        eos = self.tokenizer.decode(self.eot_token_id, skip_special_tokens=False)
        prompts, params, stops = [], [], []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if max_gen_toks >= self.max_length:
                raise CorpmergeError(
                    f"scoring.model_args: max_model_len {self.max_length + 2} leaves no room for a task's max_gen_toks {max_gen_toks}; raise max_model_len"
                )
            prompts.append(self._context_ids(context)[-(self.max_length - max_gen_toks) :])
            params.append(self._sampling(kwargs, until, max_gen_toks))
            stops.append(until)
        return [
            postprocess_generated_text(self.tokenizer.decode(ids, skip_special_tokens=True), until, None)
            for ids, until in zip(self._generated(prompts, params), stops)
        ]

    def _generated(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
        """The token ids the engine generates after each prompt."""
        return [list(out.outputs[0].token_ids) for out in self._run(prompts, params)]

    @staticmethod
    def _sampling(kwargs: dict[str, Any], until: list[str], max_gen_toks: int) -> SamplingParams:
        """Greedy unless the task samples (``do_sample`` with a temperature > 0), as HF's generate does."""
        unknown = sorted(set(kwargs) - {"do_sample", "temperature", "top_p", "top_k"})
        if unknown:
            raise CorpmergeError(f"scoring.backend: vllm does not pass the tasks' generation_kwargs {unknown}; use backend: hf")
        sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 0.0)) > 0.0
        options = {k: kwargs[k] for k in ("temperature", "top_p", "top_k") if k in kwargs} if sample else {}
        return SamplingParams(max_tokens=max_gen_toks, stop=[s for s in until if s], **{"temperature": 0.0, **options})

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], **kwargs: Any) -> list[tuple[float, bool]]:
        """Sum of the continuation's log-probabilities given the context, and whether each token is the argmax."""
        prompts, lengths = [], []
        for _, context_enc, continuation_enc in requests:
            prompts.append((context_enc + continuation_enc)[-(self.max_length + 1) :])
            lengths.append(len(continuation_enc))
        return self._scored(prompts, lengths)

    def _scored(self, prompts: list[list[int]], lengths: list[int]) -> list[tuple[float, bool]]:
        """(Σ log p, all greedy) over the last n tokens of each prompt."""
        outputs = self._run(prompts, [scoring_params()] * len(prompts))
        return [continuation_score(out, ids, n) for out, ids, n in zip(outputs, prompts, lengths)]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """HFLM's rolling windows over the whole string, each scored as a (context, continuation) pair."""
        windows, owners = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for window in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            ):
                context, continuation = lm_utils.make_disjoint_window(window)
                windows.append((None, context, continuation))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[owner] += logprob
        return totals
