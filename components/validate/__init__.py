"""validate: is the collected set fit for consensus filtering and training?"""

from components.validate.logic import Check, ValidationError, ValidationReport, validate_collected

__all__ = ["Check", "ValidationError", "ValidationReport", "validate_collected"]
