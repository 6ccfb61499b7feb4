"""Graph passes: a `Pass` base, an explicit registry, a pass manager and a pattern rewriter.

    from qcompiler.passes import run_passes, DEFAULT_FLOAT_PIPELINE
    run_passes(graph, DEFAULT_FLOAT_PIPELINE)

Adding a pass: one file in this package (a frozen dataclass subclassing `Pass` or `RewritePass`) and one line in
`registry.PASSES`.
"""
from qcompiler.passes.base import Pass, PassResult
from qcompiler.passes.manager import PassFailure, PassManager, PassRecord, run_passes
from qcompiler.passes.registry import DEFAULT_FLOAT_PIPELINE, PASSES, PipelineError, parse_pipeline, pipeline_text

__all__ = [
    "DEFAULT_FLOAT_PIPELINE", "PASSES", "Pass", "PassFailure", "PassManager", "PassRecord", "PassResult",
    "PipelineError", "parse_pipeline", "pipeline_text", "run_passes",
]
