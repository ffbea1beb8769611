"""A step's context runs in the loop: the batch's cut of them (`quorum_runs`) and the columns they fill."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from speckv_hf.core.context_source import ContextProposal
from speckv_hf.decoding.context_candidates import context_columns, quorum_runs

runs_strategy = st.lists(st.lists(st.integers(3, 9), max_size=6).map(tuple), min_size=1, max_size=8)


@given(runs=runs_strategy, quorum=st.sampled_from([0.01, 0.25, 0.5, 0.75, 1.0]), closed=st.integers(0, 3))
def test_runs_are_cut_where_fewer_than_the_quorum_have_one(runs, quorum, closed):
    caps = [0 if b < closed else 20 for b in range(len(runs))]
    proposals = [ContextProposal(run, 2) if run else None for run in runs]
    cut, kept = quorum_runs(runs, proposals, caps, quorum)
    open_rows = sum(cap > 0 for cap in caps)
    assert all(run[: len(c)] == c for run, c in zip(runs, cut, strict=True))  # prefixes of the runs
    assert [p is not None for p in kept] == [bool(c) for c in cut]
    if open_rows < 2:
        assert cut == list(runs)
        return
    width = max(map(len, cut))
    needed = max(quorum * open_rows, 1)
    # Every column taken is one enough rows want; the next one is not.
    assert all(sum(len(run) >= w for run in runs) >= needed for w in range(1, width + 1))
    assert width == max(map(len, runs)) or sum(len(run) >= width + 1 for run in runs) < needed
    assert all(len(c) == min(len(run), width) for run, c in zip(runs, cut, strict=True))


def test_context_columns_fill_to_the_shortest_open_run():
    columns, valid, lasts = [[5, 0]], [[True, True]], [(1, 2), (3, 4)]
    added = context_columns(columns, valid, [(5, 6, 7, 8), (0, 9, 9)], [True, True], lasts, pad=0)
    assert added == 2 and columns == [[5, 0], [6, 9], [7, 9]] and valid[1:] == [[True, True]] * 2
    assert lasts == [(6, 7), (9, 9)]
    # A closed row gets pad and does not bound the columns.
    columns, valid, lasts = [], [], [(1, 2), (3, 4)]
    assert context_columns(columns, valid, [(5, 6), ()], [True, False], lasts, pad=0) == 2
    assert columns == [[5, 0], [6, 0]] and valid == [[True, False]] * 2 and lasts == [(5, 6), (0, 0)]
