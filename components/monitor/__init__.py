"""monitor: does the champion's recent yield call for retraining?"""

from components.monitor.logic import MonitorResult, PredictionLogError, check_store_yield, check_yield

__all__ = ["MonitorResult", "PredictionLogError", "check_store_yield", "check_yield"]
