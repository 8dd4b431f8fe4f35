"""livelm: keep a language model live.

It reads a stream of documents, scores each one under the current weights, learns from it with
online gradient steps, and reports how well it kept up.
"""

__version__ = "0.1.0"
