"""The claims report (benchmarks/capsule_claims.py) in three parts: the experiments that train and
score the models, the report that writes report.md, and its plots."""
