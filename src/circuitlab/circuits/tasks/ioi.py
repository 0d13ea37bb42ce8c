"""Indirect object identification (Wang et al. 2022): "... A and B ... B gave it to" -> A.

Positives fill one of 15 templates in BABA order ("Then, B and A went ... B gave ...") or,
with the first two names swapped, ABBA order, half each; A is the indirect object (IO, the
answer) and B the subject (S, the distractor). The final IO token is left for the model.
Negatives (ABC) keep the template, place and object but use three fresh names, all different
from each other and from A and B, so nothing in the prompt says which name comes next; the
metric on a negative uses its positive's A and B, which do not occur in it, so it is about 0.
Metric: logit(A) - logit(B).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from circuitlab.circuits.tasks.common import CircuitTask, check_pairs, single_tokens
from circuitlab.core.errors import CircuitlabError

# [X] and [Y] are the first two names, [S] the subject of the second clause.
TEMPLATES = (
    "Then, [X] and [Y] went to the [PLACE]. [S] gave a [OBJECT] to",
    "Then, [X] and [Y] had a lot of fun at the [PLACE]. [S] gave a [OBJECT] to",
    "Then, [X] and [Y] were working at the [PLACE]. [S] decided to give a [OBJECT] to",
    "Then, [X] and [Y] were thinking about going to the [PLACE]. [S] wanted to give a [OBJECT] to",
    "Then, [X] and [Y] had a long argument, and afterwards [S] said to",
    "After [X] and [Y] went to the [PLACE], [S] gave a [OBJECT] to",
    "When [X] and [Y] got a [OBJECT] at the [PLACE], [S] decided to give it to",
    "When [X] and [Y] got a [OBJECT] at the [PLACE], [S] decided to give the [OBJECT] to",
    "While [X] and [Y] were working at the [PLACE], [S] gave a [OBJECT] to",
    "While [X] and [Y] were commuting to the [PLACE], [S] gave a [OBJECT] to",
    "After the lunch, [X] and [Y] went to the [PLACE]. [S] gave a [OBJECT] to",
    "Afterwards, [X] and [Y] went to the [PLACE]. [S] gave a [OBJECT] to",
    "Then, [X] and [Y] had a long argument. Afterwards [S] said to",
    "The [PLACE] [X] and [Y] went to had a [OBJECT]. [S] gave it to",
    "Friends [X] and [Y] found a [OBJECT] at the [PLACE]. [S] gave it to",
)

NAMES = (
    "Mary", "John", "Alice", "Bob", "Michael", "Sarah", "David", "Emma", "James", "Anna",
    "Robert", "Laura", "Daniel", "Emily", "Thomas", "Kate", "Richard", "Nicole", "Paul",
    "Lisa", "Mark", "Rachel", "Steven", "Amy", "Andrew", "Jessica", "Kevin", "Sophie",
    "Brian", "Rose", "Jason", "Grace", "Eric", "Helen", "Adam", "Julia", "Peter", "Amanda",
    "George", "Claire", "Frank", "Diana", "Henry", "Linda", "Jack", "Susan", "Ryan", "Karen",
    "Sam", "Maria", "Tom", "Alex", "Max", "Jane", "Joe", "Ben", "Chris", "Tim", "Anne",
    "Victoria", "Charles", "Patrick", "Edward", "Lucy", "Harry", "Sean", "Carl", "Dan",
    "Jeff", "Ruth", "Bill", "Jim", "Roger", "Carol", "Joseph", "Elizabeth", "Martin",
    "Jennifer", "William", "Scott", "Matthew", "Simon", "Nancy", "Louis", "Leo", "Victor",
    "Oliver", "Ashley", "Megan", "Rebecca", "Samuel", "Sandra", "Tony", "Kelly", "Lily",
    "Ted", "Eva", "Ivan", "Oscar", "Xavier", "Bernard", "Timothy", "Natalie", "Vanessa",
)  # fmt: skip

PLACES = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
    "park", "library", "market", "church", "beach", "museum", "airport", "bank", "cafe",
    "theater", "gym", "zoo",
)  # fmt: skip

OBJECTS = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "book",
    "letter", "flower", "key", "gift", "bag", "ticket", "hat", "cake", "pen", "phone", "coin",
)  # fmt: skip


def fill(template: str, x: str, y: str, s: str, place: str, obj: str) -> str:
    return (
        template.replace("[X]", x)
        .replace("[Y]", y)
        .replace("[S]", s)
        .replace("[PLACE]", place)
        .replace("[OBJECT]", obj)
    )


def make_ioi(tokenizer: Any, n: int = 250, seed: int = 0) -> CircuitTask:
    """`n` IOI pairs (BABA and ABBA alternating) for `tokenizer`, seeded."""
    if n < 1:
        raise CircuitlabError(f"need at least one IOI prompt, got {n}")
    names = single_tokens(tokenizer, NAMES, what="IOI names", need=5)
    pool = list(names)
    rng = np.random.default_rng(seed)
    positives, negatives, good, bad = [], [], [], []
    attempts = 0
    while len(positives) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise CircuitlabError("could not draw IOI prompts of matching token length")
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        place = PLACES[rng.integers(len(PLACES))]
        obj = OBJECTS[rng.integers(len(OBJECTS))]
        a, b, c, d, e = (pool[i] for i in rng.choice(len(pool), size=5, replace=False))
        baba = len(positives) % 2 == 0
        positive = (
            fill(template, b, a, b, place, obj) if baba else fill(template, a, b, b, place, obj)
        )
        negative = fill(template, c, d, e, place, obj)
        if not check_pairs(tokenizer, [positive], [negative]):
            continue
        positives.append(positive)
        negatives.append(negative)
        good.append((names[a],))
        bad.append((names[b],))
    return CircuitTask(
        name="ioi",
        metric="logit_diff",
        positives=tuple(positives),
        negatives=tuple(negatives),
        good=tuple(good),
        bad=tuple(bad),
        description="IOI (Wang et al. 2022): logit(IO) - logit(S); negatives are ABC prompts",
    )
