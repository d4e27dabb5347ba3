"""Text before it is speech: normalization of what LLMs write, sentence rules, G2P.

Below the engine: the server's input buffer and the client library cut text with the
same sentence rules the engine plans with, without importing the engine.
"""
