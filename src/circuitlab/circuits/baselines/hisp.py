"""HISP-style head importance (Michel et al. 2019): |d metric / d head gate|, per prompt.

Computed in the same forward + backward pass as attribution patching; see `attribution`.
"""

from __future__ import annotations

from typing import Any

from circuitlab.circuits.baselines.attribution import gradient_scores
from circuitlab.circuits.discover import Ranking
from circuitlab.circuits.tasks import Task
from circuitlab.core.lm import LoadedLM


def hisp_scores(lm: LoadedLM, task: Task, **kwargs: Any) -> Ranking:
    return gradient_scores(lm, task, **kwargs)[1]
