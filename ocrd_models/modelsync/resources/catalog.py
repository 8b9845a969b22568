"""The machine-wide view of known resources (``available``): the bundled index plus installed processors' own lists."""

from __future__ import annotations

from . import processors
from .index import ResourceIndex, canonical_processor
from .entry import ResourceEntry
from ..config import Environment


def available(env: Environment, processor: str | None = None, *, ask_processors: bool = True
              ) -> tuple[ResourceIndex, list[ResourceEntry]]:
    """Known resources of one processor (or all), with installed processors' own lists merged in."""
    reg = ResourceIndex.load(env)
    if ask_processors:
        if processor:
            exes = [canonical_processor(processor)]
        else:
            exes = processors.executables_on_path(env)
        reg.add_processor_answers(processors.dump_many(exes, env))
    if processor is not None:
        return reg, reg.resources(processor)
    return reg, [e for p in reg.processors_with_resources() for e in reg.resources(p)]
