"""Foreign tools: schemas of functions this project does not have (music, orders, bookings, e-mail, smart home…),
with a few phrasings each, for *training* rows only.

Every tool the generator offered before was one of the project's seven, so the fine-tune met the same seven
descriptions in every row (masking renames them, it keeps their descriptions). BFCL offers functions the model has
never seen, and there the tuned model over-called (irrelevance 0.64 against 1.00 for the base). With
``llamatune data funccall --foreign SHARE`` (:func:`~llamatune.data.funccall_rows.train_style`), training rows meet
these schemas two ways:

* as **distractors** (:func:`distractors`): beside the needed tool of a call, or offered alone where no tool serves
  the request, so the model reads what a tool does before calling it;
* as **the needed tool** (:func:`request`): a share of the single-call rows ask for one of them ("Play Clocks by
  Coldplay." → ``play_song``), so an unfamiliar name is not a reason to decline either.

None of these domains is one a request of the generator needs or a near-miss row declines (no weather, time, units,
arithmetic, encyclopaedia, news, flights, alarms, currencies, recipes, translation), so a foreign distractor never
serves the request it sits beside. Written for this project (not taken from BFCL). Their families are training-only
(:data:`~llamatune.data.funccall_templates.TRAIN_ONLY`): the test and validation rows never offer them.

Tried on 2026-12-05 at ``--foreign 0.5`` (README, "The tuned model that stops, part 4") and **off by default**: the
model learned "an unfamiliar function is to be called" (BFCL irrelevance 0.57 → 0.34, tuned − base −12 pp) and
"a familiar one offered beside a question too" (demo no_tool items 14/14 → 6/14).
"""

from __future__ import annotations

import random

# name -> (description, {argument: (JSON type, description)}, required, phrasings, slot values). A phrasing's
# {slot} fills the argument of the same name; optional arguments are filled only where the phrasing names them.
FOREIGN = {
    "play_song": ("Play a song on the user's music player.",
                  {"title": ("string", "The song title."), "artist": ("string", "The performer, if given.")},
                  ["title"],
                  ["Play {title} by {artist}.", "Put on {title}, please.", "I want to hear {title} by {artist}."],
                  {"title": ["Clocks", "Yesterday", "Hey Jude", "Dancing Queen", "Halo", "Viva la Vida"],
                   "artist": ["Coldplay", "The Beatles", "ABBA", "Beyoncé", "Adele"]}),
    "track_order": ("Get the delivery status of an online order.",
                    {"order_id": ("string", "The order number.")}, ["order_id"],
                    ["Where is my order {order_id}?", "Track order {order_id}, please.",
                     "Has order {order_id} shipped yet?"],
                    {"order_id": ["A1042", "77-3310", "ZX9001", "B-5521", "40118"]}),
    "book_table": ("Reserve a table at a restaurant.",
                   {"restaurant": ("string", "The restaurant's name."),
                    "people": ("integer", "How many people."), "time": ("string", "The time, e.g. 19:30.")},
                   ["restaurant", "people", "time"],
                   ["Book a table for {people} at {restaurant} at {time}.",
                    "Reserve {restaurant} for {people} people, {time}."],
                   {"restaurant": ["Luigi's", "The Green Door", "Sakura", "Casa Pepe"], "people": [2, 3, 4, 6],
                    "time": ["19:00", "19:30", "20:15", "12:30"]}),
    "send_email": ("Send an e-mail from the user's account.",
                   {"to": ("string", "The recipient's e-mail address."), "subject": ("string", "The subject line.")},
                   ["to", "subject"],
                   ["Email {to} with the subject \"{subject}\".", "Send a mail to {to}, subject: {subject}."],
                   {"to": ["ana@example.com", "team@example.org", "li.wei@example.net"],
                    "subject": ["Meeting notes", "Invoice 311", "Lunch on Friday"]}),
    "get_stock_price": ("Get the latest price of a listed company's share.",
                        {"symbol": ("string", "The ticker symbol, e.g. AAPL.")}, ["symbol"],
                        ["What's {symbol} trading at?", "Stock price of {symbol}?", "How is {symbol} doing today?"],
                        {"symbol": ["AAPL", "MSFT", "NVDA", "TSLA", "SAP"]}),
    "set_thermostat": ("Set the target temperature of a room's thermostat in the user's home.",
                       {"temperature": ("number", "The target in degrees Celsius."),
                        "room": ("string", "The room, if given.")}, ["temperature"],
                       ["Set the {room} thermostat to {temperature} degrees.", "Heat the house to {temperature}."],
                       {"temperature": [19, 20, 21.5, 22], "room": ["bedroom", "living room", "office"]}),
    "turn_on_lights": ("Switch on the lights of a room in the user's home.",
                       {"room": ("string", "The room.")}, ["room"],
                       ["Turn on the lights in the {room}.", "Lights on in the {room}, please."],
                       {"room": ["kitchen", "hallway", "bedroom", "garage"]}),
    "check_balance": ("Get the balance of one of the user's bank accounts.",
                      {"account": ("string", "Which account: checking or savings.")}, ["account"],
                      ["What's the balance on my {account} account?", "How much is in my {account} account?"],
                      {"account": ["checking", "savings"]}),
    "reset_password": ("Send a password-reset link for a user account.",
                       {"username": ("string", "The account's user name.")}, ["username"],
                       ["Reset the password for {username}.", "I forgot my password, my user name is {username}."],
                       {"username": ["jdoe", "maria_k", "t.nguyen", "admin42"]}),
    "get_match_score": ("Get the final score of a team's last match.",
                        {"team": ("string", "The team's name.")}, ["team"],
                        ["What was the score of the last {team} game?", "Did {team} win their last match?"],
                        {"team": ["Arsenal", "Lakers", "Real Madrid", "Yankees"]}),
    "search_products": ("Search the shop's catalogue for products to buy.",
                        {"query": ("string", "What to look for."),
                         "max_price": ("number", "The highest price in dollars, if given.")}, ["query"],
                        ["Find {query} under {max_price} dollars.", "Show me {query} in the shop.",
                         "I want to buy {query}, nothing over ${max_price}."],
                        {"query": ["running shoes", "a desk lamp", "wireless earbuds", "a yoga mat"],
                         "max_price": [30, 50, 80, 120]}),
    "create_ticket": ("Open a support ticket with the IT help desk.",
                      {"summary": ("string", "A one-line summary of the problem.")}, ["summary"],
                      ["Open a ticket: {summary}.", "Tell IT that {summary}."],
                      {"summary": ["my laptop will not boot", "the printer on floor 2 is jammed",
                                   "I cannot log in to the VPN"]}),
}

FAMILY_PREFIX = "xf-"  # a foreign tool's family: "xf-<tool>"


def family(name: str) -> str:
    return FAMILY_PREFIX + name


def families() -> list[str]:
    return [family(n) for n in FOREIGN]


def schema(name: str) -> dict:
    """The tool's schema in the format of the project's own (OpenAI ``{"type": "function", "function": …}``)."""
    description, params, required, _, _ = FOREIGN[name]
    props = {k: {"type": t, "description": d} for k, (t, d) in params.items()}
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": list(required)}}}


def schemas() -> dict[str, dict]:
    return {n: schema(n) for n in FOREIGN}


def distractors(rng: random.Random, k: int) -> list[dict]:
    """``k`` foreign schemas, drawn without replacement."""
    return [schema(n) for n in rng.sample(sorted(FOREIGN), k)]


def request(rng: random.Random, name: str) -> tuple[str, dict]:
    """``(user text, arguments)``: a request that needs ``name``, its arguments those the text states."""
    from llamatune.data.funccall_build import fill, slots_of

    _, params, _, phrasings, values = FOREIGN[name]
    text = rng.choice(phrasings)
    args = {k: rng.choice(values[k]) for k in params if k in slots_of(text)}
    return fill(text, args), args
