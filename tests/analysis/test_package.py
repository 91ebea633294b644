"""attnref.analysis: its public names, and that it depends on NumPy alone."""
import ast
import pathlib

import attnref.analysis as analysis

ISSUE_NAMES = """entropy mean_entropy top_attended interpret_weights self_attention
received_attention confidence sparsity effective_support content_function_attention
function_word_mask special_token_attention sink_score positional_bias attention_locality
mean_attention_distance relative_position_profile previous_token_score next_token_score
diagonal_score classify_head head_specialization detect_head head_similarity head_diversity
head_output_norms head_importance attention_flow_table attention_rollout attention_max_flow
layer_profile vector_composition similarity_attention_correlation diagnose attention_quality
entropy_regularizer sparsity_regularizer head_diversity_regularizer
clip_attention_weights""".split()


def test_every_name_the_issue_lists_is_exported():
    missing = [name for name in ISSUE_NAMES if name not in analysis.__all__]
    assert not missing
    assert all(callable(getattr(analysis, name)) for name in ISSUE_NAMES)


STANDARD_AND_NUMPY = {"numpy", "__future__", "collections", "contextlib", "contextvars",
                      "dataclasses", "math", "numbers", "typing", "unicodedata", "weakref"}


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_analysis_depends_on_numpy_alone():
    # its own modules, the NumPy-only attnref.numerics, NumPy and the standard library
    for path in pathlib.Path(analysis.__file__).parent.glob("*.py"):
        for module in imported_modules(path):
            if module.startswith(".."):
                assert module == "..numerics", (path.name, module)
            elif not module.startswith("."):
                assert module.split(".")[0] in STANDARD_AND_NUMPY, (path.name, module)
