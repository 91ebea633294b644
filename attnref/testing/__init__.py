"""The oracle: conformance cases, semantics profiles (with their hazards),
the tolerance rule, the harness that checks other attention implementations
against attnref, and the measured conformance matrix (:mod:`.matrix`)."""
from .cases import CAPABILITIES, SUITES, Case
from .conformance import (CaseResult, ConformanceReport, assert_conforms, case_inputs,
                          check)
from .semantics import HAZARDS, PROFILES, Semantics
from .tolerance import (equivalence_bound, max_abs_error, reference_dtype,
                        reference_errors)

__all__ = ["CAPABILITIES", "SUITES", "Case", "CaseResult", "ConformanceReport",
           "assert_conforms", "case_inputs", "check", "HAZARDS", "PROFILES", "Semantics",
           "equivalence_bound", "max_abs_error", "reference_dtype", "reference_errors"]
