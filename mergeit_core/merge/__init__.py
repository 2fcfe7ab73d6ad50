"""LLM merging of instruction groups (MergeIT step 2): prompts, backends, cache and engine."""

from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.cache import CachedResponse, DuckDBResponseCache, merge_cache_key, score_cache_key
from mergeit_core.merge.engine import MergeGroup, MergeOutcome, MergeReport, run_merges
from mergeit_core.merge.llama_server import LlamaCppServer, default_gguf_path
from mergeit_core.merge.llm import (
    ChatBackend,
    ChatResponse,
    LLMConfig,
    LLMConfigurationError,
    LLMError,
    LLMRequestRejectedError,
    LLMUnavailableError,
)
from mergeit_core.merge.openai_backend import OpenAICompatibleBackend
from mergeit_core.merge.prompt import PROMPT_VERSION, SCORE_PROMPT_VERSION, InvalidMergeError
from mergeit_core.merge.quality import LLMJudgeScorer, Scorer

__all__ = [
    "PROMPT_VERSION",
    "SCORE_PROMPT_VERSION",
    "CachedResponse",
    "ChatBackend",
    "ChatResponse",
    "DuckDBResponseCache",
    "InvalidMergeError",
    "LLMConfig",
    "LLMConfigurationError",
    "LLMError",
    "LLMJudgeScorer",
    "LLMRequestRejectedError",
    "LLMUnavailableError",
    "LlamaCppServer",
    "MergeGroup",
    "MergeOutcome",
    "MergeReport",
    "OpenAICompatibleBackend",
    "Scorer",
    "default_gguf_path",
    "merge_cache_key",
    "open_backend",
    "run_merges",
    "score_cache_key",
]
