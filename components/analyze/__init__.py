"""analyze: challenger vs champion on the new data and the golden set, and the deploy decision."""

from components.analyze.logic import (
    AnalysisResult,
    ModelScores,
    PseudoLabelGate,
    analyze,
    analyze_against_champion,
    score_model,
)

__all__ = ["AnalysisResult", "ModelScores", "PseudoLabelGate", "analyze", "analyze_against_champion", "score_model"]
