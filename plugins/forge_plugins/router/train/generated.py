"""Generated router examples for styles the training file lacks (``--generated N``).

The training queries cover code as short task titles, maths as word problems and competition
LaTeX, writing as instructions ("Write a story about ...") and general as factoid questions. Real
users also ask conceptual programming questions ("what is a closure in JS"), counting and
probability questions, and paste story premises without an instruction. This module writes such
queries from general knowledge: a cross product of topics x concepts x question templates, sampled
with a seed. The *same* templates are used for ``general`` topics, so the model learns the topic
and not the template ("what is the difference between X and Y" is not a code signal by itself).

No item comes from an evaluation set; the lists below were written from scratch.
"""

from __future__ import annotations

import itertools
import random

__all__ = ["generated_examples"]

_TEMPLATES = (
    "what is {c} in {t}?",
    "explain {c} in {t}",
    "can you explain how {c} works in {t}?",
    "what's the difference between {c} and {c2} in {t}?",
    "when should I use {c} in {t}?",
    "why does my {t} {c} fail?",
    "I don't understand {c} in {t}, can you give a simple example?",
    "how does {c} work under the hood in {t}",
    "is {c} in {t} a good idea for a beginner?",
    "what are the best practices for {c} with {t}?",
    "ELI5: {c} ({t})",
    "{t}: {c} vs {c2}, which one and why?",
)

_CODE_TOPICS = (
    "Python", "JavaScript", "TypeScript", "Java", "C#", "C++", "C", "Go", "Rust", "Kotlin", "Swift",
    "Ruby", "PHP", "Scala", "Haskell", "Elixir", "R", "Bash", "PowerShell", "SQL", "React", "Vue",
    "Angular", "Svelte", "Django", "Flask", "FastAPI", "Spring Boot", "Rails", "Laravel", "Node.js",
    "Express", "Flutter", "Dart", "React Native", "Kubernetes", "kubectl", "Docker", "Terraform",
    "Ansible", "git", "GitHub Actions", "PostgreSQL", "MongoDB", "Redis", "pandas", "NumPy",
    "PyTorch", "Unity", "Next.js", "GraphQL", "webpack", "Linux shell", "CMake",
)  # fmt: skip
_CODE_CONCEPTS = (
    "a closure", "recursion", "a pointer", "garbage collection", "async/await", "a promise",
    "a callback", "dependency injection", "an interface", "inheritance", "polymorphism", "a generic",
    "a lambda", "a decorator", "a race condition", "a deadlock", "a mutex", "memoization",
    "big-O complexity", "a hash map", "a linked list", "a binary search", "an index",
    "a foreign key", "a migration", "state management", "a hook", "a middleware", "a REST endpoint",
    "unit testing", "mocking", "a virtual environment", "a memory leak", "a null pointer exception",
    "a segmentation fault", "a merge conflict", "a rebase", "a Dockerfile", "a pod", "a deployment",
    "a state file", "a module", "an iterator", "a generator", "the event loop", "type inference",
    "a stack overflow", "an ORM", "a thread pool", "lazy loading", "a regex", "string formatting",
    "error handling", "an exception", "a build step", "a namespace", "a config map",
)  # fmt: skip

_GENERAL_TOPICS = (
    "history", "cooking", "gardening", "personal finance", "economics", "philosophy", "biology",
    "psychology", "music", "art history", "football", "travel", "law", "medicine", "nutrition",
    "politics", "geography", "astronomy", "climate", "parenting", "religion", "fashion",
    "photography", "chess", "marketing", "real estate", "ancient Rome", "the French Revolution",
    "dog training", "fitness", "wine", "architecture", "linguistics", "ecology", "film",
)  # fmt: skip
_GENERAL_CONCEPTS = (
    "inflation", "a mortgage", "a sourdough starter", "composting", "stoicism", "photosynthesis",
    "cognitive dissonance", "a sonata", "impressionism", "the offside rule", "jet lag",
    "a power of attorney", "a vaccine", "intermittent fasting", "gerrymandering", "plate tectonics",
    "a black hole", "the greenhouse effect", "screen time", "karma", "capsule wardrobes",
    "the exposure triangle", "an opening gambit", "brand loyalty", "escrow", "the Senate",
    "the Reign of Terror", "crate training", "progressive overload", "tannins", "a flying buttress",
    "a dialect", "a food chain", "a plot twist", "interest rates", "a credit score", "a tariff",
    "the placebo effect", "a sleep cycle", "the electoral college",
)  # fmt: skip

_MATH_TEMPLATES = (
    "what is the probability of getting {k} heads in {n} coin flips?",
    "how many ways can {n} people sit around a round table?",
    "how many ways can I choose {k} books out of {n}?",
    "if I roll {k} dice, what's the chance the sum is {s}?",
    "a bag has {n} red and {k} blue marbles, I draw two without replacement, probability both are red?",
    "how many different {k}-letter passwords can be made from {n} letters if letters can't repeat?",
    "explain the difference between permutations and combinations with {n} items taken {k} at a time",
    "what is the expected value of rolling a {n}-sided die?",
    "in a class of {n} students what is the chance two share a birthday?",
    "how many subsets does a set of {n} elements have?",
    "what's the variance of a binomial with n={n} and p=0.{k}?",
    "the mean of {k} numbers is {s}, one number is removed and the mean becomes {n}, what was removed?",
    "how do I compute a {k}0% confidence interval for a sample of {n} with mean {s}?",
    "what is the standard deviation of {k}, {n}, {s} and {n}{k}?",
    "how many handshakes happen if {n} people each shake hands once?",
    "probability that at least one of {k} independent events with p = 1/{n} happens?",
    "explain Bayes' theorem with a test that is {n}{k}% accurate",
    "how many paths are there on a {n} by {k} grid moving only right or down?",
    "what is {n} choose {k}?",
    "is a {k} in {n} chance the same as {s}%?",
    "why is the median {s} but the mean higher, for a skewed sample of {n}?",
    "how many ways to arrange the letters of a {n}-letter word with {k} repeated letters?",
)

_WRITING_SUBJECTS = (
    "a lighthouse keeper", "the last dragon", "a retired assassin", "a child", "an AI", "a ghost",
    "a detective", "a time traveller", "a witch", "a soldier", "an astronaut", "a baker",
    "the Devil", "a librarian", "a king", "your neighbour", "a cat", "a god", "humanity", "a robot",
)  # fmt: skip
_WRITING_PREMISES = (
    "{s} wakes up with no memories and a note in their own handwriting that says 'don't trust her'.",
    "Every person is born with a timer counting down to meeting their soulmate. {s}'s just hit zero.",
    "{s} discovers that the stars have been going out one by one, and nobody else notices.",
    "After a thousand years of silence, {s} receives a reply.",
    "{s} finally gets the one wish they were promised, but the genie is tired of humans.",
    "The world ended yesterday. {s} is the only one who didn't get the memo.",
    "{s} has been reincarnated for the 400th time and is honestly getting bored.",
    "In a world where lies are visible as smoke, {s} has never exhaled.",
    "{s} opens the door they were told never to open. Behind it is a waiting room.",
    "The aliens arrive and ask to speak to {s}, specifically.",
    "A small town where it has rained for 100 years. Then one morning the sun comes out and {s} panics.",
    "{s} is the villain, but only because the hero started it.",
    "Your reflection stopped copying you this morning. {s} knows why.",
    "All the clocks in the city stop at 3:17 and {s} is the only one still moving.",
    "{s} sells memories for a living. Today a customer wants to buy one back.",
    "[WP] {s} learns that death is a bureaucracy and the paperwork is very late.",
)


def _fill(template: str, rng: random.Random, topic: str, concepts: tuple[str, ...]) -> str:
    c, c2 = rng.sample(concepts, 2)
    text = template.format(t=topic, c=c, c2=c2)
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def generated_examples(per_label: int, *, seed: int = 20240917) -> list[tuple[str, str]]:
    """``per_label`` generated ``(query, label)`` examples for each of code, math, writing, general.

    Deterministic for a given ``per_label`` and ``seed``.
    """
    rng = random.Random(f"generated:{seed}")
    out: list[tuple[str, str]] = []
    for label, topics, concepts in (
        ("code", _CODE_TOPICS, _CODE_CONCEPTS),
        ("general", _GENERAL_TOPICS, _GENERAL_CONCEPTS),
    ):
        grid = list(itertools.product(_TEMPLATES, topics))
        for template, topic in rng.sample(grid, min(per_label, len(grid))):
            out.append((_fill(template, rng, topic, concepts), label))
    for _ in range(per_label):
        n, k = rng.randint(3, 12), rng.randint(2, 6)
        template = rng.choice(_MATH_TEMPLATES)
        out.append((template.format(n=n, k=k, s=rng.randint(k, 6 * k)), "math"))
    grid = list(itertools.product(_WRITING_PREMISES, _WRITING_SUBJECTS))
    for premise, subject in rng.sample(grid, min(per_label, len(grid))):
        text = premise.format(s=subject)
        out.append((text[0].upper() + text[1:], "writing"))
    return out
