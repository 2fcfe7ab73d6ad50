"""LLM merging of instruction groups (MergeIT step 2): prompts, backends, cache and engine.

Import the submodules themselves: this package imports nothing, so a command that needs
only the configuration does not pay for the HTTP client or the engine."""
