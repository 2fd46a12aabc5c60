"""FlowBot: induce LLM workflows from data with bilevel optimization and textual gradients."""

from flowbot.version import __version__

__all__ = ["__version__"]
