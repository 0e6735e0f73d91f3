"""Request ids of the simulated line's traffic (ctloop_app.traffic). Feedback is matched to
predictions by request id, so no two parts sent to one store may share one."""

from pathlib import Path

from ctloop_app.traffic import Traffic


def test_traffics_sending_windows_to_one_store_never_share_a_request_id(tmp_path: Path) -> None:
    """One Traffic per window, as the bench's loop over time sends them: with ids numbered from 0
    in each, a window's audited labels were read as the labels of the next windows' parts."""
    windows = [Traffic(None, tmp_path, audit_share=0.25, seed=1) for _ in range(3)]  # no part is sent
    ids = [traffic.request_id(position) for traffic in windows for position in range(300)]
    assert len(set(ids)) == len(ids) == 900
    assert all(request_id.startswith("part-") for request_id in ids)
