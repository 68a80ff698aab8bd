r"""``builtin:sentiment``: continue a review in a positive voice, scored by a lexicon.

Why this task. A built-in task must let a user see, on a 2-core CPU and within
minutes, whether a preference objective moves a 135M model in the preferred
direction, measured by a reward that code computes (no judge model exists
offline). ``builtin:arithmetic`` keeps mipo honest about hard targets, but a
135M model barely learns arithmetic in minutes. This task is the offline
stand-in for the controlled-sentiment benchmark of the DPO paper (Rafailov et
al., arXiv 2305.18290, Sec. 6.1 and Fig. 2: IMDb prefixes, a sentiment
classifier as gold reward, the reward-KL frontier), with three changes that
make it cheap and deterministic:

* the prompts are generated: a review opening about one of 64 subjects, in one
  of three voices (enthusiastic, disappointed, neutral), followed by the
  instruction to write one more sentence; so about two thirds of the openings
  pull a model that simply continues the tone away from the preferred answer,
  and there is room to improve;
* the chosen and rejected responses are one sentence each, built from the same
  skeleton and differing *only* in the polarity words: the preference carries
  sentiment and nothing else (no length or format signal);
* the gold reward is :func:`sentiment_reward`, a lexicon score with negation,
  in place of the classifier. Its lexicon is larger than the words the
  generator uses, so a policy that found other positive words still scores.

Measured on SmolLM2-135M-Instruct (greedy, 32 new tokens, 128 held-out prompts
of ``builtin:sentiment?n=1200&seed=0``): the mean gold reward before training
is recorded in ``docs/which_method.md``, next to what each method reaches.

Each pair is conversational; generation is deterministic in ``seed`` (Python's
``random.Random``), spec ``builtin:sentiment?n=600&seed=0``.
"""

import random
import re

from mipo.data.errors import DataError
from mipo.data.records import PreferenceRecord

DEFAULT_SIZE = 600
"""Pairs in ``builtin:sentiment`` when no ``n`` is given."""

POSITIVE = frozenset(
    """good great excellent wonderful fantastic amazing superb lovely delightful
    pleasant enjoyable brilliant outstanding perfect beautiful charming friendly
    helpful comfortable impressive memorable fun happy delighted glad pleased
    satisfied grateful thrilled love loved enjoy enjoyed recommend recommended
    best nice fresh clean tasty delicious warm welcoming reliable smooth
    worthwhile gem favourite favorite joy pleasure excited awesome""".split()
)
"""Words that count +1 (lower case); each counts -1 after a negator."""

NEGATIVE = frozenset(
    """bad poor terrible awful horrible dreadful disappointing disappointed
    boring bored dull mediocre unpleasant rude unhelpful uncomfortable annoying
    annoyed frustrating frustrated worst waste broken dirty bland cold stale
    slow overpriced noisy sad upset angry regret regretted hate hated avoid
    mess flawed weak tedious painful useless unreliable letdown tired
    forgettable lousy""".split()
)
"""Words that count -1 (lower case); each counts +1 after a negator."""

NEGATORS = frozenset(
    """not no never hardly barely nothing nobody neither nor without isn't
    wasn't aren't weren't don't doesn't didn't won't wouldn't can't couldn't
    shouldn't""".split()
)
"""A lexicon word within two words after one of these has its sign flipped."""

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

SUBJECTS = (
    "the new phone", "this café", "the hotel", "the film", "this novel",
    "the concert", "the restaurant", "the laptop", "the museum", "this album",
    "the city park", "the train service", "the headphones", "the video game",
    "the bakery", "this online course", "the gym", "the coffee machine",
    "the theatre show", "the bike shop", "the pizza place", "the campsite",
    "the language app", "the dentist", "the bookshop", "the art exhibition",
    "the cooking class", "the running shoes", "the airline", "the hair salon",
    "the board game", "the podcast", "the zoo", "the car rental",
    "the vacuum cleaner", "the ski resort", "the sushi bar", "the library",
    "the yoga studio", "the tablet", "the music festival", "the ferry",
    "the garden centre", "the taxi company", "the pharmacy", "the cinema",
    "the ice cream shop", "the tour guide", "the bus company", "the noodle bar",
    "the escape room", "the hostel", "the wine bar", "the smartwatch",
    "the swimming pool", "the comedy club", "the bakery course", "the camera",
    "the tea room", "the boat trip", "the night market", "the climbing wall",
    "the farm shop", "the spa",
)  # fmt: skip
"""What the reviews are about."""

OPENINGS = {
    "positive": (
        "I tried {s} last week and was pleasantly surprised.",
        "My friends talked me into {s}, and I am glad they did.",
        "From the first minute, {s} felt special.",
        "I had high hopes for {s}, and it did not let me down.",
        "Everyone I know raves about {s}, and now I see why.",
        "I have been back to {s} three times already.",
        "After a long week, {s} was exactly what I needed.",
        "I did not expect much from {s}, yet it won me over.",
    ),
    "negative": (
        "I tried {s} last week and regretted it almost at once.",
        "My friends talked me into {s}, and I wish they had not.",
        "From the first minute, something about {s} felt wrong.",
        "I had high hopes for {s}, but it let me down.",
        "Everyone I know raves about {s}, and I cannot see why.",
        "I will not be going back to {s}.",
        "After a long week, {s} was the last thing I needed.",
        "I did not expect much from {s}, and it was even worse.",
    ),
    "neutral": (
        "I tried {s} last week.",
        "My friends talked me into {s} on Saturday.",
        "I went to {s} for the first time this month.",
        "I had heard mixed things about {s} before going.",
        "A colleague mentioned {s}, so I gave it a go.",
        "I booked {s} on a whim.",
        "It was my second time at {s}.",
        "I spent the afternoon at {s}.",
    ),
}
"""Review openings by voice; ``{s}`` is the subject."""

_PROMPT = (
    'Here is the start of a review of {s}: "{opening}" '
    "Continue the review with one more sentence."
)

_SKELETONS = (
    "Overall it was {adj}, and I would {rec} it to anyone.",
    "The {aspect} was {adj}, and I left feeling {feel}.",
    "Honestly, the whole visit was {adj} from start to finish.",
    "I {verb} every part of it, especially the {aspect}.",
    "By the end I felt {feel}, because the {aspect} was so {adj}.",
)
"""One-sentence continuations; the slots take words of one polarity."""

_ASPECTS = ("service", "quality", "price", "design", "atmosphere", "staff", "ending")

_SLOTS = {
    "positive": {
        "adj": ("wonderful", "excellent", "delightful", "great", "lovely", "superb"),
        "rec": ("recommend", "happily recommend"),
        "feel": ("happy", "delighted", "grateful", "thrilled"),
        "verb": ("loved", "enjoyed"),
    },
    "negative": {
        "adj": ("terrible", "awful", "disappointing", "dreadful", "poor", "dull"),
        "rec": ("never recommend", "not recommend"),
        "feel": ("disappointed", "frustrated", "annoyed", "upset"),
        "verb": ("hated", "regretted"),
    },
}
"""The polarity words each skeleton slot draws from."""


def sentiment_reward(prompt: str, answer: str) -> float:
    r"""The lexicon sentiment of ``answer``, in [-1, 1] (``prompt`` is not used).

    With $P$ and $N$ the positive and negative lexicon hits among the lower-cased
    words of the answer (a hit's sign flips when one of the two words before it
    is a negator), the reward is $(P - N) / (P + N)$, and 0 without a hit.

    >>> sentiment_reward("", "It was wonderful and I loved the staff.")
    1.0
    >>> sentiment_reward("", "It was not good, just boring.")
    -1.0
    >>> sentiment_reward("", "It was a visit.")
    0.0
    >>> sentiment_reward("", "Great food, but the service was slow.")
    0.0
    """
    del prompt
    words = _WORD.findall(answer.lower().replace("’", "'"))
    score = hits = 0
    for index, word in enumerate(words):
        sign = (word in POSITIVE) - (word in NEGATIVE)
        if sign == 0:
            continue
        if any(w in NEGATORS for w in words[max(0, index - 2) : index]):
            sign = -sign
        score += sign
        hits += 1
    return score / hits if hits else 0.0


def _continuation(
    polarity: str, skeleton: str, aspect: str, picks: dict[str, int]
) -> str:
    """``skeleton`` filled with the ``polarity`` words at slot positions ``picks``."""
    slots = _SLOTS[polarity]
    words = {slot: slots[slot][picks[slot] % len(slots[slot])] for slot in slots}
    return skeleton.format(aspect=aspect, **words)


def sentiment_records(
    *, n: int = DEFAULT_SIZE, seed: int = 0
) -> list[PreferenceRecord]:
    """Generate ``n`` review-continuation pairs, deterministically in ``seed``.

    The chosen continuation is positive and the rejected one negative, from the
    same skeleton, aspect and slot positions (so they differ in polarity only).
    """
    if n <= 0:
        raise DataError(f"builtin:sentiment: n must be > 0, got {n}")
    openings = [text for voice in sorted(OPENINGS) for text in OPENINGS[voice]]
    combinations = [(s, o) for s in SUBJECTS for o in openings]
    if n > len(combinations):
        raise DataError(
            f"builtin:sentiment: n must be <= {len(combinations)} (every prompt is "
            f"distinct), got {n}"
        )
    rng = random.Random(seed)
    records = []
    for index, (subject, template) in enumerate(rng.sample(combinations, n)):
        opening = template.format(s=subject)
        skeleton, aspect = rng.choice(_SKELETONS), rng.choice(_ASPECTS)
        picks = {slot: rng.randrange(12) for slot in ("adj", "rec", "feel", "verb")}
        prompt = _PROMPT.format(s=subject, opening=opening)
        chosen = _continuation("positive", skeleton, aspect, picks)
        rejected = _continuation("negative", skeleton, aspect, picks)
        records.append(
            PreferenceRecord(
                prompt=[{"role": "user", "content": prompt}],
                chosen=[{"role": "assistant", "content": chosen}],
                rejected=[{"role": "assistant", "content": rejected}],
                source=f"builtin:sentiment[{index}]",
            )
        )
    return records


__all__ = [
    "DEFAULT_SIZE",
    "NEGATIVE",
    "NEGATORS",
    "OPENINGS",
    "POSITIVE",
    "SUBJECTS",
    "sentiment_records",
    "sentiment_reward",
]
