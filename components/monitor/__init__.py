"""monitor: does the champion's recent yield call for retraining?"""
