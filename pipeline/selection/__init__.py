"""Selection stages that plug into the online loop (docs/algorithms.md §2–5), as plain numpy/torch estimators.

- relevance   — source relevance ν̂ to the judge, budget split, composite source (Chen & Wang)
- dual_active — which pairs to ask which judge: greedy D-optimal design, β̂ per judge, LCB (Liu, Shi, Sun)
- lowrank     — low-rank contextual reward Θ = PQᵀ and Pessimism in Reduced Subspace (LoCo-RLHF)
- shared      — multi-task reward model with a shared trunk, judge head, trunk transfer (D'Eramo et al.)

Each module has `run_suite(seeds, quick)` (the synthetic-truth check) and `selection_cost()`; the report
`python -m pipeline.selection.report` runs them all. Submodules are imported on use, so importing one stage
does not pull in the others (only `lowrank` and `shared` need torch).
"""
SUITES = ("relevance", "dual_active", "lowrank", "shared")
