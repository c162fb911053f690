"""What a step does: model calls, tools, retrieval, validation, transforms.

No Kafka here: every processor is a plain async callable, testable on its own.
"""

__all__: list[str] = []
