"""Generated everyday requests without domain keywords (``--practical N``).

``router_train.jsonl``'s writing is story prompts and long-form benchmark instructions, and its
code is task titles that name a language. Real users mostly ask for practical text (a note to a
supplier, a shorter version of a paragraph, a slogan) and describe software problems by their
symptoms ("the checkout page logs everyone out after the deploy") without saying "code" or a
language. A router trained on the file alone sends both to ``general``.

This module writes such requests from general knowledge: cross products of request framings x
artefacts (writing), symptoms x conditions and tasks (code), everyday quantities (math). Every
framing is also used for ``general`` topics (appliances, errands, advice), so the model learns
what is asked for, not how the request is phrased. Texts to rewrite are short sentences written
here plus passages of the pasted-context prose (``filler``) when it is given.

No item comes from an evaluation set; the lists below were written from scratch.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence

__all__ = ["practical_examples"]

# Framings shared by writing requests and general requests for advice.
_ASKS = (
    "{a}",
    "{a}, please",
    "can you put together {a}?",
    "I need {a}",
    "could you help me with {a}?",
    "help me with {a}",
    "could you do {a} for me",
    "I have to send {a} by tonight, can you help?",
    "please come up with {a}",
    "need {a} asap",
    "mind doing {a} for me?",
    "{a}. nothing too long",
    "I'm hopeless at this: {a}",
    "{a}? keep it warm but professional",
    "would you mind preparing {a}",
    "looking for {a}",
)
_ADVICE_ASKS = (
    "{a}",
    "{a}, please",
    "I need {a}",
    "could you help me with {a}?",
    "help me with {a}",
    "looking for {a}",
    "I'm hopeless at this: {a}",
)
"""The framings of :data:`_ASKS` that also fit a request for advice."""
_ARTEFACTS = (
    "a note to my neighbours about the party we're having on Saturday",
    "an email to a supplier who sent us the wrong parts again",
    "a farewell message for a colleague retiring after 30 years",
    "a message telling my team I'm leaving the company",
    "an email asking my professor for a one-week extension",
    "a card for my cousin's graduation",
    "a thank-you message to the mentor who got me my first job",
    "a letter to the city council about the potholes on our street",
    "an invitation for parents to the spring concert",
    "an announcement to customers that our prices go up in March",
    "an opening announcement for a small yoga studio",
    "a poster for our lost grey cat",
    "a reply declining a job offer I was grateful for",
    "an email asking for a refund on cancelled concert tickets",
    "a complaint to a hotel that charged my card twice",
    "a welcome note for a new hire on the support team",
    "a listing for the old sofa I'm selling online",
    "a polite reminder to a client about an unpaid invoice",
    "a sign-up page blurb for a charity run",
    "a message to my son's teacher explaining why he missed a week",
    "captions for a bakery's photos this week",
    "an about-us paragraph for a handmade jewellery shop",
    "a congratulations message to a friend who just had a baby",
    "a message to my roommate about the dishes piling up",
    "a listing for a two-bedroom flat with a balcony",
    "an intro for a podcast episode about balcony gardening",
    "a thank-you to the volunteers after the beach cleanup",
    "a motivation letter for an apartment application",
    "a slogan for a bicycle repair shop",
    "a tagline for a tutoring service",
    "a short bio for a conference program, I'm a nurse turned data analyst",
    "an apology to a customer whose order arrived two weeks late",
    "a speech for my parents' 40th anniversary dinner",
    "a eulogy for my uncle, who loved fishing and bad jokes",
    "vows for our wedding, we met at a climbing gym",
    "a recommendation letter for my former intern",
    "a review of the Thai restaurant we went to last night",
    "a pitch to a local paper about our community garden",
    "a job posting for a part-time bookkeeper",
    "a fundraising appeal for our school library",
    "a post announcing my new role",
    "an out-of-office reply for my parental leave",
    "a polite follow-up after a job interview last week",
    "a message to the group chat moving the reunion to June",
    "a product description for a bamboo cutting board",
    "an intro paragraph for our team's quarterly report",
    "a toast for my best friend's 30th birthday",
    "a short welcome speech for a neighbourhood street fair",
    "a text to my ex asking to pick up my things",
    "a memo telling staff the parking lot is closed next week",
    "a paragraph for the back cover of my cookbook",
    "lyrics for a silly song about our office coffee machine",
    "a rhyme for my daughter's treasure hunt clues",
    "a limerick about a goat that eats the laundry",
    "a wedding invitation wording for a small garden ceremony",
    "an appeal against a parking fine, the sign was hidden by a tree",
    "a press release about our bakery winning a local award",
    "a short summary of last night's board meeting for the members",
    "a message asking my landlady if I can paint the bedroom",
    "a friendly nudge to my team to fill in the survey",
)  # fmt: skip
_ADVICE = (
    "advice on whether to break my lease early",
    "figuring out what to do when a supplier keeps sending wrong parts",
    "ideas for a retirement party for a colleague",
    "deciding whether to take a job offer with a longer commute",
    "understanding how refunds for cancelled concerts work",
    "what to do when a hotel charges my card twice",
    "choosing a daycare for my two-year-old",
    "figuring out a budget for a family of four",
    "planning a three-day trip to Rome",
    "finding a good first car under 8000",
    "a plan to get back into running after an injury",
    "understanding my rights if my flight is cancelled",
    "picking a houseplant that survives a dark room",
    "what to bring to a baby shower",
    "dealing with a roommate who never cleans",
    "preparing for my first marathon",
    "getting my cat used to a new puppy",
    "understanding why my electricity bill doubled",
    "the difference between a will and a trust",
    "ideas for a rainy weekend with kids",
    "choosing between renting and buying a flat",
    "a packing list for a week of camping",
    "how to negotiate the price of a used car",
    "ways to make friends after moving to a new city",
    "whether I should repaint or wallpaper the hallway",
    "how to get a stain out of a silk shirt",
    "what to look for in a running shoe",
    "the best time to visit Iceland",
    "how much to tip at a wedding",
    "how interviews for nursing jobs usually go",
)  # fmt: skip

# Edits of a given text: the instruction makes it writing, whatever the text is about.
_EDITS = (
    "make this sound more professional: {t}",
    "make this friendlier:\n\n{t}",
    "shorten this please: {t}",
    "can you rephrase this? {t}",
    "fix the grammar here: {t}",
    "tighten this up:\n{t}",
    "summarise this in two sentences: {t}",
    "turn this into three bullet points: {t}",
    "make this less formal: {t}",
    "simplify this so a ten-year-old gets it: {t}",
    "tl;dr this for me: {t}",
    "proofread this before I send it: {t}",
    "polish this a bit: {t}",
    "this sounds rude, soften it: {t}",
    "give this a punchier ending: {t}",
    "{t}\n\nmake that sound less stiff",
    "{t}\n\ncan you make this shorter and clearer?",
    "{t}\n\nreword this for a general audience",
    "put this in plain English: {t}",
    "make this more persuasive: {t}",
)
_DRAFTS = (
    "hi all, just a reminder the office will be closed friday, so plan accordingly",
    "We regret to inform you that your application has not been successful at this time.",
    "i cant make it tomorrow sorry something came up, maybe next week??",
    "Our team is passionate about delivering value to stakeholders through synergy.",
    "The meeting was long. Many things were discussed. Some decisions were made.",
    "Dear Sir, I am writing in regard to the matter of the invoice which was sent.",
    "we are excited to anounce our new store opening on main street this saturday!!!",
    "Please be advised that all staff must complete the training by end of month.",
    "u still owe me 20 bucks from the concert btw",
    "I have worked in retail for five years and I am good with customers and also with money.",
    "The product is good but the delivery was late and the box was damaged and nobody answered.",
    "Thanks for coming to the party, it was great, we should do it again sometime soon.",
    "Due to unforeseen circumstances the event has been postponed until further notice.",
    "Our quarterly numbers were below target because of supply delays, but demand stayed strong.",
    "I think maybe we should perhaps consider possibly changing the schedule.",
    "Your subscription will renew automatically unless cancelled before the renewal date.",
    "As per my last email, the files are attached. Again.",
    "The garden club meets every second Tuesday; new members are always welcome to join us.",
)

# Software problems described by their symptoms, and the same framing for non-software things.
_SYMPTOM_FRAMES = (
    "{s} {p} {c}",
    "{s} {p} {c}, any ideas?",
    "why does {s} {p0} {c}?",
    "{s} {p} {c}. where should I look?",
    "{s} {p} {c} - what could cause this?",
    "help, {s} {p} {c}",
    "{s} {p} {c}, how do I fix it?",
    "ok so {s} {p} {c} and I'm out of ideas",
)
_SOFTWARE = (
    "my app", "the login page", "our checkout form", "the nightly export job", "the web server",
    "the phone app we're building", "the admin dashboard", "my chat bot", "the scheduled task",
    "the orders endpoint", "the search page", "my browser extension", "the signup flow",
    "the deploy pipeline", "the background worker", "the chat widget on our site", "my game",
    "the sync service", "the import tool", "the report generator", "the staging site",
    "the microservice that sends invoices", "our single-page site", "the cache layer",
)  # fmt: skip
_SOFTWARE_SYMPTOMS = (
    ("crash", "crashes"), ("hang", "hangs"), ("return", "returns a blank page"), ("time", "times out"),
    ("show", "shows the wrong time zone"), ("log", "logs everyone out"),
    ("send", "sends every notification twice"), ("get", "gets slower every hour"),
    ("drop", "drops the last row"), ("show", "shows garbled characters"),
    ("charge", "charges some customers twice"), ("fail", "fails silently"),
    ("say", "says connection refused"), ("eat", "eats all the memory"), ("write", "writes empty files"),
    ("render", "renders everything twice"), ("show", "shows stale results"),
    ("throw", "throws a null reference error"), ("return", "returns a 500"),
    ("lose", "loses the session"), ("skip", "skips every other record"),
)  # fmt: skip
_SOFTWARE_CONDITIONS = (
    "when the list is empty", "after the last deploy", "only on phones",
    "when two people save at the same time", "in production but not on my machine",
    "for users with accents in their names", "when the file has more than a million lines",
    "after midnight UTC", "on the first request after a restart", "only inside the container",
    "whenever the network drops for a second", "since we upgraded the framework",
    "when the input has a trailing comma", "under load", "after I added the caching",
    "when the user hits back", "only in Safari", "when the queue is full",
)  # fmt: skip
_THINGS = (
    "my washing machine", "my car", "my laptop battery", "the dishwasher", "my sourdough",
    "my bike", "the boiler", "my houseplant", "the smoke alarm", "my dog", "our fridge",
    "the garage door", "my knee", "the oven", "my baby", "the lawn mower", "my tomato plants",
    "the bathroom fan",
)  # fmt: skip
_THING_SYMPTOMS = (
    ("make", "makes a grinding noise"), ("stop", "stops halfway"), ("beep", "keeps beeping"),
    ("leak", "leaks"), ("refuse", "refuses to start"), ("smell", "smells odd"), ("go", "goes flat"),
    ("wilt", "keeps wilting"), ("hurt", "hurts"), ("wake", "wakes up crying"),
    ("shake", "shakes"), ("turn", "turns yellow"), ("rattle", "rattles"),
)  # fmt: skip
_THING_CONDITIONS = (
    "when it's cold outside", "after a long drive", "at night", "since we moved",
    "when I open the door", "after the first week", "in the morning", "when it rains",
    "on the spin cycle", "after I water it", "when I climb stairs", "every few days",
)  # fmt: skip

_HOW_FRAMES = (
    "how do I {x}?",
    "what's a good way to {x}?",
    "best way to {x}?",
    "I want to {x}, where do I start?",
    "is there a simple way to {x}",
    "how would you {x}?",
    "any tips on how to {x}?",
)
_DEV_TASKS = (
    "let users reset their password by email", "resize photos when they're uploaded",
    "show a spinner while the data loads", "retry a failed payment call with a delay",
    "cache the results of a slow lookup", "paginate a long list of search results",
    "send a reminder a day before each appointment automatically",
    "merge a folder of spreadsheets into one table automatically",
    "keep users logged in for 30 days", "limit each user to 100 requests a minute",
    "rename a few hundred files by the date they were taken", "find dead links on our site automatically",
    "lock a record while someone is editing it", "run a task every Monday at 6 on the server",
    "add undo to the editor in my app", "make the sidebar collapse on small screens",
    "keep uploaded files off the server's disk", "stream a large download without loading it into memory",
    "pull the dates out of a log file", "merge two sorted lists without duplicates",
    "match customer records with slightly different spellings", "run the same checks on every pull request",
    "hash passwords before saving them", "roll back a bad change to the database schema",
    "read a setting with a default when it's missing", "post to the team chat when a build fails",
    "make my page load faster on slow connections", "let two apps talk to each other over a queue",
    "make the form remember what the user typed if the page reloads", "log every request with its duration",
    "let users filter the product list by price", "stop my tests from depending on each other",
    "split the monolith into smaller services", "make a command-line tool accept flags",
    "draw a chart from the numbers in my app", "handle time zones when storing meeting times",
)  # fmt: skip
_LIFE_TASKS = (
    "get rid of fruit flies", "keep herbs alive on a windowsill", "learn to swim as an adult",
    "save for a house deposit", "stick to a study schedule", "remove rust from a bike chain",
    "meet people in a new city", "teach a puppy to stay", "pack a suitcase for two weeks",
    "keep a sourdough starter alive", "train for a half marathon", "lower my heating bill",
    "clean a cast iron pan", "fall asleep without my phone", "store winter clothes",
    "get better at public speaking", "pick a good watermelon", "make my commute less boring",
    "choose a good mattress", "grow tomatoes on a balcony",
)  # fmt: skip

# Everyday quantities: maths without the words "math", "solve" or "equation".
_MATH = (
    "what's {p}% of {n}?",
    "a jacket costs {n} after a {p}% discount, what did it cost before?",
    "we're {k} people and the bill is {n} plus a {p}% tip, how much does each pay?",
    "if I drive {n} km at {s} km/h, how long does it take?",
    "I save {s} a week, how many weeks until I have {n}?",
    "{s} is what percent of {n}?",
    "a room is {k} m by {s} m, how many square meters of flooring do I need?",
    "how much is {n} worth after {k} years at {p}% a year, compounded yearly?",
    "{k} painters need {s} hours for the fence, how many hours with {k2} of them?",
    "the ratio of boys to girls is {k}:{k2} and there are {n} kids, how many girls?",
    "a plan costs {s} a month plus 5 cents a minute, how many minutes for a bill of {n}?",
    "{k}/{k2} as a decimal?",
    "is {n} divisible by {k}?",
    "my {n} laptop drops {p}% in resale value yearly, what will it fetch in {k} years?",
    "how many seconds are in {k} days?",
    "two numbers add up to {n} and differ by {k}, what are they?",
    "if {k} notebooks cost {s}, how much do {n} cost?",
    "I ran {k} km in {s} minutes, what's my pace per km?",
    "a tank holds {n} liters and drains {s} liters an hour, when is it empty?",
    "what's the average of {k}, {s}, {n} and {k2}?",
    "round {n}.{k}{s} to the nearest ten",
    "how many {k}-person teams can I make from {n} people, and how many are left over?",
    "a map scale is 1:{n}, how far is {k} cm on the map in real life?",
    "my salary went from {n} to {m}, by what percent did it rise?",
)
_NUMBER_GENERAL = (
    "how many people live in {c}?",
    "what year was {c} founded?",
    "how much should I tip in {c}?",
    "what's the average rent in {c} these days?",
    "how many days do I need to see {c}?",
    "what's the time difference between {c} and London?",
    "how many calories should an adult eat a day?",
    "what's a normal resting heart rate?",
    "how many hours a night should a newborn sleep?",
    "how old do you have to be to rent a car in {c}?",
)
_CITIES = (
    "Tokyo", "Lisbon", "Toronto", "Nairobi", "Berlin", "Mexico City", "Sydney", "Oslo", "Seoul",
    "Buenos Aires", "Cairo", "Dublin", "Prague", "Vancouver",
)  # fmt: skip

# Open-ended questions about society, habits and science: long, discursive, and still ``general``
# (without them a long "why do people ...?" reads as a writing request once practical writing is in).
_DISCUSS = (
    "why do people {v}? is it {a} or {b}?",
    "what are the upsides and downsides of {n}?",
    "how does {n} affect {m}?",
    "is it true that {claim}?",
    "what do you think about {n}? I keep hearing completely different opinions.",
    "what are the most common misconceptions about {n}?",
    "what's the history behind {n}, and why does it still matter today?",
    "do you think {n} will still be around in twenty years? why or why not?",
    "how do experts explain why people {v}?",
    "has {n} made {m} better or worse? what does the evidence say?",
    "Why do so many people {v}, even when they know it's not good for them?",
    "In what ways has {n} changed over the last few decades, and what caused it?",
)
_DISCUSS_TOPICS = (
    "remote work", "social media", "homeschooling", "nuclear energy", "tipping culture",
    "daylight saving time", "fast fashion", "electric cars", "standardised testing", "minimalism",
    "online dating", "zoos", "tourism in small villages", "universal basic income", "self-driving cars",
    "vegetarian diets", "public libraries", "team sports for kids", "the four-day work week",
    "cryptocurrencies", "streaming services", "cycling lanes in cities", "space tourism",
    "artificial sweeteners", "video games", "handwriting in schools", "reality TV", "influencer marketing",
)  # fmt: skip
_DISCUSS_AFFECTED = (
    "mental health", "small businesses", "family life", "the environment", "house prices",
    "teenagers", "local culture", "sleep", "productivity", "trust in institutions",
)  # fmt: skip
_DISCUSS_HABITS = (
    ("keep watching shows they don't even enjoy", "habit", "something deeper"),
    ("collect things they never use", "nostalgia", "anxiety"),
    ("believe in horoscopes", "culture", "psychology"),
    ("queue overnight for new phones", "status", "excitement"),
    ("stay in jobs they hate", "fear", "money"),
    ("fear flying more than driving", "control", "the news"),
    ("love horror films", "adrenaline", "curiosity"),
    ("follow the lives of celebrities", "boredom", "social connection"),
    ("buy lottery tickets", "hope", "bad maths"),
    ("put off important tasks", "perfectionism", "laziness"),
    ("argue with strangers online", "boredom", "identity"),
    ("keep pets that live only a few years", "companionship", "routine"),
)  # fmt: skip
_DISCUSS_CLAIMS = (
    "goldfish forget everything after three seconds", "cracking your knuckles causes arthritis",
    "bulls get angry at the colour red", "lightning never strikes the same place twice",
    "you lose most of your body heat through your head", "sugar makes children hyperactive",
    "bats are blind", "the Great Wall of China can be seen from space",
    "shaving makes hair grow back thicker", "camels store water in their humps",
)  # fmt: skip

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _passage(rng: random.Random, filler: Sequence[str]) -> str:
    """One to three sentences of the pasted-context prose (whitespace collapsed)."""
    sentences = [s for s in _SENTENCE.split(" ".join(rng.choice(filler).split())) if len(s) > 20]
    if not sentences:
        return rng.choice(_DRAFTS)
    start = rng.randrange(len(sentences))
    return " ".join(sentences[start : start + rng.randint(1, 3)])


def _vary(text: str, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return text[0].upper() + text[1:]
    if roll < 0.5:
        return text.lower()
    return text


def _sample(rng: random.Random, grid: list[tuple[str, ...]], n: int) -> list[tuple[str, ...]]:
    return rng.sample(grid, min(n, len(grid)))


def practical_examples(
    per_label: int, *, filler: Sequence[str] = (), seed: int = 20240917
) -> list[tuple[str, str]]:
    """``per_label`` generated ``(query, label)`` examples for each of code, math, writing, general.

    Deterministic for given arguments.
    """
    rng = random.Random(f"practical:{seed}")
    out: list[tuple[str, str]] = []
    # writing: half artefacts, half edits of a given text
    n_edit = per_label // 2
    for ask, artefact in _sample(rng, list(itertools.product(_ASKS, _ARTEFACTS)), per_label - n_edit):
        out.append((_vary(ask.format(a=artefact), rng), "writing"))
    for _ in range(n_edit):
        text = _passage(rng, filler) if filler and rng.random() < 0.5 else rng.choice(_DRAFTS)
        out.append((rng.choice(_EDITS).format(t=text), "writing"))
    # code: symptoms and tasks; general: the same framings about everyday things
    for label, subjects, symptoms, conditions, tasks in (
        ("code", _SOFTWARE, _SOFTWARE_SYMPTOMS, _SOFTWARE_CONDITIONS, _DEV_TASKS),
        ("general", _THINGS, _THING_SYMPTOMS, _THING_CONDITIONS, _LIFE_TASKS),
    ):
        n_how = per_label // 3 if label == "code" else per_label // 6
        n_advice = 0 if label == "code" else per_label // 6
        n_numbers = 0 if label == "code" else per_label // 8
        n_discuss = 0 if label == "code" else per_label // 4
        n_symptom = per_label - n_how - n_advice - n_numbers - n_discuss
        grid = list(itertools.product(_SYMPTOM_FRAMES, subjects, symptoms, conditions))
        for frame, subject, (p0, p), c in _sample(rng, grid, n_symptom):
            out.append((_vary(frame.format(s=subject, p=p, p0=p0, c=c), rng), label))
        for frame, task in _sample(rng, list(itertools.product(_HOW_FRAMES, tasks)), n_how):
            out.append((_vary(frame.format(x=task), rng), label))
        for ask, advice in _sample(rng, list(itertools.product(_ADVICE_ASKS, _ADVICE)), n_advice):
            out.append((_vary(ask.format(a=advice), rng), label))
        for _ in range(n_discuss):
            v, x, y = rng.choice(_DISCUSS_HABITS)
            fill = {
                "v": v,
                "a": x,
                "b": y,
                "n": rng.choice(_DISCUSS_TOPICS),
                "m": rng.choice(_DISCUSS_AFFECTED),
            }
            out.append(
                (_vary(rng.choice(_DISCUSS).format(claim=rng.choice(_DISCUSS_CLAIMS), **fill), rng), label)
            )
        for _ in range(n_numbers):
            out.append((rng.choice(_NUMBER_GENERAL).format(c=rng.choice(_CITIES)), label))
    for _ in range(per_label):
        n, k, k2 = rng.choice((120, 250, 480, 750, 1200, 3600, 15000)), *rng.sample(range(2, 10), 2)
        values = {"n": n, "k": k, "k2": k2, "s": rng.randint(10, 90), "p": rng.choice((5, 8, 12, 15, 20, 35))}
        values["m"] = n + rng.randint(1, n // 2)
        out.append((_vary(rng.choice(_MATH).format(**values), rng), "math"))
    return out
