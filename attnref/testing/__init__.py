"""The oracle: conformance cases, semantics profiles (with their hazards),
the tolerance rule, the harness that checks other attention implementations
against attnref (forward: :mod:`~attnref.testing.conformance`; backward:
:mod:`~attnref.testing.backward`), and the measured conformance matrix
(:mod:`.matrix`)."""
from .backward import assert_conforms_backward, check_backward
from .cases import CAPABILITIES, SUITES, Case
from .conformance import (CaseResult, ConformanceReport, assert_conforms, case_inputs,
                          check)
from .semantics import HAZARDS, PROFILES, Semantics
from .tolerance import (equivalence_bound, max_abs_error, reference_dtype,
                        reference_errors)

__all__ = ["CAPABILITIES", "SUITES", "Case", "CaseResult", "ConformanceReport",
           "assert_conforms", "assert_conforms_backward", "case_inputs", "check",
           "check_backward", "HAZARDS", "PROFILES", "Semantics",
           "equivalence_bound", "max_abs_error", "reference_dtype", "reference_errors"]
