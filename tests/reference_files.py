"""Hypothesis strategies for reference files: raw bytes, any JSON, and near-misses of a
reference.json (right keys, wrong shapes), which reach the deeper checks."""

from __future__ import annotations

import json

from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=16,
)
head_names = st.from_regex(r"-?[0-9]{1,2}\.-?[0-9]{1,2}", fullmatch=True) | json_values
kinds = st.sampled_from(["mean", "zero"]) | json_values
tables = st.lists(st.lists(st.floats() | st.none() | json_values, max_size=5), max_size=4)
reference_like = st.fixed_dictionaries(
    {"heads": st.lists(head_names, max_size=6) | json_values},
    optional={
        "settings": st.fixed_dictionaries({}, optional={"ablation": kinds, "num": json_values})
        | json_values,
        "effects": st.dictionaries(
            kinds.filter(lambda k: isinstance(k, str)),
            st.fixed_dictionaries({"relative": tables | json_values}),
            max_size=2,
        )
        | json_values,
    },
)
documents = (
    st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps(v).encode())
    | reference_like.map(lambda v: json.dumps(v).encode())
)
