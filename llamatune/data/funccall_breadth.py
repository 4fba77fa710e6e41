"""Breadth: template families added on 2026-12-06 (README, "The tuned model that stops", part 9), one or more for
nearly every group, so that each kind of request is taught in more phrasings than before.

Part 8 found the lever left to be the breadth of phrasings per category (more steps over the same families
overfit) and the validation fold blind to a kind of declining the test has (it held one knowledge-question family).
These families were written after the split was frozen, so they are never test families, and the split places them
apart from the older families (:func:`llamatune.data.funccall_split.split_families`): the older families' test and
fold stay as they were, and ~``val_fraction`` of each group's new families joins the fold. ``breadth=True``
(:func:`~llamatune.data.funccall_rows.build_split`) adds them to the training families; the default leaves them out,
so the training rows are those of parts 6-8 exactly, because the fold sweep (``FuncCall/recipes/demo-breadth.yaml``)
found them worse: validation accuracy 70% → 59% (README part 9).

The dictionaries have the shapes of their namesakes in :mod:`llamatune.data.funccall_templates` and
:mod:`llamatune.data.funccall_slots`, which merge them in (after their own entries, so the older families' order and
rows are unchanged).
"""

from __future__ import annotations

SINGLE = {
    "get_current_weather": {
        "cw-cond": ["Is it windy in {city} at the moment?", "How humid is it in {city} right now?",
                    "How does it feel outside in {city} now? Temperature {unit}."],
    },
    "get_weather_forecast": {
        "fc-pack": ["What should I pack for {city}? I'll be there {when}.", "Will it be sunny in {city} {when}?",
                    "{city} weather outlook {when}"],
    },
    "search_wikipedia": {
        "sw-list": ["Are there any Wikipedia articles on {query}?", "List the Wikipedia pages about {query}.",
                    "Which Wikipedia pages mention {query}? The top {limit}, please."],
    },
    "get_wikipedia_summary": {
        "ws-explain": ["What does the Wikipedia article on {topic} say?", "I need the Wikipedia overview of {topic}.",
                       "Give me the gist of the Wikipedia page on {topic}."],
    },
    "get_local_time": {
        "lt-clock": ["Could you say what time it is in {city}?", "Is it morning or evening in {city} now?",
                     "Which hour is it in {city} at the moment?"],
    },
    "convert_units": {
        "cu-express": ["I need {value} {src} expressed in {dst}.", "Turn {value} {src} into {dst}.",
                       "{value} {src} equals how many {dst}?"],
    },
    "calculate": {
        "ca-workout": ["Work out {expr}.", "I need the exact value of {expr}.", "What does {expr} come to?"],
    },
}

CLARIFY = {
    "cl-noplace-b": ("clarify-weather", "weather", ["Should I take a jacket today?", "Do I need sunscreen this "
                     "afternoon?", "Is the weather good for a picnic?", "Will it be {cond} {when}?"],
                     ["Which city or place should I check the weather for?",
                      "Happy to check. Where are you, or which place do you mean?"]),
    "cl-ambiguous-c": ("clarify-weather", "weather", ["Will it snow in {amb} this week?", "Give me the current "
                       "temperature in {amb}.", "Is it cold in {amb} at the moment?"],
                       ["There are several places called {amb}. Which one do you mean: {options}?",
                        "Do you mean {options}? Several places are called {amb}."]),
    "cl-notime-b": ("clarify-other", "get_local_time", ["Is it night there now?", "Is my {person} awake yet? "
                    "What's the hour where they are?", "Check the clock over there for me."],
                    ["Which city or time zone do you mean?", "Sure. Where is that: which city or time zone?"]),
    "cl-nounit-c": ("clarify-other", "convert_units", ["I've got {value}; can you give me that in {dst}?",
                    "Please express {value} in {dst}."], ["What unit is {value} in? For example {examples}?",
                                "Could you tell me the unit of {value} ({examples})?"]),
    "cl-notopic-b": ("clarify-other", "research", ["I need some information from Wikipedia.", "Find me an "
                     "article, please.", "Could you read me something from Wikipedia?"],
                     ["Sure! Which topic or article should I look up?", "Happy to. What should I search for?"]),
}
CLARIFY_REASONS = {"cl-noplace-b": "place", "cl-ambiguous-c": "ambiguous place", "cl-notime-b": "place",
                   "cl-nounit-c": "unit", "cl-notopic-b": "topic"}

_WIKI = ["search_wikipedia", "get_wikipedia_summary"]
NO_TOOL = {
    "nt-currency": ("knowledge", "fact", "currency", _WIKI),
    "nt-language": ("knowledge", "fact", "language", _WIKI),
    "nt-continent": ("knowledge", "fact", "continent", _WIKI),
    "nt-painter": ("knowledge", "fact", "painter", _WIKI),
    "nt-concept-c": ("concept", "qa", "concept_more", _WIKI),
    "nt-chat-bye": ("chitchat", "chitchat", "bye", []),
    "nt-task-list": ("task", "task", "list", []),
    "nt-task-rewrite": ("task", "task", "rewrite", []),
    "nt-math-div": ("math", "math", "div", ["calculate"]),
}
FACT_PHRASINGS = {
    "currency": (["What currency is used in {0}?", "Which currency does {0} use?", "What's the money called in "
                  "{0}?"], "The currency of {0} is {1}."),
    "language": (["What language do people speak in {0}?", "Which language is spoken in {0}?", "main language of "
                  "{0}?"], "The main language of {0} is {1}."),
    "continent": (["Which continent is {0} in?", "On what continent is {0}?", "{0} is on which continent?"],
                  "{0} is in {1}."),
    "painter": (["Who painted {0}?", "Which artist painted {0}?", "{0} was painted by whom?"],
                "{0} was painted by {1}."),
}
FACTS = {
    "currency": [("Japan", "the yen"), ("the United Kingdom", "the pound sterling"), ("India", "the rupee"),
                 ("Mexico", "the peso"), ("Switzerland", "the Swiss franc"), ("South Korea", "the won"),
                 ("Sweden", "the krona"), ("Poland", "the złoty")],
    "language": [("Austria", "German"), ("Argentina", "Spanish"), ("Iran", "Persian"), ("Egypt", "Arabic"),
                 ("Greece", "Greek"), ("Thailand", "Thai"), ("Hungary", "Hungarian"), ("Vietnam", "Vietnamese")],
    "continent": [("Kenya", "Africa"), ("Peru", "South America"), ("Vietnam", "Asia"), ("Portugal", "Europe"),
                  ("Canada", "North America"), ("Fiji", "Oceania"), ("Morocco", "Africa"), ("Chile", "South America")],
    "painter": [("The Starry Night", "Vincent van Gogh"), ("The Last Supper", "Leonardo da Vinci"),
                ("Guernica", "Pablo Picasso"), ("The Scream", "Edvard Munch"),
                ("Girl with a Pearl Earring", "Johannes Vermeer"), ("The Birth of Venus", "Sandro Botticelli"),
                ("The Persistence of Memory", "Salvador Dalí"), ("Water Lilies", "Claude Monet")],
    # weather-adjacent concepts, like "concept": the weather tools are offered and must not be called
    "concept_more": [
        ("What is the dew point?", "The dew point is the temperature to which air must cool for its water vapour to "
         "condense into dew; the closer it is to the air temperature, the more humid the air feels."),
        ("Why does thunder come after lightning?", "Light travels far faster than sound, so you see the flash "
         "first; the thunder, the sound of the air heated by the lightning, arrives later."),
        ("What is a monsoon?", "A monsoon is a seasonal shift of the prevailing winds that brings a wet season, as "
         "in South Asia each summer."),
        ("What does a barometer measure?", "A barometer measures air pressure; falling pressure often means "
         "unsettled weather is coming."),
        ("Why is it colder on top of a mountain?", "Air expands and cools as it rises to lower pressure, so the "
         "temperature usually drops by about 6.5 °C for every 1,000 m of height."),
        ("What is wind chill?", "Wind chill is how cold it feels on skin when wind carries heat away faster than "
         "still air would."),
    ],
}
CHITCHAT = {
    "bye": (["Bye!", "Good night!", "See you later, thanks.", "That's all for now, goodbye"],
            ["Goodbye! Have a great day.", "Bye! Come back any time."]),
}
TASKS = {
    "list": [("List three fruits that are high in vitamin C.", "Oranges, kiwis and strawberries."),
             ("Name three famous composers.", "Johann Sebastian Bach, Wolfgang Amadeus Mozart and Ludwig van "
              "Beethoven."),
             ("Give me three ideas for a rainy afternoon.", "Bake something, start a jigsaw puzzle, or watch a "
              "classic film.")],
    "rewrite": [("Rewrite this more politely: 'Send me the file now.'", "Could you please send me the file when "
                 "you have a moment?"),
                ("Make this shorter: 'At this point in time we are not able to proceed.'", "We can't proceed yet."),
                ("Fix the grammar: 'She don't like apples.'", "She doesn't like apples.")],
}
MATH_PHRASINGS = {"div": (["What is {a} divided by {b}?", "How much is {a} / {b}?"], "{a} ÷ {b} = {r}.")}

PARALLEL = {
    "pa-cw2b": ("parallel-weather", ["get_current_weather"] * 2,
                ["Is it warmer in {city} or in {city2} right now?", "Check the current weather for both {city} and "
                 "{city2}."]),
    "pa-time2b": ("parallel-time", ["get_local_time"] * 2,
                  ["Can you tell me the time in {city} as well as in {city2}?", "Current local time for {city} and "
                   "for {city2}, please."]),
    "pa-calc2b": ("parallel-units", ["calculate"] * 2,
                  ["I have two sums: {expr}; {expr2}.", "First {expr}, then {expr2}: what do they give?"]),
    "pa-ws2b": ("parallel-wiki", ["get_wikipedia_summary"] * 2,
                ["I'd like the Wikipedia summaries of both {topic} and {topic2}.", "Look up {topic} and {topic2} on "
                 "Wikipedia and summarise each."]),
    "pa-fctime": ("parallel-mixed", ["get_weather_forecast", ("get_local_time", "")],
                  ["What's the forecast for {city} {when}, and what time is it there now?", "Forecast {when} and the "
                   "local time in {city}, please."]),
}

_WEATHER = ["get_current_weather", "get_weather_forecast"]
NEAR_MISS = {
    "nm-holiday": ("near-miss-time", ["get_local_time"], [],
                   ["Is tomorrow a public holiday in {city}?", "When is the next bank holiday in {city}?",
                    "Is today a bank holiday in {city}?"],
                   ["I can't look up public holidays: my time tool only gives the current local time. {city}'s "
                    "official calendar or a public-holiday site will list them.", "Public holidays aren't something "
                    "I can check here; I can only tell you the local time in {city}."]),
    "nm-sizes": ("near-miss-units", ["convert_units"], [],
                 ["What's EU shoe size 42 in US sizes?", "Convert a UK dress size 12 to US sizing.",
                  "What is a size M in European clothing sizes?"],
                 ["Clothing and shoe sizes aren't units my converter knows, and they differ between brands and "
                  "countries; the shop's or brand's size chart is the reliable way to convert them.",
                  "I can't convert clothing or shoe sizes: the converter handles length, mass, volume and temperature. "
                  "A size chart from the brand will have it."]),
    "nm-sea": ("near-miss-weather", _WEATHER, [],
               ["How warm is the water for a swim near {city} today?", "What's the water temperature near {city}?",
                "Are the waves big near {city} today?"],
               ["My weather tools report air temperature, wind and precipitation, not sea temperature or waves. A "
                "marine forecast or surf site will have that for {city}.", "I can't get sea temperatures or wave "
                "heights; my weather tools don't include them."]),
    "nm-files": ("near-miss-wiki", ["search_wikipedia", "get_wikipedia_summary"], [],
                 ["What's in the file I just uploaded?", "Can you read the PDF I sent you?",
                  "Summarise the attachment in my last email."],
                 ["I can't see any files or attachments here, and Wikipedia can't help with them. If you paste the "
                  "text into the chat, I'll help.", "No file has reached me; I can only search and read Wikipedia. "
                  "Paste the text and I'll take a look."]),
}


def families() -> tuple[str, ...]:
    """Every family id added here, in the order the books list them."""
    return (*(f for fams in SINGLE.values() for f in fams), *CLARIFY, *NO_TOOL, *PARALLEL, *NEAR_MISS)
