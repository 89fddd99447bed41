"""Seeing inside the model: the explanation registry, the tracer, and the views built on them
(terminal walk-through, HTML page, markdown, attention maps, scaling analysis)."""
