"""spokenlm: audio -> self-supervised speech encoder -> compressor -> adapter -> decoder LLM -> task.

Import the parts from their modules (`spokenlm.audio`, `spokenlm.model`, `spokenlm.tasks`, ...);
this package init stays light: it never imports ray, fastapi or gradio (those live in pipelines/,
serve/ and ui/).
"""

__version__ = "0.1.0"
