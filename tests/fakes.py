"""Fake lm-eval models for oracle tests."""

from typing import Callable

from lm_eval.api.model import LM


class GenerateOnlyLM(LM):
    """Answers each generate_until request with `answer(context)`; the other request types are unused."""

    def __init__(self, answer: Callable[[str], str]):
        super().__init__()
        self.answer = answer

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm=False):
        return [self.answer(r.args[0]) for r in requests]
