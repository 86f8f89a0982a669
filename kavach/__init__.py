"""AgentKavach: hard budget limits and guardrails for LLM calls."""

__version__ = "0.1.0"
