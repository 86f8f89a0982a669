"""Adapters that put kavach between an application and its LLM providers."""
